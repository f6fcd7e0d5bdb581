"""The embedded default: a simulated fleet as the source and stdout as the alert sink.

Used when no broker is configured, so ``python -m bytewax.run flows.detect`` shows real
alerts on a fresh machine. The simulator's readings are JSON-encoded and go through the same
decode → window → score path as Kafka records. The simulation starts ``sim_backfill`` in the
past, replays that history at ``sim_speed`` × real time, then continues in real time; its
resume state (start and next tick) makes it recoverable like a Kafka partition.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.decode import RawBatch
from flows.schemas import encoder
from flows.settings import Settings
from flows.simulator import Fleet

SimState = tuple[str, int]  # (fleet start, ISO; next tick)


class _SimulatorPartition(StatefulSourcePartition[RawBatch, SimState]):
    def __init__(self, settings: Settings, resume: SimState | None) -> None:
        if resume is None:
            hop = settings.window_hop.total_seconds()
            start_s = datetime.now(UTC).timestamp() - settings.sim_backfill.total_seconds()
            start = datetime.fromtimestamp(start_s - start_s % hop, UTC)
            tick = 0
        else:
            start, tick = datetime.fromisoformat(resume[0]), resume[1]
        self._fleet = Fleet.from_settings(settings, start)
        self._start = start
        self._tick = tick
        self._speed = settings.sim_speed
        self._limit = settings.sim_limit
        self._emitted = 0
        self._per_batch = max(1, 5000 // settings.sim_sensors)
        self._wall0 = time.monotonic()
        self._event0 = self._fleet.tick_time(tick).timestamp()
        self._interval = settings.sim_interval.total_seconds()

    def _event_clock(self) -> float:
        """Simulated 'now': fast-forward through history, then real time."""
        fast = self._event0 + (time.monotonic() - self._wall0) * self._speed
        return min(fast, time.time())

    def next_batch(self) -> list[RawBatch]:
        if self._limit and self._emitted >= self._limit:
            raise StopIteration
        now = self._event_clock()
        values: list[bytes | None] = []
        offsets: list[int] = []
        for _ in range(self._per_batch):
            if self._fleet.tick_time(self._tick).timestamp() > now:
                break
            for reading in self._fleet.tick(self._tick):
                offsets.append(self._tick)
                values.append(encoder.encode(reading))
            self._tick += 1
        if self._limit:
            room = self._limit - self._emitted
            offsets, values = offsets[:room], values[:room]
        self._emitted += len(values)
        if not values:
            return []
        return [RawBatch("simulator", 0, offsets, values, round(time.time() * 1000))]

    def next_awake(self) -> datetime | None:
        due = self._fleet.tick_time(self._tick).timestamp()
        if due <= self._event_clock():
            return None
        lag = (due - self._event_clock()) / (self._speed if due < time.time() else 1.0)
        return datetime.now(UTC) + timedelta(seconds=min(lag, self._interval))

    def snapshot(self) -> SimState:
        return (self._start.isoformat(), self._tick)


class SimulatorSource(FixedPartitionedSource[RawBatch, SimState]):
    """One partition that plays the simulated fleet."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return ["simulator"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: SimState | None
    ) -> _SimulatorPartition:
        return _SimulatorPartition(self._settings, resume_state)


class _LinesPartition(StatelessSinkPartition[bytes]):
    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write_batch(self, items: list[bytes]) -> None:
        out = self._stream.buffer  # type: ignore[attr-defined]
        try:
            for item in items:
                out.write(item + b"\n")
            self._stream.flush()  # type: ignore[attr-defined]
        except BrokenPipeError:
            _reader_gone(self._stream)


def _reader_gone(stream: object) -> None:
    """The reader of our output went away (``... | head``): stop, as a Unix filter does.

    Left to itself, the error would surface as a Bytewax panic with a Rust backtrace. There
    is no way to end a dataflow from a sink, so the process exits at once, as SIGPIPE would
    end ``cat``; with a recovery store that is a crash, which it resumes from.
    """
    name = "stdout" if stream is sys.stdout else "stderr"
    try:
        sys.stderr.write(f"vigil: {name} was closed by its reader; stopping\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(0)


class JsonLinesSink(DynamicSink[bytes]):
    """Writes already-encoded JSON records one per line (stdout by default)."""

    def __init__(self, stream: object = None) -> None:
        self._stream = stream

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LinesPartition:
        return _LinesPartition(self._stream or sys.stdout)
