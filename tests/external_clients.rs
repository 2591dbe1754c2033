//! Third-party tools against the real broker: kcat and the Python clients.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::raw::RawClient;
use common::Broker;

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (run the README's test command, which installs it)")
    });
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The last value of a counter in the broker's shutdown stats line.
fn last_counter(log: &str, name: &str) -> u64 {
    log.rsplit(&format!("{name}="))
        .next()
        .filter(|_| log.contains(&format!("{name}=")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| {
            n.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} counter in the shutdown stats:\n{log}"))
}

#[test]
fn kcat_produces_lists_and_consumes() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(tmp.path(), 2, &[]);
    assert_eq!(RawClient::connect(&broker.addr).create_topic("kcat", 3), 0);
    let mut producer = Command::new("kcat")
        .args([
            "-b",
            &broker.addr,
            "-P",
            "-t",
            "kcat",
            "-K",
            ":",
            "-z",
            "lz4",
            "-X",
            "acks=all",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat (apt-get install kcat)");
    let lines: Vec<String> = (0..300)
        .map(|i| format!("key{}:value-{i}", i % 10))
        .collect();
    producer
        .stdin
        .take()
        .unwrap()
        .write_all((lines.join("\n") + "\n").as_bytes())
        .unwrap();
    assert!(producer.wait().unwrap().success());

    let listing = run(Command::new("kcat").args(["-b", &broker.addr, "-L", "-t", "kcat"]));
    assert!(
        listing.contains("topic \"kcat\" with 3 partitions"),
        "{listing}"
    );
    assert!(listing.contains("leader 0"), "{listing}");

    let consume = |addr: &str| {
        let consumed = run(Command::new("kcat").args([
            "-b",
            addr,
            "-C",
            "-t",
            "kcat",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k:%s\n",
        ]));
        let mut got: Vec<String> = consumed.lines().map(str::to_owned).collect();
        let mut want = lines.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    };
    consume(&broker.addr);

    // Just written: the records came from the partitions' tail caches (memory).
    let mut broker = broker;
    broker.stop();
    let log = broker.log();
    assert!(last_counter(&log, "fetch_memory_bytes") > 0, "{log}");
    assert_eq!(last_counter(&log, "fetch_zero_copy_bytes"), 0, "{log}");

    // After a restart the caches are empty: the same records go from the segment files to
    // the socket by sendfile.
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    consume(&broker.addr);
    broker.stop();
    let log = broker.log();
    assert!(last_counter(&log, "fetch_zero_copy_bytes") > 0, "{log}");
    assert_eq!(last_counter(&log, "fetch_memory_bytes"), 0, "{log}");
}

#[test]
fn python_clients_round_trip() {
    let broker = Broker::start(2);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/client_roundtrip.py"
    );
    let out = run(Command::new("python3").args([script, &broker.addr]));
    assert!(out.contains("round-tripped"), "{out}");
}

#[test]
fn kafka_python_group_consumers_read_100k_exactly_once_across_a_rebalance() {
    let broker = Broker::start(2);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/group_exactly_once.py"
    );
    let out = run(Command::new("python3").args([script, &broker.addr]));
    assert!(out.contains("exactly once: 100000 records"), "{out}");
}
