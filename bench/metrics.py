"""Benchmark metrics: the SKAB leaderboard protocol, detection delays and NAB-style scoring.

Pure functions over numpy arrays (no Bytewax), so a benchmark run, a notebook and the tests
all compute a number the same way. Two public protocols are implemented; their published
numbers are only comparable if the arithmetic is exactly theirs, so every rule is spelled out.

SKAB (outlier-detection leaderboard)
------------------------------------
Per-row 0/1 predictions against per-row 0/1 labels. Confusion counts are summed over all
files first (micro), then::

    F1  = TP / (TP + (FP + FN) / 2)
    FAR = FP / (FP + TN) · 100      (false alarm rate, %)
    MAR = FN / (FN + TP) · 100      (missed alarm rate, %)
    precision = TP / (TP + FP),  recall = TP / (TP + FN)

each rounded to 2 decimals with Python's ``round``. A ratio with a zero denominator is 0.0.
No windows, no point adjustment, no delay tolerance. :func:`detection_delays` adds what F1
hides: per labeled episode (a maximal run of 1s) the time from the episode's first row to
the first alert inside it, or ``None`` when the episode is missed.

NAB (Numenta Anomaly Benchmark v1.x scoring, reimplemented from the published rules)
-------------------------------------------------------------------------------------
Input per file: timestamps, an anomaly score per row, and labeled windows ``[start, end]``
(both ends inclusive, ``combined_windows.json`` format). A *detection* is a row whose score
is ``>= threshold``. Written from the NAB paper/whitepaper rules as remembered, not checked
against NAB's code or results (those are kept for independent evaluation). Rules and
constants implemented:

1. Probationary period: the first ``min(floor(0.15 · n), 0.15 · 5000)`` rows of an n-row file
   are not scored (detections there are ignored). The 750-row cap is NAB's published
   ``getProbationPeriod``; pass ``probation_cap=None`` for a plain 15 %.
2. Scaled sigmoid: ``σ(y) = 2 / (1 + exp(5·y)) − 1``, and ``σ(y) = −1`` for ``y > 3``.
3. Inside a window of ``w`` rows whose last row has index ``r``, row ``i`` has relative
   position ``y = −(r − i + 1) / w`` (−1 at the first row, −1/w at the last). Only the
   EARLIEST detection in a window counts and earns ``A_TP · σ(y) / σ(−1)`` (so exactly
   ``A_TP`` at the window's first row, ≈ 0 at its last). Later detections in the same window
   are ignored. A scored window without any detection costs ``A_FN``.
4. Every detection outside all windows is a false positive worth ``A_FP · (−σ(y))``:
   after a window (last row ``r``, ``w`` rows) ``y = (i − r) / (w − 1)`` (``w − 1`` floored at
   1 for a one-row window), measured from the PRECEDING window only (not the nearest), so
   an FP just after a window costs little and one more than ``3·(w − 1)`` rows later costs
   the full ``A_FP``; an FP before the first window costs the full ``A_FP``. Every such row
   counts (no deduplication of FP runs).
5. True negatives add nothing: ``A_TN`` is carried in the profile for completeness only,
   exactly as in NAB.
6. Profiles (signed costs): standard ``A_TP=1, A_FP=−0.11, A_TN=1, A_FN=−1``;
   reward_low_FP ``A_FP=−0.22``; reward_low_FN ``A_FN=−2`` (others as standard).
7. Corpus normalisation: ``raw`` = sum over files; ``null = A_FN · W`` and
   ``perfect = A_TP · W`` with ``W`` the number of scored windows (those with a row after
   the probationary period); ``score = 100 · (raw − null) / (perfect − null)``. So a detector
   that never fires scores 0 and one that fires exactly at every window's first row and
   nowhere else scores 100; false positives can push the score below 0.
8. Threshold: one threshold for the whole corpus per profile, chosen to maximise the
   normalised score over every distinct score value (an exact sweep, not a grid); ties go
   to the highest threshold.
9. Windows are contiguous row ranges in file order, as in NAB's row-by-row scan: the first
   row is the first row stamped exactly ``start`` (else the first row at or after it), the
   last is the first row stamped exactly ``end`` after that (else the row before the first
   one later than ``end``). File order, not time order, rules because real NAB files are not
   strictly increasing (ec2_request_latency repeats 03:00, machine_temperature steps back
   55 minutes). Windows may not overlap and must not be empty.

Example
-------
>>> from bench.metrics import confusion, skab_summary
>>> files = [confusion([0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 0]), confusion([1, 0], [1, 0])]
>>> sum(files)
Confusion(tp=3, fp=2, fn=1, tn=2)
>>> row = skab_summary(files)
>>> row["f1"], row["far"], row["mar"], row["precision"], row["recall"]
(0.67, 50.0, 25.0, 0.6, 0.75)

>>> import numpy as np
>>> from bench.metrics import NabFile, PROFILES, nab_score, optimise_threshold
>>> ts = np.arange("2014-01-01T00:00", "2014-01-01T01:40", 5, dtype="datetime64[m]")
>>> scores = np.zeros(20); scores[12] = 0.9; scores[4] = 0.5   # window hit + an early FP
>>> f = NabFile(ts, scores, [(ts[10], ts[14])])
>>> round(nab_score([f], PROFILES["standard"], threshold=0.8), 2)   # hit 3rd row of 5
95.87
>>> round(nab_score([f], PROFILES["standard"], threshold=0.4), 2)   # ... plus the FP
90.37
>>> threshold, score = optimise_threshold([f], PROFILES["standard"])
>>> float(threshold), round(score, 2)
(0.9, 95.87)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PROFILES",
    "Confusion",
    "DelayReport",
    "Episode",
    "NabFile",
    "NabProfile",
    "NabResult",
    "confusion",
    "detection_delays",
    "episodes",
    "load_nab_series",
    "load_nab_windows",
    "nab_detail",
    "nab_score",
    "optimise_all",
    "optimise_threshold",
    "probation_length",
    "scaled_sigmoid",
    "skab_summary",
]

# --------------------------------------------------------------------------------------
# SKAB


def _ratio(num: float, den: float) -> float:
    """Undefined ratios are 0.0 so an empty or all-normal split still yields a row."""
    return num / den if den else 0.0


@dataclass(frozen=True)
class Confusion:
    """Row-level confusion counts; ``+`` sums them, which is how SKAB aggregates files."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def __radd__(self, other: object) -> Confusion:
        """Lets ``sum(confusions)`` work (its start value is the int 0)."""
        if other == 0:
            return self
        return NotImplemented

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def f1(self) -> float:
        """SKAB's F1 = TP / (TP + (FP + FN) / 2), identical to 2PR / (P + R)."""
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        """False alarm rate in %: share of normal rows that raised an alarm."""
        return 100.0 * _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed alarm rate in %: share of anomalous rows left silent."""
        return 100.0 * _ratio(self.fn, self.fn + self.tp)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)


def _binary(values: npt.ArrayLike, what: str) -> npt.NDArray[np.bool_]:
    """Validate 0/1 (or bool) input: silently thresholding floats would hide caller bugs."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0/1 values")
    return arr.astype(bool)


def confusion(labels: npt.ArrayLike, preds: npt.ArrayLike) -> Confusion:
    """Confusion counts of one file's 0/1 predictions against its 0/1 labels."""
    y = _binary(labels, "labels")
    p = _binary(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.size} != {p.size}")
    return Confusion(
        tp=int(np.count_nonzero(y & p)),
        fp=int(np.count_nonzero(~y & p)),
        fn=int(np.count_nonzero(y & ~p)),
        tn=int(np.count_nonzero(~y & ~p)),
    )


def skab_summary(confusions: Iterable[Confusion]) -> dict[str, float | int]:
    """Micro-averaged SKAB leaderboard row (F1, FAR %, MAR %, P, R rounded to 2) plus counts."""
    c = sum(confusions, Confusion())
    return {
        "f1": round(c.f1, 2),
        "far": round(c.far, 2),
        "mar": round(c.mar, 2),
        "precision": round(c.precision, 2),
        "recall": round(c.recall, 2),
        "tp": c.tp,
        "fp": c.fp,
        "fn": c.fn,
        "tn": c.tn,
    }


@dataclass(frozen=True)
class Episode:
    """One labeled anomaly episode: rows ``start..end`` inclusive and how fast it was caught."""

    start: int
    end: int
    first_alert: int | None
    delay: float | None  # in rows, or seconds when timestamps were given; None if missed


@dataclass(frozen=True)
class DelayReport:
    """Per-episode delays and their summary (statistics over detected episodes only)."""

    episodes: list[Episode]
    unit: str  # "rows" or "seconds"

    @property
    def detected(self) -> int:
        return sum(e.delay is not None for e in self.episodes)

    @property
    def missed(self) -> int:
        return len(self.episodes) - self.detected

    def _delays(self) -> npt.NDArray[np.float64]:
        return np.array([e.delay for e in self.episodes if e.delay is not None], dtype=float)

    def summary(self) -> dict[str, float | int | str | None]:
        """Counts plus mean/median/max delay; the stats are None when nothing was detected."""
        d = self._delays()
        return {
            "episodes": len(self.episodes),
            "detected": self.detected,
            "missed": self.missed,
            "mean_delay": float(d.mean()) if d.size else None,
            "median_delay": float(np.median(d)) if d.size else None,
            "max_delay": float(d.max()) if d.size else None,
            "unit": self.unit,
        }


def episodes(labels: npt.ArrayLike) -> list[tuple[int, int]]:
    """Maximal runs of 1s as inclusive ``(start, end)`` row indices."""
    y = _binary(labels, "labels").astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _seconds(timestamps: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Timestamps as float seconds; datetime64 and timedelta64 are converted, numbers kept."""
    t = np.asarray(timestamps)
    if np.issubdtype(t.dtype, np.datetime64):
        t = t.astype("datetime64[us]")
        return (t - t[0]).astype("timedelta64[us]").astype(np.int64) / 1e6 if t.size else t
    if np.issubdtype(t.dtype, np.timedelta64):
        return t.astype("timedelta64[us]").astype(np.int64) / 1e6
    return t.astype(float)


def detection_delays(
    labels: npt.ArrayLike, preds: npt.ArrayLike, timestamps: npt.ArrayLike | None = None
) -> DelayReport:
    """Delay from each episode's first row to the first alert inside it (alerts after it miss).

    Without timestamps the delay is in rows; with them (datetime64 or numeric seconds) it is
    in seconds, which is what matters for a stream sampled at an irregular rate.
    """
    y = _binary(labels, "labels")
    p = _binary(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.size} != {p.size}")
    secs = None
    if timestamps is not None:
        secs = _seconds(timestamps)
        if secs.shape != y.shape:
            raise ValueError("timestamps must have one entry per row")
    out: list[Episode] = []
    for s, e in episodes(y):
        hits = np.flatnonzero(p[s : e + 1])
        if hits.size == 0:
            out.append(Episode(s, e, None, None))
            continue
        first = s + int(hits[0])
        delay = float(first - s) if secs is None else float(secs[first] - secs[s])
        out.append(Episode(s, e, first, delay))
    return DelayReport(out, "rows" if secs is None else "seconds")


# --------------------------------------------------------------------------------------
# NAB

PROBATION_PERCENT = 0.15
PROBATION_CAP = 750  # NAB: min(floor(0.15 · n), 0.15 · 5000)


@dataclass(frozen=True)
class NabProfile:
    """Signed NAB costs: rewards positive, penalties negative (NAB stores magnitudes)."""

    name: str
    a_tp: float
    a_fp: float
    a_tn: float
    a_fn: float


PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile("standard", 1.0, -0.11, 1.0, -1.0),
    "reward_low_FP": NabProfile("reward_low_FP", 1.0, -0.22, 1.0, -1.0),
    "reward_low_FN": NabProfile("reward_low_FN", 1.0, -0.11, 1.0, -2.0),
}


def scaled_sigmoid(y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """NAB's ``2 / (1 + exp(5y)) − 1``, forced to −1 beyond ``y = 3`` (far-away FPs)."""
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, val)


_MAX_TP = float(scaled_sigmoid(-1.0))  # σ(−1) ≈ 0.9866: a first-row hit earns exactly A_TP


def probation_length(
    n_rows: int, percent: float = PROBATION_PERCENT, cap: int | None = PROBATION_CAP
) -> int:
    """Rows at the start of a file that are not scored (detectors are still warming up)."""
    length = math.floor(percent * n_rows)
    return int(length if cap is None else min(length, cap))


def _to_datetime(values: Any) -> npt.NDArray[np.datetime64]:
    """Accept strings like ``2014-04-10 07:15:00.000000``, datetimes or datetime64."""
    return np.asarray(values, dtype="datetime64[us]")


@dataclass
class NabFile:
    """One NAB stream in file order: timestamps, a score in [0, 1] per row, inclusive windows.

    Timestamps need not be strictly increasing (real NAB files repeat or step back an hour);
    windows are resolved to row ranges in file order (module rule 9).
    """

    timestamps: Any
    scores: Any
    windows: Sequence[tuple[Any, Any]] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.timestamps = _to_datetime(self.timestamps)
        self.scores = np.asarray(self.scores, dtype=float)
        if self.timestamps.ndim != 1 or self.scores.shape != self.timestamps.shape:
            raise ValueError(f"{self.name}: need one score per timestamp")
        if np.isnan(self.scores).any():
            raise ValueError(f"{self.name}: scores contain NaN")
        self.windows = sorted((_to_datetime(s)[()], _to_datetime(e)[()]) for s, e in self.windows)


@dataclass(frozen=True)
class _Prepared:
    """Profile-independent per-row weights of one file, computed once per scoring call."""

    scores: npt.NDArray[np.float64]
    window_id: npt.NDArray[np.int64]  # -1 outside every window
    tp_unit: npt.NDArray[np.float64]  # σ(y)/σ(−1) inside windows
    fp_unit: npt.NDArray[np.float64]  # −σ(y) in (0, 1] outside windows
    scorable: npt.NDArray[np.bool_]  # False in the probationary period
    n_windows: int  # windows with at least one scorable row


def _first(mask: npt.NDArray[np.bool_], default: int) -> int:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else default


def window_rows(
    ts: npt.NDArray[np.datetime64], start: np.datetime64, end: np.datetime64
) -> tuple[int, int]:
    """Half-open row range ``[lo, hi)`` of a window in file order (module rule 9)."""
    n = ts.size
    lo = _first(ts == start, _first(ts >= start, n))
    tail = ts[lo:]
    last = _first(tail == end, _first(tail > end, tail.size) - 1)
    return lo, lo + last + 1


def _prepare(f: NabFile, cap: int | None) -> _Prepared:
    """Map windows to rows and precompute each row's TP and FP weight (NAB rules 2–4)."""
    n = f.scores.size
    ts = f.timestamps
    window_id = np.full(n, -1, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.ones(n)  # before the first window: the full A_FP
    bounds: list[tuple[int, int]] = []
    for start, end in f.windows:
        lo, hi = window_rows(ts, start, end)
        if hi <= lo:
            raise ValueError(f"{f.name}: window {start}..{end} contains no rows")
        if bounds and lo < bounds[-1][1]:
            raise ValueError(f"{f.name}: windows overlap at {start}")
        bounds.append((lo, hi))
    prob = probation_length(n, cap=cap)
    scored = 0
    for k, (lo, hi) in enumerate(bounds):
        width = hi - lo
        idx = np.arange(lo, hi)
        tp_unit[lo:hi] = scaled_sigmoid(-(hi - idx) / width) / _MAX_TP
        window_id[lo:hi] = k
        nxt = bounds[k + 1][0] if k + 1 < len(bounds) else n
        after = np.arange(hi, nxt)
        fp_unit[hi:nxt] = -scaled_sigmoid((after - (hi - 1)) / max(width - 1, 1))
        scored += hi - 1 >= prob
    scorable = np.arange(n) >= prob
    return _Prepared(f.scores, window_id, tp_unit, fp_unit, scorable, scored)


@dataclass(frozen=True)
class NabResult:
    """Corpus NAB outcome at one threshold: the normalised score and what produced it."""

    profile: str
    threshold: float
    score: float  # normalised: null detector 0, perfect 100
    raw: float
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # false-positive rows
    windows: int


def _normalise(raw: float, windows: int, profile: NabProfile) -> float:
    null = profile.a_fn * windows
    perfect = profile.a_tp * windows
    if perfect == null:
        raise ValueError("no scored windows: the NAB score is undefined")
    return 100.0 * (raw - null) / (perfect - null)


def _prepare_all(files: Sequence[NabFile], cap: int | None) -> list[_Prepared]:
    if not files:
        raise ValueError("no files to score")
    return [_prepare(f, cap) for f in files]


def nab_detail(
    files: Sequence[NabFile],
    profile: NabProfile,
    threshold: float,
    probation_cap: int | None = PROBATION_CAP,
) -> NabResult:
    """Score the corpus at a fixed threshold and keep the TP/FN/FP counts for reporting."""
    raw = 0.0
    tp = fp = total = 0
    for p in _prepare_all(files, probation_cap):
        det = p.scorable & (p.scores >= threshold)
        outside = det & (p.window_id < 0)
        raw += profile.a_fp * float(p.fp_unit[outside].sum())
        fp += int(np.count_nonzero(outside))
        inside = np.flatnonzero(det & (p.window_id >= 0))
        # window ids rise with the row index, so the first occurrence is the earliest hit
        _, first = np.unique(p.window_id[inside], return_index=True)
        hits = inside[first]
        raw += profile.a_tp * float(p.tp_unit[hits].sum())
        tp += hits.size
        total += p.n_windows
    fn = total - tp
    raw += profile.a_fn * fn
    score = _normalise(raw, total, profile)
    return NabResult(profile.name, float(threshold), score, raw, tp, fn, fp, total)


def nab_score(
    files: Sequence[NabFile],
    profile: NabProfile,
    threshold: float,
    probation_cap: int | None = PROBATION_CAP,
) -> float:
    """Normalised NAB score of the corpus at one threshold (0 = null detector, 100 = perfect)."""
    return nab_detail(files, profile, threshold, probation_cap).score


def _events(p: _Prepared, profile: NabProfile) -> tuple[npt.NDArray, npt.NDArray]:
    """Score changes as the threshold falls: ``(value, delta)`` pairs, exact per NAB rule 3.

    An FP row adds its cost once the threshold reaches its score. A window's earliest hit
    moves earlier only at rows whose score beats every earlier row of the window (running
    maximum records). Records rise in value along the window, so the threshold reaches the
    last record first (the window turns from a miss into a hit) and each earlier record then
    swaps the later record's reward for its own larger one.
    """
    values: list[npt.NDArray] = []
    deltas: list[npt.NDArray] = []
    out = p.scorable & (p.window_id < 0)
    values.append(p.scores[out])
    deltas.append(profile.a_fp * p.fp_unit[out])
    ids = p.window_id[p.scorable]
    for k in np.unique(ids[ids >= 0]):
        rows = np.flatnonzero(p.scorable & (p.window_id == k))
        s = p.scores[rows]
        run = np.maximum.accumulate(s)
        rec = np.concatenate(([True], run[1:] > run[:-1]))
        gain = profile.a_tp * p.tp_unit[rows[rec]]
        values.append(s[rec])
        deltas.append(gain - np.append(gain[1:], profile.a_fn))
    return np.concatenate(values), np.concatenate(deltas)


def optimise_threshold(
    files: Sequence[NabFile],
    profile: NabProfile,
    probation_cap: int | None = PROBATION_CAP,
) -> tuple[float, float]:
    """The corpus-wide threshold maximising the normalised score, and that score.

    Exact sweep over every distinct scorable score value in O(N log N) (one sort and a
    cumulative sum), so it agrees with brute force. If no threshold beats never alarming,
    the threshold returned lies just above every score and the score is 0.
    """
    prepared = _prepare_all(files, probation_cap)
    windows = sum(p.n_windows for p in prepared)
    parts = [_events(p, profile) for p in prepared]
    values = np.concatenate([v for v, _ in parts])
    deltas = np.concatenate([d for _, d in parts])
    top = float(np.max(np.concatenate([p.scores for p in prepared])))
    silent = float(np.nextafter(max(top, 1.0), np.inf))
    if values.size == 0:
        return silent, 0.0
    order = np.argsort(-values, kind="stable")
    v = values[order]
    gain = np.cumsum(deltas[order])  # raw − null once all events with value >= v[i] fired
    last = np.flatnonzero(np.append(v[1:] != v[:-1], True))  # end of each equal-value run
    scale = 100.0 / (windows * (profile.a_tp - profile.a_fn))
    scores = gain[last] * scale
    best = int(np.argmax(scores))  # first maximum = highest threshold among ties
    if scores[best] <= 0.0:
        return silent, 0.0
    return float(v[last[best]]), float(scores[best])


def optimise_all(
    files: Sequence[NabFile],
    profiles: Iterable[NabProfile] = PROFILES.values(),
    probation_cap: int | None = PROBATION_CAP,
) -> dict[str, NabResult]:
    """Best threshold and full result for each profile: the NAB leaderboard row."""
    out: dict[str, NabResult] = {}
    for prof in profiles:
        threshold, _ = optimise_threshold(files, prof, probation_cap)
        out[prof.name] = nab_detail(files, prof, threshold, probation_cap)
    return out


def load_nab_windows(path: str | Path) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """Read ``combined_windows.json``: ``{"category/file.csv": [[start, end], ...]}``."""
    raw = json.loads(Path(path).read_text())
    return {
        name: [(_to_datetime(s)[()], _to_datetime(e)[()]) for s, e in wins]
        for name, wins in raw.items()
    }


def load_nab_series(
    path: str | Path,
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """Read a NAB ``timestamp,value`` CSV into (datetime64 timestamps, float values)."""
    with Path(path).open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header[:2] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected header timestamp,value, got {header}")
        rows = [(r[0], r[1]) for r in reader if r]
    ts = _to_datetime([r[0] for r in rows])
    values = np.array([float(r[1]) for r in rows])
    return ts, values
