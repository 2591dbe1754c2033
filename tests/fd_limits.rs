//! The broker under a tight open files limit (its own test binary: lowering the limit is for
//! the whole process and every broker it starts).

mod common;

use std::time::Duration;

use common::raw::RawClient;
use common::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 600;

/// With `ulimit -n 1024`, one record to each of 600 partitions is acknowledged: a partition
/// being written holds its segment's write descriptor, not a read descriptor too (before, a
/// new segment opened both, and past ~500 partitions every further partition failed for good
/// with KAFKA_STORAGE_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_partitions_are_written_under_a_limit_of_1024_open_files() {
    let limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: setrlimit with a pointer to a live rlimit; lowering is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let broker = Broker::start(2);
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("wide", PARTITIONS), 0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let sends: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let producer = producer.clone();
            tokio::spawn(async move {
                let value = format!("p{partition}");
                producer
                    .send(
                        FutureRecord::<(), _>::to("wide")
                            .partition(partition)
                            .payload(&value),
                        Duration::from_secs(20),
                    )
                    .await
                    .map_err(|(e, _)| format!("partition {partition}: {e}"))
            })
        })
        .collect();
    for send in sends {
        let delivery = send.await.unwrap().unwrap_or_else(|e| {
            panic!("{e}; broker log:\n{}", broker.log());
        });
        assert_eq!(delivery.offset, 0);
    }
    assert!(
        !broker.log().contains("Too many open files"),
        "{}",
        broker.log()
    );
}
