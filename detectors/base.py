"""The detector contract: score a batch of closed windows for many sensors, then learn from them.

A detector knows nothing of Bytewax or Kafka. The flow keeps one detector instance per state
shard, feeds it every window that shard closes (in event-time order per sensor), and asks for
``snapshot()`` bytes at each recovery epoch; ``restore()`` must rebuild an instance that scores
the next window exactly as the original would have. Scores are "larger = more anomalous" and
comparable to the detector's own ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flows.schemas import Contributor
from flows.windows import ClosedWindow


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's opinion on one window of one sensor."""

    score: float
    anomalous: bool
    contributors: list[Contributor]
    warming_up: bool = False


def sensor_rounds(batch: list[tuple[str, ClosedWindow]]) -> list[list[int]]:
    """Split a batch into rounds of indices holding at most one window per sensor.

    Round r holds each sensor's r-th window, in batch order, so a detector can score a round
    in one vectorised call and still score every window from the state before it.
    """
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, (sid, _) in enumerate(batch):
        r = seen.get(sid, 0)
        seen[sid] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds


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
