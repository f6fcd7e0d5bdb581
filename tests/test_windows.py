"""Event-time window features: correctness, lateness and recovery of one sensor's state."""

import itertools
import math
import pickle
import random

import numpy as np
import pytest

from flows.windows import FEATURES, SensorWindows, WindowSpec, feature_names

SPEC = WindowSpec(length_ms=60_000, hop_ms=10_000, lateness_ms=5_000)
T0 = 1_700_000_000_000


def _series(n: int, step_ms: int = 1000, seed: int = 1) -> list[tuple[int, dict[str, float]]]:
    rng = random.Random(seed)
    return [(T0 + i * step_ms, {"p": 1e5 + rng.gauss(0, 2), "q": rng.random()}) for i in range(n)]


def _run(rows: list[tuple[int, dict[str, float]]], spec: WindowSpec = SPEC) -> list:
    w = SensorWindows(spec)
    out = []
    for ts, v in rows:
        assert w.add(ts, v)
        out += w.close_ready()
    return out + w.flush()


def test_window_features_match_numpy_on_the_same_readings():
    rows = _series(300)
    for win in _run(rows):
        sel = [(ts, v) for ts, v in rows if win.start_ms <= ts < win.end_ms]
        p = np.array([v["p"] for _, v in sel])
        t = np.array([(ts - win.start_ms) / 1000 for ts, _ in sel])
        f = win.features
        assert f["p.count"] == len(sel) == win.readings
        assert f["p.mean"] == pytest.approx(p.mean(), rel=1e-12)
        assert f["p.std"] == pytest.approx(p.std(), rel=1e-6, abs=1e-9)
        assert f["p.min"] == p.min() and f["p.max"] == p.max() and f["p.last"] == p[-1]
        expected_slope = np.polyfit(t, p, 1)[0] if len(sel) > 1 else 0.0
        assert f["p.slope"] == pytest.approx(expected_slope, rel=1e-6, abs=1e-9)


def test_windows_slide_by_the_hop_and_cover_the_length():
    wins = _run(_series(120))
    ends = [w.end_ms for w in wins]
    assert all(b - a == SPEC.hop_ms for a, b in itertools.pairwise(ends))
    assert all(w.end_ms - w.start_ms == SPEC.length_ms for w in wins)
    assert all(w.end_ms % SPEC.hop_ms == 0 for w in wins)


def test_a_window_is_emitted_only_after_the_watermark_passes_its_end():
    w = SensorWindows(SPEC)
    w.add(T0, {"x": 1.0})
    assert w.close_ready() == []
    # the first window starts at the first reading's pane and is SPEC.panes long
    first_end = (T0 // SPEC.hop_ms + SPEC.panes) * SPEC.hop_ms
    w.add(first_end + SPEC.lateness_ms - 1, {"x": 1.0})
    assert w.close_ready() == []
    w.add(first_end + SPEC.lateness_ms, {"x": 1.0})
    assert [x.end_ms for x in w.close_ready()] == [first_end]


def test_a_new_sensor_emits_no_window_that_starts_before_its_first_reading():
    wins = _run(_series(200))
    first_pane_start = T0 // SPEC.hop_ms * SPEC.hop_ms
    assert wins[0].start_ms == first_pane_start
    assert all(w.start_ms >= first_pane_start for w in wins)


def test_an_on_time_reading_older_than_the_sensors_first_one_is_still_in_a_window():
    w = SensorWindows(SPEC)
    first = T0 // SPEC.hop_ms * SPEC.hop_ms + 500  # early in a pane
    assert w.add(first, {"x": 1.0})
    assert w.add(first - 1000, {"x": 2.0})  # previous pane, within the 5 s lateness
    wins = []
    for k in range(1, 100):
        assert w.add(first + k * 1000, {"x": 1.0})
        wins += w.close_ready()
    wins += w.flush()
    assert wins[0].start_ms == (first - 1000) // SPEC.hop_ms * SPEC.hop_ms
    assert wins[0].features["x.max"] == 2.0  # the older reading is in it


def test_out_of_order_readings_within_lateness_give_the_same_features_as_in_order():
    rows = _series(400, step_ms=500)
    shuffled = rows[:]
    rng = random.Random(3)
    # swap neighbours closer than the allowed lateness, never further
    for i in range(0, len(shuffled) - 4, 3):
        j = i + rng.randint(1, 3)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    newest = 0
    for ts, _ in shuffled:
        assert ts >= newest - SPEC.lateness_ms
        newest = max(newest, ts)
    a, b = _run(rows), _run(shuffled)
    assert [(x.start_ms, x.end_ms, x.readings) for x in a] == [
        (x.start_ms, x.end_ms, x.readings) for x in b
    ]
    for x, y in zip(a, b, strict=True):
        assert x.features.keys() == y.features.keys()
        for k in x.features:
            assert y.features[k] == pytest.approx(x.features[k], rel=1e-9, abs=1e-9), k


def test_a_reading_older_than_the_allowed_lateness_is_rejected_and_changes_nothing():
    w = SensorWindows(SPEC)
    w.add(T0 + 60_000, {"x": 1.0})
    before = pickle.dumps(w.snapshot())
    assert w.add(T0 + 60_000 - SPEC.lateness_ms - 1, {"x": 99.0}) is False
    assert pickle.dumps(w.snapshot()) == before
    assert w.add(T0 + 60_000 - SPEC.lateness_ms, {"x": 2.0}) is True


def test_gaps_longer_than_a_window_emit_no_empty_windows():
    w = SensorWindows(SPEC)
    w.add(T0, {"x": 1.0})
    w.add(T0 + 3_600_000, {"x": 2.0})  # an hour later
    wins = w.close_ready()
    assert wins and all(x.readings >= 1 for x in wins)
    # only the window that starts at the first reading's pane holds it
    assert [x.start_ms for x in wins] == [T0 // SPEC.hop_ms * SPEC.hop_ms]


def test_snapshot_and_restore_continue_exactly_like_the_original():
    rows = _series(200)
    full = _run(rows)
    w = SensorWindows(SPEC)
    out = []
    for ts, v in rows[:90]:
        w.add(ts, v)
        out += w.close_ready()
    w2 = SensorWindows.restore(SPEC, pickle.loads(pickle.dumps(w.snapshot())))
    for ts, v in rows[90:]:
        w2.add(ts, v)
        out += w2.close_ready()
    out += w2.flush()
    assert out == full


def test_metrics_may_be_missing_from_some_readings():
    w = SensorWindows(WindowSpec(10_000, 10_000, 0))
    w.add(T0, {"a": 1.0, "b": 5.0})
    w.add(T0 + 1000, {"a": 3.0})
    (win,) = w.flush()
    assert win.readings == 2
    assert win.features["a.count"] == 2 and win.features["b.count"] == 1
    assert win.features["b.std"] == 0.0 and win.features["b.slope"] == 0.0


def test_state_per_sensor_is_small():
    w = SensorWindows(WindowSpec(300_000, 60_000, 60_000))
    for i in range(600):  # ten minutes at 1 Hz, four metrics
        w.add(T0 + i * 1000, {"a": 1.0 * i, "b": 2.0, "c": 3.0, "d": math.sin(i)})
        w.close_ready()
    assert len(pickle.dumps(w.snapshot(), protocol=5)) < 3 * 1024


def test_feature_names_follow_metric_then_feature_order():
    assert feature_names(["a"]) == [f"a.{f}" for f in FEATURES]


def test_window_spec_rejects_a_length_that_is_not_a_multiple_of_the_hop():
    with pytest.raises(ValueError, match="multiple"):
        WindowSpec(65_000, 10_000, 0)


def test_end_of_input_flush_emits_no_window_reaching_past_the_newest_reading():
    rows = _series(100)  # 100 s of 1 Hz data
    wins = _run(rows)
    newest = rows[-1][0]
    assert wins[-1].end_ms == (newest // SPEC.hop_ms + 1) * SPEC.hop_ms
    assert all(w.end_ms <= wins[-1].end_ms for w in wins)
