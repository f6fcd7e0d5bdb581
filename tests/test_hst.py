"""Half-Space Trees detector: contract, warm-up, protection against learning incidents, scale
invariance, exact recovery, state size, and a SKAB smoke test.

Run as a script (``python tests/test_hst.py``) for the full SKAB leaderboard-protocol
evaluation over all 34 files and the normal-data alarm-rate measurement behind
``DEFAULT_THRESHOLD``; both live here as small reusable functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # when run as a script
    sys.path.insert(0, str(REPO))

from bench.metrics import Confusion, confusion, skab_summary  # noqa: E402
from detectors.base import Verdict  # noqa: E402
from detectors.hst import DEFAULT_THRESHOLD, HalfSpaceTreesDetector  # noqa: E402
from flows.offline import compute_features  # noqa: E402
from flows.replay import load_frame  # noqa: E402
from flows.windows import FEATURES, ClosedWindow, WindowSpec  # noqa: E402

SKAB = REPO.parent / "shared" / "datasets" / "skab"
SKAB_SMOKE = SKAB / "other" / "9.csv"  # "exponential rotor imbalance": one clear episode
needs_skab = pytest.mark.skipif(not SKAB_SMOKE.is_file(), reason="SKAB data absent")
SKAB_SPEC = WindowSpec(10_000, 1_000, 0)  # 1 Hz data: 10 s windows, one closes per row
SKAB_TRAIN_ROWS = 400  # the leaderboard protocol's training part of each file

METRICS = ("temp", "pressure", "flow", "vibration")
FAST = {"window_size": 64, "warmup": 10}  # small forest window so the tests warm up quickly


# --- synthetic windows -----------------------------------------------------------------------


def _window(t: int, values: dict[str, tuple[float, float, float]]) -> ClosedWindow:
    """A window whose metrics have the given (mean, std, slope); other features derived."""
    feats: dict[str, float] = {}
    for m, (mean, std, slope) in values.items():
        feats |= {
            f"{m}.mean": mean, f"{m}.std": std, f"{m}.min": mean - 2 * std,
            f"{m}.max": mean + 2 * std, f"{m}.last": mean, f"{m}.slope": slope,
            f"{m}.count": 10.0,
        }
    return ClosedWindow(t * 1000, t * 1000 + 10_000, feats, 10)


def _normal(rng: np.random.Generator, t: int, scale: float = 1.0, offset: float = 0.0,
            shift: dict[str, float] | None = None) -> ClosedWindow:
    """Normal behaviour: levels around 100·k with noise; ``shift`` adds k·σ to a metric's mean."""
    shift = shift or {}
    values = {}
    for k, m in enumerate(METRICS):
        level = 100.0 * (k + 1) + shift.get(m, 0.0)
        values[m] = (
            offset + scale * (level + rng.normal(0, 1.0)),
            scale * abs(5.0 + rng.normal(0, 0.5)),
            scale * rng.normal(0, 0.1),
        )
    return _window(t, values)


def _stream(n: int, seed: int = 0, **kw: float) -> list[ClosedWindow]:
    rng = np.random.default_rng(seed)
    return [_normal(rng, t, **kw) for t in range(n)]


def _run(det: HalfSpaceTreesDetector, sid: str, windows: Sequence[ClosedWindow]) -> list[Verdict]:
    return det.score_and_learn([(sid, w) for w in windows])


# --- contract ---------------------------------------------------------------------------------


def test_satisfies_the_detector_protocol():
    det = HalfSpaceTreesDetector()
    assert det.name == "hst" and det.version.startswith("hst-")
    assert det.threshold == DEFAULT_THRESHOLD
    batch = [("a", w) for w in _stream(3)] + [("b", w) for w in _stream(2, seed=1)]
    verdicts = det.score_and_learn(batch)
    assert len(verdicts) == len(batch) and all(isinstance(v, Verdict) for v in verdicts)
    state = det.snapshot()
    assert isinstance(state, bytes)
    other = HalfSpaceTreesDetector()
    other.restore(state)
    other.forget("a")
    other.forget("never-seen")  # forgetting an unknown sensor is harmless
    assert det.score_and_learn([]) == []


def test_warms_up_before_judging_and_never_alarms_meanwhile():
    det = HalfSpaceTreesDetector(**FAST)
    windows = _stream(200)
    verdicts = _run(det, "s", windows)
    # standardiser warm-up (10 windows), then the forest's first reference window (64)
    warm = [v.warming_up for v in verdicts]
    assert all(warm[: 10 + 64]) and not any(warm[10 + 64 :])
    assert all(v.score == 0.0 and not v.anomalous for v in verdicts[: 10 + 64])
    # a wild window during warm-up is still not anomalous
    fresh = HalfSpaceTreesDetector(**FAST)
    _run(fresh, "s", windows[:20])
    wild = _normal(np.random.default_rng(1), 20, shift={"flow": 1e6})
    assert fresh.score_and_learn([("s", wild)])[0].warming_up


def test_level_shift_on_one_sensor_scores_higher_than_normal_windows():
    rng = np.random.default_rng(3)
    det = HalfSpaceTreesDetector(**FAST)
    normal = _run(det, "s", [_normal(rng, t) for t in range(400)])[100:]
    shifted = det.score_and_learn([("s", _normal(rng, 400, shift={"flow": 30.0}))])[0]
    assert shifted.score > max(v.score for v in normal)
    assert shifted.anomalous
    assert shifted.contributors[0].metric == "flow"
    assert np.mean([v.anomalous for v in normal]) < 0.02


def test_long_incident_stays_anomalous_instead_of_being_learned():
    rng = np.random.default_rng(4)
    det = HalfSpaceTreesDetector(**FAST)
    _run(det, "s", [_normal(rng, t) for t in range(300)])
    # 600 windows of a 20σ drop in flow: ~10 times the forest's window
    incident = _run(det, "s", [_normal(rng, 300 + t, shift={"flow": -20.0}) for t in range(600)])
    flags = [v.anomalous for v in incident]
    assert np.mean(flags[:50]) > 0.9
    assert np.mean(flags[-100:]) > 0.9  # still anomalous at the end
    after = _run(det, "s", [_normal(rng, 900 + t) for t in range(100)])
    assert np.mean([v.anomalous for v in after[20:]]) < 0.1  # and normal once it is over


def test_without_protection_the_same_incident_would_be_learned():
    """The control for the test above: learning anomalous windows like normal ones, it fades."""
    rng = np.random.default_rng(4)
    det = HalfSpaceTreesDetector(hold_anomalies=False, **FAST)
    _run(det, "s", [_normal(rng, t) for t in range(300)])
    incident = _run(det, "s", [_normal(rng, 300 + t, shift={"flow": -20.0}) for t in range(600)])
    assert np.mean([v.anomalous for v in incident[-100:]]) < 0.5


def test_strict_hold_keeps_an_incident_for_many_half_lives():
    rng = np.random.default_rng(4)
    det = HalfSpaceTreesDetector(anomaly_weight=0.0, half_life_s=60, **FAST)  # windows hop 1 s
    _run(det, "s", [_normal(rng, t) for t in range(300)])
    incident = _run(det, "s", [_normal(rng, 300 + t, shift={"flow": -20.0}) for t in range(1200)])
    assert np.mean([v.anomalous for v in incident[-200:]]) > 0.9  # 20 half-lives later


def test_rebaselines_after_an_endless_deviation():
    rng = np.random.default_rng(5)
    det = HalfSpaceTreesDetector(rebaseline_after_s=50, **FAST)  # windows hop 1 s
    _run(det, "s", [_normal(rng, t) for t in range(200)])
    moved = _run(det, "s", [_normal(rng, 200 + t, shift={"flow": 50.0}) for t in range(120)])
    assert all(v.anomalous for v in moved[:51])
    assert moved[51].warming_up  # restarted its standardiser after 50 s of anomaly
    assert np.mean([v.anomalous for v in moved[70:]]) < 0.05  # the new level is normal now


def test_scale_invariance_a_1000x_sensor_behaves_like_a_1x_sensor():
    a, b = HalfSpaceTreesDetector(**FAST), HalfSpaceTreesDetector(**FAST)
    rng_a, rng_b = np.random.default_rng(6), np.random.default_rng(6)
    shift = {"pressure": 15.0}
    wa = [_normal(rng_a, t, shift=shift if t > 300 else None) for t in range(400)]
    wb = [_normal(rng_b, t, scale=1000.0, offset=-5e4, shift=shift if t > 300 else None)
          for t in range(400)]
    va, vb = _run(a, "one", wa), _run(b, "thousand", wb)
    np.testing.assert_allclose([v.score for v in va], [v.score for v in vb], atol=1e-9)
    assert [v.anomalous for v in va] == [v.anomalous for v in vb]
    assert any(v.anomalous for v in va[301:])
    # and in one shared forest, the two sensors are judged alike
    both = HalfSpaceTreesDetector(**FAST)
    vs = both.score_and_learn([x for pair in zip(
        [("one", w) for w in wa], [("thousand", w) for w in wb], strict=True) for x in pair])
    one, thousand = vs[0::2], vs[1::2]
    agree = np.mean([x.anomalous == y.anomalous for x, y in zip(one, thousand, strict=True)])
    assert agree > 0.98


def test_snapshot_and_restore_continue_exactly_as_without_interruption():
    windows = {sid: _stream(500, seed=k) for k, sid in enumerate(("a", "b", "c"))}
    rng = np.random.default_rng(9)
    windows["b"][350:420] = [_normal(rng, t, shift={"temp": 25.0}) for t in range(350, 420)]

    def batches(lo: int, hi: int) -> list[list[tuple[str, ClosedWindow]]]:
        return [[(s, windows[s][t]) for s in windows] for t in range(lo, hi)]

    for cut in (25, 300):  # during the forest's warm-up (45 of 64 learned), and when scoring
        straight = HalfSpaceTreesDetector(**FAST)
        for b in batches(0, cut):
            straight.score_and_learn(b)
        state = straight.snapshot()
        resumed = HalfSpaceTreesDetector(**FAST)
        resumed.restore(state)
        for b in batches(cut, 500):
            assert straight.score_and_learn(b) == resumed.score_and_learn(b)
        assert resumed.snapshot() == straight.snapshot()


def test_several_windows_of_a_sensor_in_one_batch_equal_one_by_one():
    windows = _stream(200)
    together = HalfSpaceTreesDetector(**FAST)
    apart = HalfSpaceTreesDetector(**FAST)
    one_batch = _run(together, "s", windows)
    assert one_batch == [apart.score_and_learn([("s", w)])[0] for w in windows]


def test_per_sensor_state_stays_under_its_bound():
    """4 metrics × 3 features: 2 float64 rows (192 B) + 3 int64 (24 B) + the id map entry."""
    det = HalfSpaceTreesDetector(**FAST)
    rng = np.random.default_rng(2)

    def add(lo: int, hi: int) -> None:
        for t in range(3):
            det.score_and_learn([(f"sensor-{i:05d}", _normal(rng, t)) for i in range(lo, hi)])

    add(0, 1000)
    size_1k = len(det.snapshot())
    add(1000, 3000)
    per_sensor = (len(det.snapshot()) - size_1k) / 2000
    assert per_sensor < 320, per_sensor
    (g,) = det._groups.values()
    table_bytes = (g.mean.nbytes + g.dev.nbytes + g.meta.nbytes) / len(g.meta)
    assert table_bytes == 2 * 12 * 8 + 3 * 8


def test_forgotten_sensor_starts_over_and_its_row_is_reused():
    det = HalfSpaceTreesDetector(**FAST)
    _run(det, "old", _stream(50))
    det.forget("old")
    assert _run(det, "new", _stream(1))[0].warming_up
    (g,) = det._groups.values()
    assert g.size == 1  # "new" took the freed row


def test_missing_or_nan_feature_counts_as_normal():
    det = HalfSpaceTreesDetector(**FAST)
    windows = _stream(150)
    _run(det, "s", windows)
    partial = windows[-1].features.copy()
    for f in FEATURES:
        del partial[f"flow.{f}"]
    partial["temp.mean"] = float("nan")
    v = det.score_and_learn([("s", ClosedWindow(0, 1, partial, 9))])[0]
    assert not v.warming_up and np.isfinite(v.score)
    # a sensor with none of the detector's features is never judged
    bare = det.score_and_learn([("bare", ClosedWindow(0, 1, {"x.count": 3.0}, 3))])[0]
    assert bare.warming_up and not bare.anomalous


def test_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        HalfSpaceTreesDetector(anomaly_weight=2.0)
    with pytest.raises(ValueError):
        HalfSpaceTreesDetector(features=("count",))
    with pytest.raises(ValueError):
        HalfSpaceTreesDetector(warmup=1)


# --- SKAB (leaderboard protocol, strictly causal) -------------------------------------------


def skab_windows(path: Path, spec: WindowSpec = SKAB_SPEC) -> tuple[pl.DataFrame, list]:
    """A SKAB file's frame and its windows, computed by the flow's own feature code."""
    df = load_frame(path)
    metrics = [c for c in df.columns if c != "ts"]
    feats = compute_features(df.with_columns(pl.lit("s").alias("sensor_id")), spec, metrics)
    names = [c for c in feats.columns if "." in c]
    windows = [
        ClosedWindow(int(s), int(e), dict(zip(names, row, strict=True)), 0)
        for s, e, row in zip(
            feats["start"].dt.epoch("ms"), feats["end"].dt.epoch("ms"),
            feats.select(names).rows(), strict=True,
        )
    ]
    return df, windows


def skab_file_alerts(
    path: Path, detector: HalfSpaceTreesDetector, spec: WindowSpec = SKAB_SPEC
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, alerts, scores) per row of one SKAB file, scoring every window online.

    The whole file streams through the detector in order, so the first ``SKAB_TRAIN_ROWS``
    rows warm it up ("fit") and the rest is scored causally while it keeps learning. Each row
    gets the verdict of the window whose last pane holds it (``end = (ts // hop + 1) · hop``);
    rows before the first window get 0.
    """
    df, windows = skab_windows(path, spec)
    labels = pl.read_csv(path, separator=";")["anomaly"].to_numpy().astype(int)
    verdicts = _run(detector, "s", windows)
    by_end = {w.end_ms: v for w, v in zip(windows, verdicts, strict=True)}
    hop = spec.hop_ms
    found = [by_end.get(int(t)) for t in (df["ts"].dt.epoch("ms").to_numpy() // hop + 1) * hop]
    alerts = np.array([bool(v is not None and v.anomalous) for v in found], dtype=int)
    scores = np.array([v.score if v is not None else 0.0 for v in found])
    return labels, alerts, scores


def skab_evaluate(
    make: Callable[[], HalfSpaceTreesDetector], root: Path = SKAB
) -> tuple[dict[str, float | int], dict[str, Confusion]]:
    """The SKAB leaderboard row (micro-summed F1/FAR/MAR over the 34 files' test parts)."""
    per_file: dict[str, Confusion] = {}
    for path in sorted(p for p in root.glob("*/*.csv") if p.parent.name != "anomaly-free"):
        labels, alerts, _ = skab_file_alerts(path, make())
        per_file[str(path.relative_to(root))] = confusion(
            labels[SKAB_TRAIN_ROWS:], alerts[SKAB_TRAIN_ROWS:]
        )
    return skab_summary(per_file.values()), per_file


def measure_normal_alarm_rate(
    make: Callable[[], HalfSpaceTreesDetector],
    path: Path = SKAB / "anomaly-free" / "anomaly-free.csv",
) -> tuple[float, np.ndarray]:
    """Share of scored windows flagged on normal-only data, and the scores (threshold check)."""
    _, windows = skab_windows(path)
    scored = [v for v in _run(make(), "s", windows) if not v.warming_up]
    return float(np.mean([v.anomalous for v in scored])), np.array([v.score for v in scored])


@needs_skab
def test_skab_smoke_alerts_concentrate_in_the_labelled_anomaly():
    labels, alerts, _ = skab_file_alerts(SKAB_SMOKE, HalfSpaceTreesDetector())
    y, a = labels[SKAB_TRAIN_ROWS:], alerts[SKAB_TRAIN_ROWS:]
    c = confusion(y, a)
    assert c.precision >= 0.9, c  # alerts are inside the episode ...
    assert c.recall >= 0.8, c  # ... and cover most of it
    assert c.far <= 5.0, c


if __name__ == "__main__":
    import time

    seeds = [int(s) for s in sys.argv[1:]] or [42]
    for seed in seeds:
        t0 = time.perf_counter()
        row, files = skab_evaluate(lambda seed=seed: HalfSpaceTreesDetector(seed=seed))
        rate, scores = measure_normal_alarm_rate(
            lambda seed=seed: HalfSpaceTreesDetector(seed=seed)
        )
        print(f"seed {seed}: SKAB {row}  anomaly-free alarm rate {100 * rate:.2f} %, "
              f"score q50/q99 {np.quantile(scores, 0.5):.3f}/{np.quantile(scores, 0.99):.3f} "
              f"({time.perf_counter() - t0:.0f} s)")


def test_the_compiled_forest_scores_and_learns_exactly_like_rivers_own_calls() -> None:
    """Batched walks over River's trees give River's score_one/learn_one results, bit for bit,
    across reference-window pivots, with the paths walked once for scoring and learning or
    each time, and write the same masses back into River's nodes."""
    from river.anomaly import HalfSpaceTrees

    from detectors.hst import _Walker

    rng = np.random.default_rng(7)
    points = rng.beta(0.5, 3.0, size=(300, 3))  # crowded near 0 like squashed deviations
    river = HalfSpaceTrees(n_trees=5, height=4, window_size=16, seed=3)
    ours = HalfSpaceTrees(n_trees=5, height=4, window_size=16, seed=3)
    expected = []
    for p in points:
        x = dict(enumerate(p.tolist()))
        expected.append(river.score_one(x))
        river.learn_one(x)
    ours.learn_one(dict(enumerate(points[0].tolist())))  # River builds the trees
    walker = _Walker(ours)
    got = [0.0]
    k = 1
    sizes = iter([1, 7, 3, 16, 5, 9] * 100)
    while k < len(points):
        chunk = points[k : k + min(next(sizes), ours.window_size - ours.counter)]
        paths = walker.paths(chunk) if k % 2 else None  # walked once for both, or each time
        got += (walker.score(chunk, paths).tolist() if not ours._first_window
                else [0.0] * len(chunk))
        walker.learn(chunk, paths)
        k += len(chunk)
    assert got == [float(s) for s in expected]
    walker.sync()
    for t_ours, t_river in zip(ours.trees, river.trees, strict=True):
        ours_nodes, river_nodes = list(t_ours.iter_dfs()), list(t_river.iter_dfs())
        assert [(n.l_mass, n.r_mass) for n in ours_nodes] == [
            (n.l_mass, n.r_mass) for n in river_nodes
        ]


def test_a_snapshot_in_the_older_row_number_format_restores_the_same_state() -> None:
    """Recovery stores written before the standardiser rows moved into SensorRows resume
    exactly: (groups with raw tables and a free list, {sensor: (feature set, row)})."""
    import pickle

    det = HalfSpaceTreesDetector(**FAST)
    for seed, name in enumerate(("a", "b", "c")):
        _run(det, name, _stream(120, seed=seed, offset=50.0 * seed, scale=1.0 + seed))
    det.forget("b")
    _, groups = pickle.loads(det.snapshot())
    old_groups, rows = [], {}
    for keys, forest, ids, tables in groups:
        order = list(reversed(ids))  # other row numbers than the new format's
        at = [ids.index(sid) for sid in order]
        old_groups.append((keys, forest, tables["mean"][at], tables["dev"][at],
                           tables["meta"][at], []))
        rows.update({sid: (keys, order.index(sid)) for sid in ids})  # not in row order
    copy = HalfSpaceTreesDetector(**FAST)
    copy.restore(pickle.dumps((old_groups, rows)))
    later = _stream(200, seed=9, offset=50.0)[120:]
    for name in ("a", "c", "b"):
        assert _run(copy, name, later) == _run(det, name, later)
