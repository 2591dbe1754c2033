"""Admin APIs through real clients (confluent-kafka / librdkafka and kafka-python).

usage: admin_apis.py STEP BOOTSTRAP TOPIC   (see tests/admin_apis.rs for the steps)
Prints "key value" lines the Rust test checks.
"""
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KafkaConfigResource
from kafka import TopicPartition as KafkaTopicPartition


def max_timestamp(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0)
    # An empty partition has no record with a timestamp.
    empty = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result()
    print("empty", empty.offset, empty.timestamp)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    # Out of order on purpose, over two batches: the largest timestamp (5000) first appears at
    # offset 1, again at offset 3, and the last record is older.
    for batch in ([1000, 5000, 3000], [5000, 2000]):
        for ts in batch:
            producer.produce(topic, value=b"v%d" % ts, partition=0, timestamp=ts)
        assert producer.flush(10) == 0
    result = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result()
    print("max_timestamp", result.offset, result.timestamp)
    latest = admin.list_offsets({tp: OffsetSpec.latest()})[tp].result()
    print("latest", latest.offset)


def replicated(bootstrap, topic):
    """A topic with 3 replicas, 60 acks=all records, then every record below 30 deleted."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    deadline = time.time() + 30
    while True:
        # Until the new partition has its leader everywhere.
        try:
            producer.produce(topic, value=b"first", partition=0)
            if producer.flush(10) == 0:
                break
        except KafkaException:
            pass
        assert time.time() < deadline, "the replicated topic never took a record"
        time.sleep(0.2)
    for i in range(59):
        producer.produce(topic, value=b"v%d" % i, partition=0)
    assert producer.flush(30) == 0
    tp = TopicPartition(topic, 0, 30)
    print("deleted", admin.delete_records([tp])[tp].result().low_watermark)


def error_name(future):
    try:
        future.result()
        return "NONE"
    except KafkaException as e:
        return e.args[0].name()


def delete_records(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0, 30)
    deleted = admin.delete_records([tp])[tp].result()
    print("deleted", deleted.low_watermark)
    # Not past the high watermark; not on a partition that does not exist.
    beyond = TopicPartition(topic, 0, 1000)
    print("beyond", error_name(admin.delete_records([beyond])[beyond]))
    missing = TopicPartition(topic, 7, 0)
    print("missing", error_name(admin.delete_records([missing])[missing]))
    earliest(bootstrap, topic)


def earliest(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0)
    print("earliest", admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result().offset)


def consume_from_beginning(bootstrap, topic):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "from-beginning-%d" % time.time_ns(),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.time() + 30
    while time.time() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            print("first", message.offset())
            break
    consumer.close()


def delete_to_high_watermark(bootstrap, topic):
    # kafka-python this time, offset -1: "everything below the high watermark".
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    result = admin.delete_records({KafkaTopicPartition(topic, 0): -1})
    print("result", result)
    earliest(bootstrap, topic)


def describe_log_dirs(bootstrap, topic):
    """kafka-python: every replica, then only partition 1 of the topic, then a missing topic."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    for name, wanted in (
        ("all", None),
        ("one", {topic: [1]}),
        ("missing", {"no-such-topic": [0]}),
    ):
        (broker,) = admin.describe_log_dirs(topic_partitions=wanted)
        (log_dir,) = broker["log_dirs"]
        print(name, "dir", log_dir["error_code"], log_dir["log_dir"])
        print(name, "space", log_dir["total_bytes"], log_dir["usable_bytes"])
        for t in log_dir["topics"]:
            for p in t["partitions"]:
                print(
                    name,
                    "%s-%d" % (t["name"], p["partition_index"]),
                    p["partition_size"],
                    p["offset_lag"],
                    p["is_future_key"],
                )


def config_error(future):
    try:
        future.result()
        return "NONE"
    except KafkaException as e:
        return e.args[0].name()


def describe_topic(admin, topic, keys):
    """Prints "describe KEY VALUE SOURCE READ_ONLY" and "synonyms KEY NAME:SOURCE..." lines."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result()
    for key in keys:
        e = entries[key]
        print("describe", key, e.value, ConfigSource(e.source).name, e.is_read_only)


def incremental(topic, *ops):
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(k, v, incremental_operation=op) for k, v, op in ops],
    )
    return resource


def configs_alter(bootstrap, topic):
    """confluent-kafka: SET, refusals, validate_only, then describe."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    SET = AlterConfigOpType.SET
    ok = incremental(topic, ("retention.ms", "60000", SET), ("max.message.bytes", "1000", SET))
    print("set", config_error(admin.incremental_alter_configs([ok])[ok]))
    for name, resource in (
        ("bad_value", incremental(topic, ("retention.ms", "soon", SET))),
        ("unknown_key", incremental(topic, ("no.such.config", "1", SET))),
        ("unknown_topic", incremental("no-such-topic", ("retention.ms", "1", SET))),
        ("append_long", incremental(topic, ("retention.ms", "1", AlterConfigOpType.APPEND))),
    ):
        print(name, config_error(admin.incremental_alter_configs([resource])[resource]))
    broker = ConfigResource(
        ResourceType.BROKER,
        "0",
        incremental_configs=[ConfigEntry("log.dirs", "/elsewhere", incremental_operation=SET)],
    )
    print("broker", config_error(admin.incremental_alter_configs([broker])[broker]))
    checked = incremental(topic, ("retention.bytes", "4096", SET))
    print(
        "validate_only",
        config_error(admin.incremental_alter_configs([checked], validate_only=True)[checked]),
    )
    describe_topic(admin, topic, ["retention.ms", "max.message.bytes", "retention.bytes"])
    # kafka-python asks for synonyms (and shows only the modified keys by default).
    described = KafkaAdminClient(bootstrap_servers=bootstrap).describe_configs(
        [KafkaConfigResource("TOPIC", topic)], include_synonyms=True
    )
    for key, entry in sorted(described["topic"][topic].items()):
        print("synonyms", key, *["%s:%s" % (s["name"], s["source"]) for s in entry["synonyms"]])


def configs_delete(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    gone = incremental(topic, ("retention.ms", None, AlterConfigOpType.DELETE))
    print("delete", config_error(admin.incremental_alter_configs([gone])[gone]))
    describe_topic(admin, topic, ["retention.ms", "max.message.bytes"])


def configs_describe(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    describe_topic(
        admin, topic, ["retention.ms", "retention.bytes", "segment.bytes", "max.message.bytes"]
    )


def configs_retention_bytes(bootstrap, topic):
    """kafka-python's non-incremental AlterConfigs: it re-sends the other overrides it
    describes as DYNAMIC_TOPIC_CONFIG, since AlterConfigs replaces them all."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    resource = KafkaConfigResource("TOPIC", topic, {"retention.bytes": "60000"})
    print("result", admin.alter_configs([resource], incremental=False))


def configs_raise_then_lower(bootstrap, topic):
    """max.message.bytes above the broker's message.max.bytes may go up, not back down."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    for name, value, op in (
        ("raise", "2000000", SET),
        ("lower", "1500000", SET),
        ("delete", None, DELETE),
        ("raise_more", "3000000", SET),
    ):
        resource = incremental(topic, ("max.message.bytes", value, op))
        print(name, config_error(admin.incremental_alter_configs([resource])[resource]))


STEPS = {
    "configs_raise_then_lower": configs_raise_then_lower,
    "configs_alter": configs_alter,
    "configs_delete": configs_delete,
    "configs_describe": configs_describe,
    "configs_retention_bytes": configs_retention_bytes,
    "describe_log_dirs": describe_log_dirs,
    "max_timestamp": max_timestamp,
    "delete_records": delete_records,
    "earliest": earliest,
    "consume_from_beginning": consume_from_beginning,
    "delete_to_high_watermark": delete_to_high_watermark,
    "replicated": replicated,
}

if __name__ == "__main__":
    STEPS[sys.argv[1]](*sys.argv[2:])
