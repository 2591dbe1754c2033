"""Transactions through Python clients: confluent-kafka's transactional producer and
read_committed consumer, kafka-python's admin client for DescribeTransactions,
ListTransactions and DescribeProducers. Usage: transactions.py BOOTSTRAP TOPIC"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition as CTopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]

producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "py-txn", "linger.ms": 5})
producer.init_transactions(30)

producer.begin_transaction()
for i in range(5):
    producer.produce(topic, key=b"k", value=b"committed-%d" % i, partition=0)
producer.commit_transaction(30)

producer.begin_transaction()
for i in range(3):
    producer.produce(topic, key=b"k", value=b"aborted-%d" % i, partition=0)
producer.flush(30)

admin = KafkaAdminClient(bootstrap_servers=bootstrap)
described = admin.describe_transactions(["py-txn"])
print("describe_transactions:", described)
listed = admin.list_transactions(state_filters=["Ongoing"])
print("list_transactions:", listed)
producers = admin.describe_producers([TopicPartition(topic, 0)])
print("describe_producers:", producers)
text = repr(described) + repr(listed)
assert "py-txn" in text and "Ongoing" in text, text
# Offsets 0-4 committed, 5 the commit marker: the open transaction starts at 6.
assert "current_transaction_start_offset=6" in repr(producers), producers

producer.abort_transaction(30)
producer.begin_transaction()
producer.produce(topic, key=b"k", value=b"last", partition=0)
producer.commit_transaction(30)

seen = {}
for isolation in ("read_committed", "read_uncommitted"):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "py-txn-reader-" + isolation,
        "isolation.level": isolation,
        "enable.auto.commit": False,
    })
    consumer.assign([CTopicPartition(topic, 0, 0)])
    values = []
    deadline = time.time() + 30
    while b"last" not in values and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            values.append(message.value())
    consumer.close()
    seen[isolation] = values

assert seen["read_committed"] == [b"committed-%d" % i for i in range(5)] + [b"last"], seen
assert seen["read_uncommitted"] == (
    [b"committed-%d" % i for i in range(5)] + [b"aborted-%d" % i for i in range(3)] + [b"last"]
), seen
print("transactions ok")
