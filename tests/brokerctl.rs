//! Every `brokerctl` subcommand against the real broker, with its output checked.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Broker;

fn brokerctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokerctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn brokerctl");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs brokerctl, asserts success, returns stdout.
fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = brokerctl(args, stdin);
    assert!(
        out.status.success(),
        "brokerctl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs brokerctl, asserts a non-zero exit with one line on stderr, returns it.
fn fails(args: &[&str]) -> String {
    let out = brokerctl(args, None);
    assert!(!out.status.success(), "brokerctl {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Sum of one column of a consumer-groups table.
fn column_sum(table: &str, column: &str) -> i64 {
    let mut lines = table.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let index = header.iter().position(|h| *h == column).unwrap();
    lines
        .map(|l| {
            l.split_whitespace()
                .nth(index)
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum()
}

#[test]
fn brokerctl_walkthrough() {
    let broker = Broker::start(2);
    let b = broker.addr.as_str();
    let topics = |extra: &[&str]| {
        let mut args = vec!["topics", "--bootstrap-server", b];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);

    assert_eq!(
        run(topics(&[
            "--create",
            "--topic",
            "walk",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=86400000"
        ])),
        "Created topic walk.\n"
    );
    let error = fails(&[
        "topics",
        "--bootstrap-server",
        b,
        "--create",
        "--topic",
        "rf3",
        "--replication-factor",
        "3",
    ]);
    assert!(error.contains("INVALID_REPLICATION_FACTOR"), "{error}");
    assert!(
        error.contains("larger than available brokers"),
        "the broker's text: {error}"
    );
    assert_eq!(run(topics(&["--list"])), "walk\n");
    let described = run(topics(&["--describe", "--topic", "walk"]));
    let mut lines = described.lines();
    let head = lines.next().unwrap();
    assert!(head.starts_with("Topic: walk\tTopicId: "), "{head}");
    assert!(
        head.contains("\tPartitionCount: 3\tReplicationFactor: 1\tConfigs: retention.ms=86400000"),
        "{head}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "\tTopic: walk\tPartition: 0\tLeader: 0\tReplicas: 0\tIsr: 0"
    );
    assert_eq!(lines.count(), 2);
    assert_eq!(
        run(topics(&["--alter", "--topic", "walk", "--partitions", "4"])),
        "Topic walk now has 4 partitions.\n"
    );

    // console-producer -> console-consumer --from-beginning.
    let input: String = (0..20).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(
        &[
            "console-producer",
            "--bootstrap-server",
            b,
            "--topic",
            "walk",
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=:",
            "--producer-property",
            "acks=all",
            "--compression-codec",
            "lz4",
        ],
        Some(&input),
    );
    let consumed = ok(
        &[
            "console-consumer",
            "--bootstrap-server",
            b,
            "--topic",
            "walk",
            "--from-beginning",
            "--group",
            "walkers",
            "--max-messages",
            "20",
            "--property",
            "print.key=true",
            "--property",
            "key.separator=:",
        ],
        None,
    );
    let mut got: Vec<&str> = consumed.lines().collect();
    let mut want: Vec<&str> = input.lines().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let one = ok(
        &[
            "console-consumer",
            "--bootstrap-server",
            b,
            "--topic",
            "walk",
            "--partition",
            "0",
            "--offset",
            "earliest",
            "--max-messages",
            "1",
            "--property",
            "print.timestamp=true",
        ],
        None,
    );
    assert!(one.starts_with("CreateTime:"), "{one}");

    // consumer-groups: list, describe with lag, members, reset, delete.
    let groups = |extra: &[&str]| {
        let mut args = vec!["consumer-groups", "--bootstrap-server", b];
        args.extend_from_slice(extra);
        ok(&args, None)
    };
    assert!(groups(&["--list"]).lines().any(|l| l == "walkers"));
    let describe = groups(&["--describe", "--group", "walkers"]);
    assert!(describe.contains("has no active members"), "{describe}");
    let table: String = describe
        .lines()
        .skip_while(|l| !l.starts_with("GROUP"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(table.starts_with("GROUP"), "{describe}");
    for column in [
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ] {
        assert!(table.lines().next().unwrap().contains(column), "{table}");
    }
    assert_eq!(column_sum(&table, "CURRENT-OFFSET"), 20);
    assert_eq!(column_sum(&table, "LAG"), 0);
    ok(
        &[
            "console-producer",
            "--bootstrap-server",
            b,
            "--topic",
            "walk",
        ],
        Some("more1\nmore2\nmore3\n"),
    );
    let lagging = groups(&["--describe", "--group", "walkers"]);
    let table: String = lagging
        .lines()
        .skip_while(|l| !l.starts_with("GROUP"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(column_sum(&table, "LAG"), 3, "{lagging}");
    let members = groups(&["--describe", "--group", "walkers", "--members"]);
    assert!(members.contains("#PARTITIONS"), "{members}");

    let dry = groups(&[
        "--reset-offsets",
        "--group",
        "walkers",
        "--topic",
        "walk",
        "--to-earliest",
        "--dry-run",
    ]);
    assert!(dry.contains("NEW-OFFSET"), "{dry}");
    assert_eq!(column_sum(&dry, "NEW-OFFSET"), 0);
    let unchanged = groups(&["--describe", "--group", "walkers"]);
    assert!(unchanged.contains("walkers"));
    let table: String = unchanged
        .lines()
        .skip_while(|l| !l.starts_with("GROUP"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        column_sum(&table, "CURRENT-OFFSET"),
        20,
        "dry run changes nothing"
    );
    groups(&[
        "--reset-offsets",
        "--group",
        "walkers",
        "--topic",
        "walk",
        "--to-earliest",
        "--execute",
    ]);
    let reset = groups(&["--describe", "--group", "walkers"]);
    let table: String = reset
        .lines()
        .skip_while(|l| !l.starts_with("GROUP"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(column_sum(&table, "CURRENT-OFFSET"), 0, "{reset}");
    assert_eq!(column_sum(&table, "LAG"), 23, "{reset}");
    let shifted = groups(&[
        "--reset-offsets",
        "--group",
        "walkers",
        "--topic",
        "walk:0",
        "--shift-by",
        "2",
        "--execute",
    ]);
    assert!(
        shifted
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["walkers", "walk", "0", "2"]),
        "{shifted}"
    );
    // The group's offsets are what the next group consumer starts from.
    let rest = ok(
        &[
            "console-consumer",
            "--bootstrap-server",
            b,
            "--topic",
            "walk",
            "--group",
            "walkers",
            "--max-messages",
            "21",
        ],
        None,
    );
    assert_eq!(rest.lines().count(), 21);

    assert_eq!(
        groups(&["--delete", "--group", "walkers"]),
        "Deletion of requested consumer groups ('walkers') was successful.\n"
    );
    let error = fails(&[
        "consumer-groups",
        "--bootstrap-server",
        b,
        "--delete",
        "--group",
        "walkers",
    ]);
    assert!(error.contains("GROUP_ID_NOT_FOUND"), "{error}");

    // configs.
    let configs = ok(
        &[
            "configs",
            "--bootstrap-server",
            b,
            "--describe",
            "--entity-type",
            "topics",
            "--entity-name",
            "walk",
        ],
        None,
    );
    assert!(
        configs.starts_with("Configs for topic walk are:\n"),
        "{configs}"
    );
    assert!(configs.contains("  retention.ms=86400000\n"), "{configs}");
    let all = ok(
        &[
            "configs",
            "--bootstrap-server",
            b,
            "--describe",
            "--entity-type",
            "brokers",
            "--entity-name",
            "0",
            "--all",
        ],
        None,
    );
    assert!(all.lines().count() > 1, "{all}");
    let alter = |change: &[&str]| {
        let mut args = vec![
            "configs",
            "--bootstrap-server",
            b,
            "--alter",
            "--entity-type",
            "topics",
            "--entity-name",
            "walk",
        ];
        args.extend_from_slice(change);
        ok(&args, None)
    };
    let describe = || {
        ok(
            &[
                "configs",
                "--bootstrap-server",
                b,
                "--describe",
                "--entity-type",
                "topics",
                "--entity-name",
                "walk",
            ],
            None,
        )
    };
    assert_eq!(
        alter(&["--add-config", "retention.ms=1000"]),
        "Completed updating config for topic walk.\n"
    );
    assert!(describe().contains("  retention.ms=1000\n"));
    alter(&["--delete-config", "retention.ms"]);
    assert!(!describe().contains("retention.ms"));
    let error = fails(&[
        "configs",
        "--bootstrap-server",
        b,
        "--alter",
        "--entity-type",
        "topics",
        "--entity-name",
        "walk",
        "--add-config",
        "retention.ms=soon",
    ]);
    assert!(error.contains("INVALID_CONFIG"), "{error}");

    assert_eq!(
        run(topics(&["--delete", "--topic", "walk"])),
        "Deleted topic walk.\n"
    );
    assert_eq!(run(topics(&["--list"])), "");
}
