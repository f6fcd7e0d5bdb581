"""A deterministic simulated fleet of sensors with labeled, injected anomalies.

Contract (other modules rely on it):

* ``Fleet.tick(i)`` is a pure, random-access function of the constructor arguments and ``i``.
  Calling ``tick(1000)`` cold or after ``tick(0..999)`` gives identical readings, so a flow
  that resumes from a tick index after a crash sees exactly the stream it would have seen.
  Caches exist only for speed and never change a result.
* Tick ``i`` is stamped ``start + i * interval`` (aware UTC). It holds one ``Reading`` per
  sensor, ordered by ``sensor_id``, except sensors inside a ``dropout``, which emit nothing.
* Values are finite Python floats: a per-sensor/metric base level, daily seasonality (24 h sine
  with a per-sensor phase), a slow drift (sine with a period of 1-4 weeks) and Gaussian noise.
* Anomalies arrive as a Poisson process with ``anomaly_rate`` expected per sensor per simulated
  day. Kinds: ``spike`` (+/-8..15 sigma for 1-3 ticks), ``level_shift`` (+/-4..8 sigma),
  ``variance_burst`` (noise x5..10), ``stuck`` (value frozen at its value at the anomaly
  start) and ``dropout`` (no readings). Non-spike anomalies last 5-60 min (at least 2 ticks).
  Each covers ticks ``[start, end)`` of one sensor; one sensor's anomalies never overlap and
  are at least ~10 min apart, so every labeled tick belongs to exactly one anomaly. (So a
  rate above ~30/day at 10 s ticks is capped by what fits.)
* ``tick_labels(i)`` has every sensor, ``True`` while inside an anomaly, dropouts included
  (the sensor is anomalous even though it sent nothing).

How randomness is derived: per-sensor parameters from ``default_rng([seed, 0, k])``, the noise
of tick ``i`` from ``default_rng([seed, 1, i])`` and the anomaly schedule of sensor ``k`` in
block ``b`` (about one simulated day of ticks) from ``default_rng([seed, 2, k, b])``. Anomalies
never cross a block edge, so a tick only needs its own block's schedule. Sensor parameters and
schedules do not depend on the fleet size; the noise does.

Run ``python -m flows.simulator --help`` to write labeled parquet/CSV files or produce to Kafka.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from flows.cli import non_negative_float, non_negative_int, positive_duration, utc_time
from flows.produce import produce
from flows.schemas import Reading, encoder
from flows.settings import Settings, SettingsError, parse_brokers

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_METRICS",
    "DEFAULT_START",
    "Fleet",
    "InjectedAnomaly",
    "main",
]

DEFAULT_METRICS = ("temperature", "pressure", "vibration", "current")
ANOMALY_KINDS = ("spike", "level_shift", "variance_burst", "stuck", "dropout")
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

_SPIKE, _LEVEL, _VARIANCE, _STUCK, _DROPOUT = range(len(ANOMALY_KINDS))
_DAY_S = 86_400.0
_US = timedelta(microseconds=1)
# Plausible base ranges for the default metrics; any other metric name gets the fallback.
_BASE_RANGE = {
    "temperature": (20.0, 80.0),
    "pressure": (1.0, 10.0),
    "vibration": (0.5, 5.0),
    "current": (5.0, 50.0),
}
_FALLBACK_RANGE = (10.0, 100.0)
_CACHED_BLOCKS = 4


class InjectedAnomaly(msgspec.Struct, frozen=True):
    """Ground truth for one injected anomaly on one sensor, covering ``[start, end)``."""

    sensor_id: str
    kind: str
    metrics: list[str]
    start: datetime
    end: datetime


@dataclass(frozen=True)
class _Schedule:
    """All anomalies of one block, one row each; ``effect`` depends on the kind.

    spike/level_shift: signed offset in sigmas; variance_burst: noise factor; stuck: the
    frozen absolute value; dropout: unused.
    """

    sensor: np.ndarray  # (n,) int64
    start: np.ndarray  # (n,) int64 tick, inclusive
    end: np.ndarray  # (n,) int64 tick, exclusive
    kind: np.ndarray  # (n,) int64 index into ANOMALY_KINDS
    mask: np.ndarray  # (n, M) bool: metrics affected
    effect: np.ndarray  # (n, M) float64


class Fleet:
    """A fleet of simulated sensors; every method is a pure function of its arguments."""

    def __init__(
        self,
        sensors: int = 20,
        metrics: Sequence[str] = DEFAULT_METRICS,
        seed: int = 7,
        interval: timedelta = timedelta(seconds=10),
        anomaly_rate: float = 6.0,
        start: datetime = DEFAULT_START,
    ) -> None:
        if sensors < 1:
            raise ValueError(f"sensors must be at least 1, got {sensors}")
        metrics = tuple(metrics)
        if not metrics or any(not m for m in metrics) or len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must be distinct non-empty names, got {metrics!r}")
        if seed < 0:
            raise ValueError(f"seed must not be negative, got {seed}")
        if interval < _US:
            raise ValueError(f"interval must be at least 1 microsecond, got {interval}")
        if not (math.isfinite(anomaly_rate) and anomaly_rate >= 0):
            raise ValueError(f"anomaly_rate must be a finite number >= 0, got {anomaly_rate}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware, e.g. 2024-01-01T00:00:00Z")
        self.sensors = sensors
        self.metrics: tuple[str, ...] = metrics
        self.seed = seed
        self.interval = interval
        self.anomaly_rate = float(anomaly_rate)
        self.start = start.astimezone(UTC)
        width = max(4, len(str(sensors - 1)))  # fixed width: string order == numeric order
        self.sensor_ids: list[str] = [f"sim-{k:0{width}d}" for k in range(sensors)]

        self._interval_us = interval // _US
        self._interval_s = self._interval_us / 1e6
        self._start_s = self.start.timestamp()
        # Ticks per schedule block: one simulated day, but at least 64 ticks so that long
        # intervals still have room for anomalies (the rate per day is kept either way).
        self.block_ticks = max(64, round(_DAY_S / self._interval_s))
        # Durations in ticks: spikes 1-3; the rest 5-60 minutes but at least 2 ticks.
        self._long_min = max(2, round(300.0 / self._interval_s))
        self._long_max = max(self._long_min, round(3600.0 / self._interval_s))
        self._gap = max(1, math.ceil(600.0 / self._interval_s))
        self._init_parameters()
        self._blocks: OrderedDict[int, _Schedule] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, start: datetime) -> Fleet:
        """The embedded-mode fleet described by the ``VIGIL_SIM_*`` settings."""
        return cls(
            sensors=settings.sim_sensors,
            seed=settings.sim_seed,
            interval=settings.sim_interval,
            anomaly_rate=settings.sim_anomaly_rate,
            start=start,
        )

    def __repr__(self) -> str:
        return (
            f"Fleet(sensors={self.sensors}, metrics={self.metrics!r}, seed={self.seed}, "
            f"interval={self.interval!r}, anomaly_rate={self.anomaly_rate}, "
            f"start={self.start.isoformat()!r})"
        )

    # --- time ----------------------------------------------------------------------------
    def tick_time(self, i: int) -> datetime:
        """Event time of tick ``i``: ``start + i * interval``, aware UTC."""
        return self.start + i * self.interval

    def tick_index(self, ts: datetime) -> int:
        """The first tick stamped at or after ``ts`` (0 if ``ts`` is before the start)."""
        delta_us = (ts - self.start) // _US
        return max(0, -(-delta_us // self._interval_us))

    # --- readings ------------------------------------------------------------------------
    def tick(self, i: int) -> list[Reading]:
        """One Reading per sensor at tick ``i``, ordered by sensor_id, minus dropouts."""
        values, emitted, _ = self.tick_arrays(i)
        return self._readings(i, values, emitted)

    def tick_labels(self, i: int) -> dict[str, bool]:
        """sensor_id -> inside an injected anomaly at tick ``i`` (dropouts are ``True``)."""
        _, _, kind = self.tick_arrays(i)
        return dict(zip(self.sensor_ids, (kind >= 0).tolist(), strict=True))

    def tick_kinds(self, i: int) -> dict[str, str | None]:
        """sensor_id -> kind of the anomaly active at tick ``i``, or ``None``."""
        _, _, kind = self.tick_arrays(i)
        return {
            s: (ANOMALY_KINDS[c] if c >= 0 else None)
            for s, c in zip(self.sensor_ids, kind.tolist(), strict=True)
        }

    def tick_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tick ``i`` as arrays for bulk writers: values (sensors, metrics) float64, emitted
        (sensors,) bool and kind (sensors,) int index into ANOMALY_KINDS, -1 for normal.

        Rows of dropped-out sensors hold the value they would have had; ignore them.
        """
        if i < 0:
            raise ValueError(f"tick index must not be negative, got {i}")
        t = self._start_s + i * self._interval_s
        z = np.random.default_rng([self.seed, 1, i]).standard_normal(
            (self.sensors, len(self.metrics))
        )
        values = self._clean(t) + self._sigma * z
        emitted = np.ones(self.sensors, dtype=bool)
        kind = np.full(self.sensors, -1, dtype=np.int64)

        sched = self._schedule(i // self.block_ticks)
        active = np.flatnonzero((sched.start <= i) & (i < sched.end))
        if active.size:
            ks = sched.sensor[active]  # unique: one sensor's anomalies never overlap
            kd = sched.kind[active][:, None]
            mask = sched.mask[active]
            effect = sched.effect[active]
            sigma = self._sigma[ks]
            old = values[ks]
            new = np.select(
                [kd == _SPIKE, kd == _LEVEL, kd == _VARIANCE, kd == _STUCK],
                [old + effect * sigma, old + effect * sigma,
                 old + (effect - 1.0) * sigma * z[ks], effect],
                old,
            )
            values[ks] = np.where(mask, new, old)
            kind[ks] = kd[:, 0]
            emitted[ks[kd[:, 0] == _DROPOUT]] = False
        return values, emitted, kind

    # --- ground truth --------------------------------------------------------------------
    def anomalies(self, start: datetime, end: datetime) -> list[InjectedAnomaly]:
        """Injected anomalies overlapping ``[start, end)``, ordered by start then sensor."""
        lo = ((start - self.start) // _US) // self._interval_us  # last tick at or before start
        hi = self.tick_index(end)  # ticks < hi are stamped before end
        out: list[InjectedAnomaly] = []
        for b in range(max(0, lo) // self.block_ticks, (hi - 1) // self.block_ticks + 1):
            sched = self._blocks.get(b) or self._build_schedule(b)  # don't evict hot blocks
            for n in np.flatnonzero((sched.start < hi) & (sched.end > lo)).tolist():
                metrics = [m for m, on in zip(self.metrics, sched.mask[n], strict=True) if on]
                out.append(
                    InjectedAnomaly(
                        sensor_id=self.sensor_ids[int(sched.sensor[n])],
                        kind=ANOMALY_KINDS[int(sched.kind[n])],
                        metrics=metrics,
                        start=self.tick_time(int(sched.start[n])),
                        end=self.tick_time(int(sched.end[n])),
                    )
                )
        out.sort(key=lambda x: (x.start, x.sensor_id))
        return out

    # --- internals -----------------------------------------------------------------------
    def _init_parameters(self) -> None:
        """Per-sensor/metric levels, scales, seasonality and drift, one RNG per sensor."""
        k, m = self.sensors, len(self.metrics)
        lo = np.array([_BASE_RANGE.get(x, _FALLBACK_RANGE)[0] for x in self.metrics])
        hi = np.array([_BASE_RANGE.get(x, _FALLBACK_RANGE)[1] for x in self.metrics])
        u = np.empty((k, 7, m))
        phase = np.empty(k)
        for s in range(k):
            rng = np.random.default_rng([self.seed, 0, s])
            u[s] = rng.random((7, m))
            phase[s] = rng.random()
        self._base = lo + (hi - lo) * u[:, 0]
        self._sigma = self._base * (0.005 + 0.015 * u[:, 1])  # noise: 0.5-2% of the level
        self._daily_amp = self._sigma * (1.0 + 4.0 * u[:, 2])  # 1-5 sigma
        self._daily_phase = 2 * np.pi * (phase[:, None] + 0.1 * u[:, 3])
        self._drift_amp = self._sigma * 2.0 * u[:, 4]  # 0-2 sigma
        self._drift_omega = 2 * np.pi / (_DAY_S * (7.0 + 21.0 * u[:, 5]))  # 1-4 weeks
        self._drift_phase = 2 * np.pi * u[:, 6]

    def _clean(self, t: float) -> np.ndarray:
        """Noise-free signal of the whole fleet at epoch seconds ``t`` -> (sensors, M)."""
        tod = (t % _DAY_S) * (2 * np.pi / _DAY_S)
        daily = self._daily_amp * np.sin(tod + self._daily_phase)
        drift = self._drift_amp * np.sin(t * self._drift_omega + self._drift_phase)
        return self._base + daily + drift

    def _schedule(self, b: int) -> _Schedule:
        """The (cached) schedule of block ``b``; the cache only saves time."""
        sched = self._blocks.get(b)
        if sched is None:
            sched = self._build_schedule(b)
            self._blocks[b] = sched
            while len(self._blocks) > _CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return sched

    def _build_schedule(self, b: int) -> _Schedule:
        """Draw block ``b``'s anomalies for every sensor from its own (sensor, block) RNG."""
        m = len(self.metrics)
        T = self.block_ticks
        lam = self.anomaly_rate * T * self._interval_s / _DAY_S
        cols: dict[str, list[Any]] = {k: [] for k in ("sensor", "start", "dur", "kind", "mask",
                                                      "effect")}
        for s in range(self.sensors):
            rng = np.random.default_rng([self.seed, 2, s, b])
            n = int(rng.poisson(lam))
            if n == 0:
                continue
            kind = rng.integers(0, len(ANOMALY_KINDS), n)
            dur = np.where(
                kind == _SPIKE,
                rng.integers(1, 4, n),
                rng.integers(self._long_min, self._long_max + 1, n),
            )
            # Affected metrics: half the time one, otherwise a random number; dropout: all.
            count = np.where(rng.random(n) < 0.5, 1, rng.integers(1, m + 1, n))
            order = np.argsort(rng.random((n, m)), axis=1)
            mask = np.zeros((n, m), dtype=bool)
            np.put_along_axis(mask, order, np.arange(m)[None, :] < count[:, None], axis=1)
            mask[kind == _DROPOUT] = True
            sign = np.where(rng.random((n, m)) < 0.5, -1.0, 1.0)
            u = rng.random((n, m))
            z = rng.standard_normal((n, m))
            offsets = rng.integers(0, 1 << 62, n)
            # Place the anomalies without overlap, each followed by a gap, inside the block.
            slot = dur + self._gap
            fits = np.cumsum(slot) <= T
            n = int(fits.sum())
            if n == 0:
                continue
            kind, dur, mask, sign, u, z, slot = (
                kind[:n], dur[:n], mask[:n], sign[:n], u[:n], z[:n], slot[:n]
            )
            free = T - int(slot.sum())
            pos = np.sort(offsets[:n] % (free + 1))
            start = b * T + pos + np.concatenate(([0], np.cumsum(slot)[:-1]))
            effect = np.select(
                [kind[:, None] == _SPIKE, kind[:, None] == _LEVEL, kind[:, None] == _VARIANCE],
                [sign * (8.0 + 7.0 * u), sign * (4.0 + 4.0 * u), 5.0 + 5.0 * u],
                0.0,
            )
            stuck = np.flatnonzero(kind == _STUCK)
            if stuck.size:
                t = self._start_s + start[stuck] * self._interval_s
                effect[stuck] = self._clean_one(t, s) + self._sigma[s] * z[stuck]
            cols["sensor"].append(np.full(n, s))
            cols["start"].append(start)
            cols["dur"].append(dur)
            cols["kind"].append(kind)
            cols["mask"].append(mask)
            cols["effect"].append(effect)
        if not cols["sensor"]:
            empty = np.zeros(0, dtype=np.int64)
            return _Schedule(empty, empty, empty, empty, np.zeros((0, m), bool), np.zeros((0, m)))
        start = np.concatenate(cols["start"]).astype(np.int64)
        return _Schedule(
            sensor=np.concatenate(cols["sensor"]).astype(np.int64),
            start=start,
            end=start + np.concatenate(cols["dur"]).astype(np.int64),
            kind=np.concatenate(cols["kind"]).astype(np.int64),
            mask=np.concatenate(cols["mask"]),
            effect=np.concatenate(cols["effect"]).astype(np.float64),
        )

    def _readings(self, i: int, values: np.ndarray, emitted: np.ndarray) -> list[Reading]:
        """Readings of tick ``i`` from ``tick_arrays`` output (shared by tick() and the CLI)."""
        ts = self.tick_time(i)
        metrics = self.metrics
        rows = values.tolist()  # Python floats, never numpy scalars
        if emitted.all():
            return [
                Reading(s, ts, dict(zip(metrics, r, strict=True)))
                for s, r in zip(self.sensor_ids, rows, strict=True)
            ]
        return [
            Reading(s, ts, dict(zip(metrics, r, strict=True)))
            for s, r, keep in zip(self.sensor_ids, rows, emitted.tolist(), strict=True)
            if keep
        ]

    def _clean_one(self, t: np.ndarray, s: int) -> np.ndarray:
        """Noise-free signal of sensor ``s`` at epoch seconds ``t`` (n,) -> (n, M)."""
        tod = (t % _DAY_S)[:, None] * (2 * np.pi / _DAY_S)
        daily = self._daily_amp[s] * np.sin(tod + self._daily_phase[s])
        drift = self._drift_amp[s] * np.sin(t[:, None] * self._drift_omega[s]
                                            + self._drift_phase[s])
        return self._base[s] + daily + drift


# --- command line ------------------------------------------------------------------------
class _TableWriter:
    """Streams labeled ticks to parquet or CSV in chunks, so long runs stay within memory."""

    def __init__(self, path: Path, fleet: Fleet, chunk_rows: int = 250_000) -> None:
        if path.suffix.lower() not in (".parquet", ".csv"):
            raise ValueError(f"--out must end in .parquet or .csv, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fleet = fleet
        self.chunk_rows = chunk_rows
        self.rows = 0
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0
        self._parquet: Any = None
        self._csv: Any = None

    def add(self, i: int, values: np.ndarray, emitted: np.ndarray, kind: np.ndarray) -> None:
        """Buffer tick ``i``; dropped-out sensors have no row, exactly as in the stream."""
        idx = np.flatnonzero(emitted)
        self._parts.append((i, idx, values[idx], kind[idx]))
        self._pending += idx.size
        if self._pending >= self.chunk_rows:
            self._flush()

    def _frame(self) -> pl.DataFrame:
        import polars as pl

        fleet = self.fleet
        idx = np.concatenate([p[1] for p in self._parts])
        ticks = np.concatenate([np.full(p[1].size, p[0], dtype=np.int64) for p in self._parts])
        values = np.concatenate([p[2] for p in self._parts])
        kind = np.concatenate([p[3] for p in self._parts])
        start_us = (fleet.start - datetime(1970, 1, 1, tzinfo=UTC)) // _US
        ts_us = pl.Series("ts", start_us + ticks * fleet._interval_us)
        columns: dict[str, pl.Series] = {
            "sensor_id": pl.Series("sensor_id", fleet.sensor_ids).gather(idx),
            "ts": pl.from_epoch(ts_us, time_unit="us").dt.replace_time_zone("UTC"),
        }
        for j, metric in enumerate(fleet.metrics):
            columns[metric] = pl.Series(metric, values[:, j], dtype=pl.Float64)
        columns["anomaly"] = pl.Series("anomaly", (kind >= 0).astype(np.int8))
        names = pl.Series("anomaly_kind", [*ANOMALY_KINDS, None], dtype=pl.String)
        columns["anomaly_kind"] = names.gather(np.where(kind >= 0, kind, len(ANOMALY_KINDS)))
        return pl.DataFrame(columns)

    def _flush(self) -> None:
        if not self._parts:
            return
        frame = self._frame()
        self._parts, self._pending = [], 0
        self.rows += frame.height
        if self.path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._parquet.write_table(table)
        else:
            first = self._csv is None
            if first:
                self._csv = self.path.open("wb")
            frame.write_csv(
                self._csv, include_header=first, datetime_format="%Y-%m-%dT%H:%M:%S%.fZ"
            )

    def close(self) -> None:
        """Write what is buffered; an empty run still gets a file with the header/schema."""
        if self.rows == 0 and not self._parts:
            self._parts.append(
                (0, np.zeros(0, np.int64), np.zeros((0, len(self.fleet.metrics))),
                 np.zeros(0, np.int64))
            )
            self._pending = 0
            self.rows = 0
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()


class _KafkaSink:
    """Produces Readings at a paced rate, keyed by sensor_id, counting delivery failures."""

    def __init__(self, config: dict[str, str], topic: str, rate: float) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.rate = rate
        self.producer = Producer({**config, "linger.ms": 5})
        self.sent = 0
        self.failed = 0
        self.first_error: str | None = None
        # Readings per chunk: ~5 ms of the target rate, so sleeps between chunks stay short.
        self.chunk = 1000 if rate <= 0 else max(1, min(1000, int(rate / 200)))
        self._t0: float | None = None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def _pace(self) -> None:
        """Sleep until reading number ``sent`` is due; never build more than 1 s of backlog."""
        if self.rate <= 0:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now - self.sent / self.rate
        due = self._t0 + self.sent / self.rate
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0:  # the broker or the simulator fell behind: do not burst
            self._t0 = now - 1.0 - self.sent / self.rate

    def send(self, readings: Sequence[Reading]) -> None:
        """Produce ``readings`` in small paced chunks, waiting out a full local queue."""
        producer, topic = self.producer, self.topic
        for lo in range(0, len(readings), self.chunk):
            self._pace()
            for r in readings[lo : lo + self.chunk]:
                produce(producer, topic, encoder.encode(r), r.sensor_id.encode(), self._delivered)
            self.sent += min(self.chunk, len(readings) - lo)
            producer.poll(0)

    def close(self, timeout: float = 30.0) -> int:
        """Flush; return how many messages were not delivered (failed or still queued)."""
        left = self.producer.flush(timeout)
        return self.failed + left


def _parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    if not metrics or len(set(metrics)) != len(metrics):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct comma-separated names")
    return metrics


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.simulator",
        description=(
            "Simulate a deterministic fleet of sensors with labeled injected anomalies "
            f"({', '.join(ANOMALY_KINDS)}). Write it to a labeled parquet/CSV file, produce it "
            "to Kafka as JSON Readings, or both. The same arguments always give the same data."
        ),
        epilog=(
            "examples:\n"
            "  python -m flows.simulator --sensors 100 --duration 1d --out out/fleet.parquet "
            "--anomalies-out out/anomalies.json\n"
            "  python -m flows.simulator --produce --brokers localhost:9092 --rate 5000 "
            "--duration 6h\n\n"
            "File columns: sensor_id, ts (UTC), one column per metric, anomaly (0/1), "
            "anomaly_kind (null when normal).\nSensors in a dropout have no rows, as in the "
            "stream; dropouts are listed in --anomalies-out."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("fleet")
    g.add_argument("--sensors", type=int, default=20, help="number of sensors (default 20)")
    g.add_argument(
        "--metrics", type=_parse_metrics, default=DEFAULT_METRICS, metavar="A,B,C",
        help=f"comma-separated metric names (default {','.join(DEFAULT_METRICS)})",
    )
    g.add_argument("--seed", type=non_negative_int, default=7, help="random seed (default 7)")
    g.add_argument(
        "--interval", type=positive_duration, default=timedelta(seconds=10), metavar="DURATION",
        help="event-time spacing of one sensor's readings, e.g. 1s, 10s, 1m (default 10s)",
    )
    g.add_argument(
        "--anomaly-rate", type=non_negative_float, default=6.0, metavar="R",
        help="expected injected anomalies per sensor per simulated day (default 6)",
    )
    g.add_argument(
        "--start", type=utc_time, default=DEFAULT_START, metavar="ISO",
        help="event time of the first tick; no offset means UTC (default 2024-01-01T00:00:00Z)",
    )
    span = p.add_argument_group("how much").add_mutually_exclusive_group()
    span.add_argument(
        "--duration", type=positive_duration, metavar="DURATION",
        help="simulated time to generate, e.g. 1h, 2d",
    )
    span.add_argument("--ticks", type=non_negative_int, metavar="N",
                      help="number of ticks (one reading per sensor each) to generate")
    o = p.add_argument_group("file output")
    o.add_argument("--out", type=Path, metavar="FILE", help="write FILE.parquet or FILE.csv")
    o.add_argument("--anomalies-out", type=Path, metavar="FILE",
                   help="write the injected anomalies of the generated span as JSON")
    k = p.add_argument_group("Kafka output")
    k.add_argument("--produce", action="store_true", help="produce JSON Readings to Kafka")
    k.add_argument("--brokers", metavar="HOST:PORT,...",
                   help="bootstrap servers (default: VIGIL_BROKERS)")
    k.add_argument("--topic", help="topic to produce to (default: VIGIL_READINGS_TOPIC)")
    k.add_argument(
        "--rate", type=non_negative_float, default=0.0, metavar="R",
        help="readings per wall-clock second; 0 = as fast as possible (default 0)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _kafka_sink(p: argparse.ArgumentParser, args: argparse.Namespace) -> _KafkaSink:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        p.error(str(exc))
    try:
        brokers = parse_brokers(args.brokers) if args.brokers is not None else settings.brokers
    except ValueError as exc:
        p.error(f"--brokers: {exc}")
    if not brokers:
        p.error("--produce needs a broker: pass --brokers host:port or set VIGIL_BROKERS")
    config = {**settings.kafka_config(), "bootstrap.servers": ",".join(brokers)}
    return _KafkaSink(config, args.topic or settings.readings_topic, args.rate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flows.simulator``; returns the process exit status."""
    from tqdm import tqdm

    p = _parser()
    args = p.parse_args(argv)
    if args.out is None and not args.produce:
        p.error("nothing to do: pass --out FILE and/or --produce")
    if args.sensors < 1:
        p.error("--sensors must be at least 1")
    fleet = Fleet(args.sensors, args.metrics, args.seed, args.interval, args.anomaly_rate,
                  args.start)
    ticks: int | None = args.ticks
    if args.duration is not None:
        ticks = math.ceil(args.duration / fleet.interval)
    if ticks is None and (args.out is not None or args.anomalies_out is not None):
        p.error("--out and --anomalies-out need --duration or --ticks")
    writer = None
    if args.out is not None:
        try:
            writer = _TableWriter(args.out, fleet)
        except ValueError as exc:
            p.error(str(exc))
    sink = _kafka_sink(p, args) if args.produce else None

    bar = tqdm(
        total=None if ticks is None else ticks * fleet.sensors, unit="reading", unit_scale=True,
        disable=args.quiet, file=sys.stderr, dynamic_ncols=True,
    )
    done, emitted_total, t0 = 0, 0, time.perf_counter()
    try:
        while ticks is None or done < ticks:
            values, emitted, kind = fleet.tick_arrays(done)
            if writer is not None:
                writer.add(done, values, emitted, kind)
            if sink is not None:
                sink.send(fleet._readings(done, values, emitted))
            n = int(emitted.sum())
            emitted_total += n
            bar.update(n)
            done += 1
    except KeyboardInterrupt:
        bar.write(f"interrupted after {done} ticks; writing what was generated")
    finally:
        bar.total = bar.n
        bar.close()
    status = 0
    if writer is not None:
        writer.close()
    if sink is not None:
        undelivered = sink.close()
        if undelivered:
            print(
                f"error: {undelivered} of {sink.sent} readings were not delivered to "
                f"{sink.topic!r}: {sink.first_error or 'flush timed out'}",
                file=sys.stderr,
            )
            status = 1
    if args.anomalies_out is not None:
        injected = fleet.anomalies(fleet.tick_time(0), fleet.tick_time(done))
        args.anomalies_out.parent.mkdir(parents=True, exist_ok=True)
        args.anomalies_out.write_bytes(
            msgspec.json.format(msgspec.json.encode(injected), indent=2) + b"\n"
        )
    if not args.quiet:
        secs = time.perf_counter() - t0
        where = [str(x) for x in (args.out, args.anomalies_out) if x is not None]
        if sink is not None:
            where.append(f"topic {sink.topic!r}")
        print(
            f"{emitted_total} readings ({done} ticks x {fleet.sensors} sensors, "
            f"{fleet.tick_time(0).isoformat()} .. {fleet.tick_time(done).isoformat()}) in "
            f"{secs:.1f} s ({emitted_total / max(secs, 1e-9):,.0f}/s) -> {', '.join(where)}",
            file=sys.stderr,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
