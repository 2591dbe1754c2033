"""Admin APIs through real clients (confluent-kafka / librdkafka and kafka-python).

usage: admin_apis.py STEP BOOTSTRAP TOPIC   (see tests/admin_apis.rs for the steps)
Prints "key value" lines the Rust test checks.
"""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec


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


STEPS = {"max_timestamp": max_timestamp}

if __name__ == "__main__":
    STEPS[sys.argv[1]](*sys.argv[2:])
