"""API-only response and request bodies. Ingested records are the wire Structs of flows.schemas.

Lifecycle status extends the flow's ``open``/``resolved`` with ``acknowledged``: an operator
has seen the alert. ``flow_status`` keeps what the flow itself last said.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from flows.schemas import AlertStatus, Contributor, Severity

LifecycleStatus = Literal["open", "acknowledged", "resolved"]


class AlertView(msgspec.Struct, kw_only=True):
    """An alert as stored: the flow's last word on it plus its lifecycle."""

    alert_id: str
    sensor_id: str
    status: LifecycleStatus
    flow_status: AlertStatus
    start: datetime
    end: datetime
    score: float
    severity: Severity
    detectors: list[str]
    contributors: list[Contributor]
    model_version: str
    windows: int
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    note: str | None = None


class AlertPage(msgspec.Struct):
    """One page of alerts, newest incident first; pass ``next_cursor`` as ``cursor``."""

    items: list[AlertView]
    next_cursor: str | None


class AlertPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Acknowledge or resolve an alert."""

    status: Literal["acknowledged", "resolved"]
    by: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class IngestResult(msgspec.Struct):
    """What one ingest batch changed; re-sending the same batch gives ``unchanged`` only."""

    received: int
    created: int
    updated: int
    unchanged: int


class ScoreIngestResult(msgspec.Struct):
    """How many score records were stored (re-sends overwrite the same window)."""

    received: int
    stored: int


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True):
    """A sign of life from a flow worker; ``/ready`` reports the newest one's age.

    The optional throughput fields are what the sending flow process measured since its
    previous heartbeat, so the API (and the web page's status strip) can show them without
    scraping the flow's Prometheus port.
    """

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    readings_per_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    dead_letters_per_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    lag_messages: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)] | None = None  # SQLite-safe


class SensorStatus(msgspec.Struct, kw_only=True):
    """Latest known state of one sensor."""

    sensor_id: str
    last_seen: datetime | None
    last_score: float | None
    threshold: float | None
    anomalous: bool | None
    model_version: str | None
    open_alerts: int


class SensorPage(msgspec.Struct):
    """One page of sensors ordered by id; pass ``next_cursor`` as ``cursor``."""

    items: list[SensorStatus]
    next_cursor: str | None


class ScorePoint(msgspec.Struct, kw_only=True):
    """One stored score of one window."""

    window_start: datetime
    window_end: datetime
    score: float
    threshold: float
    anomalous: bool
    detectors: dict[str, float]
    model_version: str
    readings: int


class ScoreSeries(msgspec.Struct):
    """A sensor's stored scores in a time range, oldest first."""

    sensor_id: str
    items: list[ScorePoint]
    truncated: bool


class ModelVersion(msgspec.Struct, kw_only=True):
    """One registered model version and the metrics it was validated with."""

    version: str
    kind: str
    created_at: datetime
    active: bool
    threshold: float
    threshold_quantile: float
    features: int
    seq_len: int
    window_length_ms: int
    window_hop_ms: int
    validation: dict[str, float]
    training_epochs: int
    final_loss: float | None
    final_val_loss: float | None


class ModelList(msgspec.Struct):
    """Every valid version in the registry the flow uses, and which one is active."""

    registry: str
    active: str | None
    writable: bool
    versions: list[ModelVersion]


class FlowHealth(msgspec.Struct):
    """The newest flow heartbeat and the throughput it reported (None: not reported)."""

    last_heartbeat: datetime | None
    age_seconds: float | None
    source: str | None
    stale: bool
    readings_per_s: float | None = None
    dead_letters_per_s: float | None = None
    lag_messages: int | None = None


class Ready(msgspec.Struct):
    """Readiness: the database answers; the flow's heartbeat age is reported."""

    status: Literal["ready", "not_ready"]
    database: str
    flow: FlowHealth


class ErrorBody(msgspec.Struct):
    """Every error: a status code and a sentence that says what to change."""

    status_code: int
    detail: str
