"""Prometheus metrics of the API, in a registry of its own (one per app instance).

Request count and latency are labelled with the *route template* (``/v1/alerts/{alert_id}``),
never the raw path, so label cardinality stays fixed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from api._store import Store

log = logging.getLogger("vigil.api.metrics")
INGEST_OUTCOMES = {"alerts": ("created", "updated", "unchanged"), "scores": ("stored",)}


class ApiMetrics:
    """The API's instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vigil_api_requests_total", "HTTP requests answered, by route and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "vigil_api_request_seconds", "Time to answer a request (streams excluded), by route.",
            ["method", "route"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.ingested = Counter(
            "vigil_api_ingested_total",
            "Ingested records by kind (alerts, scores) and outcome (created, updated, "
            "unchanged, stored).",
            ["kind", "outcome"], registry=self.registry,
        )
        for kind, outcomes in INGEST_OUTCOMES.items():
            for outcome in outcomes:  # present at 0 from the start, so rate() sees "none"
                self.ingested.labels(kind, outcome)
        self.subscribers = Gauge(
            "vigil_api_stream_subscribers", "Open /v1/alerts/stream connections.",
            registry=self.registry,
        )
        self.streamed = Counter(
            "vigil_api_stream_events_total", "Alert events sent to stream subscribers.",
            registry=self.registry,
        )


class SensorScoreCollector(Collector):
    """Each sensor's latest score and alert level, read from the database at scrape time.

    Only the first ``limit`` sensors by id are exported (``VIGIL_API_METRICS_SENSORS``): one
    series per sensor is what a Grafana sensor picker needs, but thousands of sensors would
    be thousands of series, so the count is capped and the rest stay in the REST API. Reading
    at scrape time costs nothing on ingest.
    """

    def __init__(self, store: Store, limit: int) -> None:
        self.store = store
        self.limit = limit

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "vigil_api_sensor_score",
                "Latest anomaly likelihood the API holds per sensor (the peak of the flow's "
                "last score push), for the first VIGIL_API_METRICS_SENSORS sensors by id.",
                labels=["sensor_id"],
            ),
            GaugeMetricFamily(
                "vigil_api_sensor_threshold",
                "Alert likelihood the sensor's latest score is compared against.",
                labels=["sensor_id"],
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only: registering must not touch the database."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per exported sensor that has a score."""
        score, threshold = self._families()
        if self.limit:
            try:
                sensors, _ = self.store.sensors(self.limit, None)
            except sqlite3.Error as exc:
                log.warning("sensor scores not exported: database error: %s", exc)
                sensors = []
            for s in sensors:
                if s.last_score is not None:
                    score.add_metric([s.sensor_id], s.last_score)
                if s.threshold is not None:
                    threshold.add_metric([s.sensor_id], s.threshold)
        yield score
        yield threshold


STREAM_ROUTE = "/v1/alerts/stream"


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware counting every routed HTTP request by template and status."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        metrics: ApiMetrics = scope["app"].state.ctx.metrics
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "GET")
            metrics.requests.labels(method, route, str(status)).inc()
            if route != STREAM_ROUTE:
                metrics.latency.labels(method, route).observe(time.perf_counter() - t0)

    return middleware
