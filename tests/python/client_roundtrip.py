"""Round trip through the two Python Kafka clients against a running broker.

confluent-kafka (librdkafka) creates the topic and produces keyed messages with every codec;
kafka-python (a pure-Python protocol implementation) consumes them from the beginning.
Usage: client_roundtrip.py BOOTSTRAP
"""
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics([NewTopic("py-roundtrip", num_partitions=3, replication_factor=1)])
futures["py-roundtrip"].result(timeout=30)
listed = admin.list_topics(timeout=10).topics
assert "py-roundtrip" in listed and len(listed["py-roundtrip"].partitions) == 3, listed

expected = {}
for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "compression.type": codec, "linger.ms": 5})
    errors = []
    for i in range(200):
        key = f"{codec}-{i % 7}"
        value = f"{codec}:{i}"
        expected[value] = key
        producer.produce("py-roundtrip", key=key, value=value,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert producer.flush(30) == 0
    assert not errors, errors

# kafka-python speaks the protocol on its own; it produces too.
kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
for i in range(100):
    value = f"kafka-python:{i}"
    expected[value] = "kp"
    kp.send("py-roundtrip", key=b"kp", value=value.encode())
kp.flush(30)
kp.close()

consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=10000)
partitions = [TopicPartition("py-roundtrip", p) for p in range(3)]
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)
seen = {}
last_per_key = {}
deadline = time.time() + 60
while len(seen) < len(expected) and time.time() < deadline:
    for tp, messages in consumer.poll(timeout_ms=500).items():
        for m in messages:
            value = m.value.decode()
            assert value not in seen, f"duplicate {value}"
            seen[value] = m.key.decode()
            seq = int(value.rsplit(":", 1)[1])
            prefix = value.rsplit(":", 1)[0]
            key = (m.key, prefix)
            assert last_per_key.get(key, -1) < seq, f"order broken at {value}"
            last_per_key[key] = seq
assert seen == expected, f"missing {len(set(expected) - set(seen))} of {len(expected)}"
end = consumer.end_offsets(partitions)
assert sum(end.values()) == len(expected), end
print(f"python clients: {len(seen)} messages round-tripped")
