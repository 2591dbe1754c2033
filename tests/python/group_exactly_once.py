"""kafka-python group consumers (subscribe) read every message of a 100k-message topic exactly
once across a rebalance: consumer A starts alone, B joins part-way. Offsets are auto-committed,
and the client commits its position before giving partitions up in a rebalance, as the Java
client does: that commit, durable before the rejoin, is what makes the hand-over exact.

confluent-kafka produces the topic. Usage: group_exactly_once.py BOOTSTRAP
"""
import sys
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import ConsumerRebalanceListener, KafkaConsumer

TOTAL = 100_000
TOPIC = "py-exactly-once"
bootstrap = sys.argv[1]

admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(TOPIC, num_partitions=4, replication_factor=1)])[TOPIC].result(timeout=30)
producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 20})
for i in range(TOTAL):
    while True:
        try:
            producer.produce(TOPIC, value=str(i).encode(), partition=i % 4)
            break
        except BufferError:
            producer.poll(0.05)
assert producer.flush(60) == 0

seen = []
lock = threading.Lock()
done = threading.Event()
b_may_start = threading.Event()
revocations = []


class RecordRevocations(ConsumerRebalanceListener):
    def __init__(self, name):
        self.name = name

    def on_partitions_revoked(self, revoked):
        if revoked:
            revocations.append(self.name)

    def on_partitions_assigned(self, assigned):
        pass


def run(name):
    listener = RecordRevocations(name)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id="py-exactly-once",
        client_id=name,
        enable_auto_commit=True,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=200,
        session_timeout_ms=6000,
    )
    consumer.subscribe([TOPIC], listener=listener)
    deadline = time.time() + 120
    while not done.is_set() and time.time() < deadline:
        batch = consumer.poll(timeout_ms=100, max_records=2000)
        with lock:
            for records in batch.values():
                seen.extend(int(r.value) for r in records)
            if len(seen) >= 30_000:
                b_may_start.set()
            if len(seen) >= TOTAL:
                done.set()
    consumer.close()


a = threading.Thread(target=run, args=("consumer-a",))
a.start()
assert b_may_start.wait(60), f"A read only {len(seen)}"
b = threading.Thread(target=run, args=("consumer-b",))
b.start()
a.join()
b.join()
assert revocations, "B's join caused a rebalance"
assert len(seen) == TOTAL, f"{len(seen)} records read, {len(seen) - len(set(seen))} duplicates"
assert set(seen) == set(range(TOTAL))
print(f"exactly once: {TOTAL} records, revocations by {sorted(set(revocations))}")
