//! The web console, its JSON API and `/metrics`, against the real broker binary: Prometheus
//! text that parses and moves under load, HTTP input that gets 4xx (never a crash), CSRF and
//! cross-site refusals, the default port policy, and the console driven in headless chromium.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

fn start_with_console(cores: usize) -> (Broker, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start_in(tmp.path(), cores, &["--http", "127.0.0.1:0"]);
    assert!(broker.console.is_some(), "the ready line names the console");
    (broker, tmp)
}

/// A minimal HTTP/1.1 exchange (the point is to send exactly the bytes we choose).
fn http(addr: &str, request: &str) -> (u16, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to console");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    (status, body)
}

fn post(addr: &str, path: &str, extra_headers: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, body)
}

fn csrf_token(addr: &str) -> String {
    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    let start = page
        .find("name=\"csrf-token\" content=\"")
        .expect("token meta tag")
        + "name=\"csrf-token\" content=\"".len();
    page[start..start + 64].to_string()
}

/// Samples by metric name and label set, from the text format (`name{a="b"} value`).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

fn sum_of(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

fn producer(broker: &Broker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

async fn produce(broker: &Broker, topic: &str, partition: i32, records: &[(&str, &str)]) {
    let producer = producer(broker);
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(*key)
                    .payload(*value),
                TIMEOUT,
            )
            .await
            .expect("produce");
    }
}

fn create_topic(addr: &str, name: &str, partitions: i32) -> (u16, String) {
    let token = csrf_token(addr);
    post(
        addr,
        "/api/v1/topics",
        &format!("Content-Type: application/json\r\nX-CSRF-Token: {token}\r\n"),
        &format!("{{\"name\":\"{name}\",\"partitions\":{partitions}}}"),
    )
}

/// Checks the exposition with the Python client's parser (a real one) when it is installed;
/// scripts/test installs it.
fn python_parse(text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, text).expect("write scrape");
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfams = list(p(open(sys.argv[1]).read()))\nprint(len(fams), sum(len(f.samples) for f in fams))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output();
    match out {
        Ok(out) if out.status.success() => {
            eprintln!(
                "prometheus_client parsed: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("!!! SKIPPED the prometheus_client parse: python3 -m pip install prometheus-client (scripts/test does)");
        }
        Ok(out) => panic!(
            "prometheus_client rejected /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("!!! SKIPPED the prometheus_client parse: no python3 ({e})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_after_producing() {
    let (broker, _tmp) = start_with_console(2);
    let console = broker.console.clone().expect("console");
    assert_eq!(create_topic(&console, "metered", 4).0, 201);
    let (status, before) = get(&console, "/metrics");
    assert_eq!(status, 200);
    python_parse(&before);
    let before = parse_metrics(&before);
    let value = "v".repeat(100);
    for partition in 0..4 {
        produce(
            &broker,
            "metered",
            partition,
            &[("k", &value), ("k", &value)],
        )
        .await;
    }
    let (_, text) = get(&console, "/metrics");
    python_parse(&text);
    let after = parse_metrics(&text);
    let moved = |name: &str| sum_of(&after, name) - sum_of(&before, name);
    assert_eq!(
        moved("kafka_server_brokertopicmetrics_messagesin_total"),
        8.0
    );
    assert!(moved("kafka_server_brokertopicmetrics_bytesin_total") >= 800.0);
    assert!(moved("kafka_server_brokertopicmetrics_bytesout_total") > 0.0);
    assert!(moved("kafka_network_requestmetrics_totaltime_seconds_count") >= 4.0);
    assert!(moved("kafka_log_logflushstats_logflush_seconds_count") >= 1.0);
    assert!(moved("broker_segment_write_seconds_count") >= 1.0);
    // Every appended batch's wait for its write is counted: 4 produce requests, 4 batches.
    assert!(moved("broker_segment_write_wait_seconds_count") >= 4.0);
    // The shards' event loops ran task queues to serve them.
    assert!(moved("broker_shard_task_queue_run_seconds_count") >= 4.0);
    assert!(
        after
            .keys()
            .any(|k| k
                .starts_with("kafka_network_requestmetrics_requests_total{request=\"Produce\"")),
        "requests are counted by API and version"
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("broker_mesh_jobs_total{shard=")),
        "cross-shard hops are counted by receiving shard"
    );
    // Both shards own some of the 4 partitions; the gauge says how many.
    assert_eq!(
        sum_of(&after, "kafka_server_replicamanager_partitioncount"),
        4.0
    );
    assert_eq!(
        sum_of(
            &after,
            "kafka_server_replicamanager_underreplicatedpartitions"
        ),
        0.0
    );
    assert!(after.contains_key("broker_tail_cache_hit_ratio"));
    // The kernel's accounting of each shard's thread: both ran, and the requests above woke
    // them again; the time they waited for a CPU is there for each (zero on an idle machine).
    for shard in 0..2 {
        let series = |name: &str| format!("{name}{{shard=\"{shard}\"}}");
        let cpu = |samples: &HashMap<String, f64>, name: &str| {
            samples
                .get(&series(name))
                .copied()
                .unwrap_or_else(|| panic!("no {} in /metrics", series(name)))
        };
        assert!(cpu(&after, "broker_shard_cpu_seconds_total") > 0.0);
        assert!(
            cpu(&after, "broker_shard_cpu_runs_total")
                > cpu(&before, "broker_shard_cpu_runs_total"),
            "shard {shard} ran again for the requests"
        );
        assert!(
            cpu(&after, "broker_shard_cpu_wait_seconds_total")
                >= cpu(&before, "broker_shard_cpu_wait_seconds_total")
        );
    }
    let bucket_inf = after
        .iter()
        .find(|(k, _)| {
            k.starts_with("kafka_network_requestmetrics_totaltime_seconds_bucket{le=\"+Inf\",request=\"Produce\"")
        })
        .map(|(_, v)| *v)
        .expect("+Inf bucket");
    let count = after["kafka_network_requestmetrics_totaltime_seconds_count{request=\"Produce\"}"];
    assert_eq!(bucket_inf, count, "+Inf bucket equals the count");
}

/// Client connections are spread evenly over the shards whatever port the kernel's
/// SO_REUSEPORT hash sends them to: the shard that accepts a connection hands it to the one
/// serving the fewest, which then serves it in full (a produce and a fetch on every
/// connection), and a closed connection leaves the counts.
#[test]
fn connections_are_spread_evenly_over_the_shards() {
    let (broker, _tmp) = start_with_console(2);
    let console = broker.console.clone().expect("console");
    let per_shard = |metrics: &HashMap<String, f64>| {
        (0..2)
            .map(|shard| {
                metrics
                    .get(&format!("broker_shard_connections{{shard=\"{shard}\"}}"))
                    .copied()
                    .unwrap_or_else(|| panic!("no connection gauge for shard {shard}"))
            })
            .collect::<Vec<f64>>()
    };
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("spread", 2), 0);
    drop(admin);
    assert!(
        common::wait_until(TIMEOUT, || per_shard(&parse_metrics(
            &get(&console, "/metrics").1
        )) == [0.0, 0.0]),
        "a closed connection leaves the counts"
    );
    // One at a time: each is answered (so placed) before the next connects. With the kernel's
    // hash alone, 8 connections split 4/4 in about a quarter of runs.
    let mut clients: Vec<RawClient> = (0..8)
        .map(|_| {
            let mut client = RawClient::connect(&broker.addr);
            assert!(client.api_versions_ok());
            client
        })
        .collect();
    assert_eq!(
        per_shard(&parse_metrics(&get(&console, "/metrics").1)),
        [4.0, 4.0]
    );
    // Every connection, handed over or not, serves produce and fetch on both shards' partitions.
    for (i, client) in clients.iter_mut().enumerate() {
        let partition = (i % 2) as i32;
        let value = format!("from connection {i}");
        let (error, offset) = client.produce(
            "spread",
            partition,
            raw::batch(&[value.as_bytes()], None, Compression::None),
            -1,
        );
        assert_eq!(error, 0, "connection {i}");
        let (error, _, records) = client.fetch("spread", partition, offset, 0);
        assert_eq!(error, 0, "connection {i}");
        assert_eq!(
            raw::values(records)[0].1,
            value.as_bytes(),
            "connection {i}"
        );
    }
    clients.truncate(3);
    assert!(
        common::wait_until(TIMEOUT, || {
            let counts = per_shard(&parse_metrics(&get(&console, "/metrics").1));
            counts.iter().sum::<f64>() == 3.0
        }),
        "closed connections leave the counts"
    );
    // New connections fill the shard that lost more until both serve the same number again.
    clients.extend((0..3).map(|_| {
        let mut client = RawClient::connect(&broker.addr);
        assert!(client.api_versions_ok());
        client
    }));
    assert_eq!(
        per_shard(&parse_metrics(&get(&console, "/metrics").1)),
        [3.0, 3.0]
    );
}

/// A fetch below the tail cache whose bytes are not in the page cache (the broker's O_DIRECT
/// appends leave none there) has them read on a blocking thread before the shard reads them,
/// counted in `broker_fetch_warmed_bytes_total`: by default with O_DIRECT into memory, which
/// the response is written from (`broker_fetch_direct_read_bytes_total`, and the `memory` path
/// of `broker_fetch_bytes_total`); the records come back whole and in order.
#[test]
fn cold_fetches_are_read_into_memory_off_the_shard_and_read_back_whole() {
    let metrics = fetch_a_cold_backlog(&[]);
    let warmed = sum_of(&metrics, "broker_fetch_warmed_bytes_total");
    assert!(warmed >= (1 << 20) as f64, "warmed {warmed} bytes");
    let direct = sum_of(&metrics, "broker_fetch_direct_read_bytes_total");
    assert!(
        direct >= (1 << 20) as f64,
        "read into memory {direct} bytes"
    );
    assert_eq!(
        fetched_by_path(&metrics, "zero_copy"),
        0.0,
        "nothing by sendfile"
    );
    assert!(fetched_by_path(&metrics, "memory") >= (1 << 20) as f64);
}

/// With `fetch.cold.read.buffer.bytes=0` the same cold bytes are warmed into the page cache
/// and sent with sendfile, as before cold reads into memory existed.
#[test]
fn cold_fetches_go_through_the_page_cache_without_a_cold_read_buffer() {
    let metrics = fetch_a_cold_backlog(&["--override", "fetch.cold.read.buffer.bytes=0"]);
    let warmed = sum_of(&metrics, "broker_fetch_warmed_bytes_total");
    assert!(warmed >= (1 << 20) as f64, "warmed {warmed} bytes");
    assert_eq!(
        sum_of(&metrics, "broker_fetch_direct_read_bytes_total"),
        0.0
    );
    assert!(
        fetched_by_path(&metrics, "zero_copy") > 0.0,
        "sent by sendfile"
    );
}

/// Fetched record bytes that reached the socket by `path` (`broker_fetch_bytes_total`).
fn fetched_by_path(metrics: &HashMap<String, f64>, path: &str) -> f64 {
    metrics
        .iter()
        .filter(|(name, _)| {
            name.starts_with("broker_fetch_bytes_total{") && name.contains(&format!("\"{path}\""))
        })
        .map(|(_, value)| value)
        .sum()
}

/// Produces 4 MiB to a one-partition topic of a broker whose tail cache keeps next to
/// nothing, fetches all of it back from offset 0 checking every record, and returns the
/// broker's metrics after.
fn fetch_a_cold_backlog(flags: &[&str]) -> HashMap<String, f64> {
    let tmp = tempfile::tempdir().expect("temp dir");
    // A shard budget of one byte: the tail cache keeps next to nothing, fetches read the file.
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--override",
        "log.tail.cache.bytes=1",
    ];
    args.extend_from_slice(flags);
    let broker = Broker::start_in(tmp.path(), 1, &args);
    let console = broker.console.clone().expect("console");
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("cold", 1), 0);
    let value = vec![b'c'; 64 << 10];
    let values: Vec<&[u8]> = (0..4).map(|_| value.as_slice()).collect();
    for _ in 0..16 {
        let (error, _) =
            client.produce("cold", 0, raw::batch(&values, None, Compression::None), -1);
        assert_eq!(error, 0);
    }
    let warmed = sum_of(
        &parse_metrics(&get(&console, "/metrics").1),
        "broker_fetch_warmed_bytes_total",
    );
    assert_eq!(warmed, 0.0, "nothing fetched yet");
    let mut offset = 0;
    while offset < 64 {
        let (error, high_watermark, records) = client.fetch("cold", 0, offset, 0);
        assert_eq!((error, high_watermark), (0, 64));
        let read = raw::values(records);
        assert!(!read.is_empty(), "offset {offset}");
        for (record_offset, record) in &read {
            assert_eq!(*record_offset, offset, "records in order, none skipped");
            assert_eq!(record.as_ref(), value.as_slice());
            offset += 1;
        }
    }
    parse_metrics(&get(&console, "/metrics").1)
}

#[test]
fn bad_http_input_gets_4xx_and_actions_need_the_token() {
    let (mut broker, _tmp) = start_with_console(1);
    let console = broker.console.clone().expect("console");
    let token = csrf_token(&console);
    let json = "Content-Type: application/json\r\n";
    let body = r#"{"name":"t1","partitions":2}"#;
    // No token, wrong token, cross-site origin, cross-site fetch metadata, form encoding.
    assert_eq!(post(&console, "/api/v1/topics", json, body).0, 403);
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &format!("{json}X-CSRF-Token: {}\r\n", "0".repeat(64)),
            body
        )
        .0,
        403
    );
    let with_token = format!("{json}X-CSRF-Token: {token}\r\n");
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &format!("{with_token}Origin: http://evil.example\r\n"),
            body
        )
        .0,
        403
    );
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &format!("{with_token}Sec-Fetch-Site: cross-site\r\n"),
            body
        )
        .0,
        403
    );
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &format!("Content-Type: text/plain\r\nX-CSRF-Token: {token}\r\n"),
            body
        )
        .0,
        415
    );
    // Mutations only by POST; GET of an action path is not one.
    let (status, _, _) = http(
        &console,
        &format!("DELETE /api/v1/topics/t1 HTTP/1.1\r\nHost: {console}\r\nX-CSRF-Token: {token}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 405);
    assert_eq!(get(&console, "/api/v1/topics/t1/delete").0, 405);
    // Bad bodies and paths.
    assert_eq!(
        post(&console, "/api/v1/topics", &with_token, "{\"name\":").0,
        400
    );
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &with_token,
            "{\"name\":\"a/b\"}"
        )
        .0,
        400
    );
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &with_token,
            "{\"name\":\"ok\",\"partitions\":-5}"
        )
        .0,
        400
    );
    assert_eq!(
        post(
            &console,
            "/api/v1/topics",
            &with_token,
            &format!("{{\"name\":\"{}\"}}", "x".repeat(20_000))
        )
        .0,
        413
    );
    assert_eq!(get(&console, "/api/v1/topics/nope").0, 404);
    assert_eq!(
        get(&console, "/api/v1/topics/nope/partitions/abc/messages").0,
        400
    );
    assert_eq!(
        get(
            &console,
            "/api/v1/topics/nope/partitions/0/messages?limit=x"
        )
        .0,
        400
    );
    assert_eq!(get(&console, "/no/such/page").0, 404);
    let (status, _, _) = http(&console, "GARBAGE\r\n\r\n");
    assert!(
        (400..500).contains(&status),
        "garbage request line: {status}"
    );
    // With everything right: created, then a conflict, then gone.
    assert_eq!(post(&console, "/api/v1/topics", &with_token, body).0, 201);
    assert_eq!(post(&console, "/api/v1/topics", &with_token, body).0, 409);
    assert_eq!(
        post(
            &console,
            "/api/v1/topics/t1/partitions",
            &with_token,
            r#"{"count":3}"#
        )
        .0,
        200
    );
    let (_, detail) = get(&console, "/api/v1/topics/t1");
    assert_eq!(detail.matches("\"leader\":").count(), 3, "{detail}");
    assert_eq!(
        post(&console, "/api/v1/topics/t1/delete", &with_token, "{}").0,
        200
    );
    assert_eq!(get(&console, "/api/v1/topics/t1").0, 404);
    // No group yet: an empty list, and deleting an unknown group is refused.
    let (status, groups) = get(&console, "/api/v1/groups");
    assert_eq!(status, 200);
    assert!(groups.contains("\"available\":true"), "{groups}");
    // Security headers on pages.
    let (_, headers, _) = http(
        &console,
        &format!("GET / HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n\r\n"),
    );
    assert!(headers["content-security-policy"].contains("script-src 'self'"));
    assert!(broker.is_running(), "no input crashed the broker");
    broker.stop();
}

#[test]
fn default_console_port_taken_does_not_stop_the_broker() {
    // Hold the default port if we can; if something else holds it the broker must cope too.
    let _held = std::net::TcpListener::bind("127.0.0.1:8080");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start_in(tmp.path(), 1, &["--listen", &format!("127.0.0.1:{port}")]);
    assert!(
        broker.console.is_none(),
        "the default console port was taken"
    );
    assert!(broker.log().contains("web console not started"));
    assert!(broker.is_running());
    broker.stop();
    // And `--http off` means none, even with a fixed client port.
    let mut broker = Broker::start_in(
        tmp.path(),
        1,
        &["--listen", &format!("127.0.0.1:{port}"), "--http", "off"],
    );
    assert!(broker.console.is_none());
    broker.stop();
}

/// The browser test's npm project, installed by scripts/test (`npm ci`).
fn browser_ready(dir: &Path) -> Result<(), String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Err("no /usr/bin/chromium (apt-get install chromium; scripts/test does)".into());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "no playwright-core (cd {} && npm ci; scripts/test does)",
            dir.display()
        ));
    }
    Ok(())
}

fn run_browser_phase(dir: &Path, phase: &str, console: &str, topic: &str, out_dir: &Path) {
    let out = Command::new("node")
        .current_dir(dir)
        .args(["console.test.mjs", phase])
        .env("CONSOLE_URL", format!("http://{console}"))
        .env("TOPIC", topic)
        .env("PARTITIONS", "3")
        .env("OUT_DIR", out_dir)
        .output()
        .expect("run node");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Err(missing) = browser_ready(&dir) {
        eprintln!("\n!!!!!!!! SKIPPED console_in_headless_chromium: {missing} !!!!!!!!\n");
        return;
    }
    let (broker, _tmp) = start_with_console(2);
    let console = broker.console.clone().expect("console");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
    run_browser_phase(&dir, "create", &console, "clicks", &out_dir);
    produce(
        &broker,
        "clicks",
        0,
        &[
            ("user-1", "<script>window.__xss = 1</script>"),
            (
                "<b class=\"evil\">k</b>",
                "<img src=x onerror=\"window.__xss = 2\">",
            ),
            ("user-2", "plain value"),
        ],
    )
    .await;
    run_browser_phase(&dir, "inspect", &console, "clicks", &out_dir);
    for shot in ["overview.png", "topics.png", "topic.png"] {
        assert!(out_dir.join(shot).exists(), "screenshot {shot}");
    }
    eprintln!("screenshots in {}", out_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_show_members_assignment_and_lag() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::Message;
    let (broker, _dir) = start_with_console(2);
    let console = broker.console.clone().expect("console address");
    assert_eq!(create_topic(&console, "lagging", 2).0, 201);
    produce(&broker, "lagging", 0, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "watched")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["lagging"]).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let first_offset = loop {
        assert!(std::time::Instant::now() < deadline, "no record in time");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(m.partition(), 0);
            break m.offset();
        }
    };
    let mut commit = rdkafka::TopicPartitionList::new();
    commit
        .add_partition_offset("lagging", 0, rdkafka::Offset::Offset(first_offset + 1))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).expect("commit");
    // Committed offset 1 of 3 on partition 0: lag 2, one member holding both partitions.
    let mut groups = String::new();
    assert!(
        common::wait_until(TIMEOUT, || {
            groups = get(&console, "/api/v1/groups").1;
            groups.contains("\"group_id\":\"watched\"")
                && groups.contains("\"lag\":2")
                && groups.contains("lagging-0")
                && groups.contains("lagging-1")
        }),
        "{groups}"
    );
    let metrics = parse_metrics(&get(&console, "/metrics").1);
    assert!(
        sum_of(&metrics, "kafka_coordinator_group_rebalances_total") >= 1.0,
        "the join counted as a rebalance"
    );
    // A group with a member is not deleted.
    let token = csrf_token(&console);
    let with_token = format!("X-CSRF-Token: {token}\r\nContent-Type: application/json\r\n");
    let (status, body) = post(&console, "/api/v1/groups/watched/delete", &with_token, "{}");
    assert_ne!(status, 200, "{body}");
    // Leave the group before closing: librdkafka's close waits for the revocation otherwise.
    consumer.unsubscribe();
    drop(consumer);
}
