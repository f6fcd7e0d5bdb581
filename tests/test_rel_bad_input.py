"""Reliability 4: hostile input never crashes the flow, and every record is accounted for.

Hypothesis throws arbitrary bytes, deep and huge JSON, wrong types, NaN/inf, extreme numbers,
unicode sensor ids, duplicated and out-of-order readings at the decoder (many examples) and at
the whole dataflow (bytewax.testing, fewer: each is a dataflow run). The reconciliation is
exact: with tumbling windows each accepted reading feeds exactly one scored window, so

    records in == readings in score records + dead letters (decode failures + late)

and every dead letter carries a reason and a detail. One test does the same through a real
broker and the real flow process. ``VIGIL_TEST_BAD_INPUT_EXAMPLES`` scales the example counts
(default 1 = CI; docs/reliability.md's long run uses 10).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from datetime import timedelta

import orjson
import pytest
from flowkit import FAST, T0, run_flow, to_batches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration import FLOW_TOPICS, flow_env, produce, read_decoded, start_flow, wait_exit

from flows.decode import BatchDecoder, RawBatch
from flows.schemas import DeadLetter, ScoreRecord

pytestmark = pytest.mark.reliability

SCALE = int(os.environ.get("VIGIL_TEST_BAD_INPUT_EXAMPLES", "1"))
REASONS = {
    "empty_record", "too_large", "unknown_encoding", "malformed_json", "not_finite",
    "not_an_object", "missing_field", "wrong_type", "invalid_value", "bad_timestamp",
    "future_timestamp", "late",
}
# Tumbling windows: one window per reading, so counts reconcile exactly.
TUMBLING = FAST.__class__(**{
    **{f: getattr(FAST, f) for f in FAST.__dataclass_fields__},
    "window_length": timedelta(seconds=10), "window_hop": timedelta(seconds=10),
    "allowed_lateness": timedelta(seconds=3), "max_record_bytes": 4096,
})

# --- strategies --------------------------------------------------------------------------------

sensor_ids = st.one_of(
    st.sampled_from(["pump-1", "pump-2", "泵-3", "🛢️-4", "a" * 200]),
    st.text(min_size=1, max_size=200),
)
extreme = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 1e300]),
)
values = st.dictionaries(st.text(min_size=1, max_size=100), extreme, min_size=1, max_size=4)


@st.composite
def good_reading(draw: st.DrawFn) -> bytes:
    """A valid reading near T0 (so duplicates and out-of-order ones happen), any encoding of
    its timestamp."""
    ts = T0 + draw(st.integers(0, 120)) * 500
    ts_field: object = ts if draw(st.booleans()) else (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}Z"
    )
    return orjson.dumps({"sensor_id": draw(sensor_ids), "ts": ts_field, "values": draw(values)})


def _nested(depth: int) -> bytes:
    return b'{"sensor_id": "deep", "ts": 1700000000000, "values": ' + b"[" * depth + b"]" * depth


bad_record = st.one_of(
    st.binary(max_size=300),
    st.just(b""),
    st.integers(1, 20000).map(_nested),
    st.integers(5000, 200_000).map(lambda n: b'{"sensor_id": "big", "pad": "' + b"x" * n + b'"}'),
    st.sampled_from([
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": NaN}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": Infinity}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": -inf}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": 1e400}}',
        b'{"sensor_id": "a", "ts": 1e30, "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": -1, "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": 99999999999999999999999, "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": true, "values": {"x": 1}}',
        b'{"sensor_id": 7, "ts": 1700000000000, "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": "1"}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": {}}',
        b'{"sensor_id": "a", "ts": 1700000000000, "values": []}',
        b'{"sensor_id": "", "ts": 1700000000000, "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": "2024-13-45T99:00:00Z", "values": {"x": 1}}',
        b'{"sensor_id": "a", "ts": 4102444800000, "values": {"x": 1}}',
        b'{"sensor_id": "a\\ud800", "ts": 1700000000000, "values": {"x": 1}}',
        b'null', b'[]', b'"reading"', b'1e999', b'\xef\xbb\xbf{}', b'\x1f\x8b\x08\x00',
        b'\x00\x00\x00\x00\x01', b'\xff\xfe{\x00}\x00',
    ]),
    st.builds(lambda v: json.dumps({"sensor_id": "a", "ts": T0, "values": v}).encode(),
              st.one_of(st.text(), st.lists(st.integers()), st.none(), st.booleans())),
)

mixed = st.lists(st.one_of(good_reading(), good_reading(), bad_record), min_size=1, max_size=60)


def _account(records: list[bytes | None], dead: list[DeadLetter], scored: int) -> None:
    """Every record is scored or dead-lettered with a reason, none twice, none missing."""
    assert all(d.reason in REASONS and len(d.detail) > 10 for d in dead), dead[:3]
    assert scored + len(dead) == len(records), (scored, Counter(d.reason for d in dead))
    decode_dead = [d.offset for d in dead if d.reason != "late"]
    assert len(set(decode_dead)) == len(decode_dead)
    assert set(decode_dead) <= set(range(len(records)))


# --- decoder: many examples ------------------------------------------------------------------

@settings(max_examples=500 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(good_reading(), bad_record, st.none()), min_size=1, max_size=40))
def test_the_decoder_turns_any_bytes_into_a_reading_or_a_reasoned_dead_letter(records):
    batch = RawBatch("readings", 0, list(range(len(records))), records)
    out = BatchDecoder(4096, 300_000)(batch)
    assert len(out.readings) + len(out.dead) == len(records)
    assert sorted(d.offset for d in out.dead) == sorted(set(d.offset for d in out.dead))
    for d in out.dead:
        assert d.reason in REASONS and d.detail
        raw = records[d.offset] or b""
        assert bytes(d.raw) == raw or (d.reason == "too_large" and bytes(d.raw) == raw[:1024])
    for r in out.readings:
        assert 1 <= len(r.sensor_id) <= 200 and r.values
        assert all(math.isfinite(v) for v in r.values.values())


# --- the whole dataflow ----------------------------------------------------------------------

@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(mixed, st.integers(1, 25))
def test_the_dataflow_never_crashes_and_scores_or_dead_letters_every_record(records, batch):
    got = run_flow(to_batches(records, size=batch), settings=TUMBLING)
    assert all(isinstance(s, ScoreRecord) and math.isfinite(s.score) for s in got.scores)
    assert sum(w.readings for _, w in got.windows) == sum(s.readings for s in got.scores)
    _account(records, got.dead, sum(s.readings for s in got.scores))


# --- through a real broker and the real flow process -----------------------------------------

def _hostile(n: int, seed: int = 3) -> list[tuple[bytes | None, bytes | None]]:
    """``n`` records, about a third of them bad in the ways above, keys sometimes missing."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes | None]] = []
    kinds = [
        lambda: None,  # a tombstone (null value)
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        lambda: _nested(rng.choice([100, 5000, 50_000])),
        lambda: b'{"sensor_id": "big", "pad": "' + b"x" * 20_000 + b'"}',
        lambda: b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": NaN}}',
        lambda: b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": 1e400}}',
        lambda: b'{"sensor_id": 7, "ts": 1700000000000, "values": {"x": 1}}',
        lambda: b'{"sensor_id": "a", "ts": 1700000000000, "values": {"x": "hot"}}',
        lambda: b'{"sensor_id": "a", "ts": 4102444800000, "values": {"x": 1}}',
    ]
    sensors = ["pump-1", "泵-2", "🛢️-3", "a" * 200]
    for i in range(n):
        if rng.random() < 0.33:
            out.append((None if rng.random() < 0.5 else b"bad", rng.choice(kinds)()))
            continue
        ts = T0 + i * 250 - rng.choice([0, 0, 0, 2000, 60_000])  # some out of order, some late
        value = rng.choice([rng.gauss(0, 1), 1.7976931348623157e308, -5e-324, 0.0])
        sid = rng.choice(sensors)
        rec = orjson.dumps({"sensor_id": sid, "ts": ts, "values": {"x": value, "ü": 1.0}})
        out.append((sid.encode(), rec))
        if rng.random() < 0.05:
            out.append((sid.encode(), rec))  # duplicated
    return out


@pytest.mark.integration
def test_hostile_records_through_a_real_broker_are_all_scored_or_dead_lettered(
    broker, tmp_path
):
    topics = broker.unique_topics("hostile", {**FLOW_TOPICS, "readings": 1})  # one order
    records = _hostile(1500)
    produce(broker.bootstrap, topics["readings"], records)  # type: ignore[arg-type]
    env = flow_env(broker.bootstrap, topics, exit_at_end="true", window_length="10s",
                   window_hop="10s", allowed_lateness="3s", detectors="zscore",
                   max_record_bytes="4096")
    log = tmp_path / "flow.log"
    wait_exit(start_flow(env, log), log)
    dead = [d for _, d in read_decoded(broker.bootstrap, topics["dead"], DeadLetter)]
    scores = [s for _, s in read_decoded(broker.bootstrap, topics["scores"], ScoreRecord)]
    reasons = Counter(d.reason for d in dead)
    assert {"empty_record", "too_large", "late", "not_finite", "wrong_type",
            "future_timestamp"} <= set(reasons), reasons
    print(f"RELIABILITY bad_input records_in={len(records)} "
          f"readings_scored={sum(s.readings for s in scores)} dead_letters={len(dead)} "
          f"reasons={dict(reasons.most_common())}")
    assert sum(s.readings for s in scores) + len(dead) == len(records), reasons
    assert all(d.reason in REASONS and d.detail for d in dead)
    assert {s.sensor_id for s in scores} == {"pump-1", "泵-2", "🛢️-3", "a" * 200}
    assert all(math.isfinite(s.score) for s in scores)
    assert "Traceback" not in log.read_text()


def test_a_reading_within_lateness_before_the_sensors_first_pane_is_scored():
    """Found by the property tests above: such a reading was accepted but never scored."""
    records = [orjson.dumps({"sensor_id": "s", "ts": T0 + ms, "values": {"x": 1.0}})
               for ms in (10_250, 9_750, 25_000)]  # the second: 0.5 s older, previous pane
    got = run_flow(to_batches(records), settings=TUMBLING)
    assert not got.dead
    assert sum(w.readings for _, w in got.windows) == 3
