"""The detector contract: score a batch of closed windows for many sensors, then learn from them.

A detector knows nothing of Bytewax or Kafka. The flow keeps one detector instance per state
shard, feeds it every window that shard closes (in event-time order per sensor), and asks for
``snapshot()`` bytes at each recovery epoch; ``restore()`` must rebuild an instance that scores
the next window exactly as the original would have. Scores are "larger = more anomalous" and
comparable to the detector's own ``threshold``. A detector class may set ``surprise_only =
True`` to take part only in the ensemble's surprise score, never in alerts
(``detectors/ensemble.py``). ``score_and_learn`` returns one ``Verdict`` per window; a
detector may also offer ``score_batch``, the same opinions as ``Verdicts`` columns, which the
ensemble prefers (``BatchScoring`` derives the first from the second).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from flows.schemas import Contributor
from flows.windows import ClosedWindow


@dataclass(slots=True)  # not frozen: built per window, and frozen init costs 3x
class Verdict:
    """A detector's opinion on one window of one sensor."""

    score: float
    anomalous: bool
    contributors: list[Contributor]
    warming_up: bool = False


class Verdicts:
    """A detector's opinions on a whole batch as columns; a ``Verdict`` per window on demand.

    Why: the ensemble needs every detector's score of every window, but the contributors of
    only one detector per window. Building a ``Verdict`` with three ``Contributor``s for every
    detector and window cost ~1.5 µs each, most of it thrown away. Here a detector sets whole
    groups of windows with a few array writes, and contributors are built only when asked
    for. A window never set is warming up: score 0, not anomalous, no contributors.
    """

    __slots__ = ("_lists", "_row", "_table", "_tables", "anomalous", "score", "warming_up")

    def __init__(self, n: int) -> None:
        self.score = np.zeros(n)
        self.anomalous = np.zeros(n, dtype=bool)
        self.warming_up = np.ones(n, dtype=bool)
        self._table = np.full(n, -1, dtype=np.intp)  # window -> entry of _tables
        self._row = np.zeros(n, dtype=np.intp)  # window -> row in that entry
        # per set(): (metric names, top metrics by rank (G, ≤3), weights shown (G, M))
        self._tables: list[tuple[Sequence[str], np.ndarray, np.ndarray]] = []
        self._lists: list[list[Contributor]] | None = None  # from_list: given as is

    def __len__(self) -> int:
        return len(self.score)

    def set(
        self, at: Sequence[int] | np.ndarray, score: np.ndarray, anomalous: np.ndarray,
        warming_up: np.ndarray, metrics: Sequence[str], rank: np.ndarray, shown: np.ndarray,
    ) -> None:
        """Windows ``at`` (batch positions) get these scores; warming ones score 0.

        A window's contributors are the three ``metrics`` with the largest ``rank`` (ties to
        the first), each weighted with its value in ``shown`` (``rank`` as published).
        """
        at = np.asarray(at, dtype=np.intp)
        warm = np.asarray(warming_up, dtype=bool)
        self.score[at] = np.where(warm, 0.0, score)
        self.anomalous[at] = np.asarray(anomalous, dtype=bool) & ~warm
        self.warming_up[at] = warm
        self._table[at] = len(self._tables)
        self._row[at] = np.arange(len(at))
        top = np.argsort(-rank, axis=1, kind="stable")[:, :3]
        self._tables.append((metrics, top, shown))

    def contributors(self, i: int) -> list[Contributor]:
        """Window ``i``'s contributors, built now."""
        if self._lists is not None:
            return self._lists[i]
        if self.warming_up[i]:  # also every window never set
            return []
        metrics, top, shown = self._tables[self._table[i]]
        j = self._row[i]
        row = shown[j].tolist()
        return [Contributor(metrics[k], row[k]) for k in top[j].tolist()]

    def verdict(self, i: int) -> Verdict:
        """Window ``i`` as one ``Verdict``."""
        if self.warming_up[i]:
            return Verdict(0.0, False, [], warming_up=True)
        return Verdict(float(self.score[i]), bool(self.anomalous[i]), self.contributors(i))

    def to_list(self) -> list[Verdict]:
        """Every window's ``Verdict``, in batch order."""
        return [self.verdict(i) for i in range(len(self))]

    @classmethod
    def from_list(cls, verdicts: Sequence[Verdict]) -> Verdicts:
        """Columns of a detector that returns ``Verdict``s (``Detector.score_and_learn``)."""
        out = cls(len(verdicts))
        if verdicts:
            out.score[:] = [v.score for v in verdicts]
            out.anomalous[:] = [v.anomalous for v in verdicts]
            out.warming_up[:] = [v.warming_up for v in verdicts]
        out._lists = [v.contributors for v in verdicts]
        return out


class BatchScoring:
    """``score_and_learn`` for a detector that scores a batch into ``Verdicts``
    (``score_batch``)."""

    def score_batch(self, batch: list[tuple[str, ClosedWindow]]) -> Verdicts:
        raise NotImplementedError

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        """Score each (sensor_id, window) from state *before* it, then learn it; same order."""
        return self.score_batch(batch).to_list()


def verdicts_of(detector: Any, batch: list[tuple[str, ClosedWindow]]) -> Verdicts:
    """Score and learn ``batch`` with any detector, as columns."""
    score_batch = getattr(detector, "score_batch", None)
    if score_batch is not None:
        return score_batch(batch)  # type: ignore[no-any-return]
    return Verdicts.from_list(detector.score_and_learn(batch))


def sensor_rounds(batch: list[tuple[str, ClosedWindow]]) -> list[list[int]]:
    """Cut a batch into consecutive rounds of indices holding at most one window per sensor.

    A detector scores a round in one vectorised call, from the state before it, then learns
    it. Because rounds are consecutive slices of the batch (a new one starts where a sensor
    would repeat), that is exactly scoring and learning the windows one by one in batch
    order, also for state several sensors share (HST's forest per shard). The window store
    emits windows in the order of the readings that closed them, so results do not depend
    on how the input was cut into batches.
    """
    if len({sid for sid, _ in batch}) == len(batch):  # the common case: one round
        return [list(range(len(batch)))] if batch else []
    rounds: list[list[int]] = []
    current: list[int] = []
    seen: set[str] = set()
    for i, (sid, _) in enumerate(batch):
        if sid in seen:
            rounds.append(current)
            current, seen = [], set()
        current.append(i)
        seen.add(sid)
    rounds.append(current)
    return rounds


def last_values(features: Mapping[str, float]) -> tuple[str, ...]:
    """A window's ``<metric>.last`` features, sorted: the feature set of detectors that judge
    each metric's newest value."""
    return tuple(sorted(k for k in features if k.endswith(".last")))


def by_feature_set(
    batch: list[tuple[str, ClosedWindow]],
    keys_of: Callable[[str, Mapping[str, float]], tuple[str, ...]],
) -> Iterator[tuple[tuple[str, ...], list[int]]]:
    """Batch indices grouped by their sensor's feature set, one sensor round at a time.

    For detectors whose state is one table per feature set (``detectors._rows.FeatureSets``):
    each group is scored and learned with one vectorised call, and a sensor's later windows
    (later rounds) come only after its earlier ones. ``keys_of(sensor_id, features)`` names
    the sensor's feature set.
    """
    for indices in sensor_rounds(batch):
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in indices:
            sid, window = batch[i]
            groups.setdefault(keys_of(sid, window.features), []).append(i)
        yield from groups.items()


def rounded(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """``round(x, digits)`` for a whole array: what score records publish.

    One vectorised pass instead of a Python ``round`` per value (ten or more per window,
    ~5 µs). The result is the same float as Python's ``round`` except where ``x·10^digits``
    lies within about one unit in the last place of a half (a double-rounding tie); from
    10⁹ on, Python's ``round`` is used as is.
    """
    scale = 10.0**digits
    out = np.rint(values * scale) / scale
    big = np.abs(values) >= 1e9
    if big.any():
        out[big] = [round(float(v), digits) for v in values[big]]
    return out


@lru_cache(maxsize=256)
def _getter(keys: tuple[str, ...]) -> itemgetter:
    return itemgetter(*keys)


def gather(
    batch: Sequence[tuple[str, ClosedWindow]], at: Sequence[int], keys: tuple[str, ...]
) -> np.ndarray:
    """Features ``keys`` of windows ``batch[i]`` for i in ``at`` as a (len(at), len(keys))
    float64 array; a feature missing from a window is NaN.

    One C-level ``itemgetter`` call per window (the common case: every key present) instead
    of a dict lookup per feature.
    """
    if not keys:
        return np.zeros((len(at), 0))
    get = _getter(keys)
    single = len(keys) == 1
    nan = float("nan")
    rows = []
    for i in at:
        f = batch[i][1].features
        try:
            row = get(f)
        except KeyError:
            row = tuple(f.get(k, nan) for k in keys)
        rows.append((row,) if single and not isinstance(row, tuple) else row)
    return np.array(rows, dtype=np.float64).reshape(len(at), len(keys))


class Detector(Protocol):
    """What the flow, offline evaluation and bench/ all call."""

    name: str
    version: str
    threshold: float

    def score_and_learn(self, batch: list[tuple[str, ClosedWindow]]) -> list[Verdict]:
        """Score each (sensor_id, window) from state *before* it, then learn it; same order."""
        ...

    def snapshot(self) -> bytes:
        """All learned state, for recovery; cheap enough to call every few seconds."""
        ...

    def restore(self, state: bytes) -> None:
        """Replace learned state with a snapshot taken by the same kind of detector."""
        ...

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor's state (e.g. a sensor retired by an operator)."""
        ...
