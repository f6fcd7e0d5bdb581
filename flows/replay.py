"""Replay recorded sensor data (CSV or Parquet) into the readings topic.

Real labeled streams are how Vigil is evaluated and demonstrated, so this turns a SKAB or
NAB benchmark file, or a file the simulator wrote, into ``Reading`` records on Kafka, as
fast as possible or paced at a multiple of real time.

Reading the file and building readings (``detect_format``, ``load_frame``, ``plan_replay``,
``iter_readings``) is plain, Kafka-free code so it can be unit-tested; only ``produce`` and
``main`` talk to a broker. Rows are replayed in file order, never re-sorted, so a file with
out-of-order or late readings exercises the flow exactly as it is.

Formats (``--format auto`` picks one from the header):

* ``skab``: ``;``-separated, ``datetime;<metrics...>;anomaly;changepoint``. Metrics are all
  columns except ``datetime``, ``anomaly`` and ``changepoint``.
* ``nab``: ``timestamp,value``; the metric is ``value``.
* ``vigil`` (the simulator's output): ``sensor_id,ts,<metrics...>`` with optional label
  columns ``anomaly`` and ``anomaly_kind``, which are ignored. ``ts`` may be RFC 3339 text,
  naive text, or epoch milliseconds.

Naive timestamps are read in ``--tz`` (default UTC). Run ``python -m flows.replay --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from flows.cli import non_negative_float, positive_int, utc_time
from flows.produce import produce as produce_one
from flows.schemas import Reading, encoder
from flows.settings import Settings, SettingsError, parse_brokers

Format = Literal["skab", "nab", "vigil"]
FORMATS: tuple[Format, ...] = ("skab", "nab", "vigil")

# Columns that are labels or time in each format, never metrics.
_NON_METRICS: dict[Format, frozenset[str]] = {
    "skab": frozenset({"datetime", "anomaly", "changepoint"}),
    "nab": frozenset({"timestamp", "label", "anomaly"}),
    "vigil": frozenset({"sensor_id", "ts", "anomaly", "anomaly_kind"}),
}
_TIME_COLUMN: dict[Format, str] = {"skab": "datetime", "nab": "timestamp", "vigil": "ts"}
_MAX_METRICS = 500  # Reading.values accepts at most this many
PRODUCER_LINGER_MS = 5


class ReplayError(ValueError):
    """The input cannot be replayed as asked; the message says what to change."""


# --- reading files ----------------------------------------------------------------------------


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _csv_separator(header: str) -> str:
    """SKAB uses ``;``; everything else here uses ``,``. Decided from the header line."""
    return ";" if header.count(";") > header.count(",") else ","


def _header(path: Path) -> tuple[list[str], str | None]:
    """Column names and (for CSV) the separator, without reading the data."""
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    if _is_parquet(path):
        return list(pl.read_parquet_schema(path)), None
    with path.open(encoding="utf-8-sig", newline="") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise ReplayError(f"{path}: file is empty")
    sep = _csv_separator(line)
    return [c.strip().strip('"') for c in line.split(sep)], sep


def _format_of_columns(columns: Sequence[str]) -> Format | None:
    cols = set(columns)
    if {"sensor_id", "ts"} <= cols:
        return "vigil"
    if "datetime" in cols:
        return "skab"
    if {"timestamp", "value"} <= cols:
        return "nab"
    return None


def detect_format(path: str | Path) -> Format:
    """The format of ``path`` judged from its column names (see the module docstring)."""
    path = Path(path)
    columns, _ = _header(path)
    fmt = _format_of_columns(columns)
    if fmt is None:
        raise ReplayError(
            f"{path}: cannot tell the format from columns {columns[:8]}; expected SKAB "
            "(datetime;...;anomaly;changepoint), NAB (timestamp,value) or Vigil "
            "(sensor_id,ts,...). Pass --format to say which."
        )
    return fmt


def _zone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReplayError(
            f"--tz {tz!r} is not an IANA time zone such as UTC or Europe/Moscow"
        ) from None
    return tz


def _parse_times(col: pl.Series, tz: str) -> pl.Series:
    """Any timestamp column as ``datetime[us, UTC]``; null stays null.

    Text with an offset is converted; naive text and naive datetimes are read in ``tz``
    (an ambiguous wall time at a DST change takes the earlier instant, a non-existent one
    becomes null and its row is skipped). Integers are epoch milliseconds.
    """
    name = col.name
    if col.dtype == pl.String:
        try:
            col = col.str.strip_chars().str.to_datetime(time_unit="us")
        except pl.exceptions.PolarsError:
            col = _parse_times_slowly(col)
    elif col.dtype.is_integer() or col.dtype.is_float():
        col = pl.from_epoch(col.cast(pl.Int64), time_unit="ms")
    elif col.dtype == pl.Date:
        col = col.cast(pl.Datetime("us"))
    elif not isinstance(col.dtype, pl.Datetime):
        raise ReplayError(f"column {name!r} has type {col.dtype}, not a timestamp")
    dtype = col.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        col = col.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us").alias(name)


def _parse_times_slowly(col: pl.Series) -> pl.Series:
    """Per-value ISO parsing for columns polars cannot parse in one format (mixed offsets)."""
    out: list[datetime | None] = []
    for i, text in enumerate(col.to_list()):
        if text is None or not text.strip():
            out.append(None)
            continue
        try:
            ts = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ReplayError(
                f"column {col.name!r}, data row {i + 1}: {text!r} is not a timestamp "
                "(expected e.g. 2024-05-01T12:00:00Z or 2024-05-01 12:00:00)"
            ) from None
        out.append(ts)
    aware = {v.tzinfo is not None for v in out if v is not None}
    if len(aware) > 1:
        raise ReplayError(f"column {col.name!r} mixes naive and offset timestamps")
    if aware == {True}:
        utc = [v.astimezone(UTC) if v is not None else None for v in out]
        return pl.Series(col.name, utc, dtype=pl.Datetime("us", "UTC"))
    return pl.Series(col.name, out, dtype=pl.Datetime("us"))


def load_frame(
    path: str | Path, fmt: Format | Literal["auto"] = "auto", tz: str = "UTC"
) -> pl.DataFrame:
    """Read ``path`` into a normalised frame: ``ts`` (UTC), ``sensor_id`` (vigil), metrics.

    Metric columns are Float64 in file order, with missing and non-finite values as null;
    label columns are dropped. Rows are neither dropped nor reordered here.
    """
    path = Path(path)
    columns, sep = _header(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise ReplayError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    time_col = _TIME_COLUMN[fmt]
    needed = (
        {time_col}
        | ({"sensor_id"} if fmt == "vigil" else set())
        | ({"value"} if fmt == "nab" else set())
    )
    missing = sorted(needed - set(columns))
    if missing:
        raise ReplayError(f"{path}: not a {fmt} file, missing column(s) {missing}; has {columns}")
    metrics = ["value"] if fmt == "nab" else [c for c in columns if c not in _NON_METRICS[fmt]]
    if not metrics:
        raise ReplayError(f"{path}: no metric columns besides {sorted(_NON_METRICS[fmt])}")
    if len(metrics) > _MAX_METRICS:
        raise ReplayError(f"{path}: {len(metrics)} metric columns; a reading holds at most 500")

    if sep is None:
        raw = pl.read_parquet(path)
    else:
        raw = pl.read_csv(
            path,
            separator=sep,
            schema_overrides={
                time_col: pl.String,
                **({"sensor_id": pl.String} if fmt == "vigil" else {}),
            },
            infer_schema_length=10_000,
            encoding="utf8-lossy",
        )
        raw = raw.rename({c: c.strip().strip('"') for c in raw.columns})
        if raw[time_col].dtype == pl.String and raw[time_col].str.contains(r"^\s*\d+\s*$").all():
            raw = raw.with_columns(pl.col(time_col).str.strip_chars().cast(pl.Int64))

    out: list[pl.Series] = [_parse_times(raw[time_col], _zone(tz)).alias("ts")]
    if fmt == "vigil":
        out.append(raw["sensor_id"].cast(pl.String))
    for name in metrics:
        try:
            values = raw[name].cast(pl.Float64, strict=True)
        except pl.exceptions.PolarsError:
            raise ReplayError(
                f"{path}: column {name!r} holds values that are not numbers"
            ) from None
        out.append(
            values.to_frame().select(
                pl.when(pl.col(name).is_finite()).then(pl.col(name)).alias(name)
            )[name]
        )
    return pl.DataFrame(out)


def raw_time_column(path: str | Path, fmt: Format) -> pl.Series:
    """The time column exactly as written in the file (text for CSV), for the output."""
    path = Path(path)
    col = _TIME_COLUMN[fmt]
    if _is_parquet(path):
        return pl.read_parquet(path, columns=[col])[col]
    _, sep = _header(path)
    raw = pl.read_csv(
        path, separator=sep or ",", infer_schema=False, encoding="utf8-lossy"
    )
    raw = raw.rename({c: c.strip().strip('"') for c in raw.columns})
    return raw[col]


def default_sensor_id(path: str | Path, fmt: Format) -> str | None:
    """``skab-valve1-0`` / ``nab-realKnownCause-nyc_taxi`` from the path; None for vigil."""
    if fmt == "vigil":
        return None
    p = Path(path).resolve()
    stem = p.stem
    parent = p.parent.name
    return f"{fmt}-{parent}-{stem}" if parent else f"{fmt}-{stem}"


@dataclass
class ReplayPlan:
    """One file ready to replay: its normalised rows and why any rows were left out."""

    path: Path
    fmt: Format
    sensor_id: str | None  # None: each row's ``sensor_id`` column (vigil format)
    frame: pl.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def metrics(self) -> list[str]:
        """The metric columns, in file order."""
        return [c for c in self.frame.columns if c not in ("ts", "sensor_id")]

    def __len__(self) -> int:
        return self.frame.height

    @property
    def sensors(self) -> list[str]:
        """The sensor ids this plan produces, sorted."""
        if self.sensor_id is not None:
            return [self.sensor_id]
        return sorted(self.frame["sensor_id"].unique().to_list())

    def readings(self) -> Iterator[Reading]:
        """Readings in file order; a metric missing in a row is left out of that reading."""
        metrics = self.metrics
        fixed = self.sensor_id
        has_sid = "sensor_id" in self.frame.columns
        for row in self.frame.iter_rows():
            ts = row[0]
            sid = fixed if fixed is not None else row[1]
            start = 2 if has_sid else 1
            values = {m: v for m, v in zip(metrics, row[start:], strict=True) if v is not None}
            yield Reading(sensor_id=sid, ts=ts, values=values)


def plan_replay(
    path: str | Path,
    fmt: Format | Literal["auto"] = "auto",
    sensor_id: str | None = None,
    tz: str = "UTC",
    limit: int | None = None,
    shift_to: datetime | None = None,
) -> ReplayPlan:
    """Load ``path`` and decide exactly which readings a replay of it sends.

    Rows without a timestamp, without any metric value, or (vigil) without a sensor id are
    skipped and counted by reason. ``limit`` keeps the first N remaining rows. ``shift_to``
    moves every timestamp by one offset so the latest reading lands on that instant.
    """
    path = Path(path)
    resolved: Format = detect_format(path) if fmt == "auto" else fmt
    frame = load_frame(path, resolved, tz)
    sid = sensor_id or default_sensor_id(path, resolved)
    if sid is not None:
        frame = frame.drop("sensor_id", strict=False)
    metrics = [c for c in frame.columns if c not in ("ts", "sensor_id")]
    skipped: Counter[str] = Counter()
    reasons = [("no timestamp", pl.col("ts").is_null())]
    if sid is None:
        reasons.append(
            ("no sensor_id", pl.col("sensor_id").is_null() | (pl.col("sensor_id") == ""))
        )
    reasons.append(("no values", pl.all_horizontal(pl.col(m).is_null() for m in metrics)))
    for reason, bad in reasons:
        n = frame.select(bad.sum()).item()
        if n:
            skipped[reason] = int(n)
            frame = frame.filter(~bad)
    if limit is not None:
        frame = frame.head(limit)
    _check_names(path, frame, sid, metrics)
    if shift_to is not None and frame.height:
        offset = shift_to.astimezone(UTC) - frame["ts"].max()  # type: ignore[operator]
        frame = frame.with_columns(pl.col("ts") + offset)
    return ReplayPlan(path=path, fmt=resolved, sensor_id=sid, frame=frame, skipped=skipped)


def _check_names(path: Path, frame: pl.DataFrame, sid: str | None, metrics: list[str]) -> None:
    """Refuse ids and metric names the wire schema rejects, rather than dead-letter them all."""
    long_metrics = [m for m in metrics if len(m) > 100]
    if long_metrics:
        raise ReplayError(f"{path}: metric names over 100 characters: {long_metrics[:3]}")
    ids = [sid] if sid is not None else frame["sensor_id"].unique().to_list()
    too_long = [i for i in ids if len(i) > 200]
    if too_long:
        raise ReplayError(f"{path}: sensor ids over 200 characters: {too_long[0][:60]}...")


def iter_readings(
    path: str | Path,
    fmt: Format | Literal["auto"] = "auto",
    sensor_id: str | None = None,
    tz: str = "UTC",
) -> Iterator[Reading]:
    """Every reading a replay of ``path`` would send, in file order (skipped rows left out)."""
    return plan_replay(path, fmt, sensor_id, tz).readings()


def encode_reading(reading: Reading) -> bytes:
    """The wire bytes of a reading: JSON with ``ts`` as RFC 3339 UTC (``...Z``)."""
    return encoder.encode(reading)


# --- pacing -----------------------------------------------------------------------------------


class Pacer:
    """Holds readings back so event time advances ``speed`` times faster than wall time.

    The schedule is absolute (reading ``i`` is due ``(ts_i - ts_0) / speed`` after the first
    one was sent), so small sleep overshoots do not add up over a long replay. A reading
    stamped earlier than one already sent is due at once. ``speed`` 0 means no pacing.
    """

    def __init__(
        self,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError("speed must be 0 (as fast as possible) or a positive number")
        self.speed = speed
        self._clock = clock
        self._wait = wait
        self._origin: tuple[float, datetime] | None = None

    def delay(self, ts: datetime) -> float:
        """Seconds to wait before sending a reading stamped ``ts`` (0 when it is due)."""
        if self.speed == 0:
            return 0.0
        now = self._clock()
        if self._origin is None:
            self._origin = (now, ts)
            return 0.0
        wall0, ts0 = self._origin
        due = wall0 + (ts - ts0).total_seconds() / self.speed
        return max(0.0, due - now)

    def pace(self, ts: datetime, wait: Callable[[float], object] | None = None) -> None:
        """Wait until a reading stamped ``ts`` is due, in chunks of at most half a second.

        ``wait`` replaces the sleep for this call; the producer passes its ``poll`` so that
        delivery reports are served during long gaps.
        """
        wait = wait or self._wait
        while (d := self.delay(ts)) > 0:
            wait(min(d, 0.5))


# --- Kafka ------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What one file's replay did, for the summary line."""

    plan: ReplayPlan
    produced: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """A human-readable summary of the replay of one file."""
        p = self.plan
        sid = p.sensor_id or f"{len(p.sensors)} sensors from the sensor_id column"
        rate = self.produced / self.elapsed_s if self.elapsed_s > 0 else float("inf")
        span = (
            f"{_iso(self.first_ts)} .. {_iso(self.last_ts)}"
            if self.first_ts and self.last_ts
            else "-"
        )
        lines = [
            f"file:      {p.path} ({p.fmt})",
            f"sensor id: {sid}",
            f"produced:  {self.produced} readings",
            f"event ts:  {span}",
            f"elapsed:   {self.elapsed_s:.2f}s ({rate:,.0f} readings/s)",
        ]
        if p.skipped:
            why = ", ".join(f"{r}: {n}" for r, n in sorted(p.skipped.items()))
            lines.append(f"skipped:   {sum(p.skipped.values())} rows ({why})")
        return "\n".join(lines)


def _iso(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class DeliveryFailed(RuntimeError):
    """The broker did not accept some readings."""


class _Deliveries:
    """Counts delivery reports; keeps the first few errors for the message."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []

    def __call__(self, err: object, msg: object) -> None:
        if err is None:
            self.ok += 1
            return
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(str(err))


def make_producer(config: dict[str, str]) -> Producer:
    """A producer for readings: the shared Kafka settings plus a short linger for batching."""
    return Producer({**config, "linger.ms": PRODUCER_LINGER_MS})


def check_topic(producer: Producer, topic: str, timeout: float = 10.0) -> None:
    """Fail fast when the broker is unreachable or the topic is missing.

    Without this a missing topic surfaces only when delivery times out, minutes later.
    """
    try:
        md = producer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise DeliveryFailed(f"cannot reach the brokers: {exc.args[0]}") from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        raise DeliveryFailed(
            f"topic {topic!r} does not exist; create it first "
            "(python -m bench.broker creates Vigil's topics on a local test broker)"
        )


def produce(
    producer: Producer,
    topic: str,
    plan: ReplayPlan,
    pacer: Pacer,
    progress: Callable[[int], object] | None = None,
    flush_timeout: float = 60.0,
) -> ReplayResult:
    """Send every reading of ``plan`` (key = sensor id) and wait until the broker has them.

    Raises DeliveryFailed if any reading was rejected or not acknowledged in time.
    """
    reports = _Deliveries()
    result = ReplayResult(plan=plan)
    started = time.monotonic()
    pending_progress = 0
    try:
        for reading in plan.readings():
            ts = reading.ts
            assert isinstance(ts, datetime)
            pacer.pace(ts, producer.poll)
            value = encode_reading(reading)
            produce_one(producer, topic, value, reading.sensor_id, reports)
            producer.poll(0)
            if result.first_ts is None:
                result.first_ts = ts
            result.last_ts = ts
            result.produced += 1
            pending_progress += 1
            if progress is not None and (pending_progress >= 256 or pacer.speed):
                progress(pending_progress)
                pending_progress = 0
    finally:
        if progress is not None and pending_progress:
            progress(pending_progress)
        left = producer.flush(flush_timeout)
        result.elapsed_s = time.monotonic() - started
    if reports.failed or left:
        problems = []
        if reports.failed:
            problems.append(f"{reports.failed} rejected ({'; '.join(reports.errors)})")
        if left:
            problems.append(f"{left} not acknowledged within {flush_timeout:g}s")
        raise DeliveryFailed(
            f"{plan.path}: {result.produced} readings sent to {topic!r} but "
            + " and ".join(problems)
        )
    return result


# --- command line -----------------------------------------------------------------------------


def _parse_shift(text: str, tz: str) -> datetime:
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        return utc_time(text, ZoneInfo(tz))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--shift-to {text!r}: expected 'now' or a timestamp like 2024-05-01T12:00:00Z"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flows.replay`` argument parser."""
    ap = argparse.ArgumentParser(
        prog="python -m flows.replay",
        description="Replay CSV/Parquet sensor data (SKAB, NAB or Vigil/simulator files) into "
        "the readings topic. Brokers and topic default to VIGIL_BROKERS and "
        "VIGIL_READINGS_TOPIC.",
    )
    ap.add_argument("files", nargs="+", type=Path, metavar="FILE", help="CSV or Parquet files")
    ap.add_argument(
        "--format",
        choices=("auto", *FORMATS),
        default="auto",
        help="input format (default: detect from the header)",
    )
    ap.add_argument(
        "--sensor-id",
        help="sensor id for every reading (default: from the path for SKAB/NAB, e.g. "
        "skab-valve1-0; the sensor_id column for Vigil files)",
    )
    ap.add_argument(
        "--speed",
        type=non_negative_float,
        default=0.0,
        metavar="X",
        help="replay at X times real time (event-time gaps divided by X); 0 = as fast as "
        "possible (default)",
    )
    ap.add_argument("--brokers", help="bootstrap servers host:port,... (default: VIGIL_BROKERS)")
    ap.add_argument("--topic", help="topic to produce to (default: VIGIL_READINGS_TOPIC)")
    ap.add_argument(
        "--limit", type=positive_int, metavar="N", help="send at most N readings of each file"
    )
    ap.add_argument(
        "--shift-to",
        metavar="END|now",
        help="shift all timestamps of a file so its latest reading is at END (RFC 3339) or now",
    )
    ap.add_argument(
        "--tz",
        default="UTC",
        help="IANA time zone of naive timestamps in the files (default: UTC)",
    )
    ap.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Replay each file in turn; exit 0, 1 on delivery/broker errors, 2 on bad input."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.brokers is not None:
            settings = dataclasses.replace(settings, brokers=parse_brokers(args.brokers))
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.brokers:
        print("error: no brokers; pass --brokers or set VIGIL_BROKERS", file=sys.stderr)
        return 2
    topic = args.topic or settings.readings_topic
    try:
        tz = _zone(args.tz)
        shift = _parse_shift(args.shift_to, tz) if args.shift_to else None
        plans = [
            plan_replay(f, args.format, args.sensor_id, tz, args.limit, shift) for f in args.files
        ]
    except (ReplayError, argparse.ArgumentTypeError, OSError, pl.exceptions.PolarsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    producer = make_producer(settings.kafka_config())
    try:
        check_topic(producer, topic)
        for plan in plans:
            with tqdm(
                total=len(plan),
                desc=plan.path.name,
                unit=" readings",
                disable=True if args.no_progress else None,
                file=sys.stderr,
            ) as bar:
                result = produce(producer, topic, plan, Pacer(args.speed), progress=bar.update)
            print(result.summary(), flush=True)
    except DeliveryFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; readings already handed to the producer were flushed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
