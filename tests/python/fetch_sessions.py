"""kafka-python reads 50 partitions through an incremental fetch session (KIP-227) while a
producer keeps writing, and changes its assignment three times; every record must be read
exactly once and in order.

kafka-python's FetchSessionHandler is watched from the inside (its methods are wrapped): the
script fails unless the broker created a session, answered incremental fetches under it with
only some of the session's partitions, and kafka-python sent incremental requests that listed
only some partitions and forgot others.

The topic must exist (TOPIC, PARTITIONS). Usage: fetch_sessions.py BOOTSTRAP
"""
import collections
import sys
import threading
import time

import kafka.consumer.fetcher as fetcher
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

TOPIC = "fetch-sessions"
PARTITIONS = 50
PER_PHASE = 3000
MAX_RECORDS = 200_000
bootstrap = sys.argv[1]

# -- what kafka-python's session handler sees ------------------------------------------------
seen = collections.Counter()
orig_build_next = fetcher.FetchSessionHandler.build_next
orig_handle_response = fetcher.FetchSessionHandler.handle_response


def build_next(self, next_partitions):
    data = orig_build_next(self, next_partitions)
    if not data.metadata.is_full:
        seen["incremental requests"] += 1
        if len(data._to_send) < len(next_partitions):
            seen["incremental requests naming only some partitions"] += 1
        if data._to_forget:
            seen["incremental requests forgetting partitions"] += 1
    return data


def handle_response(self, response):
    full = self.next_metadata.is_full
    in_session = len(self.session_partitions)
    ok = orig_handle_response(self, response)
    if response.error_code:
        seen[f"session errors (code {response.error_code})"] += 1
    elif full and response.session_id:
        seen["sessions created"] += 1
    elif not full and response.session_id:
        seen["incremental responses"] += 1
        answered = sum(len(t.partitions) for t in response.responses)
        if answered < in_session:
            seen["incremental responses answering only some partitions"] += 1
    return ok


fetcher.FetchSessionHandler.build_next = build_next
fetcher.FetchSessionHandler.handle_response = handle_response

# -- the producer: per partition, values "p:seq", seq == offset ------------------------------
stop_producing = threading.Event()
produced = [0] * PARTITIONS
producer_error = []


def produce():
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        # Small batches: many of them per partition, so fetches are cut between batches.
        batch_size=512,
    )
    try:
        i = 0
        while not stop_producing.is_set() and sum(produced) < MAX_RECORDS:
            # A changing fifth of the partitions per round, so that at any moment some
            # partitions have new records and others do not.
            for p in range(PARTITIONS):
                if (p * 7 + i) % 5 == 0:
                    producer.send(TOPIC, value=f"{p}:{produced[p]}".encode(), partition=p)
                    produced[p] += 1
            i += 1
        producer.flush(60)
    except Exception as e:  # reported by the main thread
        producer_error.append(repr(e))
    finally:
        producer.close()


producer_thread = threading.Thread(target=produce)
producer_thread.start()

# -- the consumer: assign, seek to what it has read, check every record ----------------------
consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
    fetch_max_wait_ms=200,
    # Small limits: many fetch rounds, responses cut by the size limit.
    max_partition_fetch_bytes=2048,
    fetch_max_bytes=8192,
)
next_offset = [0] * PARTITIONS
problems = []


def assign(partitions):
    tps = [TopicPartition(TOPIC, p) for p in partitions]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, next_offset[tp.partition])


def take(batch):
    n = 0
    for tp, records in batch.items():
        for r in records:
            p = tp.partition
            want = f"{p}:{next_offset[p]}".encode()
            if r.offset != next_offset[p] or r.value != want:
                problems.append(f"partition {p}: got {r.offset}={r.value!r}, wanted {next_offset[p]}={want!r}")
                if len(problems) > 20:
                    raise SystemExit("\n".join(problems))
                next_offset[p] = r.offset
            next_offset[p] += 1
            n += 1
    return n


phases = [
    list(range(0, 30)),
    list(range(20, 50)),  # forgets 0-19, adds 30-49
    list(range(0, 50, 2)),  # forgets the odd ones, adds back 0-18 even
    list(range(0, 50, 3)),  # forgets most, adds a few odd ones
    list(range(0, 50)),
]
deadline = time.time() + 180
for number, partitions in enumerate(phases):
    assign(partitions)
    read = 0
    while read < PER_PHASE and time.time() < deadline:
        read += take(consumer.poll(timeout_ms=500, max_records=500))
    assert read >= PER_PHASE, f"phase {number} read only {read} records"

stop_producing.set()
producer_thread.join(120)
assert not producer_thread.is_alive(), "producer did not stop"
assert not producer_error, producer_error
while next_offset != produced and time.time() < deadline:
    take(consumer.poll(timeout_ms=500, max_records=2000))
consumer.close()

assert not problems, "\n".join(problems)
missing = {p: (next_offset[p], produced[p]) for p in range(PARTITIONS) if next_offset[p] != produced[p]}
assert not missing, f"read vs produced per partition: {missing}"
print(dict(seen))
for what in [
    "sessions created",
    "incremental requests",
    "incremental requests naming only some partitions",
    "incremental requests forgetting partitions",
    "incremental responses",
    "incremental responses answering only some partitions",
]:
    assert seen[what] > 0, f"no {what}: {dict(seen)}"
errors = {k: v for k, v in seen.items() if k.startswith("session errors")}
assert not errors, errors
print(f"exactly once, in order: {sum(produced)} records in {PARTITIONS} partitions; {dict(seen)}")
