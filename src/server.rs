//! Process start-up: one glommio executor per shard, the shard mesh, the coordinator on shard
//! 0, the listeners, and shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};

use crate::admin;
use crate::config::BrokerConfig;
use crate::coordination::{BrokerInfo, Coordinator, CoordinatorConfig};
use crate::metrics::BrokerStats;
use crate::net::listener;
use crate::shard::{Job, Shard};

/// Capacity of each shard-to-shard channel, in jobs.
const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Threads of each shard's blocking pool (glommio's `spawn_blocking`; glommio's default is
/// one). Everything a shard must not wait for in its event loop goes there: a roll's rename of
/// the next segment file, the closing segment's index files, snapshot and directory fsyncs,
/// retention's renames, the reaper's unlinks, the log cleaner's rewrites. With one thread a
/// roll's rename queued behind another partition's fsyncs (tens of ms when the journal is
/// busy) or a whole cleaner pass, and the rolling partition's acks waited with it. Each
/// partition awaits its own blocking work in order, so more threads change no ordering.
const BLOCKING_THREADS_PER_SHARD: usize = 4;

/// Below this `ulimit -n`, start-up warns (Kafka's operations guide asks for 100,000).
const MIN_OPEN_FILES_ADVISED: u64 = 65_536;

/// A shard's blocking pool: on the shard's CPU when the shard is pinned to one, else unbound.
fn blocking_pool(pinned_cpu: Option<usize>) -> PoolPlacement {
    let shard_cpu = pinned_cpu.and_then(|cpu| {
        let online = CpuSet::online().ok()?;
        Some(online.filter(|location| location.cpu == cpu))
    });
    match shard_cpu {
        Some(cpus) => PoolPlacement::Fenced(BLOCKING_THREADS_PER_SHARD, cpus),
        None => PoolPlacement::Unbound(BLOCKING_THREADS_PER_SHARD),
    }
}

/// Runs a broker until SIGINT or SIGTERM. Prints one `ready` line on stdout when every shard
/// serves clients; scripts and tests wait for it.
pub fn run(config: BrokerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut config = config;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    // Absolute from here on: glommio's directory opens fail (EBADF) on relative paths, and the
    // default data dir is the relative ./data.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("cannot resolve data dir {}: {e}", config.data_dir.display()))?;
    // Held until `run` returns (the process exits right after).
    let _data_dir_lock = crate::startup::lock_data_dir(&config.data_dir)?;
    inject_held_segment_writes();
    // Before any shard opens a log: the logs replay what the previous run journaled.
    let journal = Arc::new(crate::startup::prepare_journal(&config)?);
    let open_files_limit = crate::startup::raise_open_files_limit();
    if open_files_limit < MIN_OPEN_FILES_ADVISED {
        tracing::warn!(
            open_files_limit,
            advised = MIN_OPEN_FILES_ADVISED,
            "the open files limit (ulimit -n) is low: every partition being written and every \
             client holds a descriptor; raise it as for Kafka (e.g. LimitNOFILE=100000)"
        );
    } else {
        tracing::info!(open_files_limit, "open files limit");
    }
    let config = Arc::new(config);
    let shards = config.shards();
    // Pinned to the CPUs this process may run on (its affinity mask), in order, when there
    // is one for every shard.
    let cpus: Vec<usize> = crate::config::allowed_cpus();
    let pinned = config.pins_shards(cpus.len());
    if config.overprovisioned {
        tracing::info!(shards, "overprovisioned: shards run unpinned");
    } else if shards > cpus.len() {
        tracing::warn!(
            shards,
            cpus = cpus.len(),
            "more shards than CPUs: shards run unpinned"
        );
    }
    let (fds, bound) = listener::bind_all(config.listen, shards)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let (host, port) = config.advertised(bound);
    let broker = BrokerInfo {
        node_id: config.node_id,
        host,
        port,
        rack: None,
        registration_sequence: None,
    };

    // Block the signals in every thread; this thread waits for them with sigwait.
    let signals = block_shutdown_signals();
    let shutdown = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(BrokerStats::default());
    let balance = Arc::new(crate::net::balance::ConnectionBalance::new(shards));
    let mesh = MeshBuilder::<Job, _>::full(shards, MESH_CHANNEL_CAPACITY);
    // Bound before the shards start so a taken --http port fails start-up early.
    let http_listener = admin::http::bind(&config)?;
    let (admin_link, admin_endpoint) = admin::link();
    let mut admin_endpoint = Some(admin_endpoint);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    // Set once every shard is ready: a shard that panics before says so on the ready channel
    // (start-up fails), after it the process aborts (`ShardPanicGuard`).
    let started_flag = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(shards);
    for (id, fd) in fds.into_iter().enumerate() {
        let placement = if pinned {
            Placement::Fixed(cpus[id])
        } else {
            Placement::Unbound
        };
        // Shard 0 serves the console's jobs (it holds the coordinator and the metadata).
        let admin_endpoint = if id == 0 { admin_endpoint.take() } else { None };
        let journal = journal.clone();
        let (config, broker, stats, balance, mesh, shutdown, ready_tx) = (
            config.clone(),
            broker.clone(),
            stats.clone(),
            balance.clone(),
            mesh.clone(),
            shutdown.clone(),
            ready_tx.clone(),
        );
        let mut builder = crate::shard::stall::configure(
            LocalExecutorBuilder::new(placement)
                .blocking_thread_pool_placement(blocking_pool(pinned.then(|| cpus[id])))
                .name(&format!("shard-{id}")),
            Duration::from_millis(config.stall_threshold_ms),
        );
        if config.idle_poll_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(config.idle_poll_us));
        }
        let guard = ShardPanicGuard {
            id,
            started: started_flag.clone(),
            ready: ready_tx.clone(),
        };
        let handle = builder
            .spawn(move || async move {
                let _guard = guard;
                run_shard(
                    id,
                    shards,
                    config,
                    &journal,
                    broker,
                    stats,
                    mesh,
                    fd,
                    balance,
                    shutdown,
                    ready_tx,
                    admin_endpoint,
                )
                .await
            })
            .map_err(|e| format!("cannot start shard {id}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a shard exited during start-up".into()),
        }
    }
    started_flag.store(true, Ordering::SeqCst);
    // Every log has opened, replayed the previous run's journaled batches and synced them.
    crate::storage::journal::finish_recovery();
    let console = match http_listener {
        Some(listener) => Some(admin::http::start(
            listener,
            admin_link,
            stats.clone(),
            started,
            shards,
            config.node_id,
        )?),
        None => None,
    };
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(%bound, shards, startup_ms, ?console, "broker ready");
    // Tests and scripts read the address after "listening on " and the console's after
    // "console ".
    let console_note = console
        .map(|addr| format!(", console http://{addr}"))
        .unwrap_or_default();
    // Without --cores / num.cores the shard count is the machine's; say where it came from.
    let shards_note = if config.cores.is_none() {
        " (default: one per CPU; --cores N to change)"
    } else {
        ""
    };
    println!(
        "broker {} ready: listening on {bound} with {shards} shards{shards_note} ({startup_ms:.1} ms){console_note}",
        config.node_id
    );

    let signal = wait_for_signal(&signals);
    tracing::info!(signal, "shutting down");
    shutdown.store(true, Ordering::Relaxed);
    // Wake every accept loop so it sees the flag.
    for _ in 0..shards {
        let _ = std::net::TcpStream::connect(connectable(bound));
    }
    for handle in handles {
        let _ = handle.join();
    }
    tracing::info!(stats = %stats.summary(), "broker stopped");
    Ok(())
}

/// Dropped with its shard's future. If that happens while the thread panics, the shard is
/// gone and the broker cannot go on without it (its partitions, and every other shard waiting
/// on it, would hang): during start-up the ready channel gets the error and `run` returns it,
/// later the process aborts (a crash; recovery is built for that) rather than serve half.
struct ShardPanicGuard {
    id: usize,
    started: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<usize, String>>,
}

impl Drop for ShardPanicGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if self.started.load(Ordering::SeqCst) {
            tracing::error!(shard = self.id, "shard panicked; aborting the broker");
            crate::logging::flush();
            std::process::abort();
        }
        let _ = self
            .ready
            .send(Err(format!("shard {} panicked during start-up", self.id)));
    }
}

/// Fault injection for tests (debug builds only): `BROKER_FAULT_PANIC_SHARD=<id>` makes that
/// shard panic during start-up.
fn inject_start_up_panic(id: usize) {
    if cfg!(debug_assertions)
        && std::env::var("BROKER_FAULT_PANIC_SHARD").is_ok_and(|v| v == id.to_string())
    {
        panic!("injected start-up panic (BROKER_FAULT_PANIC_SHARD={id})");
    }
}

/// Fault injection for tests (debug builds only): `BROKER_FAULT_HOLD_SEGMENT_WRITES=1` makes
/// every partition's writer wait forever before its first segment write, as a device that
/// never completes one: what an acks=1 produce is answered from, and what survives a
/// `kill -9`, is then the journal's alone.
fn inject_held_segment_writes() {
    if cfg!(debug_assertions)
        && std::env::var("BROKER_FAULT_HOLD_SEGMENT_WRITES").is_ok_and(|v| v == "1")
    {
        tracing::warn!("BROKER_FAULT_HOLD_SEGMENT_WRITES=1: no segment write will complete");
        crate::storage::writer::HOLD_WRITES.store(true, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    shards: usize,
    config: Arc<BrokerConfig>,
    journal: &crate::startup::JournalSetup,
    broker: BrokerInfo,
    stats: Arc<BrokerStats>,
    mesh: MeshBuilder<Job, glommio::channels::channel_mesh::Full>,
    listen_fd: RawFd,
    balance: Arc<crate::net::balance::ConnectionBalance>,
    shutdown: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<usize, String>>,
    admin_endpoint: Option<admin::ShardEndpoint>,
) {
    // Before anything this shard waits on another thread for (the mesh join first).
    crate::shard::wake_floor::start();
    let _cpu_time_registration = crate::shard::cpu_time::register(id);
    let _stall_registration = crate::shard::stall::enter_shard(
        id,
        Duration::from_millis(config.stall_threshold_ms),
        Duration::from_millis(config.stall_stack_interval_ms),
    );
    // All this shard's tail caches together stay under log.tail.cache.bytes.
    crate::storage::tail_cache::set_shard_budget(
        usize::try_from(config.tail_cache_bytes_per_shard).unwrap_or(usize::MAX),
    );
    // Before any log opens here: logs use the journal if the shard has one when they open.
    if let Some(dir) = &journal.dir {
        if let Err(e) = crate::storage::journal::open_on_this_shard(dir, id, journal.ring_bytes) {
            if journal.required {
                let _ = ready.send(Err(format!(
                    "cannot create shard {id}'s journal in {}: {e}",
                    dir.display()
                )));
                return;
            }
            tracing::warn!(shard = id, dir = %dir.display(), error = %e, "no journal on this shard: acks=1 waits for segment writes (log.journal.bytes, log.journal.dir)");
        }
    }
    let (senders, receivers) = if shards > 1 {
        let (s, r) = mesh.join().await.expect("joining the shard mesh");
        (Some(s), Some(r))
    } else {
        (None, None)
    };
    inject_start_up_panic(id);
    let coordinator = if id == 0 {
        let coordinator_config = CoordinatorConfig {
            node_id: config.node_id,
            voters: config.quorum_voters.clone(),
            controller_listen: config.controller_listen,
            heartbeat_interval_ms: config.broker_heartbeat_interval_ms,
            session_timeout_ms: config.broker_session_timeout_ms,
            data_dir: config.data_dir.clone(),
        };
        match Coordinator::open(coordinator_config, broker.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot open the coordination log: {e}")));
                return;
            }
        }
    } else {
        None
    };
    let shard = Shard::new(
        id,
        shards,
        config,
        broker,
        stats.clone(),
        senders,
        coordinator.clone(),
        shutdown,
    );
    if let Some(receivers) = receivers {
        shard.serve_mesh(receivers);
    }
    if let Some(coordinator) = &coordinator {
        let quorum = crate::admin::providers::CoordinatorQuorum(coordinator.clone());
        crate::admin::providers::register(|p| {
            p.quorum = Some(Rc::new(quorum));
            p.groups = Some(Rc::new(crate::admin::providers::ShardGroups));
        });
        let mut changed = match coordinator.start() {
            Ok(changed) => changed,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot start coordination: {e}")));
                return;
            }
        };
        if shard.config.leader_rebalance.enable {
            let rebalance = crate::coordination::rebalance::rebalance_loop(
                Rc::downgrade(coordinator),
                shard.config.leader_rebalance.clone(),
            );
            glommio::spawn_local(rebalance).detach();
        }
        // Every shard waits for a first snapshot; then this one republishes on every change.
        shard.publish_metadata().await;
        let publisher = shard.clone();
        let publisher_coordinator = coordinator.clone();
        glommio::spawn_local(async move {
            use futures::StreamExt;
            while changed.next().await.is_some() {
                if publisher_coordinator.is_stopping() {
                    // Shutdown closes the partitions itself; leadership moves with the fence.
                    return;
                }
                // Coalesce a burst of changes into one publication.
                while changed.try_recv().is_ok() {}
                publisher.publish_metadata().await;
            }
        })
        .detach();
        // Serve only once registered with the quorum (like a Kafka broker waiting to be
        // unfenced). Without a quorum this waits, and the coordination log says why.
        while !coordinator.is_registered() {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        shard.publish_metadata().await;
    } else {
        // Wait for shard 0's first publication.
        while shard.metadata().version == 0 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    // Committed offsets are replayed before anyone can ask for them.
    if let Err(e) = shard.groups.load().await {
        let _ = ready.send(Err(format!("cannot load the offsets log: {e}")));
        return;
    }
    // Transactions the coordinator prepared or left open are finished from its state log.
    if id == 0 {
        if let Err(e) = crate::transactions::coordinator::load(&shard).await {
            let _ = ready.send(Err(format!("cannot load the transaction state log: {e}")));
            return;
        }
    }
    let timers_shard = shard.clone();
    glommio::spawn_local(
        shard
            .groups
            .clone()
            .run_timers(move || timers_shard.is_shutting_down()),
    )
    .detach();
    glommio::spawn_local(listener::accept_loop(shard.clone(), listen_fd, balance)).detach();
    glommio::spawn_local(crate::replication::isr::maintain(shard.clone())).detach();
    if let Some(endpoint) = admin_endpoint {
        admin::serve_on_shard(shard.clone(), endpoint);
    }
    crate::shard::log_cleaner::spawn(shard.clone());
    if id == 0 {
        // Partitions deleted just before the last stop: their renamed directories.
        if let Err(e) = crate::storage::reaper::remove_deleted_dirs_later(&shard.config.data_dir) {
            tracing::warn!(error = %e, "cannot look for deleted partitions' directories");
        }
    }
    let _ = ready.send(Ok(id));
    shard.clone().housekeeping().await;
    if let Some(coordinator) = &coordinator {
        // Hand leadership over now rather than after the session timeout.
        coordinator.unregister().await;
    }
    shard.close_partitions().await;
    crate::storage::journal::close_on_this_shard().await;
    shard.groups.close().await;
    if id == 0 {
        crate::transactions::coordinator::close().await;
    }
    if id == 0 {
        tracing::debug!(stats = %stats.summary(), "shard 0 stopped");
    }
}

fn connectable(bound: SocketAddr) -> SocketAddr {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Blocks SIGINT and SIGTERM on the calling thread, so every thread it spawns afterwards
/// inherits the mask; returns the set, which [`run`] waits for with `sigwait` on the main
/// thread. A thread that left them unblocked would be the kernel's pick for a SIGTERM arriving
/// before the main thread waits, and the default action would end the process without its
/// clean shutdown. `main` calls this first, before any thread exists (the log writer is one);
/// [`run`] calls it again (idempotent) for the set.
pub fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask on this thread (inherited
    // by threads spawned afterwards).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` holds the signals blocked above.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A job on a shard's blocking pool that waits (a closing segment's fsync on a busy journal)
    /// does not hold the next one (another partition's roll renaming its segment file): the
    /// second job is what releases the first, so with glommio's default of one thread the
    /// first times out.
    #[test]
    fn blocking_jobs_of_a_shard_do_not_queue_behind_each_other() {
        for pinned_cpu in [None, Some(crate::config::allowed_cpus()[0])] {
            let placement = match pinned_cpu {
                Some(cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            LocalExecutorBuilder::new(placement)
                .blocking_thread_pool_placement(blocking_pool(pinned_cpu))
                .spawn(|| async {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let waiting = glommio::executor()
                        .spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)).is_ok());
                    let releasing = glommio::executor().spawn_blocking(move || tx.send(()).is_ok());
                    let (released, sent) = futures::join!(waiting, releasing);
                    assert!(sent);
                    assert!(released, "the second job ran while the first waited");
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }
}
