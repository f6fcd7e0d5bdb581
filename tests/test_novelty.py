"""The value novelty detector: new places score high at onset and fade; state round-trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from detectorkit import DAY, HOP_MS
from detectorkit import window as _window

from detectors.novelty import ValueNovelty
from flows.windows import ClosedWindow


def _feed(det: ValueNovelty, sid: str, start: int, values: list[dict[str, float]]) -> list:
    """One window per call, as the flow scores a single sensor."""
    return [
        det.score_and_learn([(sid, _window(start + j, v))])[0] for j, v in enumerate(values)
    ]


def _noise(n: int, seed: int, level: float = 10.0, sd: float = 1.0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{"x": level + rng.normal(0, sd)} for _ in range(n)]


def test_a_new_level_scores_high_at_its_onset_and_fades_as_it_recurs() -> None:
    det = ValueNovelty()
    normal = _feed(det, "s", 0, _noise(2 * DAY, 0))
    late_normal = [v.score for v in normal[DAY + 30 :]]
    rng = np.random.default_rng(1)
    shifted = _feed(det, "s", 2 * DAY, [{"x": 40.0 + rng.normal(0, 1.0)} for _ in range(200)])
    onset = shifted[0].score
    assert onset > 0.9 > np.quantile(late_normal, 0.99)
    # the new level fills its bins with counts: a few windows later it is familiar
    assert shifted[20].score < 0.5 * onset
    assert max(v.score for v in shifted[100:]) < 0.3


def test_a_rare_spike_height_is_novel_but_a_recurring_one_is_not() -> None:
    det = ValueNovelty()
    # a flat-ish signal with a spike to 20 every 50 windows (the spikes are normal)
    values = [{"x": 20.0 if i % 50 == 0 else 0.0 + 0.01 * (i % 3)} for i in range(3 * DAY)]
    verdicts = _feed(det, "s", 0, values)
    usual_spikes = [verdicts[i].score for i in range(2 * DAY, 3 * DAY) if i % 50 == 0]
    # now a spike twice as high as ever before
    high = _feed(det, "s", 3 * DAY, [{"x": 40.0}])[0].score
    assert high > 0.9
    assert max(usual_spikes) < 0.5 * high


def test_no_opinion_during_warm_up_then_scores() -> None:
    det = ValueNovelty(warmup=30, warmup_period_s=86_400.0)
    verdicts = _feed(det, "s", 0, _noise(DAY + 5, 2))
    first_day = verdicts[:DAY]
    assert all(v.warming_up and v.score == 0.0 and not v.anomalous for v in first_day)
    assert not any(v.warming_up for v in verdicts[DAY + 1 :])
    # a short run (e.g. a 20-minute test rig at 1 Hz) never gets an opinion
    rig = ValueNovelty()
    sec = [
        rig.score_and_learn([("r", ClosedWindow(i * 1000, (i + 10) * 1000, {"p.last": i}, 10))])[0]
        for i in range(1200)
    ]
    assert all(v.warming_up for v in sec)


def test_without_a_warm_up_period_it_scores_after_warmup_windows() -> None:
    det = ValueNovelty(warmup=30, warmup_period_s=0.0)
    verdicts = _feed(det, "s", 0, _noise(40, 3))
    assert all(v.warming_up for v in verdicts[:30])
    assert not any(v.warming_up for v in verdicts[30:])


def test_snapshot_restore_scores_later_windows_exactly_as_the_original() -> None:
    det = ValueNovelty()
    _feed(det, "a", 0, _noise(DAY + 40, 4, level=5.0))
    _feed(det, "b", 0, _noise(DAY + 40, 5, level=-3.0, sd=0.2))
    copy = ValueNovelty()
    copy.restore(det.snapshot())
    later = [*_noise(60, 6, level=5.0), {"x": 50.0}, *_noise(30, 7, level=5.0)]
    a = _feed(det, "a", DAY + 40, later)
    b = _feed(copy, "a", DAY + 40, later)
    assert [v.score for v in a] == [v.score for v in b]
    assert [v.contributors for v in a] == [v.contributors for v in b]
    assert det.snapshot() == copy.snapshot()


def test_restore_refuses_a_snapshot_taken_with_other_bins() -> None:
    det = ValueNovelty(tilings=3)
    _feed(det, "s", 0, _noise(5, 8))
    with pytest.raises(ValueError, match="tilings"):
        ValueNovelty(tilings=5).restore(det.snapshot())


def test_several_windows_of_one_sensor_in_a_batch_equal_one_per_call() -> None:
    values = _noise(DAY + 50, 9)
    one = ValueNovelty()
    singles = [v.score for v in _feed(one, "s", 0, values)]
    batched = ValueNovelty()
    scores: list[float] = []
    for start in range(0, len(values), 37):  # uneven batches, two sensors interleaved
        batch = []
        for j, v in enumerate(values[start : start + 37]):
            batch.append(("s", _window(start + j, v)))
            batch.append(("t", _window(start + j, {"x": -v["x"]})))
        scores += [v.score for v in batched.score_and_learn(batch)[0::2]]
    assert scores == singles


def test_contributors_name_the_metric_that_went_somewhere_new() -> None:
    det = ValueNovelty()
    rng = np.random.default_rng(10)
    for i in range(DAY + 40):
        det.score_and_learn([("s", _window(i, {"a": rng.normal(), "b": rng.normal(), "c": 5.0}))])
    v = det.score_and_learn([("s", _window(DAY + 40, {"a": 0.1, "b": 300.0, "c": 5.0}))])[0]
    assert v.contributors[0].metric == "b" and v.score == v.contributors[0].weight > 0.9


def test_a_missing_metric_is_neither_scored_nor_learned() -> None:
    det = ValueNovelty(warmup_period_s=0.0)
    _feed(det, "s", 0, [{"a": 1.0, "b": 2.0}] * 40)
    before = pickle.loads(det.snapshot())
    w = ClosedWindow(40 * HOP_MS, 41 * HOP_MS, {"a.last": 1.0}, 1)  # b absent
    v = det.score_and_learn([("s", w)])[0]
    after = pickle.loads(det.snapshot())
    tb, ta = before[2][0][2], after[2][0][2]
    assert np.isnan(ta["level"]).sum() == 0
    assert ta["level"][0, 1] == tb["level"][0, 1]  # b's level untouched
    assert [c.metric for c in v.contributors][:1] == ["a"]


def test_per_sensor_state_is_a_few_hundred_bytes() -> None:
    det = ValueNovelty()
    _feed(det, "one", 0, _noise(3, 11))
    det.score_and_learn([("four", _window(0, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}))])
    assert det.state_bytes("one") <= 200
    assert det.state_bytes("four") <= 640
    # the snapshot of many one-metric sensors costs about that per sensor
    many = ValueNovelty()
    batch = [(f"s{i}", _window(0, {"x": float(i)})) for i in range(2000)]
    many.score_and_learn(batch)
    per_sensor = len(many.snapshot()) / 2000
    assert per_sensor < many.state_bytes("s0") + 40  # + the id string and pickle framing


def test_forget_drops_a_sensor_and_it_starts_fresh() -> None:
    det = ValueNovelty(warmup_period_s=0.0)
    _feed(det, "s", 0, _noise(40, 12))
    det.forget("s")
    assert _feed(det, "s", 40, _noise(1, 13))[0].warming_up


def test_a_place_not_visited_for_longer_than_the_decay_horizon_is_novel_again() -> None:
    fast, slow = ValueNovelty(decay=0.01), ValueNovelty(decay=0.0005)  # horizons 100 / 2000
    rng = np.random.default_rng(14)
    episode = [{"x": 40.0 + rng.normal(0, 1.0)} for _ in range(100)]
    for det in (fast, slow):
        _feed(det, "s", 0, _noise(DAY + 40, 15))
        _feed(det, "s", DAY + 40, episode)  # a stay at a new level, then back to normal
        _feed(det, "s", DAY + 140, _noise(800, 16))
    again = {"x": 40.0}
    start = 2 * DAY + 700
    assert _feed(fast, "s", start, [again])[0].score > 0.8  # forgotten: novel again
    assert _feed(slow, "s", start, [again])[0].score < 0.3  # still remembered
