"""Prometheus metrics of the flow: one registry, names with units and ``_total`` counters.

Metrics are process-global (prometheus-client's default registry) and updated once per
batch by the flow's operators, never once per reading, so the hot path pays a few calls per
batch of thousands. ``VIGIL_METRICS_PORT`` serves them at ``/metrics``; ops/prometheus/ has
the alert rules and ops/grafana/ the dashboard built on these names (a test checks that every
name they use is defined here or by the API).

Latency is measured from the *Kafka message timestamp* (the producer's CreateTime, or the
broker's LogAppendTime when the topic is configured so) of the oldest record of the batch
that closed a window, to the moment its score or alert was emitted: an upper bound for every
record of that batch. Event-time lag (window end -> alert emitted) is a separate histogram:
it includes the allowed lateness by design and is large for replays of old data.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from detectors.base import Verdicts, verdicts_of

log = logging.getLogger("vigil.metrics")

READINGS = Counter("vigil_readings_total", "Records read from the readings source.")
ACCEPTED = Counter("vigil_readings_accepted_total", "Readings added to a window.")
DEAD = Counter(
    "vigil_dead_letters_total",
    "Records sent to the dead-letter topic, by reason (`late`: behind the allowed lateness).",
    ["reason"],
)
WINDOWS = Counter("vigil_windows_total", "Windows closed and scored.")
SCORES = Counter(
    "vigil_scores_total", "Score records emitted, by whether the window was anomalous.",
    ["anomalous"],
)
ALERTS = Counter("vigil_alerts_total", "Alert events emitted.", ["severity", "status"])
BATCH_SECONDS = Histogram(
    "vigil_stage_batch_seconds",
    "Time spent in one batch of a stage.",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)
INFERENCE_SECONDS = Histogram(
    "vigil_inference_seconds",
    "Time one detector took to score (and learn from) one batch of windows, by detector.",
    ["detector"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
)
SCORING_LATENCY = Histogram(
    "vigil_scoring_latency_seconds",
    "Kafka timestamp of the oldest reading of a batch -> that batch's windows scored; one "
    "observation per scored batch.",
    buckets=_LATENCY_BUCKETS,
)
ALERT_LATENCY = Histogram(
    "vigil_alert_latency_seconds",
    "Kafka timestamp of the oldest reading of the batch that closed an alert's window -> the "
    "alert emitted.",
    buckets=_LATENCY_BUCKETS,
)
ALERT_EVENT_LAG = Histogram(
    "vigil_alert_event_lag_seconds",
    "Event time of the alert's window end -> the alert emitted (wall clock); includes the "
    "allowed lateness.",
    buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0),
)
MODEL = Gauge(
    "vigil_model_info",
    "1 for each model version (all detectors, e.g. `hst-1+v0002-ab12`) that at least one "
    "state shard scores with; two during a hot reload.",
    ["version"],
)
CONSUMER_LAG = Gauge(
    "vigil_consumer_lag_messages",
    "Readings not yet read: the partition's high watermark minus the flow's next offset, "
    "sampled at most once a second per partition.",
    ["topic", "partition"],
)
SNAPSHOT_SECONDS = Histogram(
    "vigil_snapshot_seconds",
    "Time to produce one recovery snapshot of one state shard or sink, by step (state "
    "serialisation; sinks: waiting for the broker to acknowledge what they wrote).",
    ["step"],
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

LAG_SAMPLE_SECONDS = 1.0
_model_shards: dict[str, int] = {}


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 = disabled); a taken port stops the process clearly."""
    if not port:
        return
    disable_created_metrics()  # `_created` series double the count and no panel uses them
    try:
        start_http_server(port)
    except OSError as exc:
        raise SystemExit(
            f"vigil: cannot serve metrics on port {port} ({exc.strerror}); set "
            "VIGIL_METRICS_PORT to a free port, or 0 to turn metrics off"
        ) from None
    log.info("metrics on http://0.0.0.0:%d/metrics", port, extra={"port": port})


def model_switched(new: str, old: str | None) -> None:
    """A state shard now scores with ``new`` (instead of ``old``)."""
    if old is not None:
        left = _model_shards.get(old, 0) - 1
        if left <= 0:
            _model_shards.pop(old, None)
            with contextlib.suppress(KeyError):
                MODEL.remove(old)
        else:
            _model_shards[old] = left
    _model_shards[new] = _model_shards.get(new, 0) + 1
    MODEL.labels(new).set(1)


@dataclass(frozen=True, slots=True)
class FlowTotals:
    """This process's counts so far, for the heartbeat the flow sends to the API."""

    readings: float
    dead_letters: float
    lag_messages: int | None  # summed over partitions; None before any partition reported


def _sum(metric: Any, name: str) -> tuple[float, int]:
    """Sum and number of the samples called ``name`` of a (labelled) metric."""
    values = [s.value for m in metric.collect() for s in m.samples if s.name == name]
    return sum(values, 0.0), len(values)


def totals() -> FlowTotals:
    """Readings read, dead letters written and consumer lag of this process, right now.

    Read from the same Prometheus objects /metrics serves, so the API's status and the
    dashboards can never disagree about what was counted.
    """
    readings, _ = _sum(READINGS, "vigil_readings_total")
    dead, _ = _sum(DEAD, "vigil_dead_letters_total")
    lag, partitions = _sum(CONSUMER_LAG, "vigil_consumer_lag_messages")
    return FlowTotals(readings, dead, round(lag) if partitions else None)


def latency_since(produced_ms: int, now: float) -> float:
    """Seconds from a Kafka timestamp to ``now``; clocks of other hosts may run ahead: >= 0."""
    return max(0.0, now - produced_ms / 1000)


class TimedDetector:
    """A detector whose scoring calls feed ``vigil_inference_seconds{detector}``.

    Everything else (name, version, snapshot, hot reload) is the wrapped detector's own.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._seconds = INFERENCE_SECONDS.labels(inner.name)

    def score_and_learn(self, batch: list) -> list:
        """Score and learn, timing the call."""
        t0 = time.perf_counter()
        try:
            return self._inner.score_and_learn(batch)
        finally:
            self._seconds.observe(time.perf_counter() - t0)

    def score_batch(self, batch: list) -> Verdicts:
        """Score and learn as columns (what the ensemble calls), timing the call."""
        t0 = time.perf_counter()
        try:
            return verdicts_of(self._inner, batch)
        finally:
            self._seconds.observe(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def timed(detectors: Iterable[Any]) -> list[Any]:
    """Each detector wrapped in TimedDetector (once)."""
    return [d if isinstance(d, TimedDetector) else TimedDetector(d) for d in detectors]
