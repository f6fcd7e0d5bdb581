"""/health, /ready, /metrics and the flow's heartbeat."""

from __future__ import annotations

import sqlite3

from litestar import Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api._auth import require_token
from api._store import from_ms, now_ms
from api.routes._common import ctx, errors
from api.schemas import FlowHealth, Heartbeat, Ready


@get("/health", tags=["health"], summary="The process is alive")
async def health() -> dict[str, str]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


@get(
    "/ready", tags=["health"],
    summary="Database reachable; flow heartbeat age and throughput",
    responses={503: ResponseSpec(Ready, description="The database does not answer.",
                                 generate_examples=False)},
)
async def ready(request: Request) -> Response[Ready]:
    """503 when the database does not answer. A missing or stale flow heartbeat is reported
    (`flow.stale`) but does not make the API unready: it still serves what it has."""
    c = ctx(request)
    beat = None
    try:
        c.store.ping()
        beat = c.store.last_heartbeat()
        database = "ok"
    except sqlite3.Error as exc:
        database = f"error: {exc}"
    stale_s = c.settings.api_heartbeat_stale.total_seconds()
    if beat is None:
        flow = FlowHealth(None, None, None, True)
    else:
        hb, at_ms = beat
        age = max(0.0, (now_ms() - at_ms) / 1000)
        flow = FlowHealth(from_ms(at_ms), round(age, 3), hb.source, age > stale_s,
                          hb.readings_per_s, hb.dead_letters_per_s, hb.lag_messages)
    ok = database == "ok"
    return Response(
        Ready("ready" if ok else "not_ready", database, flow), status_code=200 if ok else 503
    )


@get("/metrics", tags=["health"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response[bytes]:
    """Request counts and latency by route, ingest counts, stream subscribers."""
    body = generate_latest(ctx(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@post(
    "/v1/heartbeat", guards=[require_token], status_code=204, tags=["health"],
    summary="A sign of life from the flow", responses=errors(401, 413, 422),
)
async def heartbeat(request: Request, data: JSONBody[Heartbeat]) -> None:
    """The flow's API sink calls this regularly; /ready reports the newest one's age and
    throughput (the web page's status strip reads it there)."""
    ctx(request).store.heartbeat(data)
