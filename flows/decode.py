"""Decode and validate a batch of raw records: every record becomes a Reading or a DeadLetter.

Nothing is dropped and nothing raises: each failure gets a short stable ``reason`` code (used
as a metrics label and for filtering) and a ``detail`` sentence that says what to fix.
Reason codes: empty_record, too_large, unknown_encoding, malformed_json, not_finite,
not_an_object, missing_field, wrong_type, invalid_value, bad_timestamp, future_timestamp
(and ``late``, added by the window stage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from flows.schemas import DeadLetter, Reading, reading_decoder


@dataclass(slots=True)
class RawBatch:
    """Records read together from one partition of one topic (or from the simulator)."""

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]
    # Kafka timestamp (epoch ms) of the batch's oldest record; 0 when unknown. Latency
    # metrics are measured from it (flows.metrics).
    produced_ms: int = 0


@dataclass(slots=True)
class DecodedBatch:
    """The outcome of decoding one RawBatch."""

    readings: list[Reading] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    produced_ms: int = 0  # from the RawBatch


_NON_FINITE = re.compile(rb"(?<![A-Za-z\"])-?(NaN|Infinity|inf)(?![A-Za-z\"])")
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data"),
    (b"\x00", "Confluent Schema Registry framing (magic byte 0, e.g. Avro or Protobuf)"),
    (b"\xff\xfe", "UTF-16 (little-endian BOM)"),
    (b"\xfe\xff", "UTF-16 (big-endian BOM)"),
    (b"Obj\x01", "an Avro container file"),
)
_EXPECTED = "Vigil expects UTF-8 JSON readings (see docs/schemas.md)"


def _classify_decode_error(raw: bytes, exc: msgspec.DecodeError) -> tuple[str, str]:
    for magic, what in _MAGIC:
        if raw.startswith(magic):
            return "unknown_encoding", f"record looks like {what}; {_EXPECTED}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"{err.reason} at byte {err.start}"
        return "unknown_encoding", f"record is not valid UTF-8 ({where}); {_EXPECTED}"
    if _NON_FINITE.search(raw):
        return "not_finite", "record contains NaN or Infinity, which JSON does not allow"
    return "malformed_json", f"record is not valid JSON: {exc}"


def _classify_validation_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    msg = str(exc)
    if msg.startswith("Object missing required field"):
        return "missing_field", msg
    if msg.startswith("Number out of range"):
        return "not_finite", f"a value is too large to be a finite float64: {msg}"
    if msg.startswith("Expected `object`, got") and " - at " not in msg:  # the root value
        return "not_an_object", f"a reading must be a JSON object: {msg}"
    if msg.startswith("Expected `"):
        if "of length" in msg:
            return "invalid_value", msg
        return "wrong_type", msg
    if "`ts`" in msg:
        return "bad_timestamp", msg
    return "invalid_value", msg


class BatchDecoder:
    """Turns RawBatches into Readings and DeadLetters; pure apart from reading the clock."""

    def __init__(self, max_record_bytes: int, max_future_ms: int) -> None:
        self.max_record_bytes = max_record_bytes
        self.max_future_ms = max_future_ms
        # capped at ~317,000 years, where timedelta ends; every datetime is that close
        self._ahead = timedelta(milliseconds=min(max_future_ms, 10**16))

    def __call__(self, batch: RawBatch, now: datetime | None = None) -> DecodedBatch:
        """Decode every record of ``batch``; ``now`` is injectable for tests."""
        now = now or datetime.now(UTC)
        try:
            horizon = now + self._ahead
        except OverflowError:  # a horizon past year 9999: nothing is too far ahead
            horizon = datetime.max.replace(tzinfo=UTC)
        out = DecodedBatch(produced_ms=batch.produced_ms)
        readings = out.readings
        decode = reading_decoder.decode
        limit = self.max_record_bytes
        for offset, raw in zip(batch.offsets, batch.values, strict=True):
            if not raw:
                out.dead.append(self._dead(batch, offset, raw, now, "empty_record",
                                           "record has no value (null or zero bytes)"))
                continue
            if len(raw) > limit:
                out.dead.append(self._dead(
                    batch, offset, raw[:1024], now, "too_large",
                    f"record is {len(raw)} bytes, over VIGIL_MAX_RECORD_BYTES={limit} "
                    "(only its first 1024 bytes are kept here)",
                ))
                continue
            try:
                reading = decode(raw)
            except msgspec.ValidationError as exc:
                reason, detail = _classify_validation_error(exc)
                out.dead.append(self._dead(batch, offset, raw, now, reason, detail))
                continue
            except msgspec.DecodeError as exc:
                reason, detail = _classify_decode_error(raw, exc)
                out.dead.append(self._dead(batch, offset, raw, now, reason, detail))
                continue
            if reading.ts > horizon:
                out.dead.append(self._dead(
                    batch, offset, raw, now, "future_timestamp",
                    f"`ts` {reading.ts.isoformat()} is more than "  # type: ignore[union-attr]
                    f"{self.max_future_ms / 1000:g}s ahead of the clock ({now.isoformat()})",
                    reading.sensor_id,
                ))
                continue
            readings.append(reading)
        return out

    @staticmethod
    def _dead(
        batch: RawBatch, offset: int, raw: bytes | None, now: datetime, reason: str,
        detail: str, sensor_id: str | None = None,
    ) -> DeadLetter:
        return DeadLetter(
            reason=reason, detail=detail, raw=raw or b"", topic=batch.topic,
            partition=batch.partition, offset=offset, received_at=now, sensor_id=sensor_id,
        )
