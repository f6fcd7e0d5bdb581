"""Event-time sliding-window features of many sensors: the single definition of every feature.

Contract
--------
* A window of length ``L`` closes every hop ``H`` (``L = k·H``). Readings are added to *panes*
  (one per hop); a closing window merges its ``k`` panes, so each reading is touched once no
  matter how much windows overlap.
* Event time is per sensor. The watermark is ``newest reading seen - allowed lateness``. A
  reading older than the watermark is *late*: it is rejected (the caller dead-letters it) and
  changes nothing. Lateness is decided in arrival order, reading by reading, also within one
  batch. A window ``[start, end)`` is emitted once the watermark reaches ``end``, so every
  reading the window will ever accept is in it when it is computed: out-of-order input within
  the allowed lateness gives the same features as in-order input.
* A sensor's first windows, which would start before its first reading, are not emitted:
  they are partial by construction and would teach detectors a false normal. (An on-time
  reading that is older than the first one moves the sensor's start back to its pane.)
* Windows that contain no reading are not emitted (a silent sensor produces nothing). At the
  end of a finite input, ``flush`` closes windows up to the end of the newest pane only.
* Per metric the features are ``FEATURES``: mean, std (population), min, max, last (value at
  the newest timestamp; of equal timestamps the one that arrived last), slope (least-squares,
  units per second; 0 when all timestamps are equal) and count. A reading may carry any subset
  of metrics; a window has the features of the metrics that occur in it, listed in the order
  the sensor first sent each metric.
* Features do not depend on how the input is cut into batches, to the bit: pane sums grow in
  arrival order and a window adds its panes oldest first, the order a reading-by-reading loop
  would use. (So the flow and ``flows.offline`` agree exactly.)
* A batch's windows come out in the order of the readings that closed them (the sensor's
  first reading whose watermark reached the window's end), windows closed by the same reading
  oldest first (``flush``: by window end, then in the order sensors first appeared). That is
  the order a reading-by-reading loop would emit them in, whatever the batch cut, so
  detectors that share state between sensors see the same sequence however it was batched.

State layout
------------
``WindowStore`` holds all sensors of one state shard in numpy arrays, so a batch is worked
column-wise instead of reading by reading:

* per sensor *slot*: newest event time, ``next_close`` (panes before it are decided), first
  pane, and a ring of ``R = k + ceil(lateness/H) + 1`` pane slots (pane index and readings);
* per *cell* (one sensor's one metric): its sensor, a reference value, and the same ring of
  10 float64 pane statistics (count, Σv, Σv², Σt, Σt², Σtv, min, max, last t, last v) with the
  pane index each ring slot holds. Pane ``p`` lives in ring slot ``p mod R``; a slot whose
  stored index is not ``p`` is simply stale, so nothing is ever deleted.

Sums are relative to the cell's reference value (its first accepted value) and to the pane
start, which keeps variance and slope numerically stable for large offsets such as pressures
of 10^5 or epoch-millisecond timestamps.

Cost
----
One Python pass per reading turns the batch into flat arrays (sensor slot, event time, and per
value its cell and value): a dict lookup, a length check, a C-level item getter and a few
appends, ~0.2 µs. A new sensor or a changed metric set takes a slower path once. Lateness (a
per-sensor running maximum in arrival order), pane updates and window closing (gather ``k``
panes per window and metric, shift, add, derive features) are numpy operations over the
whole batch; when every sensor occurs once in the batch (one reading per sensor per batch)
pane updates need no grouping. Measured on 2 cores with 4 metrics and 6 readings per window:
a call costs ~50 µs of numpy overhead however small the batch; per reading ~1.2 µs in a
microbenchmark at 625 readings per call (1.8 µs at 62), and 2.1-2.3 µs on the simulated
fleet of ``bench.feature_ab`` (1,000-10,000 sensors over 16 shards, state out of cache), where
the per-sensor objects this replaced took 5.9-9.1 µs. About a quarter is building
``ClosedWindow`` objects and their features dicts, the only per-window Python left.

The ring covers the panes one batch can touch when event time advances by at most a pane per
batch; a batch that jumps further for some sensor (a gap, a replay) is worked in rounds for
that sensor, closing its due windows between rounds. That gives the same windows, because a
window is only closed once no accepted reading can still fall into it.

``snapshot()`` keeps only live panes (those a future window can still use) in compact
arrays; ``restore()`` rebuilds identical behaviour, also from recovery stores written when
each sensor was its own ``SensorWindows`` object. ``SensorWindows`` is now a one-sensor view
of the same machinery, for tests and tools.
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

FEATURES: tuple[str, ...] = ("mean", "std", "min", "max", "last", "slope", "count")

# Positions in a pane's per-metric statistics.
_N, _SV, _SVV, _ST, _STT, _STV, _MIN, _MAX, _LT, _LV = range(10)
_NSTATS = 10
# Statistics of "no data": adding it changes nothing.
_IDENT = np.array([0, 0, 0, 0, 0, 0, math.inf, -math.inf, -math.inf, 0], dtype=np.float64)
_NONE = -(2**62)  # "no reading yet" / "empty ring slot"; far below any real ms or pane
_SAFE = 2**62  # combined integer sort keys must stay below this
_count = np.count_nonzero  # C speed; ndarray.any()/all() go through Python wrappers
_FORMAT = 3  # snapshot layout version (3 adds the stagger; 2 was always unstaggered)
# pane statistics a reading's metrics share (count and time sums), and the per-metric rest
_TIMES = [_N, _ST, _STT, _LT]
_VALUES = [_SV, _SVV, _STV, _MIN, _MAX, _LV]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window geometry in integer milliseconds, derived once from settings.

    ``stagger_ms`` > 0 shifts each sensor's window grid by a whole number of staggers below
    one hop, fixed per sensor id (see ``offset_of``), so a fleet whose sensors report in
    step does not close every window in the same instant; 0 aligns every sensor's windows to
    multiples of the hop.
    """

    length_ms: int
    hop_ms: int
    lateness_ms: int
    stagger_ms: int = 0

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.length_ms <= 0 or self.length_ms % self.hop_ms:
            raise ValueError("window length must be a positive whole multiple of the hop")
        if self.lateness_ms < 0:
            raise ValueError("allowed lateness must not be negative")
        if self.stagger_ms < 0 or (self.stagger_ms and self.hop_ms % self.stagger_ms):
            raise ValueError(
                "window stagger must be 0 or divide the hop into whole steps "
                f"(hop {self.hop_ms} ms, stagger {self.stagger_ms} ms)"
            )

    def offset_of(self, sensor_id: str) -> int:
        """Where this sensor's windows start relative to the hop grid, in ms (0 unstaggered).

        One of ``hop / stagger`` steps, from a stable hash of the id (salted, so it does
        not follow the shard a sensor is placed in).
        """
        if not self.stagger_ms:
            return 0
        steps = self.hop_ms // self.stagger_ms
        return zlib.crc32(b"vigil-stagger:" + sensor_id.encode()) % steps * self.stagger_ms

    @property
    def panes(self) -> int:
        """How many panes (hops) make up one window."""
        return self.length_ms // self.hop_ms


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """One emitted window: features keyed ``metric.feature``, and how many readings fed it."""

    start_ms: int
    end_ms: int
    features: dict[str, float]
    readings: int

    @property
    def start(self) -> datetime:
        """Window start as an aware UTC datetime."""
        return datetime.fromtimestamp(self.start_ms / 1000, UTC)

    @property
    def end(self) -> datetime:
        """Window end (exclusive) as an aware UTC datetime."""
        return datetime.fromtimestamp(self.end_ms / 1000, UTC)


class ReadingLike(Protocol):
    """What the store reads from a reading (``flows.schemas.Reading`` fits)."""

    @property
    def sensor_id(self) -> str: ...

    @property
    def ts_ms(self) -> int: ...

    @property
    def values(self) -> Mapping[str, float]: ...


class Row(NamedTuple):
    """A bare reading for callers that have no ``Reading`` at hand."""

    sensor_id: str
    ts_ms: int
    values: Mapping[str, float]


@dataclass(slots=True)
class BatchResult:
    """Windows a batch closed, and the late readings' positions with the sensor's newest ms."""

    windows: list[tuple[str, ClosedWindow]]
    late: list[tuple[int, int]]
    accepted: int


_NAME_CACHE: dict[str, tuple[str, ...]] = {}


def _names(metric: str) -> tuple[str, ...]:
    names = _NAME_CACHE.get(metric)
    if names is None:
        if len(_NAME_CACHE) > 100_000:  # metric names come from input: bound the cache
            _NAME_CACHE.clear()
        names = _NAME_CACHE[metric] = tuple(f"{metric}.{f}" for f in FEATURES)
    return names


def feature_names(metrics: Iterable[str]) -> list[str]:
    """Feature column names for these metrics, in the order windows emit them."""
    return [f"{m}.{f}" for m in metrics for f in FEATURES]


Getter = Callable[[Mapping[str, float]], tuple[float, ...]]


def _getter(keys: tuple[str, ...]) -> Getter:
    """A C-speed ``values dict -> tuple of values in keys order``."""
    if len(keys) == 1:
        key = keys[0]
        return lambda d: (d[key],)
    if not keys:
        return lambda d: ()
    return itemgetter(*keys)  # type: ignore[return-value]  # a tuple for 2+ keys


_NO_VALUES = _getter(())


def _grow(a: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    """``a`` with its first axis grown to ``size``, new entries ``fill``."""
    out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class _Batch(NamedTuple):
    """One batch as flat arrays: per reading, and per value (``vread``: its reading)."""

    slot: I64
    pane: I64
    offset: I64  # ms after the pane start
    cell: I64
    val: F64
    vread: I64
    n: int
    once: bool  # every sensor occurs at most once


class _Closed(NamedTuple):
    """Windows of one close step, with their (window, cell) feature rows."""

    slot: I64  # per window
    end: I64  # per window, in panes
    readings: I64  # per window
    pairs: I64  # per window: how many (window, cell) rows follow
    cell: I64  # per row
    present: npt.NDArray[np.bool_]  # per row: the metric occurs in the window
    feats: F64  # per row: FEATURES


class WindowStore:
    """Sliding-window features of many sensors (one state shard), worked a batch at a time."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        k = spec.panes
        self._k = k
        self._ring = k + -(-spec.lateness_ms // spec.hop_ms) + 1
        r = self._ring
        # Python-side per sensor: sid -> [slot, cells in key order, values getter, n metrics]
        self._rec: dict[str, list[Any]] = {}
        self._sids: list[str] = []  # slot -> sensor id
        self._restored: dict[str, int] = {}  # restored sensors not seen since: sid -> slot
        # slot -> metric -> cell, and slot -> feature names in cell order; None until first
        # needed after a restore (rebuilt from the cell arrays)
        self._metric_cell: list[dict[str, int] | None] = []
        self._flat_names: list[tuple[str, ...] | None] = []
        self._metric_ids: dict[str, int] = {}  # metric name -> id, shard-wide
        self._metrics: list[str] = []  # id -> metric name
        self._n_sensors = 0
        self._n_cells = 0
        cap = 16
        self._max_ts: I64 = np.full(cap, _NONE, np.int64)
        self._next_close: I64 = np.zeros(cap, np.int64)
        self._first_pane: I64 = np.zeros(cap, np.int64)
        # per slot: the sensor's grid offset (spec.offset_of); times inside the store are
        # kept relative to it, so panes and windows are computed exactly as unstaggered
        self._offset: I64 = np.zeros(cap, np.int64)
        self._pane: I64 = np.full((cap, r), _NONE, np.int64)
        self._count: I64 = np.zeros((cap, r), np.int64)
        ccap = 64
        self._cell_sensor: I64 = np.zeros(ccap, np.int64)
        self._cell_metric: I64 = np.zeros(ccap, np.int64)  # metric id
        self._ref: F64 = np.full(ccap, np.nan)
        self._cell_pane: I64 = np.full((ccap, r), _NONE, np.int64)
        self._stats: F64 = np.zeros((ccap, r, _NSTATS), np.float64)
        self._csr: tuple[I64, I64, I64] | None = None  # cells grouped by sensor

    # -- sensors and cells -------------------------------------------------------------------
    def _learn(self, sid: str, values: Mapping[str, float]) -> list[Any]:
        """Slow path: a new sensor, or a reading whose metric set differs from the last one."""
        rec = self._rec.get(sid)
        if rec is None and sid in self._restored:
            rec = self._rec[sid] = [self._restored.pop(sid), (), _NO_VALUES, 0]
        if rec is None:
            slot = self._n_sensors
            if slot == len(self._max_ts):
                size = 2 * slot
                self._max_ts = _grow(self._max_ts, size, _NONE)
                self._next_close = _grow(self._next_close, size, 0)
                self._first_pane = _grow(self._first_pane, size, 0)
                self._offset = _grow(self._offset, size, 0)
                self._pane = _grow(self._pane, size, _NONE)
                self._count = _grow(self._count, size, 0)
            self._n_sensors += 1
            self._offset[slot] = self.spec.offset_of(sid)
            self._sids.append(sid)
            self._metric_cell.append({})
            self._flat_names.append(())
            rec = self._rec[sid] = [slot, (), _NO_VALUES, 0]
        slot = rec[0]
        cells_of = self._metric_cell[slot]
        if cells_of is None:
            cells_of = self._metric_cell[slot] = {
                self._metrics[m]: c for c, m in self._cells_of(slot)
            }
        keys = tuple(values)
        cells = []
        for metric in keys:
            c = cells_of.get(metric)
            if c is None:
                c = cells_of[metric] = self._new_cell(slot, metric)
                names = self._flat_names[slot]
                if names is not None:  # else rebuilt when next needed
                    self._flat_names[slot] = names + _names(metric)
            cells.append(c)
        rec[1] = tuple(cells)
        rec[2] = _getter(keys)
        rec[3] = len(cells)
        return rec

    def _new_cell(self, slot: int, metric: str) -> int:
        c = self._n_cells
        if c == len(self._ref):
            size = 2 * c
            self._cell_sensor = _grow(self._cell_sensor, size, 0)
            self._cell_metric = _grow(self._cell_metric, size, 0)
            self._ref = _grow(self._ref, size, np.nan)
            self._cell_pane = _grow(self._cell_pane, size, _NONE)
            self._stats = _grow(self._stats, size, 0.0)
        self._n_cells += 1
        self._cell_sensor[c] = slot
        mid = self._metric_ids.get(metric)
        if mid is None:
            mid = self._metric_ids[metric] = len(self._metrics)
            self._metrics.append(metric)
        self._cell_metric[c] = mid
        self._csr = None
        return c

    def _cells_of(self, slot: int) -> list[tuple[int, int]]:
        """(cell, metric id) of a sensor, in creation order."""
        order, start, count = self._cells_by_sensor()
        cells = order[start[slot] : start[slot] + count[slot]]
        return list(zip(cells.tolist(), self._cell_metric[cells].tolist(), strict=True))

    def _names_of(self, slot: int) -> tuple[str, ...]:
        """A sensor's feature names in cell order (the order its windows list features)."""
        names = self._flat_names[slot] = tuple(
            name for _, m in self._cells_of(slot) for name in _names(self._metrics[m])
        )
        return names

    def _cells_by_sensor(self) -> tuple[I64, I64, I64]:
        """(cells ordered by sensor then creation, first position per slot, cells per slot)."""
        if self._csr is None:
            owner = self._cell_sensor[: self._n_cells]
            order = np.argsort(owner, kind="stable")
            count = np.bincount(owner, minlength=self._n_sensors).astype(np.int64)
            start = np.zeros(self._n_sensors, np.int64)
            np.cumsum(count[:-1], out=start[1:])
            self._csr = (order.astype(np.int64), start, count)
        return self._csr

    # -- ingest ------------------------------------------------------------------------------
    def process(self, batches: Iterable[Iterable[ReadingLike]]) -> BatchResult:
        """Add readings in arrival order; return the windows their watermarks closed.

        ``late`` lists (position in the flattened batches, the sensor's newest ms then) of
        every rejected reading.
        """
        rec_get = self._rec.get
        learn = self._learn
        slots: list[int] = []
        tss: list[int] = []
        lens: list[int] = []
        cells: list[int] = []
        vals: list[float] = []
        s_app, t_app, l_app = slots.append, tss.append, lens.append
        c_ext, v_ext = cells.extend, vals.extend
        for batch in batches:
            for r in batch:
                v = r.values
                rec = rec_get(r.sensor_id)
                if rec is None or len(v) != rec[3]:
                    rec = learn(r.sensor_id, v)
                try:
                    got = rec[2](v)
                except KeyError:  # as many metrics as last time, but others
                    rec = learn(r.sensor_id, v)
                    got = rec[2](v)
                s_app(rec[0])
                t_app(r.ts_ms)
                l_app(rec[3])
                c_ext(rec[1])
                v_ext(got)
        if not slots:
            return BatchResult([], [], 0)
        return self._ingest(
            np.array(slots, np.int64), np.array(tss, np.int64), np.array(lens, np.int64),
            np.array(cells, np.int64), np.array(vals, np.float64),
        )

    def _ingest(self, slot: I64, ts: I64, lens: I64, cell: I64, val: F64) -> BatchResult:
        spec = self.spec
        if spec.stagger_ms:
            ts = ts - self._offset[slot]  # onto the sensor's own grid
        hop, lateness, k, ring = spec.hop_ms, spec.lateness_ms, self._k, self._ring
        n = len(slot)
        # sensor's newest ms before each reading; readings ordered by sensor, then arrival
        prev, once, by_sensor = self._running_max(slot, ts)
        late = ts < prev - lateness
        newest = np.maximum(prev, ts)  # after each reading (a late one never raises it)
        pane = ts // hop
        fresh = (prev == _NONE).nonzero()[0]  # first reading of a new sensor
        if len(fresh):
            self._next_close[slot[fresh]] = (ts[fresh] - lateness) // hop
            self._first_pane[slot[fresh]] = pane[fresh]
        n_late = _count(late)
        acc_pos = (~late).nonzero()[0] if n_late else np.arange(n)
        batch = _Batch(slot, pane, ts - pane * hop, cell, val, np.arange(n).repeat(lens), n, once)
        newest_pane = newest // hop
        closed: list[_Closed] = []
        todo = acc_pos
        while True:
            # A sensor whose next reading would reach past its ring closes first (see module
            # docstring); its readings from that one on wait for the next round.
            s_todo = slot[todo]
            over = newest_pane[todo] > self._next_close[s_todo] + (ring - k)
            if not _count(over):
                self._accumulate(todo, batch)
                break
            first_over = np.full(self._n_sensors, n, np.int64)
            np.minimum.at(first_over, s_todo[over], todo[over])
            now = todo < first_over[s_todo]
            self._accumulate(todo[now], batch)
            jumpers = (first_over < n).nonzero()[0]
            at = first_over[jumpers]
            closed.append(self._close(jumpers, (newest[at] - lateness) // hop))
            todo = todo[~now]
        # the final close of every sensor with an accepted reading; windows come out ordered
        # by the reading that closed them, then by end
        acc_slots = slot[acc_pos]
        if once:
            touched = acc_slots
            self._max_ts[touched] = newest[acc_pos]
        else:
            last_newest = np.full(self._n_sensors, _NONE, np.int64)
            np.maximum.at(last_newest, acc_slots, newest[acc_pos])
            touched = (last_newest != _NONE).nonzero()[0]
            self._max_ts[touched] = last_newest[touched]
        closed.append(self._close(touched, (self._max_ts[touched] - lateness) // hop))
        windows: list[tuple[str, ClosedWindow]] = []
        if any(len(c.slot) for c in closed):
            if once:  # one reading per sensor: it closed every window of its sensor
                closer = np.full(self._n_sensors, n, np.int64)
                closer[acc_slots] = acc_pos
                windows = self._emit(closed, lambda w_slot, w_end: closer[w_slot])
            else:
                wm = (newest - lateness) // hop
                windows = self._emit(
                    closed,
                    lambda w_slot, w_end: _closing_reading(slot, wm, by_sensor, w_slot, w_end),
                )
        if not n_late:
            return BatchResult(windows, [], n)
        late_at = late.nonzero()[0]
        newest_ms = prev[late_at] + self._offset[slot[late_at]]  # back to event time
        late_list = list(zip(late_at.tolist(), newest_ms.tolist(), strict=True))
        return BatchResult(windows, late_list, n - n_late)

    def _running_max(self, slot: I64, ts: I64) -> tuple[I64, bool, I64]:
        """Per reading, the sensor's newest ms before it (stored, then earlier in the batch).

        Also says whether every sensor occurs at most once in the batch (the common case of
        one reading per sensor per batch, which later steps can treat without grouping), and
        returns the readings' order by sensor, then arrival (a stable sort of ``slot``).
        """
        stored = self._max_ts[slot]
        order = slot.argsort(kind="stable")
        s = slot[order]
        first = np.empty(len(s), np.bool_)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        if _count(first) == len(first):  # every sensor once: nothing earlier in the batch
            return stored, True, order
        t = ts[order]
        lo = int(t.min())
        span = int(t.max()) - lo + 1
        group = np.cumsum(first) - 1
        if int(group[-1]) * span < _SAFE:
            base = group * span
            run = np.maximum.accumulate(t - lo + base) - base + lo
        else:  # absurd spread of event times: a plain loop is exact and rare
            run = t.copy()
            for i in range(1, len(t)):
                if not first[i] and run[i - 1] > run[i]:
                    run[i] = run[i - 1]
        before = np.empty_like(run)
        before[1:] = run[:-1]
        before[first] = _NONE
        out = np.empty_like(before)
        out[order] = np.maximum(before, stored[order])
        return out, False, order

    def _accumulate(self, pos: I64, b: _Batch) -> None:
        """Add the accepted readings at ``pos`` (arrival order, within ring reach) to panes."""
        if not len(pos):
            return
        k, ring = self._k, self._ring
        whole = len(pos) == b.n
        s, p = (b.slot, b.pane) if whole else (b.slot[pos], b.pane[pos])
        lower = p < self._first_pane[s]
        if _count(lower):
            np.minimum.at(self._first_pane, s[lower], p[lower])
        if whole:
            vr, vc, vv = b.vread, b.cell, b.val
        else:
            picked = np.zeros(b.n, np.bool_)
            picked[pos] = True
            vsel = picked[b.vread].nonzero()[0]
            vr, vc, vv = b.vread[vsel], b.cell[vsel], b.val[vsel]
        ref = self._ref[vc]
        unset = np.isnan(ref)
        if _count(unset):  # a metric's first accepted value becomes its reference
            first_c, first_i = np.unique(vc[unset], return_index=True)
            self._ref[first_c] = vv[unset][first_i]
            ref = self._ref[vc]
        # readings of a pane no future window can use (only after a flush) change nothing
        live = p >= self._next_close[s] + 1 - k
        if _count(live) != len(live):
            dead = np.zeros(b.n, np.bool_)
            dead[pos[~live]] = True
            keep = ~dead[vr]
            vr, vc, vv, ref = vr[keep], vc[keep], vv[keep], ref[keep]
            pos, s, p = pos[live], s[live], p[live]
            if not len(pos):
                return
        # readings per (sensor, pane)
        if b.once:
            us, up, cnt = s, p, 1
        else:
            pmin = int(p.min())
            pspan = int(p.max()) - pmin + 1
            if len(self._max_ts) * pspan < _SAFE:
                uk, cnt = np.unique(s * pspan + (p - pmin), return_counts=True)
                us, up = uk // pspan, uk % pspan + pmin
            else:
                pairs, cnt = np.unique(np.stack([s, p], 1), axis=0, return_counts=True)
                us, up = pairs[:, 0], pairs[:, 1]
        rs = up % ring
        same = self._pane[us, rs] == up
        self._count[us, rs] = np.where(same, self._count[us, rs], 0) + cnt
        self._pane[us, rs] = up
        if not len(vc):
            return
        vp = b.pane[vr]
        v = vv - ref
        t = b.offset[vr] / 1000.0  # seconds after the pane start
        if b.once:  # one reading per sensor: every (cell, pane) gets a single value
            gc, gp = vc, vp
            grs = gp % ring
            acc = self._stats[gc, grs]
            acc[self._cell_pane[gc, grs] != gp] = _IDENT  # a stale slot starts empty
            acc[:, _N] += 1.0
            acc[:, _SV] += v
            acc[:, _SVV] += v * v
            acc[:, _ST] += t
            acc[:, _STT] += t * t
            acc[:, _STV] += t * v
            np.minimum(acc[:, _MIN], v, out=acc[:, _MIN])
            np.maximum(acc[:, _MAX], v, out=acc[:, _MAX])
            newer = t >= acc[:, _LT]  # equal time: the later arrival wins
            acc[newer, _LT] = t[newer]
            acc[newer, _LV] = v[newer]
        else:  # group by (cell, pane), arrival order kept within a group
            pmin = int(vp.min())
            pspan = int(vp.max()) - pmin + 1
            if len(self._ref) * pspan < _SAFE:
                order = (vc * pspan + (vp - pmin)).argsort(kind="stable")
            else:
                order = np.lexsort((vp, vc))
            vc, vp, v, t = vc[order], vp[order], v[order], t[order]
            brk = np.empty(len(v), np.bool_)
            brk[0] = True
            np.logical_or(vc[1:] != vc[:-1], vp[1:] != vp[:-1], out=brk[1:])
            starts = brk.nonzero()[0]
            gc, gp = vc[starts], vp[starts]
            grs = gp % ring
            acc = self._stats[gc, grs]
            acc[self._cell_pane[gc, grs] != gp] = _IDENT  # a stale slot starts empty
            _add_in_order(acc, v, t, starts)
        self._stats[gc, grs] = acc
        self._cell_pane[gc, grs] = gp

    # -- emit --------------------------------------------------------------------------------
    def _close(self, slots: I64, close_upto: I64) -> _Closed:
        """Decide every window of ``slots`` ending after next_close and by ``close_upto``."""
        k, ring = self._k, self._ring
        nc = self._next_close[slots]
        due_any = close_upto > nc
        n_due = _count(due_any)
        if not n_due:
            return _NO_WINDOWS
        if n_due != len(slots):
            slots, close_upto, nc = slots[due_any], close_upto[due_any], nc[due_any]
        # ring slots of each sensor, from its oldest live pane (relative j = 0) upwards
        base = nc + 1 - k
        q = base[:, None] + np.arange(ring)
        rs = q % ring
        sl = slots[:, None]
        held = self._pane[sl, rs] == q
        cnt = np.zeros((len(slots), ring + k), np.int64)
        cnt[:, 1 : ring + 1] = np.where(held, self._count[sl, rs], 0)
        np.cumsum(cnt, axis=1, out=cnt)
        # window i ends at pane nc + 1 + i and covers relative panes i .. i + k - 1
        readings = cnt[:, k : ring + k] - cnt[:, :ring]
        end = nc[:, None] + 1 + np.arange(ring)
        first_end = self._first_pane[slots] + k
        due = (readings > 0) & (end <= close_upto[:, None]) & (end >= first_end[:, None])
        self._next_close[slots] = close_upto
        wi, wj = np.nonzero(due)
        if not len(wi):
            return _NO_WINDOWS
        w_slot = slots[wi]
        w_end = end[wi, wj]
        w_read = readings[wi, wj]
        # one row per (window, cell of its sensor)
        order, start, count = self._cells_by_sensor()
        per = count[w_slot]
        total = int(per.sum())
        row_w = np.arange(len(wi)).repeat(per)
        offs = np.arange(total) - (np.cumsum(per) - per).repeat(per)
        c = order[start[w_slot][row_w] + offs]
        qp = (w_end[row_w] - k)[:, None] + np.arange(k)
        crs = qp % ring
        cc = c[:, None]
        valid = self._cell_pane[cc, crs] == qp
        st = np.where(valid[:, :, None], self._stats[cc, crs], _IDENT)
        feats = _features(st, valid, self._ref[c], self.spec.hop_ms / 1000.0)
        return _Closed(w_slot, w_end, w_read, per, c, valid.any(axis=1), feats)

    def _emit(
        self, closed: list[_Closed], rank: Callable[[I64, I64], I64]
    ) -> list[tuple[str, ClosedWindow]]:
        """ClosedWindow objects for close steps' output, ordered by ``rank(slot, end)`` per
        window (the position of the reading that closed it), then by end."""
        closed = [c for c in closed if len(c.slot)]
        if not closed:
            return []
        if len(closed) == 1:
            w_slot, w_end, w_read, per, cell, present, feats = closed[0]
        else:
            w_slot, w_end, w_read, per, cell, present, feats = (
                np.concatenate(parts) for parts in zip(*closed, strict=True)
            )
        first_row = np.zeros(len(per) + 1, np.int64)
        np.cumsum(per, out=first_row[1:])
        seen = np.zeros(len(present) + 1, np.int64)
        np.cumsum(present, out=seen[1:])
        full = seen[first_row[1:]] - seen[first_row[:-1]] == per
        order = np.lexsort((w_end, rank(w_slot, w_end))).tolist()
        flat = feats.ravel().tolist()
        hop = self.spec.hop_ms
        k = self._k
        sids, names, metrics = self._sids, self._flat_names, self._metrics
        cell_metric = self._cell_metric
        slot_l, end_l, read_l = w_slot.tolist(), w_end.tolist(), w_read.tolist()
        off_l = self._offset[w_slot].tolist()
        row_l, full_l = first_row.tolist(), full.tolist()
        out: list[tuple[str, ClosedWindow]] = []
        append = out.append
        for w in order:
            s = slot_l[w]
            a, b = row_l[w], row_l[w + 1]
            if full_l[w]:
                nm = names[s]
                if nm is None:
                    nm = self._names_of(s)
                features = dict(zip(nm, flat[a * 7 : b * 7], strict=True))
            else:
                features = {}
                for row in range(a, b):
                    if present[row]:
                        features.update(zip(
                            _names(metrics[cell_metric[cell[row]]]), flat[row * 7 : row * 7 + 7],
                            strict=True,
                        ))
            e, o = end_l[w], off_l[w]
            append((sids[s], ClosedWindow((e - k) * hop + o, e * hop + o, features, read_l[w])))
        return out

    def flush(self) -> list[tuple[str, ClosedWindow]]:
        """End of input: every sensor's windows that end by the end of its newest pane.

        Windows reaching past the newest reading are not emitted: in a stream they would
        fill up later, and scoring them half-empty at the end of a replay would only
        produce false alarms.
        """
        n = self._n_sensors
        if not n:
            return []
        live = self._pane[:n] >= (self._next_close[:n] + 1 - self._k)[:, None]
        newest = np.where(live, self._pane[:n], _NONE).max(axis=1)
        slots = (newest != _NONE).nonzero()[0]
        closed = self._close(slots, newest[slots] + 1)
        # window by window end, then sensor: no reading closes these, and interleaving sensors
        # keeps the detectors' rounds (at most one window per sensor) few
        return self._emit([closed], lambda w_slot, w_end: w_end)

    # -- recovery ----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """``state()`` pickled."""
        return pickle.dumps(self.state(), protocol=pickle.HIGHEST_PROTOCOL)

    def state(self) -> tuple[Any, ...]:
        """Compact state: per sensor its clocks and metrics, and only the live panes.

        A few packed arrays per shard (no per-sensor Python objects), which is what makes
        pickling 100,000 sensors fast. Stale ring slots are left out, and the time statistics
        of a pane (count, Σt, Σt², last t), which all metrics of a reading share, are stored
        once per sensor and pane, with only the metrics that differ kept on their own. Some
        arrays are views of the live ones: pickle the state before the store changes.
        """
        n, nc_cells, k, ring = self._n_sensors, self._n_cells, self._k, self._ring
        nc = self._next_close[:n]
        low = nc + 1 - k  # oldest live pane per sensor
        s_live = self._pane[:n] >= low[:, None]
        ps, prs = np.nonzero(s_live)
        owner = self._cell_sensor[:nc_cells]
        c_live = self._cell_pane[:nc_cells] >= low[owner][:, None]
        cs, crs = np.nonzero(c_live)
        stats = self._stats[:nc_cells][c_live]  # the order of cs, crs; a mask gathers faster
        # each live cell pane's sensor pane, and that sensor pane's shared time statistics
        sp_of = np.full((n, ring), -1, np.int64)
        sp_of[ps, prs] = np.arange(len(ps))
        sp = sp_of[owner[cs], crs]
        times = np.take(stats, _TIMES, axis=1)  # C order; stats[:, _TIMES] is Fortran
        shared = np.zeros((len(ps), len(_TIMES)), np.float64)
        shared[sp] = times  # one of each sensor pane's cells (which one does not matter)
        odd = np.logical_or.reduce(times != shared[sp], axis=1).nonzero()[0]
        per = np.uint8 if ring < 256 else np.int32
        rel = np.int8 if ring < 120 else np.int32
        arrays = (
            self._max_ts[:n], nc, self._first_pane[:n],
            _small(owner), _small(self._cell_metric[:nc_cells]), self._ref[:nc_cells],
            _count(s_live, axis=1).astype(per), (self._pane[:n][ps, prs] - low[ps]).astype(rel),
            _small(self._count[:n][ps, prs]), _small(shared[:, 0].astype(np.int64)),
            _small(np.round(shared[:, 3] * 1000).astype(np.int64)), shared[:, 1:3],
            _count(c_live, axis=1).astype(per),
            (self._cell_pane[:nc_cells][cs, crs] - low[owner[cs]]).astype(rel),
            np.take(stats, _VALUES, axis=1),
            _small(odd), _small(times[odd, 0].astype(np.int64)),
            _small(np.round(times[odd, 3] * 1000).astype(np.int64)), times[odd, 1:3],
        )
        # raw bytes plus a dtype letter: a pickled ndarray costs ~150 bytes of framing each;
        # a PickleBuffer is pickled as bytes straight from the array, without a copy first
        packed = tuple(
            (a.dtype.char, pickle.PickleBuffer(np.ascontiguousarray(a))) for a in arrays
        )
        return (_FORMAT, self.spec.hop_ms, k, self._sids, self._metrics, packed,
                self.spec.stagger_ms)

    @classmethod
    def restore(cls, spec: WindowSpec, blob: bytes | memoryview) -> WindowStore:
        """Rebuild from ``snapshot()`` output (or from a recovery store of per-sensor objects)."""
        state = pickle.loads(blob)
        if isinstance(state, dict):
            return cls._from_sensor_windows(spec, state)
        fmt, hop, k, sids, metrics, packed, *rest = state
        stagger = rest[0] if fmt >= 3 else 0
        if fmt not in (2, _FORMAT) or (hop, k) != (spec.hop_ms, spec.panes):
            raise ValueError("window state was saved for another window geometry")
        if stagger != spec.stagger_ms:
            raise ValueError(
                f"window state was saved with VIGIL_WINDOW_STAGGER={stagger} ms, this flow "
                f"runs with {spec.stagger_ms} ms: set it back, or start from a fresh recovery "
                "store (each sensor's windows would move)"
            )
        (
            max_ts, nc, first_pane, owner, cell_metric, ref, p_per, p_rel, p_count, sh_n,
            sh_lt, sh_t, c_per, c_rel, values, odd, odd_n, odd_lt, odd_t,
        ) = (np.frombuffer(b, dtype=np.dtype(ch)) for ch, b in packed)
        w = cls(spec)
        n, nc_cells = len(sids), len(ref)
        cap, ccap = max(16, n), max(64, nc_cells)
        r = w._ring
        w._n_sensors, w._n_cells = n, nc_cells
        w._sids = list(sids)
        w._metrics = list(metrics)
        w._metric_ids = {m: i for i, m in enumerate(w._metrics)}
        w._max_ts = _grow(max_ts.astype(np.int64), cap, _NONE)
        w._next_close = _grow(nc.astype(np.int64), cap, 0)
        w._first_pane = _grow(first_pane.astype(np.int64), cap, 0)
        if spec.stagger_ms:
            w._offset = _grow(np.array([spec.offset_of(s) for s in sids], np.int64), cap, 0)
        else:
            w._offset = np.zeros(cap, np.int64)
        low = w._next_close[:n] + 1 - k
        ps = np.arange(n).repeat(p_per)
        pane = low[ps] + p_rel
        w._pane = np.full((cap, r), _NONE, np.int64)
        w._count = np.zeros((cap, r), np.int64)
        w._pane[ps, pane % r] = pane
        w._count[ps, pane % r] = p_count
        owner = owner.astype(np.int64)
        w._cell_sensor = _grow(owner, ccap, 0)
        w._cell_metric = _grow(cell_metric.astype(np.int64), ccap, 0)
        w._ref = _grow(ref.astype(np.float64), ccap, np.nan)
        cs = np.arange(nc_cells).repeat(c_per)
        cpane = low[owner[cs]] + c_rel
        sp_of = np.full((n, r), -1, np.int64)
        sp_of[ps, pane % r] = np.arange(len(ps))
        sp = sp_of[owner[cs], cpane % r]
        times = np.empty((len(cs), len(_TIMES)), np.float64)
        times[:, 0] = sh_n[sp]
        times[:, 1:3] = sh_t.reshape(-1, 2)[sp]
        times[:, 3] = sh_lt[sp] / 1000.0
        odd = odd.astype(np.int64)
        times[odd, 0] = odd_n
        times[odd, 1:3] = odd_t.reshape(-1, 2)
        times[odd, 3] = odd_lt / 1000.0
        stats = np.empty((len(cs), _NSTATS), np.float64)
        stats[:, _TIMES] = times
        stats[:, _VALUES] = values.reshape(-1, len(_VALUES))
        w._cell_pane = np.full((ccap, r), _NONE, np.int64)
        w._stats = np.zeros((ccap, r, _NSTATS), np.float64)
        w._cell_pane[cs, cpane % r] = cpane
        w._stats[cs, cpane % r] = stats
        # per-sensor dicts and names are rebuilt when a sensor is next seen
        w._metric_cell = [None] * n
        w._flat_names = [None] * n
        w._restored = dict(zip(w._sids, range(n), strict=True))  # records built on first sight
        return w

    @classmethod
    def _from_sensor_windows(cls, spec: WindowSpec, state: dict[str, tuple]) -> WindowStore:
        """The state of a recovery store written when each sensor was a ``SensorWindows`` object.

        That format was ``{sensor_id: (newest ms, next_close, first pane, metrics, reference
        values, ((pane, readings, float64 bytes: 10 stats per metric, zeros if absent), ...))}``
        with the same statistics, so a flow upgraded in place resumes with identical windows.
        Those stores were never staggered.
        """
        if spec.stagger_ms:
            raise ValueError(
                "window state was saved before VIGIL_WINDOW_STAGGER existed (unstaggered): "
                "set it to 0, or start from a fresh recovery store"
            )
        w = cls(spec)
        k, ring = w._k, w._ring
        for sid, (max_ts, next_close, first_pane, metrics, refs, panes) in state.items():
            slot, cells, _, _ = w._learn(sid, dict.fromkeys(metrics, 0.0))
            if max_ts is not None:
                w._max_ts[slot] = max_ts
            w._next_close[slot] = next_close
            w._first_pane[slot] = first_pane
            w._ref[list(cells)] = refs
            for pane, readings, packed in panes:
                if pane < next_close + 1 - k:
                    continue  # no window still to be decided uses it
                rs = pane % ring
                w._pane[slot, rs] = pane
                w._count[slot, rs] = readings
                stats = np.frombuffer(packed, np.float64).reshape(len(metrics), _NSTATS)
                for c, row in zip(cells, stats, strict=True):
                    if row[_N]:
                        w._cell_pane[c, rs] = pane
                        w._stats[c, rs] = row
        return w


def _closing_reading(slot: I64, wm: I64, by_sensor: I64, w_slot: I64, w_end: I64) -> I64:
    """Per window (its sensor slot and end pane), the batch position of the reading that
    closed it: the sensor's first reading whose watermark pane ``wm`` reached the end.

    ``wm`` never decreases along one sensor's readings (it follows the running maximum), so
    the readings ordered by sensor, then arrival (``by_sensor``), are also ordered by
    (sensor, wm), and each window's closer is one binary search away.
    """
    lo = int(wm.min())
    span = int(wm.max()) - lo + 2
    if (int(slot.max()) + 2) * span >= _SAFE:  # extreme gaps: search sensor by sensor
        out = np.empty(len(w_slot), np.int64)
        for j, (s, e) in enumerate(zip(w_slot.tolist(), w_end.tolist(), strict=True)):
            out[j] = int(np.flatnonzero((slot == s) & (wm >= e))[0])
        return out
    key = (slot * span + (wm - lo))[by_sensor]  # ascending
    want = w_slot * span + np.clip(w_end - lo, 0, span - 1)
    return by_sensor[np.searchsorted(key, want, side="left")]


def _small(a: np.ndarray) -> np.ndarray:
    """Non-negative integers in the narrowest of int32/int64 that holds them."""
    if not len(a) or int(a.max()) < 2**31:
        return a.astype(np.int32)
    return a.astype(np.int64)


_Z = np.zeros(0, np.int64)
_Z.flags.writeable = False
_NO_WINDOWS = _Closed(_Z, _Z, _Z, _Z, _Z, np.zeros(0, np.bool_), np.zeros((0, 7), np.float64))


def _add_in_order(acc: F64, v: F64, t: F64, starts: I64) -> None:
    """Add grouped values to pane statistics ``acc`` (one row per group) in arrival order.

    The sums grow one value at a time, in the order the readings arrived, exactly as a
    reading-by-reading loop would: float sums then do not depend on where batches begin and
    end (replaying the same input in other batch sizes, or offline, gives identical bits).
    The loop runs over position within a group, each step vectorised across groups.
    """
    m = len(v)
    terms = np.empty((m, 6), np.float64)
    terms[:, 0] = 1.0
    terms[:, 1] = v
    terms[:, 2] = v * v
    terms[:, 3] = t
    terms[:, 4] = t * t
    terms[:, 5] = t * v
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = m
    length = ends - starts
    for j in range(int(length.max())):
        live = (length > j).nonzero()[0]
        acc[live, :6] += terms[starts[live] + j]
    acc[:, _MIN] = np.minimum(acc[:, _MIN], np.minimum.reduceat(v, starts))
    acc[:, _MAX] = np.maximum(acc[:, _MAX], np.maximum.reduceat(v, starts))
    # the newest time; of equal times the last to arrive (this batch arrived after acc's)
    newest_t = np.maximum.reduceat(t, starts)
    group = np.arange(len(starts)).repeat(length)
    at = np.maximum.reduceat(np.where(t == newest_t[group], np.arange(m), -1), starts)
    newer = newest_t >= acc[:, _LT]
    acc[newer, _LT] = t[at[newer]]
    acc[newer, _LV] = v[at[newer]]


def _features(st: F64, valid: npt.NDArray[np.bool_], ref: F64, hop_s: float) -> F64:
    """FEATURES per row from ``k`` panes of statistics each (absent panes are ``_IDENT``).

    Pane ``j`` starts ``j·hop`` seconds after the window start: its time sums are shifted by
    that before they are added, the same algebra as merging two panes.
    """
    k = st.shape[1]
    sums = np.zeros((len(st), 6), np.float64)
    for j in range(k):  # pane by pane, oldest first, as merging them one after another
        d = j * hop_s
        p = st[:, j]
        n, sv, st_ = p[:, _N], p[:, _SV], p[:, _ST]
        sums[:, 0] += n
        sums[:, 1] += sv
        sums[:, 2] += p[:, _SVV]
        sums[:, 3] += st_ + n * d
        sums[:, 4] += p[:, _STT] + 2 * d * st_ + n * d * d
        sums[:, 5] += p[:, _STV] + d * sv
    cnt, s_v, s_vv, s_t, s_tt, s_tv = sums.T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_v = s_v / cnt
        var = s_vv / cnt - mean_v * mean_v
        denom = cnt * s_tt - s_t * s_t
        # 0 when all times are equal: n·Σt² − (Σt)² is then rounding noise of n·Σt²
        slope = np.where(denom > 1e-12 * cnt * s_tt, (cnt * s_tv - s_t * s_v) / denom, 0.0)
    newest = k - 1 - np.argmax(valid[:, ::-1], axis=1)  # last pane holding the metric
    out = np.empty((len(cnt), 7), np.float64)
    out[:, 0] = ref + mean_v
    out[:, 1] = np.sqrt(np.maximum(var, 0.0))
    out[:, 2] = ref + st[:, :, _MIN].min(axis=1)
    out[:, 3] = ref + st[:, :, _MAX].max(axis=1)
    out[:, 4] = ref + st[np.arange(len(cnt)), newest, _LV]
    out[:, 5] = slope
    out[:, 6] = cnt
    return out


class SensorWindows:
    """One sensor's windows through the same ``WindowStore``: add readings in arrival order.

    Readings are checked for lateness at once and handed to the store when windows are
    asked for, so results are exactly the store's.
    """

    __slots__ = ("_pending", "_store", "max_ts", "spec")

    _SID = ""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._store = WindowStore(spec)
        self.max_ts: int | None = None  # newest event time seen (ms)
        self._pending: list[Row] = []

    def add(self, ts_ms: int, values: Mapping[str, float]) -> bool:
        """Add one reading; False (and no change) if it is late for this sensor."""
        if self.max_ts is not None and ts_ms < self.max_ts - self.spec.lateness_ms:
            return False
        if self.max_ts is None or ts_ms > self.max_ts:
            self.max_ts = ts_ms
        self._pending.append(Row(self._SID, ts_ms, dict(values)))
        return True

    def _drain(self) -> list[ClosedWindow]:
        pending, self._pending = self._pending, []
        return [w for _, w in self._store.process([pending]).windows] if pending else []

    def close_ready(self) -> list[ClosedWindow]:
        """Emit every window whose end the watermark has passed, oldest first."""
        return self._drain()

    def flush(self) -> list[ClosedWindow]:
        """End of input: emit the windows that end by the end of the newest pane."""
        return self._drain() + [w for _, w in self._store.flush()]

    def snapshot(self) -> tuple[int | None, bytes, tuple[tuple[int, tuple], ...]]:
        """Immutable state: the store's snapshot plus readings not yet handed to it."""
        pending = tuple((r.ts_ms, tuple(r.values.items())) for r in self._pending)
        return self.max_ts, self._store.snapshot(), pending

    @classmethod
    def restore(cls, spec: WindowSpec, state: tuple) -> SensorWindows:
        """Rebuild from ``snapshot()`` output."""
        max_ts, blob, pending = state
        w = cls(spec)
        w.max_ts = max_ts
        w._store = WindowStore.restore(spec, blob)
        w._pending = [Row(cls._SID, ts, dict(items)) for ts, items in pending]
        return w
