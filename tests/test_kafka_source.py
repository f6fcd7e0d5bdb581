"""The readings source against the real broker: a backlog is read without librdkafka's
queue-full pauses.

Why: librdkafka stops fetching a partition once `queued.min.messages` (100,000) are waiting
unread, for `fetch.queue.backoff.ms` (1000 ms by default). A flow that drains those 100,000
readings in less than a second, as when it catches up a backlog, then sat idle for the rest of
the second: measured, every consumer of a partition capped near 100k readings/s
(docs/benchmarks.md). ``VIGIL_FETCH_QUEUE_BACKOFF_MS`` (default 10) shortens the pause.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from flows.kafka import _ReadingsPartition, readings_consumer_config
from flows.settings import Settings

BACKLOG = 200_000  # more than librdkafka's queued.min.messages, so its queue fills
WORK_S = 0.015  # per batch of 5,000: a flow working at 330k readings/s, slower than the
# fetcher (so the queue fills) but faster than 100,000 per second (so a 1 s pause starves it)


def test_the_readings_consumer_takes_its_queue_backoff_from_the_settings():
    s = Settings.from_env({"VIGIL_BROKERS": "b:9092", "VIGIL_FETCH_QUEUE_BACKOFF_MS": "25"})
    cfg = readings_consumer_config(s)
    assert cfg["fetch.queue.backoff.ms"] == 25
    assert cfg["fetch.wait.max.ms"] == s.fetch_wait_max_ms
    assert cfg["bootstrap.servers"] == "b:9092" and cfg["enable.auto.commit"] is False
    assert Settings.from_env({}).fetch_queue_backoff_ms == 10
    with pytest.raises(ValueError, match="VIGIL_FETCH_QUEUE_BACKOFF_MS must not be negative"):
        Settings.from_env({"VIGIL_FETCH_QUEUE_BACKOFF_MS": "-1"})


@pytest.fixture(scope="module")
def backlog(broker) -> tuple[str, str]:
    """A one-partition topic holding ``BACKLOG`` small messages."""
    topic = broker.unique_topics("backlog", {"readings": 1})["readings"]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 2 * BACKLOG})
    pad = b"x" * 120  # about a reading's size, so fetches carry as many as they would
    for i in range(BACKLOG):
        producer.produce(topic, value=b'{"n": %d, "pad": "%s"}' % (i, pad))
    assert producer.flush(60) == 0
    return broker.bootstrap, topic


def _longest_wait_reading_all(bootstrap: str, topic: str, backoff_ms: int) -> tuple[int, float]:
    """Read the whole topic from its start through the flow's source partition, spending
    ``WORK_S`` on each batch; return the messages read and the longest time between the end
    of one batch's work and the next non-empty batch."""
    settings = Settings.from_env({
        "VIGIL_BROKERS": bootstrap, "VIGIL_READINGS_TOPIC": topic, "VIGIL_EXIT_AT_END": "true",
        "VIGIL_FETCH_QUEUE_BACKOFF_MS": str(backoff_ms),
    })
    part = _ReadingsPartition(settings, topic, 0, None)
    read, longest, last = 0, 0.0, None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                batches = part.next_batch()
            except StopIteration:
                break
            if not batches:
                time.sleep(0.001)  # as Bytewax retries an empty source
                continue
            if last is not None:
                longest = max(longest, time.monotonic() - last)
            read += sum(len(b.values) for b in batches)
            time.sleep(WORK_S)
            last = time.monotonic()
    finally:
        part.close()
    return read, longest


@pytest.mark.integration
def test_a_backlog_is_read_without_pausing_when_the_local_queue_fills(backlog):
    read, longest = _longest_wait_reading_all(*backlog, backoff_ms=10)
    assert read == BACKLOG
    assert longest < 0.2, f"the consumer waited {longest:.2f} s for a batch"


@pytest.mark.integration
def test_with_librdkafkas_default_backoff_the_same_backlog_stalls(backlog):
    # the measurement above can see the stall: without this, a backlog too small to fill the
    # queue would pass it for the wrong reason
    read, longest = _longest_wait_reading_all(*backlog, backoff_ms=1000)
    assert read == BACKLOG
    assert longest > 0.3, f"expected librdkafka's 1 s queue backoff, longest wait {longest:.2f} s"
