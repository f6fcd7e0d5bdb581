"""/v1/alerts: ingest (batch), query with keyset pagination, lifecycle, live stream."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from litestar import Request, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, Parameter
from litestar.response import ServerSentEvent

from api._auth import require_read_token, require_token
from api._store import AlertFilter, CursorError, NotFound, decode_cursor, encode_cursor, to_ms
from api._stream import alert_events
from api.routes._common import (
    MAX_PAGE,
    check_range,
    check_span,
    ctx,
    errors,
    ms_or_none,
    rfc3339_only,
)
from api.schemas import AlertPage, AlertPatch, AlertView, IngestResult, LifecycleStatus
from flows.schemas import Alert, Severity

ALERT_EXAMPLE = {
    "alert_id": "015fef00a7773f69ae362de3", "sensor_id": "pump-7", "status": "open",
    "start": "2024-05-01T12:00:00Z", "end": "2024-05-01T12:05:00Z", "score": 9.41,
    "severity": "warning", "detectors": ["zscore"],
    "contributors": [{"metric": "pressure", "weight": 9.41}], "model_version": "zscore-1",
    "windows": 1,
}

log = logging.getLogger("vigil.api.alerts")

SensorQ = Annotated[str | None, Parameter(description="only this sensor")]
SeverityQ = Annotated[Severity | None, Parameter(description="warning or critical")]
StatusQ = Annotated[LifecycleStatus | None, Parameter(description="open, acknowledged, resolved")]
DetectorQ = Annotated[str | None, Parameter(description="alerts raised by this detector")]
SinceQ = Annotated[datetime | None, Parameter(description="incident still running at or after")]
UntilQ = Annotated[datetime | None, Parameter(description="incident started before")]


def _filter(
    sensor_id: str | None, severity: str | None, status: str | None, detector: str | None,
    since: datetime | None, until: datetime | None,
) -> AlertFilter:
    f = AlertFilter(sensor_id, severity, status, detector, ms_or_none("since", since),
                    ms_or_none("until", until))
    check_range(f.since_ms, f.until_ms)
    return f


@post(
    "/v1/alerts", guards=[require_token], status_code=200, tags=["alerts"],
    summary="Ingest a batch of alerts (idempotent on alert_id)", responses=errors(401, 413, 422),
)
async def ingest_alerts(
    request: Request,
    data: Annotated[list[Alert], Body(
        description="Alerts exactly as on the alerts topic (flows.schemas.Alert).",
        examples=[Example(summary="one open alert", value=[ALERT_EXAMPLE])],
    )],
) -> IngestResult:
    """Store alerts the flow emitted. Re-sending a batch changes nothing."""
    for i, a in enumerate(data):
        check_span(f"alert {i} ({a.alert_id!r}): start/end", to_ms(a.start), to_ms(a.end))
    c = ctx(request)
    events, unchanged = c.store.ingest_alerts(data)
    created = sum(1 for e in events if e.kind == "created")
    updated = len(events) - created
    c.metrics.ingested.labels("alerts", "created").inc(created)
    c.metrics.ingested.labels("alerts", "updated").inc(updated)
    c.metrics.ingested.labels("alerts", "unchanged").inc(unchanged)
    for e in events:
        log.info("alert %s", e.kind, extra={
            "alert_id": e.alert.alert_id, "sensor_id": e.alert.sensor_id,
            "status": e.alert.status, "severity": e.alert.severity,
        })
    if events:
        c.broadcaster.notify()
    return IngestResult(len(data), created, updated, unchanged)


@get(
    "/v1/alerts", guards=[require_read_token], tags=["alerts"],
    summary="List alerts, newest incident first", responses=errors(401, 422),
)
async def list_alerts(
    request: Request,
    sensor_id: SensorQ = None,
    severity: SeverityQ = None,
    status: StatusQ = None,
    detector: DetectorQ = None,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description=f"1..{MAX_PAGE}")] = 50,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
) -> AlertPage:
    """Filtered alerts with keyset pagination: no duplicates or gaps across pages."""
    rfc3339_only(request, "since", "until")
    f = _filter(sensor_id, severity, status, detector, since, until)
    try:
        after = decode_cursor(cursor) if cursor else None
    except CursorError as exc:
        raise ClientException(str(exc), status_code=422) from None
    items, nxt = ctx(request).store.list_alerts(f, limit, after)
    return AlertPage(items, encode_cursor(nxt) if nxt else None)


@get(
    "/v1/alerts/stream", guards=[require_read_token], tags=["alerts"],
    summary="Live alerts as Server-Sent Events", responses=errors(401, 422),
)
async def stream_alerts(
    request: Request,
    sensor_id: SensorQ = None,
    severity: SeverityQ = None,
    status: StatusQ = None,
    detector: DetectorQ = None,
    last_event_id: Annotated[int | None, HeaderParameter(
        name="Last-Event-ID", ge=0, description="resume after this event id",
    )] = None,
    after: Annotated[int | None, Parameter(
        ge=0, description="like Last-Event-ID, for clients that cannot set it "
        "(0 replays every stored event)",
    )] = None,
) -> ServerSentEvent:
    """Every alert change from now on (or after Last-Event-ID), as `event: alert`."""
    c = ctx(request)
    f = _filter(sensor_id, severity, status, detector, None, None)
    start = last_event_id if last_event_id is not None else after
    return ServerSentEvent(alert_events(c.store, c.broadcaster, c.metrics, f, start))


@get(
    "/v1/alerts/{alert_id:str}", guards=[require_read_token], tags=["alerts"],
    summary="One alert with its lifecycle", responses=errors(401, 404),
)
async def get_alert(request: Request, alert_id: FromPath[str]) -> AlertView:
    """The alert, or 404."""
    try:
        return ctx(request).store.get_alert(alert_id)
    except NotFound:
        raise NotFoundException(f"no alert with id {alert_id!r}") from None


@patch(
    "/v1/alerts/{alert_id:str}", guards=[require_token], tags=["alerts"],
    summary="Acknowledge or resolve an alert", responses=errors(401, 404, 409, 413, 422),
)
async def update_alert(
    request: Request,
    alert_id: FromPath[str],
    data: Annotated[AlertPatch, Body(examples=[
        Example(summary="acknowledge", value={"status": "acknowledged", "by": "alice"}),
        Example(summary="resolve", value={"status": "resolved", "by": "alice",
                                          "note": "valve replaced"}),
    ])],
) -> AlertView:
    """Move an alert along open -> acknowledged -> resolved; repeating a change is a no-op."""
    c = ctx(request)
    try:
        view, event = c.store.update_lifecycle(alert_id, data.status, data.by, data.note)
    except NotFound:
        raise NotFoundException(f"no alert with id {alert_id!r}") from None
    except ValueError as exc:
        raise ClientException(str(exc), status_code=409) from None
    if event is not None:
        log.info("alert %s", data.status, extra={
            "alert_id": alert_id, "sensor_id": view.sensor_id, "by": data.by,
        })
        c.broadcaster.notify()
    return view
