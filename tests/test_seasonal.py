"""The seasonal profile detector: daily patterns learned per phase, state round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from detectorkit import DAY, HOP_MS
from detectorkit import window as _window

from detectors.seasonal import SeasonalProfile
from flows.windows import ClosedWindow


def _daily(i: int, rng: np.random.Generator) -> float:
    """A load that is high by day and low at night, with noise."""
    return 100.0 + 50.0 * math.sin(2 * math.pi * i / DAY) + rng.normal(0, 2.0)


def _run(det: SeasonalProfile, windows: list[tuple[str, ClosedWindow]]) -> list[float]:
    return [v.score for v in det.score_and_learn(windows)]


def test_a_daily_pattern_that_goes_flat_is_caught_where_a_recent_past_model_adapts() -> None:
    rng = np.random.default_rng(0)
    seasonal, flat = SeasonalProfile(), SeasonalProfile(buckets=1)  # 1 bucket: recent past only
    for i in range(5 * DAY):  # five normal days, one window per call as in the flow
        for det in (seasonal, flat):
            det.score_and_learn([("s", _window(i, {"load": _daily(i, np.random.default_rng(i))}))])
    normal = []
    for i in range(5 * DAY, 6 * DAY):
        normal += _run(seasonal, [("s", _window(i, {"load": _daily(i, rng)}))])
        flat.score_and_learn([("s", _window(i, {"load": _daily(i, rng)}))])
    # day 7: from the daily peak on the load stays at the peak instead of falling to the trough
    peak, trough = 6 * DAY + DAY // 4, 6 * DAY + 3 * DAY // 4
    for i in range(6 * DAY, peak):
        for det in (seasonal, flat):
            det.score_and_learn([("s", _window(i, {"load": _daily(i, np.random.default_rng(i))}))])
    s_scores, f_scores = [], []
    for i in range(peak, trough + 1):
        value = {"load": 150.0 + rng.normal(0, 2.0)}
        s_scores += _run(seasonal, [("s", _window(i, value))])
        f_scores += _run(flat, [("s", _window(i, value))])
    # up to 100 above the usual level by trough time; the deviation scale learns the residuals
    # too, so the score peaks mid-way and then fades (no hold; see the module doc)
    assert max(normal) < seasonal.threshold <= max(s_scores)
    assert max(f_scores) < 3.0  # the one-bucket profile learned the flat line as normal


def test_a_value_normal_at_noon_is_anomalous_at_midnight_but_not_at_noon() -> None:
    rng = np.random.default_rng(1)
    det = SeasonalProfile()
    for i in range(4 * DAY):
        det.score_and_learn([("s", _window(i, {"load": _daily(i, rng)}))])
    noon_peak = 4 * DAY + DAY // 4  # sine maximum: 150
    at_peak = _run(det, [("s", _window(noon_peak, {"load": 150.0}))])[0]
    trough = 4 * DAY + 3 * DAY // 4  # sine minimum: 50
    at_trough = _run(det, [("s", _window(trough, {"load": 150.0}))])[0]
    assert at_peak < 3.0
    assert at_trough > 10 * at_peak


def test_sensor_warms_up_before_scoring_and_each_phase_starts_with_its_first_value() -> None:
    det = SeasonalProfile(warmup=5, buckets=4, period_s=4 * HOP_MS / 1000)
    verdicts = [det.score_and_learn([("s", _window(i, {"x": 1.0}))])[0] for i in range(6)]
    assert all(v.warming_up and v.score == 0.0 for v in verdicts[:5])
    assert not verdicts[5].warming_up
    fresh = SeasonalProfile(warmup=1, buckets=4, period_s=4 * HOP_MS / 1000)
    # first pass over the period: no phase has a level yet, so there is no opinion
    assert [fresh.score_and_learn([("t", _window(i, {"x": 1.0}))])[0].warming_up
            for i in range(5)] == [True, True, True, True, False]


def test_contributors_name_the_metric_that_left_its_profile() -> None:
    rng = np.random.default_rng(2)
    det = SeasonalProfile()
    for i in range(2 * DAY):
        det.score_and_learn([("s", _window(i, {"a": _daily(i, rng), "b": 5 + rng.normal()}))])
    v = det.score_and_learn([("s", _window(2 * DAY, {"a": _daily(2 * DAY, rng), "b": 80.0}))])[0]
    assert v.contributors[0].metric == "b"
    assert v.contributors[0].weight == pytest.approx(v.score, rel=1e-3)


def test_snapshot_restore_scores_later_windows_exactly_as_the_original() -> None:
    rng = np.random.default_rng(3)
    sensors = [f"s{k}" for k in range(5)]
    det = SeasonalProfile()
    for i in range(DAY):
        det.score_and_learn([(s, _window(i, {"x": _daily(i + 7 * k, rng)}))
                             for k, s in enumerate(sensors)])
    copy = SeasonalProfile()
    copy.restore(det.snapshot())
    later = [
        [(s, _window(i, {"x": _daily(i, rng) * (1 + k)})) for k, s in enumerate(sensors)]
        for i in range(DAY, DAY + 50)
    ]
    for batch in later:
        assert det.score_and_learn(batch) == copy.score_and_learn(batch)


def test_restore_refuses_a_snapshot_taken_with_another_bucket_count() -> None:
    det = SeasonalProfile(buckets=24)
    det.score_and_learn([("s", _window(0, {"x": 1.0}))])
    with pytest.raises(ValueError, match="buckets"):
        SeasonalProfile(buckets=48).restore(det.snapshot())


def test_several_windows_of_one_sensor_in_a_batch_equal_one_per_call() -> None:
    rng = np.random.default_rng(4)
    values = [_daily(i, rng) for i in range(400)]
    one = SeasonalProfile()
    singles = [one.score_and_learn([("s", _window(i, {"x": v}))])[0]
               for i, v in enumerate(values)]
    batched = SeasonalProfile().score_and_learn(
        [("s", _window(i, {"x": v})) for i, v in enumerate(values)]
    )
    assert batched == singles


def test_per_sensor_state_is_under_a_kilobyte_for_four_metrics() -> None:
    det = SeasonalProfile()
    det.score_and_learn([("s", _window(0, {m: 1.0 for m in "abcd"}))])
    assert det.state_bytes("s") <= 1024


def test_a_snapshot_in_the_older_per_sensor_format_restores_the_same_state() -> None:
    """Recovery stores written before profiles became tables still resume exactly."""
    import pickle

    rng = np.random.default_rng(9)
    det = SeasonalProfile(buckets=24)
    for i in range(DAY + 12):  # past the first day: older formats restore as such
        det.score_and_learn([("a", _window(i, {"x": _daily(i, rng)})),
                             ("b", _window(i, {"x": _daily(i, rng), "y": 2.0}))])
    _, params, groups = pickle.loads(det.snapshot())
    older = {
        sid: (keys, tables["level"][j], tables["dev"][j], int(tables["count"][j]))
        for keys, ids, tables in groups for j, sid in enumerate(ids)
    }
    copy = SeasonalProfile(buckets=24)
    copy.restore(pickle.dumps((1, params, older)))
    later = [[("a", _window(i, {"x": 5.0})), ("b", _window(i, {"x": 1.0, "y": 2.0}))]
             for i in range(DAY + 12, DAY + 72)]
    assert [copy.score_and_learn(b) for b in later] == [det.score_and_learn(b) for b in later]


def _second(i: int) -> ClosedWindow:
    return ClosedWindow(i * 1000, (i + 1) * 1000, {"x.last": float(i % 7)}, 1)


def test_no_opinion_until_the_sensor_has_been_seen_for_a_full_period() -> None:
    # a 20-minute run at 1 s hops (SKAB-like) never completes a day: no opinion at all
    det = SeasonalProfile(warmup=5)
    short = [det.score_and_learn([("s", _second(i))])[0] for i in range(1200)]
    assert all(v.warming_up and v.score == 0.0 for v in short)
    # at 5 min hops the first window scored is the one ending a full day after the first
    det = SeasonalProfile(warmup=5)
    flags = [det.score_and_learn([("s", _window(i, {"x": 1.0 + i % 3}))])[0].warming_up
             for i in range(DAY + 2)]
    assert all(flags[:DAY]) and not flags[DAY]


def test_a_snapshot_without_first_window_ends_restores_as_past_the_first_period() -> None:
    import pickle

    det = SeasonalProfile(warmup=1)
    for i in range(DAY + 1):
        det.score_and_learn([("s", _window(i, {"x": 1.0 + i % 2}))])
    _, params, groups = pickle.loads(det.snapshot())
    for _, _, tables in groups:
        del tables["first"]
    copy = SeasonalProfile(warmup=1)
    copy.restore(pickle.dumps((2, params, groups)))
    nxt = [("s", _window(DAY + 1, {"x": 2.0}))]
    assert copy.score_and_learn(nxt) == det.score_and_learn(nxt)
    assert not copy.score_and_learn([("s", _window(DAY + 2, {"x": 2.0}))])[0].warming_up


def test_a_restore_during_the_first_period_keeps_when_the_warm_up_ends() -> None:
    det = SeasonalProfile(warmup=5)
    for i in range(DAY // 2):
        det.score_and_learn([("s", _window(i, {"x": 1.0 + i % 3}))])
    copy = SeasonalProfile(warmup=5)
    copy.restore(det.snapshot())
    for i in range(DAY // 2, DAY + 2):
        batch = [("s", _window(i, {"x": 1.0 + i % 3}))]
        got, want = copy.score_and_learn(batch)[0], det.score_and_learn(batch)[0]
        assert got == want and got.warming_up == (i < DAY)
