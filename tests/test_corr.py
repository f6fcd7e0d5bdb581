"""The correlation (T²) detector: broken relations between metrics, state round-trips.

Run as a script to measure per-sensor state and time per window:
``python tests/test_corr.py``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from detectors.corr import CorrelationDetector
from flows.settings import Settings, SettingsError
from flows.windows import ClosedWindow

HOP_MS = 1000


def _window(i: int, values: dict[str, float]) -> ClosedWindow:
    end = (i + 1) * HOP_MS
    feats = {f"{m}.mean": v for m, v in values.items()}
    feats |= {f"{m}.last": v for m, v in values.items()}
    return ClosedWindow(end - 10 * HOP_MS, end, feats, 10)


def _coupled(
    rng: np.random.Generator, broken: bool = False, low: float = 1.0
) -> dict[str, float]:
    """Flow and pressure move together (pressure = flow + small noise); a broken coupling
    holds pressure against flow (flow one to two of its deviations up, pressure as far
    down, window after window). Each metric stays inside its usual range either way."""
    flow = rng.normal(0.0, 1.0)
    if broken:
        flow = rng.uniform(low, 2.0)
    pressure = (-flow if broken else flow) + rng.normal(0.0, 0.1)
    return {"flow": 50.0 + flow, "pressure": 3.0 + pressure, "temp": 20.0 + rng.normal(0, 1)}


def _feed(det: CorrelationDetector, sid: str, start: int, n: int, rng: np.random.Generator,
          broken: bool = False, low: float = 1.0) -> list:
    out = []
    for i in range(start, start + n):
        out += det.score_and_learn([(sid, _window(i, _coupled(rng, broken, low)))])
    return out


def test_a_broken_correlation_scores_high_while_each_metric_stays_in_its_range() -> None:
    def run(shrinkage: float) -> tuple[list, list, np.ndarray]:
        det = CorrelationDetector(shrinkage=shrinkage, smooth_windows=0)  # windows as they are
        normal = _feed(det, "s", 0, 600, np.random.default_rng(0))[det.warmup:]
        rng = np.random.default_rng(1)
        values = [_coupled(rng, broken=True) for _ in range(30)]
        broken = []
        for k, v in enumerate(values):
            broken += det.score_and_learn([("s", _window(600 + k, v))])
        return normal, broken, np.array([list(v.values()) for v in values])

    normal, broken, arr = run(0.2)
    rng = np.random.default_rng(0)
    seen = np.array([list(_coupled(rng).values()) for _ in range(600)])
    # each metric of the broken windows lies within the range of the normal ones ...
    inside = (arr >= seen.min(axis=0)) & (arr <= seen.max(axis=0))
    assert inside.all()
    # ... yet the broken relation scores well above the normal windows and is flagged
    q99 = np.quantile([v.score for v in normal], 0.99)
    assert np.median([v.score for v in broken]) > 1.5 * q99
    assert np.mean([v.anomalous for v in broken]) >= 0.6
    assert np.mean([v.anomalous for v in normal]) < 0.01
    # without the learned correlation (shrunk all the way to the identity) the same windows
    # look ordinary: the correlation is what finds them
    normal_id, broken_id, _ = run(1.0)
    q99_id = np.quantile([v.score for v in normal_id], 0.99)
    assert np.median([v.score for v in broken_id]) < q99_id
    assert np.mean([v.anomalous for v in broken_id]) < 0.1


def test_snapshot_and_restore_give_identical_next_scores() -> None:
    rng = np.random.default_rng(2)
    det = CorrelationDetector(warmup=20)
    for i in range(200):
        batch = [("a", _window(i, _coupled(rng))), ("b", _window(i, _coupled(rng))),
                 ("one", _window(i, {"x": rng.normal()})),
                 ("four", _window(i, {f"m{j}": rng.normal() for j in range(4)}))]
        det.score_and_learn(batch)
    det.forget("b")  # a freed row must not confuse the restored tables
    twin = CorrelationDetector(warmup=20)
    twin.restore(det.snapshot())
    assert twin.snapshot() == det.snapshot()
    for i in range(200, 260):
        broken = i >= 230
        batch = [("a", _window(i, _coupled(rng, broken))), ("b", _window(i, _coupled(rng))),
                 ("one", _window(i, {"x": rng.normal()})),
                 ("four", _window(i, {f"m{j}": rng.normal() for j in range(4)}))]
        assert det.score_and_learn(batch) == twin.score_and_learn(batch)


def test_no_opinion_during_warm_up_or_with_a_single_metric() -> None:
    rng = np.random.default_rng(3)
    det = CorrelationDetector(warmup=40)
    verdicts = _feed(det, "s", 0, 60, rng)
    assert all(v.warming_up and v.score == 0.0 and not v.anomalous for v in verdicts[:40])
    assert not any(v.warming_up for v in verdicts[40:])
    single = [det.score_and_learn([("nab", _window(i, {"value": float(i % 7)}))])[0]
              for i in range(100)]
    assert all(v.warming_up and v.score == 0.0 for v in single)
    assert det.state_bytes("nab") == 0


def test_anomalous_windows_are_learned_at_the_reduced_weight_only() -> None:
    def run(weight: float) -> list[float]:
        det = CorrelationDetector(anomaly_weight=weight, smooth_windows=0)
        _feed(det, "s", 0, 600, np.random.default_rng(4))
        episode = _feed(det, "s", 600, 300, np.random.default_rng(5), True, low=1.6)
        return [v.score for v in episode]

    held, frozen, absorbed = run(0.3), run(0.0), run(1.0)
    assert min(frozen) >= CorrelationDetector().threshold  # every window of it is flagged
    # not learning it at all keeps it as anomalous at its end as at its start
    assert np.mean(frozen[-100:]) >= 0.9 * np.mean(frozen[:100])
    # learning it at the full rate inflates the covariance: the incident fades
    assert np.mean(absorbed[-100:]) < 0.5 * np.mean(frozen[-100:])
    # the reduced weight lies in between: it fades, but slower
    assert np.mean(absorbed[-100:]) < np.mean(held[-100:]) < np.mean(frozen[-100:])

    det = CorrelationDetector(anomaly_weight=0.0, smooth_windows=0)
    _feed(det, "s", 0, 600, np.random.default_rng(4))
    before = det.snapshot()
    verdicts = _feed(det, "s", 600, 20, np.random.default_rng(5), True, low=1.6)
    assert all(v.anomalous for v in verdicts)
    old = pickle.loads(before)[1][0][2]
    new = pickle.loads(det.snapshot())[1][0][2]
    np.testing.assert_array_equal(old["mean"], new["mean"])
    np.testing.assert_array_equal(old["cov"], new["cov"])


def test_smoothing_finds_a_small_persistent_break_hidden_in_window_noise() -> None:
    def run(smooth: float) -> tuple[list[float], list[float]]:
        det = CorrelationDetector(smooth_windows=smooth)
        rng = np.random.default_rng(9)
        normal = [v.score for v in _feed(det, "s", 0, 600, rng)[det.warmup:]]
        episode = []
        for i in range(600, 700):  # pressure sits 0.8 below its relation to flow
            v = _coupled(rng)
            v["pressure"] -= 0.8
            episode += det.score_and_learn([("s", _window(i, v))])
        return normal, [v.score for v in episode[20:]]

    _, raw_episode = run(0)
    smooth_normal, smooth_episode = run(10)
    assert np.median(raw_episode) < CorrelationDetector().threshold  # lost in the noise
    assert np.median(smooth_episode) > 2 * np.quantile(smooth_normal, 0.99)
    assert np.median(smooth_episode) > CorrelationDetector().threshold


def test_contributors_name_the_metric_that_left_its_relation() -> None:
    rng = np.random.default_rng(6)
    det = CorrelationDetector()
    _feed(det, "s", 0, 600, rng)
    # pressure moves 3 of its own deviations while flow (its partner) stays put
    for i in range(600, 620):
        v = det.score_and_learn([("s", _window(i, {"flow": 50.0, "pressure": 6.0,
                                                   "temp": 20.0}))])[0]
    assert v.anomalous
    assert v.contributors[0].metric == "pressure"
    assert v.contributors[0].weight > 0.5 * v.score


def test_a_missing_metric_counts_as_at_its_mean() -> None:
    rng = np.random.default_rng(7)
    det = CorrelationDetector()
    _feed(det, "s", 0, 300, rng)
    v = det.score_and_learn([("s", _window(300, {"flow": 50.0, "temp": 20.0}))])[0]
    assert np.isfinite(v.score) and not v.anomalous


def test_per_sensor_state_is_bounded_and_does_not_grow_with_time() -> None:
    det = CorrelationDetector(warmup=10)
    rng = np.random.default_rng(8)
    _feed(det, "s", 0, 100, rng)
    size = len(det.snapshot())
    _feed(det, "s", 100, 900, rng)
    assert len(det.snapshot()) == size
    d = 3
    assert det.state_bytes("s") == 8 * d + 4 * d * (d + 1) // 2 + 16  # 64 bytes
    eight = CorrelationDetector()
    eight.score_and_learn([("e", _window(0, {f"m{j}": 1.0 for j in range(8)}))])
    assert eight.state_bytes("e") == 224


def test_settings_build_the_detector_and_reject_bad_values() -> None:
    from detectors.factory import build_detectors

    settings = Settings.from_env({"VIGIL_DETECTORS": "hst,corr", "VIGIL_CORR_SHRINKAGE": "0.3",
                                  "VIGIL_CORR_HALF_LIFE": "10m"})
    det = build_detectors(settings)[1]
    assert isinstance(det, CorrelationDetector)
    assert det.shrinkage == 0.3 and det.half_life_s == 600.0
    with pytest.raises(SettingsError, match="VIGIL_CORR_SHRINKAGE"):
        Settings.from_env({"VIGIL_CORR_SHRINKAGE": "0"})
    with pytest.raises(SettingsError, match="VIGIL_CORR_WARMUP"):
        Settings.from_env({"VIGIL_CORR_WARMUP": "1"})


def measure(sensors: int = 10_000, metrics: int = 8, rounds: int = 5) -> dict[str, float]:
    """Snapshot bytes per sensor and µs per window for ``sensors`` sensors of ``metrics``
    metrics, one window each per round (the flow's steady state)."""
    import time

    rng = np.random.default_rng(0)
    det = CorrelationDetector(warmup=2)
    names = [f"m{j}" for j in range(metrics)]
    ids = [f"sensor-{k}" for k in range(sensors)]
    elapsed = 0.0
    windows = 0
    for r in range(rounds + 3):
        vals = rng.normal(size=(sensors, metrics)).tolist()
        batch = [(sid, _window(r, dict(zip(names, v, strict=True))))
                 for sid, v in zip(ids, vals, strict=True)]
        t0 = time.perf_counter()
        for k in range(0, sensors, 1000):  # the flow's batches are per shard, ~1000 windows
            det.score_and_learn(batch[k : k + 1000])
        if r >= 3:  # past warm-up: every window is scored
            elapsed += time.perf_counter() - t0
            windows += sensors
    snap = det.snapshot()
    return {"bytes_per_sensor": len(snap) / sensors, "payload": det.state_bytes(ids[0]),
            "us_per_window": 1e6 * elapsed / windows}


if __name__ == "__main__":
    for m in (4, 8):
        print(f"{m} metrics:", measure(metrics=m))
