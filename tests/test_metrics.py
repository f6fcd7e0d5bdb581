"""Tests for bench.metrics: SKAB leaderboard arithmetic, detection delays and NAB scoring."""

from __future__ import annotations

import csv
import doctest
import math
from pathlib import Path

import numpy as np
import pytest

import bench.metrics
from bench.metrics import (
    PROFILES,
    Confusion,
    NabFile,
    confusion,
    detection_delays,
    episodes,
    load_nab_series,
    load_nab_windows,
    nab_detail,
    nab_score,
    optimise_all,
    optimise_threshold,
    probation_length,
    scaled_sigmoid,
    skab_summary,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
STD, LOW_FP, LOW_FN = PROFILES["standard"], PROFILES["reward_low_FP"], PROFILES["reward_low_FN"]


def test_module_docstring_example_runs_and_prints_the_documented_values():
    result = doctest.testmod(bench.metrics, verbose=False)
    assert result.attempted >= 10
    assert result.failed == 0


# ------------------------------------------------------------------------- SKAB


def test_confusion_counts_each_cell():
    c = confusion([1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0])
    assert c == Confusion(tp=1, fp=1, fn=2, tn=3)


def test_confusion_accepts_bools_and_rejects_non_binary_or_mismatched_input():
    assert confusion([True, False], [True, True]) == Confusion(tp=1, fp=1)
    with pytest.raises(ValueError, match="0/1"):
        confusion([0, 1], [0, 0.7])
    with pytest.raises(ValueError, match="length"):
        confusion([0, 1], [0, 1, 1])


def test_confusions_add_cellwise_and_sum_from_zero():
    a, b = Confusion(1, 2, 3, 4), Confusion(10, 20, 30, 40)
    assert a + b == Confusion(11, 22, 33, 44)
    assert sum([a, b]) == Confusion(11, 22, 33, 44)


def test_skab_f1_far_mar_follow_the_leaderboard_formulas():
    c = Confusion(tp=6, fp=2, fn=4, tn=8)
    assert c.f1 == pytest.approx(6 / (6 + 3))
    assert c.far == pytest.approx(20.0)
    assert c.mar == pytest.approx(40.0)
    assert c.f1 == pytest.approx(2 * c.precision * c.recall / (c.precision + c.recall))


def test_skab_summary_rounds_every_rate_to_two_decimals():
    # F1 = 5/(5+1.5) = 0.769.., FAR = 1/3 = 33.333.., MAR = 2/7 = 28.571..
    row = skab_summary([Confusion(tp=5, fp=1, fn=2, tn=2)])
    assert row == {
        "f1": 0.77, "far": 33.33, "mar": 28.57, "precision": 0.83, "recall": 0.71,
        "tp": 5, "fp": 1, "fn": 2, "tn": 2,
    }


def test_skab_summary_is_micro_averaged_over_files():
    files = [confusion([1, 1, 1, 1], [1, 1, 1, 1]), confusion([1, 0, 0, 0], [0, 1, 1, 1])]
    # pooled: TP=4, FP=3, FN=1 -> 4 / (4 + 2) = 0.67; the mean of per-file F1s would be 0.5
    assert skab_summary(files)["f1"] == 0.67
    assert np.mean([f.f1 for f in files]) == 0.5


def test_always_alarming_on_half_anomalous_rows_scores_f1_two_thirds():
    labels = [0, 1] * 50
    row = skab_summary([confusion(labels, [1] * 100)])
    # TP=50, FP=50, FN=0: 50 / (50 + 25) = 0.666..
    assert (row["f1"], row["far"], row["mar"]) == (0.67, 100.0, 0.0)
    assert (row["precision"], row["recall"]) == (0.5, 1.0)


def test_undefined_rates_are_zero_instead_of_an_error():
    row = skab_summary([confusion([0, 0], [0, 0])])
    assert (row["f1"], row["far"], row["mar"], row["precision"], row["recall"]) == (0, 0, 0, 0, 0)
    assert skab_summary([])["tp"] == 0


def _skab_files() -> list[Path]:
    root = DATASETS / "skab"
    return [p for sub in ("valve1", "valve2", "other") for p in sorted((root / sub).glob("*.csv"))]


@pytest.mark.skipif(not (DATASETS / "skab" / "valve1").is_dir(), reason="SKAB data absent")
def test_real_skab_always_alarm_reproduces_the_readme_baseline():
    confusions = []
    for path in _skab_files():
        with path.open(newline="") as fh:
            labels = [int(float(r["anomaly"])) for r in csv.DictReader(fh, delimiter=";")]
        test = labels[400:]
        confusions.append(confusion(test, [1] * len(test)))
    assert len(confusions) == 34
    row = skab_summary(confusions)
    assert sum(confusions).total == 23801
    assert (row["f1"], row["far"], row["mar"]) == (0.70, 100.0, 0.0)


# ----------------------------------------------------------------------- delays


def test_episodes_are_maximal_runs_of_ones():
    assert episodes([1, 1, 0, 0, 1, 0, 1, 1, 1]) == [(0, 1), (4, 4), (6, 8)]
    assert episodes([0, 0]) == []


def test_delay_counts_rows_from_episode_start_to_first_alert_inside_it():
    labels = [0, 1, 1, 1, 1, 0, 0, 1, 1, 0]
    preds = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1]  # alert before ep.1 and after ep.2 do not count
    report = detection_delays(labels, preds)
    assert [(e.start, e.end, e.first_alert, e.delay) for e in report.episodes] == [
        (1, 4, 3, 2.0),
        (7, 8, None, None),
    ]
    assert report.summary() == {
        "episodes": 2, "detected": 1, "missed": 1,
        "mean_delay": 2.0, "median_delay": 2.0, "max_delay": 2.0, "unit": "rows",
    }


def test_delay_is_in_seconds_when_timestamps_are_given():
    ts = np.array(["2020-03-09 10:00:00", "2020-03-09 10:00:01", "2020-03-09 10:00:05",
                   "2020-03-09 10:00:06", "2020-03-09 10:00:30"], dtype="datetime64[s]")
    report = detection_delays([1, 1, 1, 0, 1], [0, 0, 1, 0, 1], ts)
    assert [e.delay for e in report.episodes] == [5.0, 0.0]
    summary = report.summary()
    assert (summary["mean_delay"], summary["max_delay"], summary["unit"]) == (2.5, 5.0, "seconds")


def test_delay_summary_has_no_statistics_when_nothing_was_detected():
    summary = detection_delays([0, 1, 1], [0, 0, 0]).summary()
    assert summary["missed"] == 1
    assert summary["mean_delay"] is None


# -------------------------------------------------------------------------- NAB

T0 = np.datetime64("2014-04-01T00:00:00")
STEP = np.timedelta64(5, "m")


def nab_file(n: int, windows: list[tuple[int, int]], hits: dict[int, float] | None = None,
             name: str = "f") -> NabFile:
    """n rows every 5 minutes, windows as inclusive row ranges, score 0 except ``hits``."""
    ts = T0 + STEP * np.arange(n)
    scores = np.zeros(n)
    for i, v in (hits or {}).items():
        scores[i] = v
    return NabFile(ts, scores, [(ts[a], ts[b]) for a, b in windows], name=name)


def test_scaled_sigmoid_matches_the_published_formula():
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert float(scaled_sigmoid(0.5)) == pytest.approx(2 / (1 + math.exp(2.5)) - 1)
    assert float(scaled_sigmoid(3.01)) == -1.0


def test_probation_is_15_percent_of_rows_capped_at_750():
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750
    assert probation_length(22695, cap=None) == 3404


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_null_detector_scores_zero(profile):
    files = [nab_file(200, [(100, 119)]), nab_file(300, [(60, 69), (200, 249)])]
    result = nab_detail(files, profile, threshold=0.5)
    assert result.score == 0.0
    assert (result.tp, result.fn, result.fp, result.windows) == (0, 3, 0, 3)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_detecting_every_window_at_its_first_row_and_nothing_else_scores_100(profile):
    files = [
        nab_file(200, [(100, 119)], {100: 1.0}),
        nab_file(300, [(60, 69), (200, 249)], {60: 0.9, 200: 0.8}),
    ]
    assert nab_score(files, profile, threshold=0.8) == pytest.approx(100.0)


def test_detection_at_window_start_scores_more_than_at_its_end():
    early = nab_score([nab_file(200, [(100, 119)], {101: 1.0})], STD, 0.5)
    late = nab_score([nab_file(200, [(100, 119)], {119: 1.0})], STD, 0.5)
    assert early > late


def test_late_detection_still_earns_a_positive_reward_below_one_window():
    result = nab_detail([nab_file(200, [(100, 119)], {119: 1.0})], STD, 0.5)
    expected = float(scaled_sigmoid(-1 / 20) / scaled_sigmoid(-1.0))  # last row: y = -1/w
    assert result.raw == pytest.approx(expected)
    assert 0.0 < result.raw < 1.0
    assert 50.0 < result.score < 100.0  # better than missing it (0), worse than perfect


def test_only_the_earliest_detection_in_a_window_counts():
    alone = nab_score([nab_file(200, [(100, 119)], {105: 1.0})], STD, 0.5)
    with_later = nab_score([nab_file(200, [(100, 119)], {105: 1.0, 106: 1.0, 119: 1.0})], STD,
                           0.5)
    assert with_later == alone
    assert nab_detail([nab_file(200, [(100, 119)], {105: 1.0, 110: 1.0})], STD, 0.5).tp == 1


def test_false_positives_lower_the_score_and_reward_low_fp_doubles_their_cost():
    clean = [nab_file(200, [(100, 119)], {100: 1.0})]
    noisy = [nab_file(200, [(100, 119)], {100: 1.0, 40: 1.0, 50: 1.0})]  # before the window
    drop_std = nab_score(clean, STD, 0.5) - nab_score(noisy, STD, 0.5)
    drop_low_fp = nab_score(clean, LOW_FP, 0.5) - nab_score(noisy, LOW_FP, 0.5)
    assert drop_std == pytest.approx(100 * 2 * 0.11 / 2)  # two full-cost FPs, range 2 windows
    assert drop_low_fp == pytest.approx(2 * drop_std)
    assert nab_detail(noisy, STD, 0.5).fp == 2


def test_false_positive_just_after_a_window_costs_less_than_a_distant_one():
    near = nab_detail([nab_file(300, [(100, 119)], {120: 1.0})], STD, 0.5)
    far = nab_detail([nab_file(300, [(100, 119)], {200: 1.0})], STD, 0.5)
    assert near.raw > far.raw
    # far = more than 3 window lengths after the end: full A_FP on top of the missed window
    assert far.raw == pytest.approx(-1.0 - 0.11)
    y = 1 / 19  # one row past the last window row, window length 20 -> denominator 19
    assert near.raw == pytest.approx(-1.0 + 0.11 * float(scaled_sigmoid(y)))


def test_reward_low_fn_charges_two_per_miss_and_prefers_noisy_catches_over_misses():
    missed = [nab_file(200, [(100, 119)])]
    assert nab_detail(missed, LOW_FN, 0.5).raw == -2.0
    assert nab_detail(missed, STD, 0.5).raw == -1.0
    # catch the window at its first row but raise 20 FPs before it
    noisy_hits = {100: 1.0} | {i: 1.0 for i in range(30, 50)}
    noisy = [nab_file(200, [(100, 119)], noisy_hits)]
    assert nab_score(noisy, STD, 0.5) == pytest.approx(100 * (1 - 20 * 0.11 / 2))  # -10: < miss
    assert nab_score(noisy, LOW_FN, 0.5) == pytest.approx(100 * (1 - 20 * 0.11 / 3))  # > miss
    assert nab_score(noisy, STD, 0.5) < nab_score(missed, STD, 0.5)
    assert nab_score(noisy, LOW_FN, 0.5) > nab_score(missed, LOW_FN, 0.5)


def test_detections_in_the_probationary_period_are_ignored():
    # 100 rows -> rows 0..14 are probationary
    assert nab_score([nab_file(100, [(50, 59)], {3: 1.0, 14: 1.0})], STD, 0.5) == 0.0
    assert nab_score([nab_file(100, [(50, 59)], {15: 1.0})], STD, 0.5) < 0.0


def test_probation_cap_decides_whether_row_800_of_a_long_file_is_scored():
    long_file = [nab_file(10000, [(5000, 5099)], {800: 1.0})]
    assert nab_detail(long_file, STD, 0.5).fp == 1  # NAB cap: 750 rows of probation
    assert nab_detail(long_file, STD, 0.5, probation_cap=None).fp == 0  # plain 15 %: 1500


def test_windows_read_from_nab_strings_resolve_to_rows():
    ts = [f"2014-04-10 07:{m:02d}:00" for m in range(0, 60, 5)]  # 12 rows
    f = NabFile(ts, [0.0] * 9 + [1.0, 0, 0],
                [["2014-04-10 07:45:00.000000", "2014-04-10 07:55:00.000000"]])
    assert nab_score([f], STD, 0.5) == pytest.approx(100.0)


def test_windows_are_row_ranges_in_file_order_when_timestamps_repeat():
    # like NAB's ec2/machine_temperature files: the clock steps back and repeats
    minutes = [0, 5, 10, 15, 10, 15, 20, 25, 30, 35, 40, 45]
    ts = T0 + np.array(minutes) * np.timedelta64(1, "m")
    window = [(T0 + np.timedelta64(15, "m"), T0 + np.timedelta64(25, "m"))]  # rows 3..7
    inside = NabFile(ts, np.eye(12)[4], window)  # row 4 is stamped 00:10, but lies inside
    assert nab_score([inside], STD, 0.5) == pytest.approx(
        50 + 50 * float(scaled_sigmoid(-4 / 5) / scaled_sigmoid(-1.0))
    )
    after = nab_detail([NabFile(ts, np.eye(12)[8], window)], STD, 0.5)
    assert (after.tp, after.fp) == (0, 1)


def test_nab_file_rejects_bad_input():
    ts = T0 + STEP * np.arange(10)
    with pytest.raises(ValueError, match="one score per"):
        NabFile(ts, np.zeros(9))
    with pytest.raises(ValueError, match="NaN"):
        NabFile(ts, np.full(10, np.nan))
    with pytest.raises(ValueError, match="overlap"):
        nab_score([NabFile(ts, np.zeros(10), [(ts[2], ts[5]), (ts[4], ts[7])])], STD, 0.5)
    with pytest.raises(ValueError, match="no rows"):
        nab_score([NabFile(ts, np.zeros(10), [(ts[9] + STEP, ts[9] + 2 * STEP)])], STD, 0.5)
    with pytest.raises(ValueError, match="no scored windows"):
        nab_score([NabFile(ts, np.zeros(10))], STD, 0.5)


def _random_corpus(seed: int) -> list[NabFile]:
    """Scores rounded to 2 decimals (many ties) with a weak signal inside the windows."""
    rng = np.random.default_rng(seed)
    files = []
    for k in range(4):
        n = int(rng.integers(150, 400))
        starts = sorted(rng.choice(np.arange(int(0.1 * n), n - 30, 35), size=2, replace=False))
        windows = [(int(s), int(s) + int(rng.integers(5, 30))) for s in starts]
        f = nab_file(n, windows, name=f"f{k}")
        scores = rng.beta(1, 6, n)
        for a, b in windows:
            scores[a : b + 1] += rng.uniform(0, 0.5) * rng.random(b - a + 1)
        f.scores = np.round(np.clip(scores, 0, 1), 2)
        files.append(f)
    return files


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_threshold_optimisation_finds_what_a_brute_force_scan_finds(profile, seed):
    files = _random_corpus(seed)
    candidates = sorted(set(np.concatenate([f.scores for f in files]).tolist()), reverse=True)
    scan = [(nab_score(files, profile, t), t) for t in [1.01, *candidates]]
    best_score = max(s for s, _ in scan)
    best_threshold = max(t for s, t in scan if s >= best_score - 1e-9)

    threshold, score = optimise_threshold(files, profile)
    assert score == pytest.approx(max(best_score, 0.0), abs=1e-9)
    assert nab_score(files, profile, threshold) == pytest.approx(score, abs=1e-9)
    if best_score > 0:
        assert threshold == best_threshold


def test_optimiser_stays_silent_when_every_detection_only_hurts():
    files = [nab_file(200, [(100, 119)], {30: 0.9, 40: 0.7, 150: 0.8})]
    threshold, score = optimise_threshold(files, STD)
    assert score == 0.0
    assert threshold > 1.0
    assert nab_score(files, STD, threshold) == 0.0


def test_optimise_all_reports_the_best_threshold_for_each_profile():
    files = _random_corpus(0)
    results = optimise_all(files)
    assert set(results) == set(PROFILES)
    for name, result in results.items():
        assert result.profile == name
        assert result.score == pytest.approx(optimise_threshold(files, PROFILES[name])[1])
        assert result.tp + result.fn == result.windows


# --------------------------------------------------------------- real NAB labels

NAB = DATASETS / "nab"


@pytest.mark.skipif(not (NAB / "combined_windows.json").is_file(), reason="NAB data absent")
def test_real_nab_windows_resolve_to_existing_csvs_and_lie_inside_each_file():
    windows = load_nab_windows(NAB / "combined_windows.json")
    assert len(windows) == 13
    perfect, null = [], []
    for name, wins in windows.items():
        path = NAB / "data" / name
        assert path.is_file(), name
        ts, values = load_nab_series(path)
        assert ts.size == values.size > 1000
        for start, end in wins:
            assert ts[0] <= start <= end <= ts[-1], name
            assert ts[probation_length(ts.size)] < start, name  # every window is scored
        scores = np.zeros(ts.size)
        null.append(NabFile(ts, scores, wins, name=name))
        first_rows = np.searchsorted(ts, [s for s, _ in wins])
        scores = scores.copy()
        scores[first_rows] = 1.0
        perfect.append(NabFile(ts, scores, wins, name=name))
    for profile in PROFILES.values():
        assert nab_score(null, profile, 0.5) == 0.0
        assert nab_score(perfect, profile, 0.5) == pytest.approx(100.0)
    assert nab_detail(null, STD, 0.5).windows == sum(len(w) for w in windows.values())
