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

#[test]
fn kcat_produces_lists_and_consumes() {
    let broker = Broker::start(2);
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

    let consumed = run(Command::new("kcat").args([
        "-b",
        &broker.addr,
        "-C",
        "-t",
        "kcat",
        "-o",
        "beginning",
        "-e",
        "-f",
        "%k:%s\n",
    ]));
    let mut got: Vec<&str> = consumed.lines().collect();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);

    // The fetched records went from the segment files to the socket by sendfile.
    let mut broker = broker;
    broker.stop();
    let log = broker.log();
    let zero_copy: u64 = log
        .split("fetch_zero_copy_bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| {
            n.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no zero-copy counter in the shutdown stats:\n{log}"));
    assert!(zero_copy > 0, "{log}");
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
