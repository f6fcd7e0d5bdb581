"""Wire formats: the documented examples decode, ids are deterministic, readings normalise."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.schemas import Alert, DeadLetter, Reading, ScoreRecord, alert_id_for, reading_decoder

DOC = (Path(__file__).resolve().parents[1] / "docs" / "schemas.md").read_text()


def _examples(section: str) -> list[bytes]:
    body = DOC.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.encode() for b in re.findall(r"```json\n(.*?)\n```", body, re.S)]


@pytest.mark.parametrize(
    ("section", "struct"),
    [("Reading", Reading), ("Alert", Alert), ("Score record", ScoreRecord),
     ("Dead letter", DeadLetter)],
)
def test_every_documented_example_decodes_with_its_struct(section, struct):
    examples = _examples(section)
    assert examples
    for raw in examples:
        obj = msgspec.json.decode(raw, type=struct)
        assert msgspec.json.decode(msgspec.json.encode(obj), type=struct) == obj


def test_the_same_incident_always_gets_the_same_alert_id():
    t = datetime(2024, 5, 1, tzinfo=UTC)
    assert alert_id_for("a", t, ["zscore"]) == alert_id_for("a", t, ["zscore"])
    assert alert_id_for("a", t, ["x", "y"]) == alert_id_for("a", t, ["y", "x"])
    assert alert_id_for("a", t, ["zscore"]) != alert_id_for("b", t, ["zscore"])
    later = t + timedelta(seconds=1)
    assert alert_id_for("a", t, ["zscore"]) != alert_id_for("a", later, ["zscore"])


def test_a_reading_round_trips_with_rfc3339_utc_time():
    r = reading_decoder.decode(b'{"sensor_id":"x","ts":1714564800000,"values":{"v":1}}')
    assert r.ts == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert msgspec.json.encode(r) == (
        b'{"sensor_id":"x","ts":"2024-05-01T12:00:00Z","values":{"v":1.0}}'
    )
    assert r.ts_ms == 1714564800000


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=7_258_118_400_000))
def test_epoch_milliseconds_come_back_exactly_from_the_utc_timestamp(ms):
    # ts_ms is computed from the datetime the reading holds, not kept beside it
    r = reading_decoder.decode(b'{"sensor_id":"x","ts":%d,"values":{"v":1}}' % ms)
    assert r.ts_ms == ms
