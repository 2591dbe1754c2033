"""Partition admin APIs through real clients: kafka-python's KafkaAdminClient (reassignments,
elections, replica log dirs, broker configs) and confluent-kafka's AdminClient (elections,
broker configs).

usage: partition_admin.py STEP BOOTSTRAP TOPIC [ARG]   (see tests/partition_admin.rs)
Prints "key value..." lines the Rust test checks.
"""
import sys
import time

from confluent_kafka import Consumer, ElectionType, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import ConfigResource as KafkaConfigResource
from kafka.structs import TopicPartitionReplica


def name_of(error):
    """An error class (or None) as Kafka's error name."""
    if error is None:
        return "NONE"
    return getattr(error, "message", error.__name__)


def reassign(bootstrap, topic, target):
    """An idempotent acks=all producer runs while the partition moves to `target`."""
    target = [int(b) for b in target.split(",")]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
        }
    )
    acked, failed = [], []

    def delivered(err, msg):
        if err is None:
            acked.append(int(msg.value()))
        else:
            failed.append(str(err))

    sent = [0]

    def produce(n):
        for _ in range(n):
            producer.produce(topic, value=b"%d" % sent[0], partition=0, on_delivery=delivered)
            sent[0] += 1
        producer.poll(0)

    deadline = time.time() + 30
    while len(acked) < 500:
        assert time.time() < deadline, "the producer never got going"
        produce(50)
        producer.poll(0.05)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    tp = KafkaTopicPartition(topic, 0)
    started = time.time()
    acked_before = len(acked)
    result = admin.alter_partition_reassignments({tp: target})
    print("alter", name_of(result.get(tp)))
    listed = admin.list_partition_reassignments()
    for p, r in listed.items():
        print(
            "in_progress",
            "%s-%d" % (p.topic, p.partition),
            ",".join(map(str, r["replicas"])),
            ",".join(map(str, r["adding_replicas"])),
            ",".join(map(str, r["removing_replicas"])),
        )
    deadline = time.time() + 60
    while admin.list_partition_reassignments():
        assert time.time() < deadline, "the reassignment never completed"
        produce(20)
        producer.poll(0.05)
    print("completed")
    print("took_ms", int((time.time() - started) * 1000), "acked_meanwhile", len(acked) - acked_before)
    # And more once the replicas moved (the leader may have moved too).
    before = len(acked)
    deadline = time.time() + 30
    while len(acked) < before + 500:
        assert time.time() < deadline, "the producer did not resume after the move"
        produce(50)
        producer.poll(0.05)
    assert producer.flush(60) == 0
    print("acked", len(acked))
    print("failed", len(failed), *failed[:3])
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "check", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.time() + 60
    while len(values) < sent[0] and time.time() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                values.append(int(msg.value()))
    consumer.close()
    print("consumed", len(values))
    print("duplicates", len(values) - len(set(values)))
    print("missing", len(set(acked) - set(values)))


def reorder(bootstrap, topic, target):
    """A reassignment to the same replicas in another order: the preferred replica changes."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    tp = KafkaTopicPartition(topic, 0)
    result = admin.alter_partition_reassignments({tp: [int(b) for b in target.split(",")]})
    print("reorder", name_of(result.get(tp)))
    print("listed", len(admin.list_partition_reassignments()))
    # Refusals, each for its partition.
    for name, replicas in (("duplicate", [0, 0]), ("unknown_broker", [0, 7]), ("empty", None)):
        result = admin.alter_partition_reassignments({tp: replicas})
        print(name, name_of(result.get(tp)))
    missing = KafkaTopicPartition("no-such-topic", 0)
    print("unknown_topic", name_of(admin.alter_partition_reassignments({missing: [0]}).get(missing)))


def election_errors(response):
    """kafka-python's ElectLeadersResponse as "topic-partition ERROR" pairs."""
    out = []
    for result in response.replica_election_results:
        for p in result.partition_result:
            error = "NONE" if p.error_code == 0 else str(p.error_code)
            out.append((result.topic, p.partition_id, error))
    return out


ERROR_NAMES = {"84": "ELECTION_NOT_NEEDED", "80": "PREFERRED_LEADER_NOT_AVAILABLE", "3": "UNKNOWN_TOPIC_OR_PARTITION", "83": "ELIGIBLE_LEADERS_NOT_AVAILABLE"}


def elect(bootstrap, topic, label):
    """Preferred election with kafka-python, then again with confluent-kafka."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    response = admin.elect_leaders(0, {topic: [0]}, raise_errors=False)
    for t, p, e in election_errors(response):
        print(label, "kafka_python", "%s-%d" % (t, p), ERROR_NAMES.get(e, e))
    confluent = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0)
    try:
        results = confluent.elect_leaders(ElectionType.PREFERRED, [tp]).result()
        error = results[tp]
        print(label, "confluent", "%s-0" % topic, "NONE" if error is None else error.name())
    except KafkaException as e:
        print(label, "confluent", "%s-0" % topic, e.args[0].name())


def elect_refusals(bootstrap, topic, _arg):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    response = admin.elect_leaders(0, {"no-such-topic": [0], topic: [5]}, raise_errors=False)
    for t, p, e in election_errors(response):
        print("preferred_unknown", "%s-%d" % (t, p), ERROR_NAMES.get(e, e))
    response = admin.elect_leaders(1, {topic: [0]}, raise_errors=False)
    for t, p, e in election_errors(response):
        print("unclean", "%s-%d" % (t, p), ERROR_NAMES.get(e, e))


def log_dirs(bootstrap, topic, broker):
    """AlterReplicaLogDirs to the broker's one directory, another, and an unknown topic."""
    broker = int(broker)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    (described,) = admin.describe_log_dirs()
    log_dir = described["log_dirs"][0]["log_dir"]
    for name, t, path in (
        ("same_dir", topic, log_dir),
        ("other_dir", topic, "/no/such/dir"),
        ("unknown_topic", "no-such-topic", log_dir),
    ):
        replica = TopicPartitionReplica(t, 0, broker)
        result = admin.alter_replica_log_dirs({replica: path})
        print(name, result[replica].__name__)


def broker_configs(bootstrap, _topic, broker):
    """kafka-python and confluent-kafka set, describe and refuse dynamic broker configs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    resource = KafkaConfigResource("BROKER", broker, {"log.retention.ms": "120000"})
    print("set_retention", admin.alter_configs([resource])["broker"][broker])
    # A read-only config: refused by the broker (kafka-python's own check would refuse it
    # before sending, so it is skipped here).
    resource = KafkaConfigResource("BROKER", broker, {"broker.id": "9"})
    print("set_read_only", admin.alter_configs([resource], raise_on_unknown=False)["broker"][broker].split(":")[0])
    resource = KafkaConfigResource("BROKER", broker, {"log.retention.bytes": "lots"})
    print("bad_value", admin.alter_configs([resource])["broker"][broker].split(":")[0])
    described = admin.describe_configs(
        [KafkaConfigResource("BROKER", broker)], include_synonyms=True, config_filter="all"
    )["broker"][broker]
    for key in ("log.retention.ms", "message.max.bytes", "broker.id"):
        e = described[key]
        print(
            "describe",
            key,
            e["value"],
            e["config_source"],
            e["read_only"],
            *["%s:%s" % (s["name"], s["source"]) for s in e["synonyms"]],
        )
    # confluent-kafka (which cannot name the cluster default "": the test sets it on the
    # wire) sets this broker's segment size, then describes.
    confluent = AdminClient({"bootstrap.servers": bootstrap})
    segment = ConfigResource(
        ResourceType.BROKER,
        broker,
        incremental_configs=[
            ConfigEntry(
                "log.segment.bytes", "2097152", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    try:
        confluent.incremental_alter_configs([segment])[segment].result()
        print("set_segment NONE")
    except KafkaException as e:
        print("set_segment", e.args[0].name())
    own = ConfigResource(ResourceType.BROKER, broker)
    entries = confluent.describe_configs([own])[own].result()
    for key in ("message.max.bytes", "log.retention.ms", "log.segment.bytes"):
        e = entries[key]
        print("confluent", key, e.value, ConfigSource(e.source).name, e.is_read_only)


def broker_configs_reset(bootstrap, _topic, broker):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    resource = KafkaConfigResource("BROKER", broker, ["log.retention.ms"])
    print("reset", admin.reset_configs([resource])["broker"][broker])
    described = admin.describe_configs(
        [KafkaConfigResource("BROKER", broker)], include_synonyms=True, config_filter="all"
    )["broker"][broker]
    e = described["log.retention.ms"]
    print("describe", "log.retention.ms", e["value"], e["config_source"])


STEPS = {
    "reassign": reassign,
    "reorder": reorder,
    "elect": elect,
    "elect_refusals": elect_refusals,
    "log_dirs": log_dirs,
    "broker_configs": broker_configs,
    "broker_configs_reset": broker_configs_reset,
}

if __name__ == "__main__":
    step, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    STEPS[step](bootstrap, topic, arg)
    sys.stdout.flush()
