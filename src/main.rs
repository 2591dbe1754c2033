//! `broker`: a Kafka-compatible streaming broker. See the README for how to run it.

use std::path::PathBuf;
use std::process::ExitCode;

use broker::config::{resolve, BrokerConfig};
use clap::Parser;

#[global_allocator]
static ALLOCATOR: broker::alloc::GuardedAllocator = broker::alloc::GuardedAllocator;

/// A Kafka-compatible broker: thread-per-core on io_uring, one binary, no ZooKeeper.
#[derive(Parser, Debug)]
#[command(name = "broker", version)]
struct Args {
    /// Kafka-style properties file (broker.id, listeners, log.dirs, ...). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Shards (glommio executors). Default: one per CPU this process may run on (its affinity
    /// mask). Pinned to CPUs when not more than those CPUs.
    #[arg(long)]
    cores: Option<usize>,
    /// The CPUs are shared with other busy processes (clients, other services): run shards
    /// unpinned (`overprovisioned=true`).
    #[arg(long)]
    overprovisioned: bool,
    /// broker.id
    #[arg(long)]
    node_id: Option<i32>,
    /// Where clients connect, HOST:PORT (port 0 picks a free one). Default 0.0.0.0:9092.
    #[arg(long)]
    listen: Option<String>,
    /// HOST:PORT told to clients in Metadata. Default: the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (log.dirs). Default ./data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Voters of the coordination quorum, Kafka's `controller.quorum.voters` form:
    /// `0@host:9190,1@host:9191,2@host:9192`. Omitted: a single node, its own quorum of one.
    #[arg(long)]
    controller_quorum_voters: Option<String>,
    /// Where this node accepts the other voters, HOST:PORT. Default: its own voters entry.
    #[arg(long)]
    controller_listen: Option<String>,
    /// Web console, JSON API and /metrics: HOST:PORT, or `off`. Default 127.0.0.1:8080 when
    /// --listen has a fixed port (skipped if taken).
    #[arg(long)]
    http: Option<String>,
    /// Sets one property as the --config file would (`--override min.insync.replicas=2`);
    /// repeatable, applied after the file and before the other flags.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn build_config(args: Args) -> Result<BrokerConfig, Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_properties_file(path)?,
        None => BrokerConfig::default(),
    };
    for assignment in &args.overrides {
        config.apply_override(assignment)?;
    }
    if let Some(cores) = args.cores {
        config.cores = Some(cores);
    }
    if args.overprovisioned {
        config.overprovisioned = true;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(listen) = &args.listen {
        config.listen = resolve(listen)?;
    }
    if let Some(advertise) = &args.advertise {
        let (host, port) = advertise
            .rsplit_once(':')
            .ok_or("--advertise expects HOST:PORT")?;
        config.advertise = Some((host.to_string(), port.parse()?));
    }
    if let Some(voters) = &args.controller_quorum_voters {
        config.quorum_voters = broker::config::parse_voters(voters)?;
    }
    if let Some(listen) = &args.controller_listen {
        config.controller_listen = Some(resolve(listen)?);
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(http) = &args.http {
        config.set_http(http)?;
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    // Before any thread exists: every thread inherits the mask, and only the main thread
    // (in `server::run`'s sigwait) takes a shutdown signal.
    broker::server::block_shutdown_signals();
    // Lines are written by a thread of their own: a shard never waits on the log's output.
    broker::logging::init();
    // `log` records (glommio's) go to tracing, and glommio's stall reports to the detector.
    broker::shard::stall::install_log_bridge();
    // Before any shard allocates: large buffers recycled, not mapped and faulted in again.
    if !broker::alloc::tune_system_allocator() {
        tracing::info!("malloc parameters left at their defaults (not glibc)");
    }
    let config = match build_config(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            broker::logging::flush();
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };
    let result = broker::server::run(config);
    broker::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broker: {e}");
            ExitCode::FAILURE
        }
    }
}
