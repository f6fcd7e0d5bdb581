"""Decoding never raises and never drops: each bad record becomes a DeadLetter with a reason."""

import gzip
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.decode import BatchDecoder, RawBatch

NOW = datetime(2024, 6, 1, tzinfo=UTC)
GOOD = b'{"sensor_id":"pump-1","ts":"2024-06-01T00:00:00Z","values":{"flow":1.5}}'

BAD = {
    "malformed_json": b'{"sensor_id":"a",',
    "missing_field": b'{"sensor_id":"a","values":{"x":1}}',
    "wrong_type": b'{"sensor_id":"a","ts":1,"values":{"x":"high"}}',
    "not_finite": b'{"sensor_id":"a","ts":1,"values":{"x":NaN}}',
    "future_timestamp": b'{"sensor_id":"a","ts":"2030-01-01T00:00:00Z","values":{"x":1}}',
    "unknown_encoding": gzip.compress(GOOD),
    "empty_record": b"",
    "bad_timestamp": b'{"sensor_id":"a","ts":"2024-06-01T00:00:00","values":{"x":1}}',
    "invalid_value": b'{"sensor_id":"a","ts":1,"values":{}}',
    "not_an_object": b"[1, 2, 3]",
}


def _decode(values: list[bytes | None]):
    dec = BatchDecoder(max_record_bytes=4096, max_future_ms=300_000)
    return dec(RawBatch("readings", 3, list(range(len(values))), values), now=NOW)


def test_a_valid_reading_decodes_with_an_aware_utc_timestamp():
    (r,) = _decode([GOOD]).readings
    assert r.sensor_id == "pump-1" and r.values == {"flow": 1.5}
    assert r.ts == datetime(2024, 6, 1, tzinfo=UTC)


def test_epoch_milliseconds_and_offsets_are_normalised_to_utc():
    out = _decode([
        b'{"sensor_id":"a","ts":1717200000000,"values":{"x":1}}',
        b'{"sensor_id":"a","ts":"2024-06-01T02:00:00+02:00","values":{"x":1}}',
    ])
    assert [r.ts for r in out.readings] == [NOW, NOW]
    assert all(r.ts.tzinfo is UTC for r in out.readings)


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_kind_of_bad_record_gets_its_own_readable_reason(reason):
    out = _decode([BAD[reason]])
    assert out.readings == []
    (dead,) = out.dead
    assert dead.reason == reason
    assert len(dead.detail) > 15
    assert dead.topic == "readings" and dead.partition == 3 and dead.offset == 0
    assert dead.raw == BAD[reason]


def test_records_over_the_size_limit_are_dead_lettered_unparsed():
    (dead,) = _decode([b'{"x":"' + b"a" * 5000 + b'"}']).dead
    assert dead.reason == "too_large" and len(dead.raw) == 1024


def test_good_and_bad_records_in_one_batch_are_all_accounted_for():
    values = [GOOD, *BAD.values(), GOOD]
    out = _decode(values)
    assert len(out.readings) == 2 and len(out.dead) == len(BAD)
    assert sorted(d.offset for d in out.dead) == list(range(1, len(BAD) + 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), st.none()), max_size=20))
def test_arbitrary_bytes_never_raise_and_every_record_is_accounted_for(values):
    out = _decode(values)
    assert len(out.readings) + len(out.dead) == len(values)
    assert all(d.reason and d.detail for d in out.dead)


def test_a_reading_at_the_horizon_passes_and_one_millisecond_past_it_is_dead_lettered():
    horizon_ms = round(NOW.timestamp() * 1000) + 300_000
    out = _decode([
        b'{"sensor_id":"a","ts":%d,"values":{"x":1}}' % horizon_ms,
        b'{"sensor_id":"a","ts":%d,"values":{"x":1}}' % (horizon_ms + 1),
    ])
    assert [r.ts_ms for r in out.readings] == [horizon_ms]
    assert [d.reason for d in out.dead] == ["future_timestamp"]


def test_a_future_horizon_past_year_9999_accepts_every_reading_instead_of_raising():
    dec = BatchDecoder(max_record_bytes=4096, max_future_ms=10**18)
    out = dec(RawBatch("readings", 0, [0], [b'{"sensor_id":"a","ts":"2199-01-01T00:00:00Z",'
                                             b'"values":{"x":1}}']), now=NOW)
    assert len(out.readings) == 1 and out.dead == []
