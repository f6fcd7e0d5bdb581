"""The column-wise window store against a direct computation of the contract, and recovery.

``reference`` below restates ``flows/windows.py``'s contract in plain Python: it keeps every
accepted reading and computes each window's features straight from them (numpy mean/std/
polyfit), with no panes, shifted sums or rings. Random streams (many sensors, out of order
within the lateness, late readings, gaps and jumps inside one batch, varying and reordered
metric sets, readings older than a sensor's first, values around 1e5 at epoch-ms times) must
give the same windows, the same late decisions and the same features to 1e-9.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from flows.schemas import Reading
from flows.stages import FeatureStage
from flows.windows import FEATURES, ClosedWindow, Row, WindowSpec, WindowStore

T0 = 1_700_000_000_000

Window = tuple[str, int, int, int, dict[str, float]]
Expected = tuple[str, int, int, int, dict[str, float], dict[str, float]]


def _features(
    rows: list[tuple[int, int, Mapping[str, float]]], start: int, refs: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, float]]:
    """Each metric's features from its (ts, arrival, values) rows, computed directly.

    Also how far the store's one-pass sums may stray: mean, min, max, last and count to
    1e-9; std and slope by their conditioning (values far from the metric's reference value,
    times bunched far from the window start), with the rounding of a handful of float64 sums.
    """
    out: dict[str, float] = {}
    tol: dict[str, float] = {}
    metrics = list(dict.fromkeys(m for _, _, vals in rows for m in vals))
    for m in metrics:
        pts = sorted((ts, i, vals[m]) for ts, i, vals in rows if m in vals)
        v = np.array([p[2] for p in pts])
        t = np.array([(p[0] - start) / 1000.0 for p in pts])
        n = len(v)
        var_t, t2 = t.var(), float(np.mean(t * t))
        # equal times (to 1e-12 of their magnitude) have no slope
        slope = np.polyfit(t, v, 1)[0] if var_t > 1e-12 * t2 else 0.0
        # the newest time's value; of equal times the one that arrived last (sorted last)
        got = (v.mean(), v.std(), v.min(), v.max(), v[-1], slope, float(n))
        names = [f"{m}.{f}" for f in FEATURES]
        out.update(zip(names, got, strict=True))
        tol.update({name: 1e-9 * (1 + abs(x)) for name, x in zip(names, got, strict=True)})
        rounding = 1e-13 * n
        dev2 = float(np.mean((v - refs[m]) ** 2))
        d_var = rounding * dev2
        if d_var:
            tol[f"{m}.std"] += d_var / (v.std() + math.sqrt(d_var))
        if var_t > 0:
            tol[f"{m}.slope"] += rounding * (math.sqrt(t2 * dev2) + abs(slope) * t2) / var_t
    return out, tol


class Reference:
    """The contract, reading by reading, keeping every accepted reading."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.newest: dict[str, int] = {}
        self.decided: dict[str, int] = {}  # windows ending at or before this pane are done
        self.first: dict[str, int] = {}
        self.rows: dict[str, list[tuple[int, int, Mapping[str, float]]]] = {}
        self.refs: dict[str, dict[str, float]] = {}  # first accepted value per metric
        self.arrivals = 0

    def process(self, batch: list[Row]) -> tuple[list[Expected], list[tuple[int, int]]]:
        hop, lateness = self.spec.hop_ms, self.spec.lateness_ms
        late: list[tuple[int, int]] = []
        touched: dict[str, None] = {}
        closer: dict[str, list[tuple[int, int, int]]] = {}
        for i, r in enumerate(batch):
            sid, ts = r.sensor_id, r.ts_ms
            if sid in self.newest and ts < self.newest[sid] - lateness:
                late.append((i, self.newest[sid]))
                continue
            if sid not in self.newest:
                self.newest[sid] = ts
                self.decided[sid] = (ts - lateness) // hop
                self.first[sid] = ts // hop
                self.rows[sid] = []
                self.refs[sid] = {}
            before = (self.newest[sid] - lateness) // hop
            self.newest[sid] = max(self.newest[sid], ts)
            self.first[sid] = min(self.first[sid], ts // hop)
            self.rows[sid].append((ts, self.arrivals, r.values))
            for m, value in r.values.items():
                self.refs[sid].setdefault(m, value)
            self.arrivals += 1
            touched[sid] = None
            closer.setdefault(sid, [])  # (last window end pane this reading closes, i)
            closer[sid].append(((self.newest[sid] - lateness) // hop, i, before))
        out: list[Expected] = []
        for sid in touched:
            out += self._close(sid, (self.newest[sid] - lateness) // hop)

        def closed_by(w: Expected) -> int:  # the first reading whose watermark reached the end
            end = w[2] // hop
            return next(i for upto, i, _ in closer[w[0]] if upto >= end)

        out.sort(key=lambda w: (closed_by(w), w[2]))  # by closing reading, then end
        return out, late

    def flush(self) -> list[Expected]:
        out: list[Expected] = []
        for sid in self.rows:
            out += self._close(sid, self.newest[sid] // self.spec.hop_ms + 1)
        first_seen = {sid: k for k, sid in enumerate(self.rows)}
        return sorted(out, key=lambda w: (w[2], first_seen[w[0]]))  # by end, then sensor

    def _close(self, sid: str, upto: int) -> list[Expected]:
        hop, k = self.spec.hop_ms, self.spec.panes
        done = self.decided[sid]
        if upto <= done:
            return []
        ends = sorted({
            e for ts, _, _ in self.rows[sid] for e in range(ts // hop + 1, ts // hop + k + 1)
            if done < e <= upto and e >= self.first[sid] + k
        })
        self.decided[sid] = upto
        out = []
        for e in ends:
            start, end = (e - k) * hop, e * hop
            rows = [row for row in self.rows[sid] if start <= row[0] < end]
            out.append((sid, start, end, len(rows), *_features(rows, start, self.refs[sid])))
        return out


def _as_tuples(windows: list) -> list[Window]:
    return [(s, w.start_ms, w.end_ms, w.readings, w.features) for s, w in windows]


def _assert_same(got: list[Window], want: list[Expected]) -> None:
    assert [w[:4] for w in got] == [w[:4] for w in want]
    for g, (*key, features, tol) in zip(got, want, strict=True):
        assert g[4].keys() == features.keys()
        for name, value in features.items():
            assert abs(g[4][name] - value) <= tol[name], (key, name, g[4][name], value)


def _stream(rng: random.Random, spec: WindowSpec) -> list[list[Row]]:
    """Random batches: ticks of many sensors or bursts of few, with every awkward case."""
    hop, length, lateness = spec.hop_ms, spec.length_ms, spec.lateness_ms
    n_sensors = rng.choice([1, 3, 8, 40])
    clock = {f"s{i}": T0 + rng.randrange(0, 10 * length) for i in range(n_sensors)}
    metrics = ["p", "q", "r", "s"]
    level = {"p": 1e5, "q": 0.0, "r": -250.0, "s": 1e-3}
    batches = []
    for _ in range(rng.randint(5, 40)):
        sids = list(clock)
        if rng.random() < 0.5:  # a tick: each sensor at most once, shuffled
            rng.shuffle(sids)
            picks = sids[: rng.randint(0, len(sids))]
        else:  # a burst: sensors repeat within the batch
            picks = [rng.choice(sids) for _ in range(rng.randint(0, 60))]
        batch = []
        for sid in picks:
            u = rng.random()
            if u < 0.02:
                clock[sid] += rng.randint(hop, 40 * length)  # a gap, often inside the batch
            elif u < 0.9:
                clock[sid] += rng.randint(0, hop // 3)
            back = rng.randint(0, lateness + hop) if rng.random() < 0.15 else 0  # maybe late
            names = metrics[: rng.choice([1, 2, 4, 4, 4])]
            if rng.random() < 0.2:
                names = rng.sample(metrics, rng.randint(1, 4))  # another set, another order
            values = {m: level[m] + rng.gauss(0, 3) for m in names}
            batch.append(Row(sid, clock[sid] - back, values))
        batches.append(batch)
    return batches


def _spec(rng: random.Random) -> WindowSpec:
    hop = rng.choice([1_000, 10_000, 60_000])
    return WindowSpec(rng.randint(1, 6) * hop, hop, rng.choice([0, hop // 3, hop, 3 * hop + 7]))


@pytest.mark.parametrize("seed", range(60))
def test_random_streams_give_the_windows_and_late_decisions_of_a_direct_computation(seed):
    rng = random.Random(seed)
    spec = _spec(rng)
    store, ref = WindowStore(spec), Reference(spec)
    for batch in _stream(rng, spec):
        got = store.process([batch])
        want, want_late = ref.process(batch)
        assert got.late == want_late
        assert got.accepted == len(batch) - len(want_late)
        _assert_same(_as_tuples(got.windows), want)
    _assert_same(_as_tuples(store.flush()), ref.flush())


@pytest.mark.parametrize("seed", range(20))
def test_a_restored_store_continues_exactly_like_the_original(seed):
    rng = random.Random(1000 + seed)
    spec = _spec(rng)
    batches = _stream(rng, spec)
    cut = rng.randrange(len(batches))
    a, b = WindowStore(spec), WindowStore(spec)
    out_a, out_b = [], []
    for i, batch in enumerate(batches):
        if i == cut:
            b = WindowStore.restore(spec, b.snapshot())
        ra, rb = a.process([batch]), b.process([batch])
        assert ra.late == rb.late
        out_a += _as_tuples(ra.windows)
        out_b += _as_tuples(rb.windows)
    out_a += _as_tuples(a.flush())
    out_b += _as_tuples(b.flush())
    assert out_a == out_b  # bit for bit, not merely close
    assert WindowStore.restore(spec, a.snapshot()).snapshot() == a.snapshot()


def test_a_sensor_repeated_in_a_batch_is_judged_late_against_its_own_earlier_readings():
    spec = WindowSpec(60_000, 10_000, 5_000)
    store = WindowStore(spec)
    batch = [
        Row("a", T0 + 20_000, {"x": 1.0}),
        Row("b", T0, {"x": 1.0}),
        Row("a", T0 + 14_999, {"x": 2.0}),  # 5.001 s behind a's newest: late
        Row("a", T0 + 15_000, {"x": 3.0}),  # exactly at the lateness: on time
        Row("b", T0 + 14_999, {"x": 4.0}),  # b's own newest is T0: on time
    ]
    res = store.process([batch])
    assert res.late == [(2, T0 + 20_000)]
    assert res.accepted == 4


def test_a_batch_that_jumps_far_ahead_closes_every_window_it_passed():
    spec = WindowSpec(30_000, 10_000, 0)
    ref, store = Reference(spec), WindowStore(spec)
    batch = [Row("a", T0 + i * 3_000, {"x": float(i)}) for i in range(50)]  # 150 s in one batch
    batch.append(Row("a", T0 + 10_000_000, {"x": 0.0}))
    got = store.process([batch])
    want, _ = ref.process(batch)
    assert len(want) > 10
    _assert_same(_as_tuples(got.windows), want)


def test_windows_come_out_in_the_order_of_the_readings_that_closed_them_then_by_end():
    spec = WindowSpec(10_000, 10_000, 0)
    store = WindowStore(spec)
    store.process([[Row("a", T0, {"x": 1.0}), Row("b", T0, {"x": 1.0})]])
    store.process([[Row("a", T0 + 10_000, {"x": 1.0}), Row("b", T0 + 10_000, {"x": 1.0})]])
    res = store.process([[
        Row("b", T0 + 25_000, {"x": 1.0}),  # closes b's window ending at +20 s
        Row("a", T0 - 1, {"x": 1.0}),  # late
        Row("a", T0 + 15_000, {"x": 1.0}),  # closes nothing new
        Row("a", T0 + 35_000, {"x": 1.0}),  # closes a's window ending at +20 s
        Row("b", T0 + 36_000, {"x": 1.0}),  # closes b's window ending at +30 s
        Row("a", T0 + 55_000, {"x": 1.0}),  # closes a's windows ending at +40 s and +50 s
    ]])
    assert [(s, (w.end_ms - T0) // 1000) for s, w in res.windows] == [
        ("b", 20), ("a", 20), ("b", 30), ("a", 40),
    ]


def test_a_metric_first_seen_in_a_late_reading_takes_its_reference_from_an_accepted_one():
    spec = WindowSpec(10_000, 10_000, 0)
    store = WindowStore(spec)
    store.process([[Row("a", T0 + 5_000, {"x": 1.0})]])
    res = store.process([[
        Row("a", T0, {"x": 1.0, "y": 1e300}),  # late: its y must leave no trace
        Row("a", T0 + 6_000, {"x": 1.0, "y": 1e5 + 0.5}),
        Row("a", T0 + 7_000, {"x": 1.0, "y": 1e5 + 1.5}),
    ]])
    assert res.late == [(0, T0 + 5_000)]
    (_, w), = store.flush()
    assert w.features["y.mean"] == 1e5 + 1.0 and w.features["y.std"] == 0.5


def test_feature_stage_dead_letters_late_readings_and_restores_to_identical_outputs():
    spec = WindowSpec(300_000, 60_000, 60_000)
    rng = random.Random(5)

    def tick(i: int) -> list[Reading]:
        return [
            Reading(f"s{j}", T0 + i * 10_000 - (90_000 if (i + j) % 17 == 0 else 0),
                    {"a": 1e5 + rng.gauss(0, 1), "b": math.sin(i / 7 + j)})
            for j in range(30)
        ]

    ticks = [tick(i) for i in range(80)]
    a = FeatureStage(spec, "readings")
    outs = [a.process([t]) for t in ticks[:40]]
    b = FeatureStage.restore(spec, a.snapshot(), "readings")
    late = sum(len(o.late) for o in outs)
    assert late and all(d.reason == "late" and d.topic == "readings" for o in outs for d in o.late)
    for t in ticks[40:]:
        oa, ob = a.process([t]), b.process([t])
        assert oa.windows == ob.windows and oa.accepted == ob.accepted
        assert [d.detail for d in oa.late] == [d.detail for d in ob.late]
    assert a.flush().windows == b.flush().windows


def test_snapshot_is_under_1600_bytes_per_sensor_with_four_metrics():
    spec = WindowSpec(300_000, 60_000, 60_000)
    store = WindowStore(spec)
    for i in range(60):  # ten minutes at 0.1 Hz, four metrics, 1000 sensors
        store.process([[
            Row(f"sensor-{j:05d}", T0 + i * 10_000, {"a": 1.0 * i, "b": 2.0, "c": j, "d": 0.5})
            for j in range(1000)
        ]])
    assert len(store.snapshot()) / 1000 < 1600  # SensorWindows dicts took 2,090


def test_a_recovery_store_of_per_sensor_objects_resumes_with_identical_windows():
    """Snapshots written when each sensor was a SensorWindows object (recorded with that code,
    tests/data/windows_v0_snapshot.pickle) restore into the column-wise store exactly."""
    with (Path(__file__).parent / "data" / "windows_v0_snapshot.pickle").open("rb") as fh:
        fixture = pickle.load(fh)
    spec = WindowSpec(*fixture["spec"])
    stage = FeatureStage.restore(spec, fixture["snapshot"])
    def by_sensor(ws: list) -> list:  # recorded in the old order (by sensor, then end)
        return sorted(ws, key=lambda w: (w[0], w[1], w[2]))

    for rows, (windows, late, accepted) in zip(fixture["later"], fixture["outputs"], strict=True):
        out = stage.process([[Reading(*row) for row in rows]])
        assert by_sensor([(s, *_flat(w)) for s, w in out.windows]) == by_sensor(windows)
        assert [d.detail for d in out.late] == late and out.accepted == accepted
    assert [(s, *_flat(w)) for s, w in stage.flush().windows] == fixture["flush"]


def _flat(w: ClosedWindow) -> tuple[int, int, int, dict[str, float]]:
    return w.start_ms, w.end_ms, w.readings, w.features


def _staggered(spec: WindowSpec, rng: random.Random) -> WindowSpec:
    return WindowSpec(spec.length_ms, spec.hop_ms, spec.lateness_ms,
                      spec.hop_ms // rng.choice([2, 4, 5, 10]))


@pytest.mark.parametrize("seed", range(30))
def test_staggered_windows_are_each_sensors_aligned_windows_moved_by_its_fixed_offset(seed):
    """A staggered store on a stream gives, bit for bit, what an aligned store gives on the
    same stream with each sensor's times moved back by its offset, moved forward again: the
    same windows, late decisions and features, only on the sensor's own grid."""
    rng = random.Random(5000 + seed)
    aligned = _spec(rng)
    spec = _staggered(aligned, rng)
    batches = _stream(rng, aligned)
    offset = {r.sensor_id: spec.offset_of(r.sensor_id) for b in batches for r in b}
    assert all(0 <= o < spec.hop_ms and o % spec.stagger_ms == 0 for o in offset.values())
    store, plain = WindowStore(spec), WindowStore(aligned)
    cut = rng.randrange(len(batches))

    def moved(windows: list) -> list[Window]:
        return [(s, a + offset[s], b + offset[s], n, f) for s, a, b, n, f in _as_tuples(windows)]

    for i, batch in enumerate(batches):
        if i == cut:  # recovery keeps the offsets
            store = WindowStore.restore(spec, store.snapshot())
        got = store.process([batch])
        want = plain.process([
            [Row(r.sensor_id, r.ts_ms - offset[r.sensor_id], r.values) for r in batch]
        ])
        shifted_late = [(i, t + offset[batch[i].sensor_id]) for i, t in want.late]
        assert got.late == shifted_late  # the newest ms in the message is event time
        assert _as_tuples(got.windows) == moved(want.windows)
    assert _as_tuples(store.flush()) == moved(plain.flush())


def test_stagger_spreads_a_fleets_window_closings_over_the_hop():
    spec = WindowSpec(300_000, 60_000, 0, stagger_ms=10_000)
    offsets = [spec.offset_of(f"sensor-{i}") for i in range(6_000)]
    counts = np.bincount(np.array(offsets) // 10_000, minlength=6)
    assert len(counts) == 6 and counts.min() > 850  # ~1,000 per step of the hop
    store = WindowStore(spec)
    ends: set[int] = set()
    for tick in range(40):  # every sensor reports in step every 10 s
        batch = [Row(f"sensor-{i}", T0 + tick * 10_000, {"x": 1.0}) for i in range(600)]
        ends |= {w.end_ms % 60_000 for _, w in store.process([batch]).windows}
    assert ends == set(range(0, 60_000, 10_000))  # every step of the hop, not one instant


def test_a_store_saved_with_another_stagger_is_refused_with_the_setting_to_change():
    aligned = WindowSpec(60_000, 10_000, 0)
    staggered = WindowSpec(60_000, 10_000, 0, stagger_ms=5_000)
    store = WindowStore(aligned)
    store.process([[Row("s1", T0, {"x": 1.0})]])
    with pytest.raises(ValueError, match="VIGIL_WINDOW_STAGGER=0 ms, this flow runs with 5000"):
        WindowStore.restore(staggered, store.snapshot())
    with pytest.raises(ValueError, match="divide the hop"):
        WindowSpec(60_000, 10_000, 0, stagger_ms=3_000)
