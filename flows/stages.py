"""The flow's stateful stages as plain classes: one instance per state shard.

Bytewax keys the stream by shard (a stable hash of ``sensor_id``), and each shard's operator
delegates to these classes, which hold many sensors' state (the feature stage in numpy
arrays, ``flows.windows.WindowStore``). Working a whole batch per call instead of one Bytewax
item per reading is what keeps per-reading cost at a few microseconds. ``snapshot()`` returns
bytes; ``restore`` rebuilds identical behaviour.
"""

from __future__ import annotations

import io
import pickle
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from detectors.base import Verdict
from detectors.ensemble import Ensemble
from detectors.policy import AlertPolicy, Incident
from flows.schemas import Alert, DeadLetter, Reading, ScoreRecord
from flows.windows import ClosedWindow, WindowSpec, WindowStore


def pickle_after(prefix: bytes, state: object) -> bytes:
    """``prefix`` then ``state`` pickled, with no copy of the pickle to put the prefix first.

    ``BytesIO.getvalue()`` hands over its buffer instead of copying it, and a pickle writes
    large buffers straight into the file, so the state is copied once in all.
    """
    buf = io.BytesIO()
    buf.write(prefix)
    pickle.dump(state, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


def shard_key(shard: int) -> str:
    """The key of shard number ``shard`` (what Bytewax routes and stores state by)."""
    return f"{shard:04d}"


def shard_of(sensor_id: str, shards: int) -> str:
    """Stable shard key (crc32, not Python's salted ``hash``) so state finds its shard again."""
    return shard_key(zlib.crc32(sensor_id.encode()) % shards)


_SHARD_MEMO_LIMIT = 1 << 20  # sensor ids remembered per shard count before starting over
_shard_memo: dict[int, dict[str, str]] = {}


def group_by_shard(readings: Iterable[Reading], shards: int) -> list[tuple[str, list[Reading]]]:
    """Split a batch into per-shard sub-batches, keeping arrival order within each.

    Each sensor's shard key is remembered (a dict lookup instead of encoding, hashing and
    formatting the id for every reading); the memo starts over past ~1M ids, so a stream of
    ever-new ids cannot grow it without bound.
    """
    memo = _shard_memo.setdefault(shards, {})
    if len(memo) > _SHARD_MEMO_LIMIT:
        memo.clear()
    known = memo.get
    groups: dict[str, list[Reading]] = {}
    for r in readings:
        sid = r.sensor_id
        key = known(sid)
        if key is None:
            key = memo[sid] = shard_of(sid, shards)
        g = groups.get(key)
        if g is None:
            groups[key] = [r]
        else:
            g.append(r)
    return list(groups.items())


@dataclass(slots=True)
class FeatureOutput:
    """What one shard's feature stage produced from one batch."""

    windows: list[tuple[str, ClosedWindow]] = field(default_factory=list)
    late: list[DeadLetter] = field(default_factory=list)
    accepted: int = 0


class FeatureStage:
    """Event-time windowed features for the sensors of one shard (``flows.windows``)."""

    def __init__(self, spec: WindowSpec, source_topic: str = "") -> None:
        self.spec = spec
        self.source_topic = source_topic
        self.windows = WindowStore(spec)

    def process(self, batches: list[list[Reading]], now: datetime | None = None) -> FeatureOutput:
        """Add readings in order; emit windows the watermark closed and late readings."""
        res = self.windows.process(batches)
        out = FeatureOutput(res.windows, accepted=res.accepted)
        if res.late:
            flat = [r for batch in batches for r in batch]
            out.late = [self._late(flat[i], newest, now) for i, newest in res.late]
        return out

    def flush(self) -> FeatureOutput:
        """End of a finite input: emit every window that still holds data."""
        return FeatureOutput(self.windows.flush())

    def _late(self, r: Reading, newest_ms: int, now: datetime | None) -> DeadLetter:
        from flows.schemas import encoder

        newest = datetime.fromtimestamp(newest_ms / 1000, UTC)
        return DeadLetter(
            reason="late",
            detail=(
                f"reading at {r.ts.isoformat()} is more than "  # type: ignore[union-attr]
                f"{self.spec.lateness_ms / 1000:g}s (VIGIL_ALLOWED_LATENESS) older than the "
                f"newest reading of sensor {r.sensor_id!r} ({newest.isoformat()})"
            ),
            raw=encoder.encode(r),
            topic=self.source_topic,
            partition=-1,
            offset=-1,
            received_at=now or datetime.now(UTC),
            sensor_id=r.sensor_id,
        )

    def snapshot(self, prefix: bytes = b"") -> bytes:
        """Every sensor's window state (``WindowStore.state``), pickled after ``prefix``."""
        return pickle_after(prefix, self.windows.state())

    @classmethod
    def restore(
        cls, spec: WindowSpec, state: bytes | memoryview, source_topic: str = ""
    ) -> FeatureStage:
        """Rebuild from ``snapshot()``."""
        stage = cls(spec, source_topic)
        stage.windows = WindowStore.restore(spec, state)
        return stage


@dataclass(slots=True)
class ScoreOutput:
    """Scores for every window of a batch, and the alerts they opened or resolved."""

    scores: list[ScoreRecord] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


class ScoreStage:
    """Judges closed windows with the detector ensemble and applies the alert policy.

    ``detectors.ensemble.Ensemble`` calibrates each detector's raw score per sensor and
    combines them into one likelihood; the policy turns anomalous windows into one alert per
    incident. Both are plain objects; this class only maps their output onto wire records.
    """

    def __init__(self, ensemble: Ensemble, policy: AlertPolicy) -> None:
        self.ensemble = ensemble
        self.policy = policy

    @property
    def version(self) -> str:
        """Versions of every detector, e.g. ``hst-1+v0001-2334da8e``."""
        return self.ensemble.version

    def process(self, windows: list[tuple[str, ClosedWindow]]) -> ScoreOutput:
        """Judge each window (in order), then update each sensor's incident."""
        out = ScoreOutput()
        if not windows:
            return out
        judgements = self.ensemble.score_and_learn(windows)
        version = self.version  # after scoring: a hot reload shows in this batch's records
        threshold = self.ensemble.config.alert_likelihood
        # A batch's windows share a few start and end times (every sensor's windows end on the
        # same hop unless staggered): each datetime is built once, not twice per window.
        when: dict[int, datetime] = {}
        for (sid, window), j in zip(windows, judgements, strict=True):
            s_ms, e_ms = window.start_ms, window.end_ms
            start = when.get(s_ms) or when.setdefault(s_ms, window.start)
            end = when.get(e_ms) or when.setdefault(e_ms, window.end)
            out.scores.append(ScoreRecord(
                sensor_id=sid, window_start=start, window_end=end,
                score=j.score, threshold=threshold, anomalous=j.anomalous,
                detectors=j.raw, contributors=j.contributors, readings=window.readings,
                model_version=version, likelihoods=j.likelihoods, surprise=j.surprise,
            ))
            verdict = Verdict(j.likelihood, j.anomalous, j.contributors, j.warming_up)
            alert = self.policy.update(sid, start, end, verdict, version, j.fired)
            if alert is not None:
                out.alerts.append(alert)
        return out

    def snapshot(self, prefix: bytes = b"") -> bytes:
        """Ensemble state plus open and pending incidents, pickled once (not nested) after
        ``prefix``."""
        return pickle_after(
            prefix, (self.ensemble.state(), self.policy.open, self.policy.pending)
        )

    def restore(self, state: bytes | memoryview) -> None:
        """Load state from ``snapshot()`` (also one holding the ensemble as bytes)."""
        ensemble_state, open_incidents, pending = pickle.loads(state)
        self.ensemble.restore(ensemble_state)
        self.policy.open = dict[str, Incident](open_incidents)
        self.policy.pending = dict[str, Incident](pending)
