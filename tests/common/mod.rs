//! Test support: the real `broker` binary on a free port, and a minimal raw protocol client.
#![allow(dead_code)]

pub mod cluster;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker process. Killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    /// The web console's `HOST:PORT`, when the ready line names one (`, console http://...`).
    pub console: Option<String>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The line the broker printed when ready.
    pub ready_line: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker with `cores` shards on a fresh data directory. `cores == 0` passes no
    /// `--cores` (the default: one shard per CPU), everywhere below too.
    pub fn start(cores: usize) -> Broker {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut broker = Broker::start_in(tmp.path(), cores, &[]);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker on `data_dir` (kept when the broker stops) with extra flags.
    pub fn start_in(data_dir: &Path, cores: usize, extra: &[&str]) -> Broker {
        Broker::spawn(data_dir, &data_dir.join("data"), cores, extra)
    }

    /// Starts a broker whose working directory is `dir`, with the relative `--data-dir data`
    /// (what the README's default `./data` amounts to).
    pub fn start_relative(dir: &Path, cores: usize) -> Broker {
        Broker::spawn(dir, Path::new("data"), cores, &[])
    }

    fn spawn(cwd: &Path, data_arg: &Path, cores: usize, extra: &[&str]) -> Broker {
        Broker::launch(cwd, data_arg, cores, extra).wait_ready()
    }

    /// Starts a broker process without waiting for its ready line: brokers of a cluster only
    /// become ready once a quorum of them runs, so a cluster launches all, then waits.
    pub fn launch(cwd: &Path, data_arg: &Path, cores: usize, extra: &[&str]) -> Launched {
        Broker::launch_to(cwd, data_arg, cores, extra, None, &[])
    }

    /// [`Broker::start_in`] with environment variables set for the broker (fault injection).
    pub fn start_in_with_env(
        data_dir: &Path,
        cores: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Broker {
        Broker::launch_to(data_dir, &data_dir.join("data"), cores, extra, None, env).wait_ready()
    }

    /// Starts a broker whose stderr (its log) goes to a pipe this test holds and never reads,
    /// as a log reader that stopped (a stuck journald) would leave it. `broker.log()` is empty.
    pub fn start_with_unread_log(data_dir: &Path, cores: usize, extra: &[&str]) -> Broker {
        Broker::launch_to(
            data_dir,
            &data_dir.join("data"),
            cores,
            extra,
            Some(Stdio::piped()),
            &[],
        )
        .wait_ready()
    }

    /// [`Broker::launch`], with stderr to `stderr` instead of the log file.
    fn launch_to(
        cwd: &Path,
        data_arg: &Path,
        cores: usize,
        extra: &[&str],
        stderr: Option<Stdio>,
        env: &[(&str, &str)],
    ) -> Launched {
        let log_path = cwd.join(format!(
            "broker-{}-{}.log",
            std::process::id(),
            data_arg.display().to_string().replace('/', "_")
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        // A free port unless the caller names one.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let cores_flag = cores.to_string();
        let cores_args: &[&str] = if cores == 0 {
            &[]
        } else {
            &["--cores", &cores_flag]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_broker"))
            .current_dir(cwd)
            .args(listen)
            .args(cores_args)
            .arg("--data-dir")
            .arg(data_arg)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr.unwrap_or_else(|| log.into()))
            .spawn()
            .expect("spawn broker");
        Launched {
            child,
            data_dir: cwd.join(data_arg),
            log_path,
        }
    }

    pub fn log(&self) -> String {
        read(&self.log_path)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "broker exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// The process id while the broker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the running broker.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("broker is running");
        assert_eq!(
            unsafe { libc::kill(pid as i32, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// A broker process started but not yet ready.
pub struct Launched {
    child: Child,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Launched {
    /// Waits for the ready line (the broker is registered and serves clients).
    pub fn wait_ready(mut self) -> Broker {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("broker exited before ready; log:\n{}", read(&self.log_path)))
            .expect("read stdout");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_string();
        let console = line
            .split("console http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker {
            child: Some(self.child),
            addr,
            console,
            data_dir: self.data_dir,
            log_path: self.log_path,
            ready_line: line,
            _tmp: None,
        }
    }
}

/// A free loopback port (bound, then released: good enough for tests on one host), never one
/// this test process was given before: the kernel may hand a just-released port out again, and
/// two voters of one cluster on the same port never form a quorum.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// GET `path` from the broker's HTTP listener (`HOST:PORT`); the whole response, which must be
/// a 200.
pub fn http_get(console: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(console).expect("connect to console");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The sum of a metric's samples in the Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}
