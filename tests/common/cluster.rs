//! Several real `broker` processes forming one cluster on loopback.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

use super::raw::RawClient;
use super::{free_port, Broker};

pub struct Cluster {
    brokers: Vec<Option<Broker>>,
    voters: String,
    extra: Vec<String>,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` brokers, all voters of the coordination quorum, and waits until every one is
    /// registered and serving.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::configure(n, extra).launch_all()
    }

    /// Like `start`, with every broker also reading `properties` from a Kafka-style properties
    /// file (`--config`), for keys that have no flag (`min.insync.replicas`, ...). Flags still
    /// win over the file.
    pub fn start_with_properties(n: usize, properties: &[(&str, &str)], extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::configure(n, extra);
        let path = cluster.root.join("cluster.properties");
        let text: String = properties
            .iter()
            .map(|(key, value)| format!("{key}={value}\n"))
            .collect();
        std::fs::write(&path, text).expect("write properties file");
        cluster
            .extra
            .extend(["--config".to_string(), path.display().to_string()]);
        cluster.launch_all()
    }

    /// Launches every node, then waits until each serves.
    fn launch_all(mut self) -> Cluster {
        let n = self.brokers.len();
        let launched: Vec<_> = (0..n).map(|i| self.launch(i)).collect();
        for (i, l) in launched.into_iter().enumerate() {
            self.brokers[i] = Some(l.wait_ready());
        }
        self
    }

    /// A cluster of `n` voters with nothing started yet.
    pub fn configure(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let voters: Vec<String> = (0..n)
            .map(|i| format!("{i}@127.0.0.1:{}", free_port()))
            .collect();
        Cluster {
            brokers: (0..n).map(|_| None).collect(),
            voters: voters.join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    /// Starts node `i` without waiting for it to serve.
    pub fn launch(&self, i: usize) -> super::Launched {
        let node_id = i.to_string();
        let mut args = vec![
            "--node-id",
            &node_id,
            "--controller-quorum-voters",
            &self.voters,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        Broker::launch(&self.root, &PathBuf::from(format!("data-{i}")), 1, &args)
    }

    /// Starts node `i` again on its data directory and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        assert!(self.brokers[i].is_none(), "node {i} is running");
        let launched = self.launch(i);
        self.brokers[i] = Some(launched.wait_ready());
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut b) = self.brokers[i].take() {
            b.kill9();
        }
    }

    /// Sends `signal` to node `i` (SIGSTOP pauses it without closing a socket; SIGCONT resumes).
    pub fn signal(&self, i: usize, signal: i32) {
        self.broker(i).signal(signal);
    }

    pub fn broker(&self, i: usize) -> &Broker {
        self.brokers[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.brokers.len())
            .filter(|&i| self.brokers[i].is_some())
            .collect()
    }

    /// Every running broker's client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.running()
            .iter()
            .map(|&i| self.broker(i).addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Records node `i` as running (after `launch` + `wait_ready`).
    pub fn adopt(&mut self, i: usize, broker: Broker) {
        self.brokers[i] = Some(broker);
    }

    /// What node `i` has logged so far (across restarts).
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.root
                .join(format!("broker-{}-data-{i}.log", std::process::id())),
        )
        .unwrap_or_default()
    }

    /// The registration sequence node `i` last logged.
    pub fn registration_sequence(&self, i: usize) -> u64 {
        self.log_of(i)
            .lines()
            .rev()
            .filter(|l| l.contains("broker registered with the coordination quorum"))
            .filter_map(|l| l.split("sequence=").nth(1))
            .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("a registration line")
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in self.running() {
            out.push_str(&format!("---- node {i}\n{}\n", self.broker(i).log()));
        }
        out
    }
}

/// Metadata for all topics, straight from `addr`.
pub fn metadata(addr: &str) -> MetadataResponse {
    let mut client = RawClient::connect(addr);
    let mut request = MetadataRequest::default();
    request.topics = None; // all topics (an empty list means none)
    client.call(12, &request)
}

/// Polls until `condition` holds for the metadata of `addr`, returning that metadata and the
/// time it took; panics after `timeout`.
pub fn await_metadata(
    addr: &str,
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut(&MetadataResponse) -> bool,
) -> (MetadataResponse, Duration) {
    let started = Instant::now();
    loop {
        let m = metadata(addr);
        if condition(&m) {
            return (m, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {what}; last metadata: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One partition as Metadata describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionView {
    pub leader: i32,
    pub epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// The partitions of `topic` in index order, if Metadata lists it without an error.
pub fn partitions_of(m: &MetadataResponse, topic: &str) -> Option<Vec<PartitionView>> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic) && t.error_code == 0)?;
    let mut ps: Vec<_> = t.partitions.iter().collect();
    ps.sort_by_key(|p| p.partition_index);
    Some(
        ps.iter()
            .map(|p| PartitionView {
                leader: p.leader_id.0,
                epoch: p.leader_epoch,
                replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                isr: p.isr_nodes.iter().map(|r| r.0).collect(),
            })
            .collect(),
    )
}
