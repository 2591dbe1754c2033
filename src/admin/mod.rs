//! The built-in web console, its JSON API and Prometheus `/metrics` (kafka-manager's role).
//!
//! HTTP is served off the data shards: [`http`] runs axum on a one-thread tokio runtime in a
//! thread of its own. Whatever it needs from the shards (metadata, offsets, sizes, records,
//! topic changes) it sends as an [`AdminJob`] over a channel to shard 0, where one task in a
//! low-share glommio task queue runs it; per-partition facts fan out from there to the owner
//! shards with `Shard::invoke_on`. Produce and fetch never wait for any of it, and the hot path
//! only bumps the relaxed counters in `crate::metrics`.
//!
//! # Layout
//! - [`http`]: the thread, the router, CSRF and origin checks, body limits, embedded assets.
//! - [`api`]: the `/api/v1` JSON handlers (documented in docs/http-api.md).
//! - [`providers`]: what the console shows, gathered on the shards; the plug-in points for
//!   data that other modules will own (coordination quorum, consumer groups).
//! - [`records`]: the newest records of a partition, decoded, truncated for display.
//! - [`metrics`]: the Prometheus text exposition of `crate::metrics`.

pub mod api;
pub mod http;
pub mod metrics;
pub mod providers;
pub mod records;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use glommio::{Latency, Shares};
// tokio's channel works from any executor (it needs no tokio runtime on the receiving glommio
// thread), and its `send(&self)` keeps the bound exact; a futures-mpsc sender adds a slot per
// clone.
use tokio::sync::mpsc;

use crate::shard::Shard;

/// Work for the admin task on shard 0. Boxed closures keep the channel one type while each
/// request carries its own reply channel.
pub type AdminJob = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Jobs waiting for shard 0. Bounded so a flood of HTTP requests waits in the HTTP thread,
/// not in the shard's memory.
const ADMIN_QUEUE_JOBS: usize = 64;

/// Shares of the admin task queue; glommio's default queue has 1000, so under load the
/// console gets about 1% of shard 0's CPU and the data path the rest.
const ADMIN_SHARES: usize = 10;

/// The HTTP side's end of the channel to shard 0.
#[derive(Clone)]
pub struct ShardLink {
    jobs: mpsc::Sender<AdminJob>,
}

/// Shard 0's end; handed to [`serve_on_shard`].
pub struct ShardEndpoint {
    jobs: mpsc::Receiver<AdminJob>,
}

pub fn link() -> (ShardLink, ShardEndpoint) {
    let (tx, rx) = mpsc::channel(ADMIN_QUEUE_JOBS);
    (ShardLink { jobs: tx }, ShardEndpoint { jobs: rx })
}

/// The shard went away (shutdown) before answering.
#[derive(Debug)]
pub struct ShardGone;

impl ShardLink {
    /// Runs `f` on shard 0 in the admin task queue and returns its result.
    pub async fn run<R, F, Fut>(&self, f: F) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: AdminJob = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(f(shard).await);
            })
        });
        self.jobs.send(job).await.map_err(|_| ShardGone)?;
        rx.await.map_err(|_| ShardGone)
    }
}

/// Serves admin jobs on this shard (shard 0) until the HTTP side drops its link.
pub fn serve_on_shard(shard: Rc<Shard>, endpoint: ShardEndpoint) {
    let queue = glommio::executor().create_task_queue(
        Shares::Static(ADMIN_SHARES),
        Latency::NotImportant,
        "admin",
    );
    crate::shard::stall::name_queue(queue, "admin");
    let mut jobs = endpoint.jobs;
    let spawned = glommio::spawn_local_into(
        async move {
            while let Some(job) = jobs.recv().await {
                // Each job in its own task, so one slow fan-out does not hold up the rest.
                // Detached: the job answers through its own channel.
                match glommio::spawn_local_into(job(shard.clone()), queue) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot spawn an admin job"),
                }
            }
        },
        queue,
    );
    match spawned {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot start the admin task"),
    }
}
