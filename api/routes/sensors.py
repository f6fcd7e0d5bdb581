"""/v1/sensors and scores: latest status per sensor, score history, score ingest."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, Parameter

from api._auth import require_read_token, require_token
from api._store import NotFound, to_ms
from api.routes._common import (
    MAX_PAGE,
    check_range,
    check_span,
    ctx,
    errors,
    ms_or_none,
    rfc3339_only,
)
from api.schemas import ScoreIngestResult, ScoreSeries, SensorPage, SensorStatus
from flows.schemas import ScoreRecord

MAX_SCORES = 5000
"""Hard limit of one score query."""

SCORE_EXAMPLE = {
    "sensor_id": "pump-7", "window_start": "2024-05-01T11:55:00Z",
    "window_end": "2024-05-01T12:00:00Z", "score": 0.42, "threshold": 1.0, "anomalous": False,
    "detectors": {"zscore": 0.42}, "contributors": [{"metric": "pressure", "weight": 2.5}],
    "readings": 30, "model_version": "zscore-1",
}


@post(
    "/v1/scores", guards=[require_token], status_code=200, tags=["sensors"],
    summary="Ingest a batch of score records (the flow sends aggregated samples)",
    responses=errors(401, 413, 422),
)
async def ingest_scores(
    request: Request,
    data: Annotated[list[ScoreRecord], Body(
        description="Score records exactly as on the scores topic (flows.schemas.ScoreRecord).",
        examples=[Example(summary="one window", value=[SCORE_EXAMPLE])],
    )],
) -> ScoreIngestResult:
    """Store scores; the same window sent twice is stored once."""
    for i, s in enumerate(data):
        check_span(f"score {i} ({s.sensor_id!r}): window_start/window_end",
                   to_ms(s.window_start), to_ms(s.window_end))
    c = ctx(request)
    stored = c.store.ingest_scores(data)
    c.metrics.ingested.labels("scores", "stored").inc(stored)
    return ScoreIngestResult(len(data), stored)


@get(
    "/v1/sensors", guards=[require_read_token], tags=["sensors"],
    summary="Every known sensor's latest status", responses=errors(401, 422),
)
async def list_sensors(
    request: Request,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description=f"1..{MAX_PAGE}")] = 100,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
) -> SensorPage:
    """Sensors ordered by id: last seen, last score, open alerts, model version."""
    items, nxt = ctx(request).store.sensors(limit, cursor)
    return SensorPage(items, nxt)


@get(
    "/v1/sensors/{sensor_id:str}", guards=[require_read_token], tags=["sensors"],
    summary="One sensor's latest status", responses=errors(401, 404),
)
async def get_sensor(request: Request, sensor_id: FromPath[str]) -> SensorStatus:
    """The sensor, or 404 if no alert or score of it was ever ingested."""
    try:
        return ctx(request).store.sensor(sensor_id)
    except NotFound:
        raise NotFoundException(f"no sensor with id {sensor_id!r}") from None


@get(
    "/v1/sensors/{sensor_id:str}/scores", guards=[require_read_token], tags=["sensors"],
    summary="A sensor's score history", responses=errors(401, 404, 422),
)
async def sensor_scores(
    request: Request,
    sensor_id: FromPath[str],
    since: Annotated[datetime | None, Parameter(description="windows ending at or after")] = None,
    until: Annotated[datetime | None, Parameter(description="windows ending before")] = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_SCORES, description=f"1..{MAX_SCORES}")] = 1000,
) -> ScoreSeries:
    """Stored scores, oldest first; `truncated` says the limit cut the range short."""
    rfc3339_only(request, "since", "until")
    store = ctx(request).store
    lo, hi = ms_or_none("since", since), ms_or_none("until", until)
    check_range(lo, hi)
    try:
        store.sensor(sensor_id)
    except NotFound:
        raise NotFoundException(f"no sensor with id {sensor_id!r}") from None
    items, truncated = store.scores(sensor_id, lo, hi, limit)
    return ScoreSeries(sensor_id, items, truncated)
