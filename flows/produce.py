"""Produce one record to Kafka without ever dropping it on a full local queue.

confluent-kafka raises ``BufferError`` when librdkafka's local queue is full (the broker is
slower than the producer for a moment). Every producer in Vigil (the flow's sinks, the
simulator, file replay, the benchmarks) then does the same: let librdkafka send and serve
callbacks for a moment, and try again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: bytes | str | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    wait_s: float = 0.05,
) -> None:
    """``producer.produce``, waiting ``wait_s`` at a time while the local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:  # local queue full: let librdkafka drain, then retry
            producer.poll(wait_s)
