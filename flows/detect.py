"""The detection dataflow: ``python -m bytewax.run flows.detect``.

    readings ─► decode_and_validate ─┬─► invalid_records ──────────────────┐
                                     └─► key_by_sensor_shard               │
                                          └─► windowed_features ─┬─► late_readings ─┤
                                                                 └─► score_windows  │
                                                 alerts ◄─┬───────────┘              │
                                                 scores ◄─┘            dead letters ◄┘

With ``VIGIL_BROKERS`` set it reads the readings topic and writes the alerts, scores and
dead-letter topics; without it, it plays the built-in simulated fleet and prints alerts as
JSON lines on stdout. Heavy logic lives in flows.decode, flows.stages and detectors/; this
file only wires it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from detectors.factory import DetectorConfigError, build_detectors, build_score_stage
from flows import logs, metrics
from flows.decode import BatchDecoder, DecodedBatch, RawBatch
from flows.runtime import keep_freed_memory_from_now, tune_garbage_collector
from flows.schemas import Alert, DeadLetter, Reading, ScoreRecord, encoder
from flows.settings import Settings, SettingsError
from flows.stages import FeatureOutput, FeatureStage, ScoreOutput, ScoreStage, group_by_shard
from flows.windows import ClosedWindow

log = logging.getLogger("vigil.flow")


@dataclass(frozen=True)
class FlowStreams:
    """The flow's outputs; the default outputs write the first three, tests may tap any."""

    alerts: Stream[Alert]
    scores: Stream[ScoreRecord]
    dead_letters: Stream[DeadLetter]
    windows: Stream[tuple[str, ClosedWindow]]


Outputs = Callable[[FlowStreams], None]


class _SnapshotsStage:
    """What both stateful steps snapshot: their stage's state, timed and tagged with the
    shard count (:func:`state_tag`), or nothing when there is no recovery store."""

    step: ClassVar[str]  # the step's id, also its metrics' label

    def __init__(
        self, stage: FeatureStage | ScoreStage, snapshots: bool = True, shards: int = 0,
        keep_memory: bool = False,
    ) -> None:
        self.stage = stage
        self.snapshots = snapshots
        self.shards = shards
        self.keep_memory = keep_memory
        self._snapshot_seconds = metrics.SNAPSHOT_SECONDS.labels(self.step)

    def snapshot(self) -> bytes:
        if not self.snapshots:
            return b""  # no recovery store: Bytewax would only discard it
        if self.keep_memory:
            keep_freed_memory_from_now()  # after any restore: see flows.runtime
        t0 = time.perf_counter()
        state = self.stage.snapshot(prefix=state_tag(self.shards) if self.shards else b"")
        self._snapshot_seconds.observe(time.perf_counter() - t0)
        return state


@dataclass(frozen=True, slots=True)
class _Features:
    """One shard's feature output and the Kafka timestamp its latency is measured from."""

    out: FeatureOutput
    produced_ms: int


class _WindowedFeatures(
    _SnapshotsStage, StatefulBatchLogic[tuple[int, list[Reading]], _Features, bytes]
):
    stage: FeatureStage
    step = "windowed_features"

    def on_batch(self, values: list[tuple[int, list[Reading]]]) -> tuple[list[_Features], bool]:
        t0 = time.perf_counter()
        out = self.stage.process([readings for _, readings in values])
        metrics.BATCH_SECONDS.labels(self.step).observe(time.perf_counter() - t0)
        metrics.ACCEPTED.inc(out.accepted)
        if out.late:
            metrics.DEAD.labels("late").inc(len(out.late))
        produced = min((p for p, _ in values if p), default=0)
        return [_Features(out, produced)], self.RETAIN

    def on_eof(self) -> tuple[list[_Features], bool]:
        out = self.stage.flush()
        return ([_Features(out, 0)] if out.windows else []), self.RETAIN


class _ScoreWindows(_SnapshotsStage, StatefulBatchLogic[_Features, ScoreOutput, bytes]):
    stage: ScoreStage
    step = "score_windows"

    def __init__(
        self, stage: ScoreStage, snapshots: bool = True, shards: int = 0,
        keep_memory: bool = False,
    ) -> None:
        super().__init__(stage, snapshots, shards, keep_memory)
        stage.ensemble.detectors = metrics.timed(stage.ensemble.detectors)
        self._version: str | None = None

    def on_batch(self, values: list[_Features]) -> tuple[list[ScoreOutput], bool]:
        t0 = time.perf_counter()
        windows = [w for f in values for w in f.out.windows]
        out = self.stage.process(windows)
        metrics.BATCH_SECONDS.labels(self.step).observe(time.perf_counter() - t0)
        if not windows:
            return [out], self.RETAIN
        now = time.time()
        metrics.WINDOWS.inc(len(windows))
        anomalous = sum(1 for s in out.scores if s.anomalous)
        metrics.SCORES.labels("true").inc(anomalous)
        metrics.SCORES.labels("false").inc(len(out.scores) - anomalous)
        produced = min((f.produced_ms for f in values if f.produced_ms), default=0)
        if produced:
            metrics.SCORING_LATENCY.observe(metrics.latency_since(produced, now))
        if out.alerts:
            self._account_alerts(out.alerts, values, produced, now)
        version = self.stage.version
        if version != self._version:
            metrics.model_switched(version, self._version)
            if self._version is not None:
                log.info("state shard now scores with model %s (was %s)", version,
                         self._version, extra={"model_version": version})
            self._version = version
        return [out], self.RETAIN

    @staticmethod
    def _account_alerts(
        alerts: list[Alert], values: list[_Features], produced: int, now: float
    ) -> None:
        """Count, time and log each alert; alerts are rare, so per-alert work is fine here."""
        closed_by: dict[tuple[str, int], int] = {
            (sid, w.end_ms): f.produced_ms for f in values if f.produced_ms
            for sid, w in f.out.windows
        }
        for alert in alerts:
            metrics.ALERTS.labels(alert.severity, alert.status).inc()
            end_s = alert.end.timestamp()
            metrics.ALERT_EVENT_LAG.observe(max(0.0, now - end_s))
            at = closed_by.get((alert.sensor_id, round(end_s * 1000)), produced)
            if at:
                metrics.ALERT_LATENCY.observe(metrics.latency_since(at, now))
            log.info(
                "alert %s", "opened" if alert.status == "open" else alert.status,
                extra={
                    "alert_id": alert.alert_id, "sensor_id": alert.sensor_id,
                    "severity": alert.severity, "score": alert.score,
                    "window_end": alert.end.isoformat(), "model_version": alert.model_version,
                },
            )


_STATE_MAGIC = b"VGS1"  # recovered state tagged with the shard count it was written under


class ShardCountMismatch(RuntimeError):
    """A recovery store written under another ``VIGIL_STATE_SHARDS`` than this flow's."""


def state_tag(shards: int) -> bytes:
    """The 8 bytes a shard's snapshot starts with: the shard count that decides which
    sensors it holds. Stages pickle their state straight after it (``prefix``): adding it
    to finished bytes would copy the whole snapshot once more (~0.5 s per GiB)."""
    return _STATE_MAGIC + shards.to_bytes(4, "big")


def untag_state(state: bytes, shards: int) -> bytes | memoryview:
    """The snapshot without its tag; refuses state written under another shard count.

    Sensors are placed by ``crc32(sensor_id) % shards``: restored under another count, a
    shard's state would belong to other sensors than the ones now routed to it, and about
    half the fleet would silently start over. Snapshots from before the tag are accepted.
    """
    if not state.startswith(_STATE_MAGIC):
        return state
    written = int.from_bytes(state[4:8], "big")
    if written != shards:
        raise ShardCountMismatch(
            f"the recovery store was written with VIGIL_STATE_SHARDS={written}, this flow runs "
            f"with {shards}: set VIGIL_STATE_SHARDS={written} again, or start from a fresh "
            "recovery store (docs/operations.md)"
        )
    return memoryview(state)[8:]  # a view: no copy of the snapshot


def _count_decoded(batch: DecodedBatch, raw_count: int) -> DecodedBatch:
    metrics.READINGS.inc(raw_count)
    if batch.dead:
        for reason, n in Counter(d.reason for d in batch.dead).items():
            metrics.DEAD.labels(reason).inc(n)
    return batch


def _by_shard(batch: DecodedBatch, shards: int) -> list[tuple[str, tuple[int, list[Reading]]]]:
    return [
        (shard, (batch.produced_ms, readings))
        for shard, readings in group_by_shard(batch.readings, shards)
    ]


def recovery_configured() -> bool:
    """False only when this process is ``python -m bytewax.run`` without a recovery store.

    Bytewax asks every stateful step for a snapshot at each epoch (10 s) even when there is
    no recovery store to keep it; building Vigil's costs ~0.1 s per 1,000 active sensors
    (``bench.state_size``), a stall that shows in throughput and p99 latency. Bytewax's own
    argument parser reads the same command line (and ``BYTEWAX_RECOVERY_DIRECTORY``) here.
    Any other way of running a flow (``bytewax.testing``, an embedding program) keeps
    snapshots on: the safe side.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run" or not hasattr(main, "_create_arg_parser"):
        return True
    try:
        args, _ = main._create_arg_parser().parse_known_args(sys.argv[1:])
    except SystemExit:
        return True
    return getattr(args, "recovery_directory", None) is not None


def build_flow(
    settings: Settings, source: Source[RawBatch] | None = None, outputs: Outputs | None = None,
    snapshots: bool | None = None,
) -> Dataflow:
    """The dataflow for ``settings``; tests inject a source and outputs.

    ``snapshots=False`` skips building recovery snapshots; ``None`` decides by
    :func:`recovery_configured`.
    """
    keep = recovery_configured() if snapshots is None else snapshots
    spec = settings.window_spec()
    decoder = BatchDecoder(
        settings.max_record_bytes, round(settings.max_future.total_seconds() * 1000)
    )
    topic = settings.readings_topic if not settings.embedded else "simulator"
    names = ", ".join(f"{d.name} ({d.version})" for d in build_detectors(settings))
    if settings.model_registry or "lstm_ae" in settings.detector_names:
        from detectors.defaults import DEFAULT_REGISTRY

        names += f"; model registry {settings.model_registry or DEFAULT_REGISTRY}"
    log.info("detectors: %s", names)
    log.info("recovery snapshots: %s", "on" if keep else "off (no recovery directory)")

    shards = settings.state_shards
    keep_memory = settings.keep_freed_memory  # from the first snapshot on (flows.runtime)

    def new_features(state: bytes | None) -> _WindowedFeatures:
        if state is None:
            return _WindowedFeatures(FeatureStage(spec, topic), keep, shards, keep_memory)
        stage = FeatureStage.restore(spec, untag_state(state, shards), topic)
        return _WindowedFeatures(stage, keep, shards, keep_memory)

    def new_scorer(state: bytes | None) -> _ScoreWindows:
        stage = build_score_stage(settings)
        if state is not None:
            stage.restore(untag_state(state, shards))
        return _ScoreWindows(stage, keep, shards, keep_memory)

    flow = Dataflow("vigil_detect")
    raw = op.input("read_readings", flow, source or _default_source(settings))
    decoded = op.map(
        "decode_and_validate", raw, lambda b: _count_decoded(decoder(b), len(b.values))
    )
    invalid = op.flat_map("invalid_records", decoded, lambda b: b.dead)
    by_shard = op.flat_map(
        "key_by_sensor_shard", decoded, lambda b: _by_shard(b, settings.state_shards)
    )
    features = op.stateful_batch(_WindowedFeatures.step, by_shard, new_features)
    late = op.flat_map("late_readings", features, lambda kv: kv[1].out.late)
    scored = op.stateful_batch(_ScoreWindows.step, features, new_scorer)
    alerts = op.flat_map("alerts", scored, lambda kv: kv[1].alerts)
    scores = op.flat_map("scores", scored, lambda kv: kv[1].scores)
    dead = op.merge("dead_letters", invalid, late)
    windows = op.flat_map("closed_windows", features, lambda kv: kv[1].out.windows)
    (outputs or _default_outputs(settings))(FlowStreams(alerts, scores, dead, windows))
    op.output(
        "check_workers_against_shards", op.filter("nothing", raw, lambda _: False),
        WorkerCensus(shards),
    )
    return flow


# Shards per worker below which Bytewax's hashing of shard keys leaves workers unevenly
# loaded (measured: 8 shards over 2 workers split 5:3, 2 shards both on one worker).
SHARDS_PER_WORKER = 4


class _NoOutput(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class WorkerCensus(DynamicSink[Any]):
    """Receives nothing; every worker builds it once at start, which is where a flow learns
    how many workers run it. Warns when there are too few state shards to keep them all busy
    (a worker without a shard reads and decodes, but windows and scores nothing)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NoOutput:
        if worker_index == 0 and worker_count > 1 and (
            self.shards < SHARDS_PER_WORKER * worker_count
        ):
            log.warning(
                "VIGIL_STATE_SHARDS=%d for %d workers: state shards are what Bytewax spreads "
                "over workers, so some workers will hold little or no state. Set "
                "VIGIL_STATE_SHARDS to at least %d (with a fresh recovery store), or run "
                "independent instances instead (VIGIL_INSTANCES, docs/operations.md)",
                self.shards, worker_count, SHARDS_PER_WORKER * worker_count,
            )
        return _NoOutput()


def _default_source(settings: Settings) -> Source[RawBatch]:
    if settings.embedded:
        from flows.embedded import SimulatorSource

        return SimulatorSource(settings)
    from flows.kafka import ReadingsSource

    return ReadingsSource(settings)


def _default_outputs(settings: Settings) -> Outputs:
    def kafka(streams: FlowStreams) -> None:
        from flows.kafka import TopicSink

        for name, stream, topic in (
            ("alerts", streams.alerts, settings.alerts_topic),
            ("scores", streams.scores, settings.scores_topic),
            ("dead_letters", streams.dead_letters, settings.dead_letter_topic),
        ):
            records = op.map(
                f"encode_{name}",
                stream,
                lambda r, t=topic: (t, ((r.sensor_id or "").encode(), encoder.encode(r))),
            )
            op.output(f"write_{name}", records, TopicSink(settings, topic))

    def embedded(streams: FlowStreams) -> None:
        from flows.embedded import JsonLinesSink

        alerts = op.map("encode_alerts", streams.alerts, encoder.encode)
        op.output("print_alerts", alerts, JsonLinesSink())
        op.output(
            "print_dead_letters",
            op.map("encode_dead_letters", streams.dead_letters, encoder.encode),
            JsonLinesSink(sys.stderr),
        )

    def with_api(streams: FlowStreams) -> None:
        (embedded if settings.embedded else kafka)(streams)
        api_outputs(settings, streams)

    if settings.api_url:
        return with_api
    return embedded if settings.embedded else kafka


def api_outputs(settings: Settings, streams: FlowStreams) -> None:
    """Push alerts (never dropped) and aggregated scores to ``VIGIL_API_URL``; heartbeats."""
    from flows.api_sink import ApiAlertSink, ApiScoreSink, start_heartbeat

    start_heartbeat(settings)

    op.output(
        "push_alerts_to_api", op.key_on("key_alerts_for_api", streams.alerts, lambda _: "api"),
        ApiAlertSink(settings),
    )
    op.output(
        "push_scores_to_api", op.key_on("key_scores_for_api", streams.scores, lambda _: "api"),
        ApiScoreSink(settings),
    )


def _describe_mode(settings: Settings) -> str:
    if settings.embedded:
        return (
            f"mode=embedded: simulated fleet of {settings.sim_sensors} sensors "
            f"(seed {settings.sim_seed}); alerts -> stdout as JSON lines, dead letters -> stderr. "
            "Set VIGIL_BROKERS to read from Kafka/Redpanda."
        )
    return (
        f"mode=kafka: brokers={','.join(settings.brokers)} readings={settings.readings_topic!r} "
        f"-> alerts={settings.alerts_topic!r} scores={settings.scores_topic!r} "
        f"dead-letters={settings.dead_letter_topic!r}"
    )


def _load() -> Dataflow:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"vigil: {exc}\n")
        raise SystemExit(2) from None
    logs.configure(settings)
    log.info(_describe_mode(settings))
    if settings.api_url:
        log.info("pushing alerts and aggregated scores to the API at %s", settings.api_url)
    shown = settings.describe()
    log.info(
        "windows: length=%s hop=%s allowed_lateness=%s shards=%s",
        *(shown[k] for k in ("window_length", "window_hop", "allowed_lateness", "state_shards")),
    )
    metrics.serve(settings.metrics_port)
    try:
        built = build_flow(settings)
    except DetectorConfigError as exc:
        sys.stderr.write(f"vigil: {exc}\n")
        raise SystemExit(2) from None
    tune_garbage_collector()
    return built


flow = _load()
