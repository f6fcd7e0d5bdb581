"""Prometheus metrics of the API, in a registry of its own (one per app instance).

Request count and latency are labelled with the *route template* (``/v1/alerts/{alert_id}``),
never the raw path, so label cardinality stays fixed.
"""

from __future__ import annotations

import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.subscribers = Gauge(
            "vigil_api_stream_subscribers", "Open /v1/alerts/stream connections.",
            registry=self.registry,
        )
        self.streamed = Counter(
            "vigil_api_stream_events_total", "Alert events sent to stream subscribers.",
            registry=self.registry,
        )


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
