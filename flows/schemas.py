"""Wire formats: the one definition of every record that crosses a topic or the API.

Each record is a msgspec Struct, so decoding and validation happen in one C pass. Readings
accept ``ts`` as RFC 3339 (with an offset) or epoch milliseconds and hold an aware UTC
datetime after decoding. ``docs/schemas.md`` shows a JSON example of each, and a test decodes
those examples with these classes.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

SensorId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Severity = Literal["warning", "critical"]
# Counts a JSON client (and SQLite's 64-bit INTEGER) represents exactly.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
AlertStatus = Literal["open", "resolved"]

# Epoch milliseconds accepted for ``ts``: years 1970..2200. Outside that an int is almost
# certainly seconds or microseconds sent by mistake, which deserves a clear rejection.
_MAX_EPOCH_MS = 7_258_118_400_000


class Reading(msgspec.Struct, frozen=True):
    """One sample of one sensor: a timestamp and one or more named metric values.

    ``ts_ms`` (integer epoch milliseconds, the unit windows work in) is computed from ``ts``
    when read, not stored: a value kept beside the fields needs an instance ``__dict__``,
    and allocating one cost ~0.9 µs per decoded reading, more than the whole conversion
    (~0.2 µs). Only the window stage reads it; the decoder compares datetimes.
    """

    sensor_id: SensorId
    ts: datetime | int | float
    values: Annotated[dict[MetricName, float], msgspec.Meta(min_length=1, max_length=500)]

    def __post_init__(self) -> None:
        ts = self.ts
        if type(ts) is datetime:
            if ts.tzinfo is None:
                raise ValueError(
                    "`ts` has no UTC offset; send RFC 3339 such as 2024-05-01T12:00:00Z "
                    "or epoch milliseconds"
                )
            if ts.tzinfo is not UTC and ts.utcoffset():  # "Z" decodes to UTC itself: no call
                msgspec.structs.force_setattr(self, "ts", ts.astimezone(UTC))
        else:
            if not 0 <= ts <= _MAX_EPOCH_MS:
                raise ValueError(
                    f"`ts` {ts!r} is not epoch milliseconds between 1970 and 2200"
                )
            msgspec.structs.force_setattr(self, "ts", datetime.fromtimestamp(ts / 1000, UTC))
        # The decoder rejects NaN/inf text; this guards direct construction. One C-level sum
        # is the quick check (NaN and inf carry through it); only then look for the culprit
        # (a sum of finite values can also overflow).
        if not math.isfinite(sum(self.values.values())):
            for name, value in self.values.items():
                if not math.isfinite(value):
                    raise ValueError(f"`values.{name}` is not a finite number ({value})")

    @property
    def ts_ms(self) -> int:
        """Event time as integer epoch milliseconds (exact for epoch-millisecond input)."""
        return round(self.ts.timestamp() * 1000)  # type: ignore[union-attr]


class Contributor(msgspec.Struct, frozen=True):
    """A metric that pushed a score up, with how much (detector-specific, larger = more)."""

    metric: str
    weight: float


class ScoreRecord(msgspec.Struct, frozen=True):
    """One sensor's score for one closed window (one per sensor per hop).

    ``score`` is the combined anomaly likelihood in [0, 1] (``threshold`` is the alert
    level); ``detectors`` holds each detector's raw score and ``likelihoods`` its calibrated
    likelihood (absent while that detector is still warming up for the sensor). ``surprise``
    is the same likelihood judged against all recent windows, the ongoing incident included:
    high at an incident's onset, fading as it persists (``detectors/ensemble.py``).
    """

    sensor_id: str
    window_start: datetime
    window_end: datetime
    score: float
    threshold: float
    anomalous: bool
    detectors: dict[str, float]
    contributors: list[Contributor]
    readings: Count
    model_version: str
    likelihoods: dict[str, float] = msgspec.field(default_factory=dict)
    surprise: float = 0.0


class Alert(msgspec.Struct, frozen=True):
    """An incident on one sensor. Emitted when it opens and again when it resolves.

    ``alert_id`` is derived from the sensor, the incident's first window and the detectors,
    so a replay after a crash re-emits the same id and consumers can de-duplicate on it.
    """

    alert_id: str
    sensor_id: str
    status: AlertStatus
    start: datetime
    end: datetime
    score: float
    severity: Severity
    detectors: list[str]
    contributors: list[Contributor]
    model_version: str
    windows: Count = 1


class DeadLetter(msgspec.Struct, frozen=True):
    """A record the flow could not use, kept with the reason instead of being dropped.

    ``reason`` is a short stable code (for metrics and filtering); ``detail`` says exactly
    what was wrong in words a person can act on. ``raw`` is the original bytes (base64).
    """

    reason: str
    detail: str
    raw: bytes
    topic: str
    partition: int
    offset: int
    received_at: datetime
    sensor_id: str | None = None


class FeatureWindow(msgspec.Struct, frozen=True):
    """Features of one sensor over one closed window; ``features`` keys are ``metric.stat``."""

    sensor_id: str
    start: datetime
    end: datetime
    features: dict[str, float]
    readings: int


def alert_id_for(sensor_id: str, incident_start: datetime, detectors: list[str]) -> str:
    """Deterministic id: the same incident in the same input always gets the same id."""
    key = f"{sensor_id}\x1f{incident_start.isoformat()}\x1f{','.join(sorted(detectors))}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


reading_decoder = msgspec.json.Decoder(Reading)
encoder = msgspec.json.Encoder()
