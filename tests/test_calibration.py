"""detectors.calibration: per-sensor likelihoods from raw scores, and their combination."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.calibration import Calibrator, combine, log_likelihood


def _feed(cal: Calibrator, sid: str, values: np.ndarray) -> np.ndarray:
    return cal.update([sid] * len(values), values)


def test_outputs_are_probabilities_for_any_input() -> None:
    rng = np.random.default_rng(0)
    cal = Calibrator(history=50, short=3, warmup=10)
    raw = np.concatenate([rng.normal(0, 1, 300), rng.normal(0, 1e6, 100), [0.0] * 50])
    raw[[5, 77, 260]] = [np.nan, np.inf, -np.inf]
    sids = [f"s{i % 3}" for i in range(raw.size)]
    out = cal.update(sids, raw)
    assert out.shape == raw.shape
    assert np.all((out >= 0.0) & (out <= 1.0))
    assert out[[5, 77, 260]].tolist() == [0.0, 0.0, 0.0]  # non-finite: no opinion


def test_warmup_value_until_enough_history_and_warming_entries_are_not_learned() -> None:
    cal = Calibrator(history=40, short=4, warmup=12, warmup_value=0.5)
    rng = np.random.default_rng(1)
    raw = rng.normal(5, 1, 30)
    warming = np.zeros(30, dtype=bool)
    warming[:6] = True  # the detector's own warm-up: placeholder scores
    out = cal.update(["a"] * 30, raw, warming)
    assert np.all(out[:6] == 0.5)
    assert np.all(out[6 : 6 + 12] == 0.5)  # then 12 real scores of warm-up
    assert np.all(out[18:] != 0.5)
    snap_count = cal.seen("a")
    assert snap_count == 24  # the six placeholders never entered the history


def test_always_high_scores_calibrate_to_typical_and_a_jump_to_one() -> None:
    """HST-like scores bunch near 1: raw 0.95 is normal for this sensor, not an anomaly."""
    rng = np.random.default_rng(2)
    cal = Calibrator()
    steady = np.clip(rng.beta(95, 5, 1500), 0, 1)  # mean 0.95, sd 0.02
    out = _feed(cal, "hst", steady)[cal.warmup :]
    assert 0.4 < out.mean() < 0.6
    assert np.mean(out > 0.99) < 0.03
    jump = _feed(cal, "hst", np.full(5, 1.0))  # 2.5 sd above normal, then sustained
    assert jump.min() > 0.99


def test_a_single_spike_in_a_noisy_history_stands_out() -> None:
    rng = np.random.default_rng(3)
    cal = Calibrator(history=300, short=5, warmup=30)
    _feed(cal, "z", np.abs(rng.normal(0, 1, 400)))
    before = cal.snapshot()
    spike = _feed(cal, "z", np.array([40.0]))
    assert spike[0] > 0.999
    after = _feed(cal, "z", np.array([0.0]))
    assert after[0] > 0.999  # the spike is still in the short-term mean
    cal.restore(before)
    assert _feed(cal, "z", np.array([0.5]))[0] < 0.9


def test_scale_invariant_across_sensors() -> None:
    rng = np.random.default_rng(4)
    x = np.abs(rng.standard_t(3, 600))
    ids = ["small"] * 600 + ["large"] * 600
    for dtype in ("float32", "float16"):  # a power of two scales float16 exactly too
        out = Calibrator(dtype=dtype).update(ids, np.concatenate([x, 2.0**10 * x]))
        np.testing.assert_allclose(out[:600], out[600:], atol=1e-6)
    out = Calibrator(dtype="float32").update(ids, np.concatenate([x, 1e4 * x]))
    np.testing.assert_allclose(out[:600], out[600:], atol=1e-6)
    # float16 keeps 3 significant digits, so any other scale agrees to about that
    out = Calibrator(dtype="float16").update(ids, np.concatenate([x, 1e2 * x]))
    np.testing.assert_allclose(out[:600], out[600:], atol=0.02)


def test_float16_histories_store_scores_beyond_their_range_as_the_largest_value() -> None:
    cal = Calibrator(history=50, warmup=10, dtype="float16")
    cal.update(["s"] * 40, np.linspace(1.0, 2.0, 40))
    assert cal.update(["s"], [1e9])[0] > 0.999  # still ranks as extreme
    cal.learn(["s"], [-1e9])
    _, tables = cal.loads(cal.snapshot())
    assert np.isfinite(tables["ring"]).sum() == 42
    assert np.nanmax(tables["ring"]) == 65504 and np.nanmin(tables["ring"]) == -65504


def test_sensors_on_different_scales_get_comparable_typical_values() -> None:
    rng = np.random.default_rng(5)
    cal = Calibrator()
    quiet = np.abs(rng.normal(0, 0.5, 1200))  # e.g. a robust z around 0.4
    noisy = 0.9 + 0.05 * rng.random(1200)  # e.g. HST bunched near 1
    out = cal.update(["q"] * 1200 + ["n"] * 1200, np.concatenate([quiet, noisy]))
    q, n = out[100:1200], out[1300:]
    assert abs(np.median(q) - np.median(n)) < 0.15
    assert abs(np.mean(q > 0.95) - np.mean(n > 0.95)) < 0.05


def test_snapshot_restore_continues_identically() -> None:
    rng = np.random.default_rng(6)
    raw = rng.gamma(2.0, 1.0, 900)
    ids = [f"s{i % 4}" for i in range(900)]
    a = Calibrator(history=120, short=5, warmup=20)
    a.update(ids[:500], raw[:500])
    b = Calibrator(history=120, short=5, warmup=20)
    b.restore(a.snapshot())
    for lo in range(500, 900, 70):
        np.testing.assert_array_equal(
            a.update(ids[lo : lo + 70], raw[lo : lo + 70]),
            b.update(ids[lo : lo + 70], raw[lo : lo + 70]),
        )
    assert a.snapshot() == b.snapshot()
    with pytest.raises(ValueError, match="history"):
        Calibrator(history=60, short=5, warmup=20).restore(a.snapshot())


def test_batching_does_not_change_results() -> None:
    """One call with everything = one call per score = interleaved sensors in one batch."""
    rng = np.random.default_rng(7)
    raw = rng.gamma(2.0, 1.0, 700)
    ids = [("a", "b", "c")[i % 3] for i in range(700)]
    whole = Calibrator(history=100, short=4, warmup=10).update(ids, raw)
    single = Calibrator(history=100, short=4, warmup=10)
    one_by_one = np.concatenate([single.update([s], [v]) for s, v in zip(ids, raw, strict=True)])
    per_sensor = Calibrator(history=100, short=4, warmup=10)
    separate = np.empty(700)
    for s in "abc":
        idx = [i for i, x in enumerate(ids) if x == s]
        separate[idx] = per_sensor.update([s] * len(idx), raw[idx])
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-12)
    np.testing.assert_allclose(whole, separate, rtol=0, atol=1e-12)


def test_rank_preserving_within_a_steady_history() -> None:
    rng = np.random.default_rng(8)
    base = Calibrator()
    _feed(base, "s", rng.normal(3, 0.5, 500))
    state = base.snapshot()
    candidates = np.linspace(1.0, 6.0, 40)
    outs = []
    for v in candidates:
        c = Calibrator()
        c.restore(state)
        outs.append(_feed(c, "s", np.array([v]))[0])
    outs_arr = np.array(outs)
    assert np.all(np.diff(outs_arr) >= 0)  # never reorders
    # ties only inside the empirical body (between two history values); the tail is strict
    tail = candidates > np.quantile(rng.normal(3, 0.5, 100_000), 0.95)
    assert tail.sum() > 10 and np.all(np.diff(outs_arr[tail]) > 0)
    assert len(np.unique(outs_arr)) > 30


def test_constant_history_does_not_divide_by_zero() -> None:
    cal = Calibrator(history=50, short=3, warmup=10)
    out = _feed(cal, "flat", np.zeros(40))
    assert np.all(out[10:] == 0.5)  # exactly typical
    assert _feed(cal, "flat", np.array([1.0]))[0] == 1.0


def test_state_per_sensor_stays_under_700_bytes_in_float16() -> None:
    ids = [f"sensor-{i:05d}" for i in range(200)]
    for dtype, itemsize, limit in (("float16", 2, 700), ("float32", 4, 1300)):
        cal = Calibrator(dtype=dtype)  # history 300
        cal.update(ids * 3, np.ones(600))
        assert cal.state_bytes(ids[0]) == 300 * itemsize + 16
        assert len(cal.snapshot()) / len(ids) <= limit


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Calibrator(history=5, short=5)
    with pytest.raises(ValueError):
        Calibrator(history=100, short=5, warmup=5)
    with pytest.raises(ValueError):
        Calibrator(warmup_value=2.0)
    with pytest.raises(ValueError):
        Calibrator().update(["a", "b"], [1.0])


def test_combine_fisher_and_max() -> None:
    single = np.array([0.1, 0.5, 0.99])
    np.testing.assert_allclose(combine([single]), single)
    both = combine([[0.99, 0.5, 0.99], [0.99, 0.5, 0.5]])
    assert both[0] > 0.99  # agreement adds up
    assert both[1] < 0.5  # two typical scores stay unremarkable
    assert 0.9 < both[2] < 0.99  # one strong, one typical
    np.testing.assert_allclose(combine([[0.2, 0.7], [0.6, 0.1]]), combine([[0.6, 0.1], [0.2, 0.7]]))
    np.testing.assert_allclose(combine([[0.2, 0.7], [0.6, 0.1]], "max"), [0.6, 0.7])
    grid = np.linspace(0, 1, 21)
    out = combine([grid, np.full(21, 0.8), np.full(21, 0.3)])
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert combine([1.0, 0.0])[0] == 1.0  # 1-D: detectors of one window
    with pytest.raises(ValueError):
        combine([[0.5]], method="mean")  # type: ignore[arg-type]


def test_fisher_matches_scipy_chi2_when_available() -> None:
    stats = pytest.importorskip("scipy.stats")
    p = np.array([[0.9, 0.3, 0.999], [0.8, 0.95, 0.2], [0.7, 0.5, 0.6]])
    x = -2 * np.log(1 - p).sum(axis=0)
    np.testing.assert_allclose(combine(p), 1 - stats.chi2.sf(x, 6), rtol=1e-9)


def test_log_scale() -> None:
    lg = log_likelihood([0.0, 0.5, 0.99999, 1.0])
    assert lg[0] == 0.0 and lg[1] < 0.05 and abs(lg[2] - 0.5) < 1e-3 and lg[3] > 0.999999
    assert np.all(np.diff(log_likelihood(np.linspace(0, 1, 101))) >= 0)


def test_counts_of_unknown_sensors_are_zero_even_before_any_sensor_was_seen() -> None:
    cal = Calibrator(history=50, short=1, warmup=10)
    assert cal.counts(["a", "b"]).tolist() == [0, 0]
    cal.learn(["a"], [1.0])
    assert cal.counts(["b", "a"]).tolist() == [0, 1]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 8, 12])
def test_moving_averages_equal_numpys_sliding_mean_bit_for_bit(k: int) -> None:
    from numpy.lib.stride_tricks import sliding_window_view

    from detectors.calibration import _moving_average

    x = np.random.default_rng(k).standard_cauchy((40, 120))
    x[0, :7] = np.nan  # histories not yet full
    expected = sliding_window_view(x, k, axis=1).mean(axis=-1)
    assert np.array_equal(_moving_average(x, k), expected, equal_nan=True)


def test_tippett_is_the_most_confident_detector_corrected_for_how_many_looked() -> None:
    single = np.array([0.1, 0.5, 0.99])
    np.testing.assert_allclose(combine([single], "tippett"), single)  # one detector: unchanged
    two = combine([[0.99, 0.9, 0.9], [0.5, 0.9, np.nan]], "tippett")
    np.testing.assert_allclose(two, [0.99**2, 0.9**2, 0.9])  # NaN: no opinion, d shrinks
    # agreement adds nothing: two detectors at 0.95 stay below one at 0.99, unlike Fisher
    both, one = [[0.95], [0.95]], [[0.99], [0.5]]
    assert combine(both, "tippett")[0] < combine(one, "tippett")[0]
    assert combine(both)[0] > combine(one)[0]
    assert combine([[np.nan], [np.nan]], "tippett")[0] == 0.0


def _score_then_learn_matches_update(
    calibrator: dict[str, object], sensors: int, steps: int, spike_rate: float, spike: float,
    seed: int,
) -> int:
    """score() + learn() on one calibrator and update() (the full quantile-and-tail path
    for every score) on another, step by step: likelihoods must be bit-identical. Scores
    are rounded (many exact ties) with spikes into the Pareto tail. Returns how many
    likelihoods came from the tail (> 0.9)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(sensors)]
    fast, full = Calibrator(**calibrator), Calibrator(**calibrator)  # type: ignore[arg-type]
    tail = 0
    for step in range(steps):
        raw = np.round(rng.gamma(2.0, 1.0, sensors), 1)
        raw[rng.random(sensors) < spike_rate] *= spike
        got = fast.score(ids, raw)
        fast.learn(ids, raw)
        want = full.update(ids, raw)
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        tail += int((want > 0.9).sum())
    return tail


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_scores_in_the_body_of_the_history_skip_the_tail_fit_with_bit_identical_likelihoods(
    dtype: str,
) -> None:
    """score() ranks ordinary scores by counting alone; it must give exactly what the full
    quantile-and-tail path gives, with ties, spikes, histories still filling and full rings
    alike."""
    config = {"history": 60, "warmup": 10, "dtype": dtype, "short": 1}
    assert _score_then_learn_matches_update(config, 6, 200, 0.05, 50.0, seed=11) > 0


@pytest.mark.parametrize("short", [2, 3, 5, 7])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_short_term_means_are_ranked_from_the_rings_as_stored_with_bit_identical_likelihoods(
    short: int, dtype: str,
) -> None:
    """For short k > 1 score() takes the history's k-averages around each ring as stored and
    puts only the tail's in order; it must give exactly what update() gives (the averages of
    every history put in order first), while rings fill and after they wrap."""
    config = {"history": 40, "short": short, "warmup": 12, "dtype": dtype}
    # > 20: the tail path was taken, not only the body's counting
    assert _score_then_learn_matches_update(config, 7, 150, 0.08, 40.0, seed=short) > 20
