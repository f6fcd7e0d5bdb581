"""Event-time sliding-window features for one sensor: the single definition of every feature.

Contract
--------
* A window of length ``L`` closes every hop ``H`` (``L = k·H``). Readings are added to *panes*
  (one per hop); a closing window merges its ``k`` panes, so each reading is touched once no
  matter how much windows overlap.
* Event time is per sensor. The watermark is ``newest reading seen - allowed lateness``. A
  reading older than the watermark is *late*: ``add`` returns False and the caller
  dead-letters it. A window ``[start, end)`` is emitted once the watermark reaches ``end``,
  so every reading the window will ever accept is in it when it is computed: out-of-order
  input within the allowed lateness gives the same features as in-order input.
* A sensor's first windows, which would start before its first reading, are not emitted:
  they are partial by construction and would teach detectors a false normal. (An on-time
  reading that is older than the first one moves the sensor's start back to its pane.)
* Windows that contain no reading are not emitted (a silent sensor produces nothing). At the
  end of a finite input, ``flush`` closes windows up to the end of the newest pane only.
* Per metric the features are ``FEATURES``: mean, std (population), min, max, last (value at
  the newest timestamp), slope (least-squares, units per second) and count.

State per sensor is a few small lists (at most ``k+1`` panes of 10 floats per metric), so a
snapshot stays cheap; ``snapshot()``/``restore()`` round-trip it exactly. Sums are kept
relative to a per-metric reference value and pane start, which keeps the variance and slope
numerically stable for large offsets such as pressures of 10^5 or epoch-second timestamps.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

FEATURES: tuple[str, ...] = ("mean", "std", "min", "max", "last", "slope", "count")

# Positions in a pane's per-metric stats list.
_N, _SV, _SVV, _ST, _STT, _STV, _MIN, _MAX, _LT, _LV = range(10)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Window geometry in integer milliseconds, derived once from settings."""

    length_ms: int
    hop_ms: int
    lateness_ms: int

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.length_ms <= 0 or self.length_ms % self.hop_ms:
            raise ValueError("window length must be a positive whole multiple of the hop")
        if self.lateness_ms < 0:
            raise ValueError("allowed lateness must not be negative")

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


class SensorWindows:
    """Sliding-window aggregates of one sensor; feed readings in arrival order."""

    __slots__ = ("_readings", "first_pane", "max_ts", "next_close", "panes", "refs", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.max_ts: int | None = None  # newest event time seen (ms)
        self.next_close: int = 0  # panes with index < next_close are closed
        self.first_pane: int = 0  # pane of the sensor's first reading
        self.refs: dict[str, float] = {}  # per-metric value offset for stable sums
        self.panes: dict[int, dict[str, list[float]]] = {}
        self._readings: dict[int, int] = {}  # readings per pane (a reading may miss metrics)

    # -- ingest ------------------------------------------------------------------------------
    def add(self, ts_ms: int, values: Mapping[str, float]) -> bool:
        """Add one reading; False (and no change) if it is late for this sensor."""
        spec = self.spec
        max_ts = self.max_ts
        if max_ts is None:
            self.max_ts = max_ts = ts_ms
            self.next_close = (ts_ms - spec.lateness_ms) // spec.hop_ms
            self.first_pane = ts_ms // spec.hop_ms
        elif ts_ms < max_ts - spec.lateness_ms:
            return False
        elif ts_ms > max_ts:
            self.max_ts = ts_ms
        hop = spec.hop_ms
        p = ts_ms // hop
        if p < self.first_pane:
            # An on-time reading older than the sensor's first one: the sensor starts here.
            # Every window holding pane p ends after next_close (p is not late), so none has
            # been decided yet and the reading will be scored.
            self.first_pane = p
        pane = self.panes.get(p)
        if pane is None:
            pane = self.panes[p] = {}
            self._readings[p] = 0
        self._readings[p] += 1
        t = (ts_ms - p * hop) / 1000.0
        refs = self.refs
        for metric, value in values.items():
            s = pane.get(metric)
            if s is None:
                ref = refs.get(metric)
                if ref is None:
                    ref = refs[metric] = value
                v = value - ref
                pane[metric] = [1, v, v * v, t, t * t, t * v, v, v, t, v]
                continue
            v = value - refs[metric]
            s[0] += 1
            s[1] += v
            s[2] += v * v
            s[3] += t
            s[4] += t * t
            s[5] += t * v
            if v < s[6]:
                s[6] = v
            if v > s[7]:
                s[7] = v
            if t >= s[8]:
                s[8] = t
                s[9] = v
        return True

    # -- emit --------------------------------------------------------------------------------
    def close_ready(self) -> list[ClosedWindow]:
        """Emit every window whose end the watermark has passed, oldest first."""
        if self.max_ts is None:
            return []
        close_upto = (self.max_ts - self.spec.lateness_ms) // self.spec.hop_ms
        return self._close(close_upto)

    def flush(self) -> list[ClosedWindow]:
        """End of input: emit the windows that end by the end of the newest pane.

        Windows reaching past the newest reading are not emitted: in a stream they would
        fill up later, and scoring them half-empty at the end of a replay would only
        produce false alarms.
        """
        if not self.panes:
            return []
        return self._close(max(self.panes) + 1)

    def _close(self, close_upto: int) -> list[ClosedWindow]:
        if close_upto <= self.next_close:
            return []
        k = self.spec.panes
        # Window ends (in panes) that contain at least one non-empty pane and are now due.
        ends: set[int] = set()
        # A window starting before the sensor's first pane would be partial by construction
        # (the sensor did not exist yet): skip it rather than teach detectors a false normal.
        first_end = self.first_pane + k
        for p in self.panes:
            lo = max(p + 1, self.next_close + 1, first_end)
            hi = min(p + k, close_upto)
            ends.update(range(lo, hi + 1))
        out = [self._window(e) for e in sorted(ends)]
        self.next_close = close_upto
        keep_from = close_upto + 1 - k  # oldest pane a future window can still need
        for p in [p for p in self.panes if p < keep_from]:
            del self.panes[p]
            del self._readings[p]
        return out

    def _window(self, end_pane: int) -> ClosedWindow:
        hop = self.spec.hop_ms
        hop_s = hop / 1000.0
        first = end_pane - self.spec.panes
        merged: dict[str, list[float]] = {}
        readings = 0
        panes = self.panes
        for p in range(first, end_pane):
            pane = panes.get(p)
            if pane is None:
                continue
            readings += self._readings[p]
            d = (p - first) * hop_s  # pane start, seconds after window start
            for metric, s in pane.items():
                n, sv, st = s[0], s[1], s[3]
                m = merged.get(metric)
                if m is None:
                    # first pane of this metric: copy, shifting times by d
                    merged[metric] = [
                        n, sv, s[2], st + n * d, s[4] + 2 * d * st + n * d * d,
                        s[5] + d * sv, s[6], s[7], s[8] + d, s[9],
                    ]
                    continue
                m[0] += n
                m[1] += sv
                m[2] += s[2]
                m[3] += st + n * d
                m[4] += s[4] + 2 * d * st + n * d * d
                m[5] += s[5] + d * sv
                if s[6] < m[6]:
                    m[6] = s[6]
                if s[7] > m[7]:
                    m[7] = s[7]
                if s[8] + d >= m[8]:
                    m[8] = s[8] + d
                    m[9] = s[9]
        features: dict[str, float] = {}
        refs = self.refs
        for metric, m in merged.items():
            features.update(zip(_names(metric), _features(m, refs[metric]), strict=True))
        return ClosedWindow(first * hop, end_pane * hop, features, readings)

    # -- recovery ----------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """Compact, immutable state: pane stats packed as float64 bytes per pane.

        Packing keeps a snapshot of 10,000 sensors to a few thousand bytes objects instead of
        hundreds of thousands of small lists, which is what makes pickling it cheap.
        """
        metrics = tuple(self.refs)
        packed = []
        for p, pane in self.panes.items():
            flat = array("d")
            for metric in metrics:
                s = pane.get(metric)
                flat.extend(s if s is not None else _EMPTY)
            packed.append((p, self._readings[p], flat.tobytes()))
        return (
            self.max_ts, self.next_close, self.first_pane, metrics, tuple(self.refs.values()),
            tuple(packed),
        )

    @classmethod
    def restore(cls, spec: WindowSpec, state: tuple) -> SensorWindows:
        """Rebuild from ``snapshot()`` output."""
        w = cls(spec)
        w.max_ts, w.next_close, w.first_pane, metrics, refs, packed = state
        w.refs = dict(zip(metrics, refs, strict=True))
        for p, readings, blob in packed:
            flat = array("d")
            flat.frombytes(blob)
            values = flat.tolist()
            pane: dict[str, list[float]] = {}
            for j, metric in enumerate(metrics):
                stats = values[j * 10 : j * 10 + 10]
                if stats[_N]:
                    stats[_N] = int(stats[_N])
                    pane[metric] = stats
            w.panes[p] = pane
            w._readings[p] = readings
        return w


_EMPTY = (0.0,) * 10  # a metric absent from a pane


_NAME_CACHE: dict[str, tuple[str, ...]] = {}


def _names(metric: str) -> tuple[str, ...]:
    names = _NAME_CACHE.get(metric)
    if names is None:
        if len(_NAME_CACHE) > 100_000:  # metric names come from input: bound the cache
            _NAME_CACHE.clear()
        names = _NAME_CACHE[metric] = tuple(f"{metric}.{f}" for f in FEATURES)
    return names


def _features(m: list[float], ref: float) -> tuple[float, ...]:
    """mean, std, min, max, last, slope, count from merged shifted sums (order of FEATURES)."""
    n = m[_N]
    mean_v = m[_SV] / n
    var = m[_SVV] / n - mean_v * mean_v
    denom = n * m[_STT] - m[_ST] * m[_ST]
    # Slope is 0 when all readings share one timestamp (or there is a single reading).
    slope = (n * m[_STV] - m[_ST] * m[_SV]) / denom if denom > 1e-12 * n * n else 0.0
    return (
        ref + mean_v,
        math.sqrt(var) if var > 0.0 else 0.0,
        ref + m[_MIN],
        ref + m[_MAX],
        ref + m[_LV],
        slope,
        float(n),
    )


def feature_names(metrics: Iterable[str]) -> list[str]:
    """Feature column names for these metrics, in the order windows emit them."""
    return [f"{m}.{f}" for m in metrics for f in FEATURES]
