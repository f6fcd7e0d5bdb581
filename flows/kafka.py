"""Kafka/Redpanda connectors for Bytewax: a batching readings source and a flushing sink.

The source yields one item per poll (a RawBatch of up to ``consumer_batch_size`` records of
one partition) instead of one item per record, which keeps Bytewax's per-item overhead off
the hot path. Its resume state is the next offset, stored in Bytewax's recovery snapshots,
so offsets and operator state always come back together (no consumer-group commits).

The sink produces as items arrive and *flushes at every recovery snapshot*: an epoch is only
committed once its alerts are acknowledged by the broker, so a crash can re-send alerts
(at-least-once, same ``alert_id``) but never lose one.
"""

from __future__ import annotations

import logging
import time

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from flows import metrics
from flows.decode import RawBatch
from flows.produce import produce
from flows.settings import Settings

log = logging.getLogger("vigil.kafka")


def list_partitions(settings: Settings, topic: str, timeout: float = 10.0) -> list[int]:
    """Partition ids of ``topic``, with an error that says what to do when it is missing."""
    admin = AdminClient(settings.kafka_config())
    try:
        meta = admin.list_topics(topic, timeout=timeout)
    except Exception as exc:  # KafkaException: broker unreachable
        raise RuntimeError(
            f"cannot reach Kafka at {','.join(settings.brokers)} to read topic {topic!r}: {exc}"
        ) from exc
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None or not tmeta.partitions:
        why = tmeta.error.str() if tmeta is not None and tmeta.error else "no partitions"
        raise RuntimeError(
            f"topic {topic!r} is not usable on {','.join(settings.brokers)} ({why}); "
            "create it first, e.g. `python -m bench.broker` locally or the compose `init` service"
        )
    return sorted(tmeta.partitions)


def instance_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions this instance reads: all of them, or with ``VIGIL_INSTANCES`` > 1 its
    share (``p % instances == instance``), so independent processes split the topic."""
    every = list_partitions(settings, topic)
    n, i = settings.instances, settings.instance
    mine = [p for p in every if p % n == i]
    if not mine:
        raise RuntimeError(
            f"VIGIL_INSTANCE={i} of VIGIL_INSTANCES={n} has no partition to read: topic "
            f"{topic!r} has {len(every)}; run at most {len(every)} instances, or add partitions"
        )
    return mine


def readings_consumer_config(settings: Settings) -> dict[str, str | int | bool]:
    """librdkafka settings of the readings consumer; offsets live in recovery, not the group."""
    return {
        **settings.kafka_config(),
        "group.id": "vigil-detect",  # required by librdkafka, never joined (assign only)
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        "fetch.queue.backoff.ms": settings.fetch_queue_backoff_ms,
        "queued.max.messages.kbytes": 65536,
    }


class _ReadingsPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self, settings: Settings, topic: str, partition: int, resume_offset: int | None
    ) -> None:
        start = settings.starting_offset
        self._offset = resume_offset if resume_offset is not None else (
            OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        )
        self._consumer = Consumer(readings_consumer_config(settings))
        self._consumer.assign([KafkaTopicPartition(topic, partition, self._offset)])
        self._end: int | None = None  # exit_at_end: stop at this offset
        self._end_confirmed = False
        self._end_deadline = 0.0
        if settings.exit_at_end:
            tp = KafkaTopicPartition(topic, partition)
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            self._end = high
            self._end_deadline = time.monotonic() + 5.0
            if self._offset < 0:  # OFFSET_BEGINNING / OFFSET_END before the first message
                self._offset = low if self._offset == OFFSET_BEGINNING else high
        self._topic = topic
        self._partition = partition
        self._batch_size = settings.consumer_batch_size
        self._poll_s = settings.consumer_poll_ms / 1000.0
        self._lag = metrics.CONSUMER_LAG.labels(topic, str(partition))
        self._lag_sampled = 0.0

    def _sample_lag(self) -> None:
        """Lag from the high watermark the last fetch response carried: no broker round trip."""
        now = time.monotonic()
        if now - self._lag_sampled < metrics.LAG_SAMPLE_SECONDS or self._offset < 0:
            return
        self._lag_sampled = now
        tp = KafkaTopicPartition(self._topic, self._partition)
        _, high = self._consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            self._lag.set(max(0, high - self._offset))

    def _confirm_end(self) -> None:
        """Take the end offset from a fetch response, not only from ListOffsets.

        Some Kafka-protocol brokers (the tansu test broker) answer ListOffsets with a stale
        high watermark; the one carried by fetch responses is right on every broker.
        """
        assert self._end is not None
        tp = KafkaTopicPartition(self._topic, self._partition)
        _, high = self._consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            self._end = max(self._end, high)
            self._end_confirmed = True
        elif time.monotonic() > self._end_deadline:
            self._end_confirmed = True  # no fetch answer in time: trust ListOffsets

    def _at_end(self) -> bool:
        return self._end is not None and self._end_confirmed and self._offset >= self._end

    def next_batch(self) -> list[RawBatch]:
        if self._at_end():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, self._poll_s)
        if self._end is not None and not self._end_confirmed:
            self._confirm_end()
        self._sample_lag()
        if not msgs:
            if self._end is not None and self._end_confirmed:
                tp = KafkaTopicPartition(self._topic, self._partition)
                (pos,) = self._consumer.position([tp])
                if pos.offset >= self._end:
                    raise StopIteration
            return []
        offsets: list[int] = []
        values: list[bytes | None] = []
        produced_ms = 0
        for m in msgs:
            if self._end_confirmed and self._end is not None and m.offset() >= self._end:
                break
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"fatal Kafka error on {self._topic}: {err}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s[%d]: %s", self._topic, self._partition, err)
                continue
            if not offsets:
                kind, ts = m.timestamp()
                produced_ms = ts if kind != TIMESTAMP_NOT_AVAILABLE and ts > 0 else 0
            offsets.append(m.offset())
            values.append(m.value())
        if not offsets:
            return []
        self._offset = offsets[-1] + 1
        return [RawBatch(self._topic, self._partition, offsets, values, produced_ms)]

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class ReadingsSource(FixedPartitionedSource[RawBatch, int]):
    """Every partition of the readings topic, each resumed from its recovered offset."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        topic = self._settings.readings_topic
        return [f"{p}-{topic}" for p in instance_partitions(self._settings, topic)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _ReadingsPartition:
        idx, topic = for_part.split("-", 1)
        return _ReadingsPartition(self._settings, topic, int(idx), resume_state)


KeyValue = tuple[bytes | None, bytes]


class _ProducerPartition(StatefulSinkPartition[KeyValue, None]):
    def __init__(self, settings: Settings, topic: str) -> None:
        self._topic = topic
        self._flush_seconds = metrics.SNAPSHOT_SECONDS.labels(f"write:{topic}")
        self._errors: list[str] = []
        self._producer = Producer({
            **settings.kafka_config(),
            "linger.ms": settings.producer_linger_ms,
            "enable.idempotence": False,
            "acks": "all",
            "message.timeout.ms": 120_000,
        })

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def write_batch(self, values: list[KeyValue]) -> None:
        producer, topic, delivered = self._producer, self._topic, self._on_delivery
        for key, value in values:
            produce(producer, topic, value, key, delivered)
        producer.poll(0)

    def snapshot(self) -> None:
        # Block the epoch until the broker has every record written so far.
        t0 = time.perf_counter()
        remaining = self._producer.flush(60)
        self._flush_seconds.observe(time.perf_counter() - t0)
        if remaining or self._errors:
            errors, self._errors = self._errors[:3], []
            raise RuntimeError(
                f"could not deliver {remaining} record(s) to {self._topic!r} "
                f"(errors: {errors}); stopping so recovery re-sends them"
            )

    def close(self) -> None:
        self._producer.flush(30)


class TopicSink(FixedPartitionedSink[KeyValue, None]):
    """Writes (key, value) byte pairs to one topic; upstream items are ``(route, (k, v))``."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._settings = settings
        self._topic = topic

    def list_parts(self) -> list[str]:
        return [self._topic]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _ProducerPartition:
        return _ProducerPartition(self._settings, self._topic)

