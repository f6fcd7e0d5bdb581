"""Prometheus metrics of the flow: one registry, names with units and ``_total`` counters.

Counters are process-global (prometheus-client's default registry), incremented by the
flow's operators with whole batches at a time so the hot path stays cheap.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger("vigil.metrics")

READINGS = Counter("vigil_readings_total", "Records read from the readings source.")
ACCEPTED = Counter("vigil_readings_accepted_total", "Readings added to a window.")
DEAD = Counter(
    "vigil_dead_letters_total", "Records sent to the dead-letter topic, by reason.", ["reason"]
)
WINDOWS = Counter("vigil_windows_total", "Windows closed and scored.")
ALERTS = Counter("vigil_alerts_total", "Alert events emitted.", ["severity", "status"])
BATCH_SECONDS = Histogram(
    "vigil_stage_batch_seconds",
    "Time spent in one batch of a stage.",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 = disabled)."""
    if port:
        start_http_server(port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
