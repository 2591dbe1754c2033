//! Runs the built `bench-harness` binary: a null broker on a free port, and workloads against
//! it with their JSON results.
//!
//! `BENCH_HARNESS_UNDER_TEST=/path/to/bench-harness` runs the workloads with another build (the
//! null broker stays this one): how to show that a test fails without the change it covers.

#![allow(dead_code)] // each test file uses its own part of this

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bench-harness");

/// A `bench-harness null-broker` process, killed when dropped.
pub struct NullBroker {
    child: Child,
    pub addr: String,
}

impl NullBroker {
    /// Starts a null broker on a free port with `args`; returns once it accepts connections.
    pub fn start(args: &[&str]) -> NullBroker {
        let mut child = Command::new(BIN)
            .args(["null-broker", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the null broker");
        // Its first line names the bound address: "null broker on 127.0.0.1:PORT (...".
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let first = lines
            .next()
            .expect("a line from the null broker")
            .expect("readable");
        let addr = first
            .strip_prefix("null broker on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "null broker never accepted on {addr}"
            );
            std::thread::yield_now();
        }
        NullBroker { child, addr }
    }
}

impl Drop for NullBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished harness run: its exit, printed summary and (if it wrote one) JSON result.
pub struct Run {
    pub output: Output,
    pub json: Option<serde_json::Value>,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The JSON result; panics with the run's output if it failed.
    pub fn ok(&self) -> &serde_json::Value {
        assert!(
            self.output.status.success(),
            "run failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self.json.as_ref().expect("a JSON result")
    }
}

fn json_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "bench-harness-test-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `bench-harness WORKLOAD --bootstrap ADDR ARGS... --json FILE`.
pub fn run(workload: &str, addr: &str, args: &[&str]) -> Run {
    let path = json_path();
    let bin = std::env::var("BENCH_HARNESS_UNDER_TEST").unwrap_or_else(|_| BIN.to_string());
    let output = Command::new(bin)
        .arg(workload)
        .args(["--bootstrap", addr, "--progress-secs", "0"])
        .args(args)
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run bench-harness");
    let json = std::fs::read(&path)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("valid JSON result"));
    let _ = std::fs::remove_file(&path);
    Run { output, json }
}

/// A number in a JSON result, by path (`["produce", "msgs"]`); 0 when absent.
pub fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut at = v;
    for k in path {
        match at.get(k) {
            Some(x) => at = x,
            None => return 0,
        }
    }
    at.as_u64().unwrap_or(0)
}
