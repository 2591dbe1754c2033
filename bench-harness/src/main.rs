//! # bench-harness
//!
//! A Kafka-protocol load generator. It speaks only the Kafka wire protocol, so one command line
//! measures this project's broker, Apache Kafka, or any Kafka-compatible broker alike.
//!
//! ## Layout
//!
//! - `cli`: the command line (clap).
//! - `client`: connections, framing (a consumer's large frames wake it per 256 KiB, not per
//!   segment: `SO_RCVLOWAT`), ApiVersions negotiation, Metadata, CreateTopics, ListOffsets,
//!   DescribeConfigs; the `Router` that refreshes a topic's leaders when a request says they moved.
//! - `retry`: which errors are retried, backoff, and the per-error retry counts a run reports.
//! - `wire`: hand-written RecordBatch v2 and Produce request encoders for the hot path; batch
//!   header parsing for the fetch path.
//! - `producer`: per-partition batching, pipelined Produce requests, response readers.
//! - `consumer`: pipelined Fetch for disjoint partition groups, incremental fetch sessions,
//!   header-only record counting; partitions follow their leader when it moves.
//! - `schedule`, `timer`: the open-loop send schedule and the sub-millisecond timer behind it.
//! - `payload`: precomputed payloads and keys, the send-time stamp, Kafka's murmur2 partitioner.
//! - `stats`, `usage`: counters, HdrHistogram latency, CPU and memory from /proc.
//! - `lateness`: how late the harness's own event loop and open-loop schedule run, and where a
//!   Produce request's cycle goes (round trip, write into the socket, the producer's turnaround).
//! - `run`: produce / consume / e2e runs and their reports; `compare`: interleaved A/B runs.
//! - `null_broker`: a broker that stores nothing, for the harness's own ceiling; it can also play
//!   a cluster in trouble (leader elections, dropped connections, a batch size limit, lost fetch
//!   sessions) for the integration tests in `tests/`.

mod cli;
mod client;
mod clock;
mod compare;
mod consumer;
mod lateness;
mod null_broker;
mod payload;
mod producer;
mod retry;
mod run;
mod schedule;
mod stats;
mod timer;
mod usage;
mod wire;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Cmd, Workload};

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

fn run_workload(w: Workload) -> Result<()> {
    let rt = runtime(w.common().threads)?;
    let report = rt.block_on(run::run(&w))?;
    report.print();
    if let Some(path) = &w.common().json {
        report.write_json(path)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Produce(c) => run_workload(Workload::Produce(c)),
        Cmd::Consume(c) => run_workload(Workload::Consume(c)),
        Cmd::E2e(c) => run_workload(Workload::E2e(c)),
        Cmd::Compare(c) => {
            let rt = runtime(c.workload.common().threads)?;
            rt.block_on(compare::run(&c))
        }
        Cmd::NullBroker(a) => {
            let rt = runtime(a.threads)?;
            rt.block_on(null_broker::serve(a))
        }
    }
}
