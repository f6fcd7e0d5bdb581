"""Score a recorded stream through the real dataflow: one output row per input row.

``python -m bench.score --input FILE --output OUT.csv`` reads a SKAB (``;``-separated),
NAB (``timestamp,value``) or Vigil/simulator file (CSV or Parquet; see ``flows.replay``),
plays its readings in file order through ``flows.detect.build_flow`` (a bytewax.testing
source, event time, no look-ahead) and writes ``timestamp,anomaly_score,alert``: the input's
timestamp text, a calibrated anomaly probability in [0, 1] and 0/1 for "an alert of this
sensor is open". Outside evaluation relies on exactly this interface.

How rows map to windows (why the output is causal)
--------------------------------------------------
The window hop is the file's sampling interval (median of the positive gaps between a
sensor's successive timestamps; ``--hop`` overrides) and the window is ``--window-rows``
hops long, with allowed lateness 0. So every pane (hop) normally holds one row, and a row's
pane is closed, and the window that ends with it scored, as soon as a later reading arrives
(or at the end of the file). Row *i* gets the score of the window whose last pane holds the
newest reading of its sensor seen so far, row *i* included: for an in-order row that is the
window ending with the row's own pane, for a row the flow dropped as late (lateness 0) or a
row without values, the window the previous row got. Each output therefore depends on that
row and earlier rows only, except that rows sharing one pane (duplicate or sub-hop
timestamps) share that pane's score, as they share its event time. Rows before a sensor's
first full window get ``0,0``.

``anomaly_score`` is the flow's own ``ScoreRecord.surprise``: every detector's raw score
calibrated per sensor against all its recent scores and combined into one likelihood
(``detectors.ensemble``), high at an incident's onset and fading as it persists. ``alert`` is
1 from the window at which the flow emitted an ``open`` alert for the sensor up to (not
including) the window at which it emitted the matching ``resolved`` alert: the flow's own
decision (likelihood ≥ ``VIGIL_ALERT_LIKELIHOOD`` for ``VIGIL_ALERT_OPEN_AFTER`` windows,
resolved after ``VIGIL_ALERT_RESOLVE_AFTER`` normal windows).

Settings come from ``VIGIL_*`` variables (``flows.settings``) and can be overridden by
flags; the window geometry and lateness are always set here as described above.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from flows.cli import positive_duration, positive_float, positive_int
from flows.replay import (
    FORMATS,
    Format,
    ReplayError,
    default_sensor_id,
    detect_format,
    load_frame,
    raw_time_column,
)
from flows.schemas import Alert, ScoreRecord, encoder
from flows.settings import Settings, SettingsError

__all__ = [
    "DETECTORS",
    "OUTPUT_COLUMNS",
    "ScoreOptions",
    "ScoreResult",
    "build_parser",
    "main",
    "score_file",
]

OUTPUT_COLUMNS = ("timestamp", "anomaly_score", "alert")


def _available_detectors() -> tuple[str, ...]:
    """Detector names the flow accepts (``flows.settings.DETECTOR_NAMES`` once it exists)."""
    import flows.settings

    return tuple(getattr(flows.settings, "DETECTOR_NAMES", ("zscore",)))


# Detectors the flow can run; ``--detector`` picks one (or a comma-separated list) and is
# passed as ``Settings.detectors`` (or ``Settings.detector``), whichever the flow reads.
DETECTORS: tuple[str, ...] = _available_detectors()
_FAR_FUTURE = timedelta(days=36500)  # recorded data is old: never reject it as "future"


@dataclass(frozen=True)
class ScoreOptions:
    """How to read the file, cut windows and calibrate; every field has a CLI flag."""

    fmt: Format | str = "auto"
    tz: str = "UTC"
    sensor_id: str | None = None
    window_rows: int = 10
    hop: timedelta | None = None  # None: the file's median sampling interval
    detector: str | None = None  # None: the settings' VIGIL_DETECTORS
    batch_rows: int = 5000


@dataclass
class ScoreResult:
    """Per-row output plus what an evaluation or a plot needs beside it."""

    path: Path
    fmt: Format
    output: pl.DataFrame  # exactly OUTPUT_COLUMNS, one row per input row, input order
    ts: npt.NDArray[np.datetime64]  # per row, naive UTC (NaT where the row had none)
    sensor_ids: list[str | None]
    raw_score: npt.NDArray[np.float64]  # the flow's held likelihood behind each row (0: none)
    threshold: float  # the flow's alert level on that score (VIGIL_ALERT_LIKELIHOOD)
    settings: Settings
    hop: timedelta
    records: list[ScoreRecord] = field(repr=False, default_factory=list)  # as the flow emitted
    row_record: npt.NDArray[np.int64] = field(  # per row: index into records, -1 for none
        repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    alerts: list[Alert] = field(repr=False, default_factory=list)
    late: int = 0
    dead: int = 0
    seconds: float = 0.0

    @property
    def anomaly_score(self) -> npt.NDArray[np.float64]:
        return self.output["anomaly_score"].to_numpy()

    @property
    def alert(self) -> npt.NDArray[np.int8]:
        return self.output["alert"].to_numpy()

    def summary(self) -> str:
        """One line for a person: what went in, what came out, how long it took."""
        opened = sum(a.status == "open" for a in self.alerts)
        return (
            f"{self.path.name}: {self.output.height} rows, {len(self.records)} windows "
            f"(hop {self.hop.total_seconds():g}s), {opened} alerts, {self.late} late rows, "
            f"{self.seconds:.2f}s"
        )


# --- reading the file ---------------------------------------------------------------------------


def _sampling_interval(ts_ms: npt.NDArray[np.int64], groups: npt.NDArray[np.int64]) -> int:
    """Median of the positive gaps between a sensor's successive readings, in ms."""
    gaps: list[npt.NDArray[np.int64]] = []
    for g in np.unique(groups):
        t = ts_ms[groups == g]
        d = np.diff(t)
        gaps.append(d[d > 0])
    pos = np.concatenate(gaps) if gaps else np.zeros(0, dtype=np.int64)
    if pos.size == 0:
        raise ReplayError("cannot tell the sampling interval (fewer than two distinct times); "
                          "pass --hop")
    return max(1, round(float(np.median(pos))))


def _settings(base: Settings, hop_ms: int, window_rows: int, detector: str | None) -> Settings:
    changes: dict[str, Any] = {
        "window_hop": timedelta(milliseconds=hop_ms),
        "window_length": timedelta(milliseconds=hop_ms * window_rows),
        "allowed_lateness": timedelta(0),
        "max_future": _FAR_FUTURE,
    }
    if detector is not None:
        changes["detectors"] = detector
    settings = dataclasses.replace(base, **changes)
    settings.validate()
    return settings


# --- running the flow ---------------------------------------------------------------------------


@dataclass
class _Collected:
    scores: list[ScoreRecord] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)


def _run_flow(settings: Settings, records: list[bytes], batch_rows: int) -> _Collected:
    """The real dataflow over ``records`` (JSON readings) in order, outputs collected."""
    import bytewax.operators as op
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.decode import RawBatch
    from flows.detect import FlowStreams, build_flow

    got = _Collected()

    def outputs(s: FlowStreams) -> None:
        op.output("bench_scores", s.scores, TestingSink(got.scores))
        op.output("bench_alerts", s.alerts, TestingSink(got.alerts))
        op.output("bench_dead", s.dead_letters, TestingSink(got.dead))

    batches = [
        RawBatch("bench", 0, list(range(i, min(i + batch_rows, len(records)))),
                 list(records[i : i + batch_rows]))
        for i in range(0, len(records), batch_rows)
    ]
    run_main(build_flow(settings, TestingSource(batches), outputs))
    return got


def _ms(dt: Any) -> int:
    return round(dt.timestamp() * 1000)


def _by_sensor(records: Sequence[ScoreRecord]) -> dict[str, list[int]]:
    """Indices of each sensor's records, in window order (the flow emits them so per sensor)."""
    out: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        out[r.sensor_id].append(k)
    for ks in out.values():
        ks.sort(key=lambda k: records[k].window_end)
    return out


def _alert_states(
    records: Sequence[ScoreRecord], alerts: Sequence[Alert], resolve_after: int
) -> npt.NDArray[np.int8]:
    """Per record: 1 while the flow has an alert open for the record's sensor.

    An ``open`` alert is emitted by the window it starts with (``alert.end`` is that
    window's end). ``resolved`` is emitted by the ``resolve_after``-th normal window after
    the incident's last anomalous window (``alert.end``), which is where the state drops.
    """
    state = np.zeros(len(records), dtype=np.int8)
    alerts_of: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        alerts_of[a.sensor_id].append(a)
    for sid, ks in _by_sensor(records).items():
        index = {_ms(records[k].window_end): i for i, k in enumerate(ks)}
        diff = np.zeros(len(ks) + 1, dtype=np.int32)
        for a in alerts_of.get(sid, []):
            i = index.get(_ms(a.end))
            if i is None:
                raise RuntimeError(f"alert {a.alert_id} ends at {a.end}, which no window does")
            if a.status == "open":
                diff[i] += 1
                continue
            j = i + resolve_after
            if j >= len(ks) or any(records[k].anomalous for k in ks[i + 1 : j + 1]):
                raise RuntimeError(f"resolved alert {a.alert_id} does not match the scores")
            diff[j] -= 1
        state[ks] = np.cumsum(diff[:-1]) > 0
    return state


def _row_records(
    records: Sequence[ScoreRecord],
    group: npt.NDArray[np.int64],
    codes: dict[str, int],
    t_ms: npt.NDArray[np.int64],
    used: npt.NDArray[np.bool_],
    hop_ms: int,
) -> npt.NDArray[np.int64]:
    """Per input row, the index of the record it reports (module docstring), or -1.

    A row reports the newest window of its sensor that ends by the end of the pane holding
    the sensor's newest reading so far (this row included when the flow used it).
    """
    ends_of: dict[int, tuple[list[int], list[int]]] = {}
    for sid, ks in _by_sensor(records).items():
        if sid in codes:
            ends_of[codes[sid]] = ([_ms(records[k].window_end) for k in ks], ks)
    out = np.full(group.size, -1, dtype=np.int64)
    newest: dict[int, int] = {}  # sensor -> newest timestamp (ms) among its used rows so far
    for i in range(group.size):
        g = int(group[i])
        if g < 0:
            continue
        if used[i]:
            prev = newest.get(g)
            t = int(t_ms[i])
            if prev is None or t > prev:
                newest[g] = t
        m = newest.get(g)
        found = ends_of.get(g)
        if m is None or found is None:
            continue
        ends, ks = found
        j = bisect.bisect_right(ends, (m // hop_ms + 1) * hop_ms) - 1
        if j >= 0:
            out[i] = ks[j]
    return out


def _readings(
    frame: pl.DataFrame, sensor_ids: list[str | None], ts_ms: list[int | None]
) -> tuple[list[bytes], npt.NDArray[np.bool_]]:
    """JSON readings of every usable row (time, sensor and at least one value) in order."""
    metrics = [c for c in frame.columns if c not in ("ts", "sensor_id")]
    cols = [frame[m].to_list() for m in metrics]
    out: list[bytes] = []
    used = np.zeros(frame.height, dtype=bool)
    enc = encoder.encode
    for i, (sid, t, *vals) in enumerate(zip(sensor_ids, ts_ms, *cols, strict=True)):
        if sid is None or t is None:
            continue
        values = {m: v for m, v in zip(metrics, vals, strict=True) if v is not None}
        if not values:
            continue
        out.append(enc({"sensor_id": sid, "ts": t, "values": values}))
        used[i] = True
    return out, used


def _check_detectors(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in DETECTORS]
    if bad or not names:
        raise ValueError(
            f"unknown detector {text!r}; choose one or more of {', '.join(DETECTORS)}"
        )
    return ",".join(names)


def _detector_arg(text: str) -> str:
    try:
        return _check_detectors(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def score_file(
    path: str | Path, options: ScoreOptions | None = None, settings: Settings | None = None
) -> ScoreResult:
    """Score every row of ``path`` through the real flow (module docstring for the rules).

    ``settings`` defaults to ``Settings.from_env()``; its window geometry, lateness and
    future limit are replaced as the module docstring says.
    """
    opts = options or ScoreOptions()
    if opts.detector is not None:
        _check_detectors(opts.detector)
    t0 = time.perf_counter()
    path = Path(path)
    fmt: Format = detect_format(path) if opts.fmt == "auto" else opts.fmt  # type: ignore[assignment]
    if fmt not in FORMATS:
        raise ReplayError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    frame = load_frame(path, fmt, opts.tz)
    raw_times = raw_time_column(path, fmt)
    if raw_times.len() != frame.height:
        raise ReplayError(f"{path}: read {raw_times.len()} timestamps for {frame.height} rows")
    fixed = opts.sensor_id or default_sensor_id(path, fmt)
    if fixed is not None:
        sensor_ids: list[str | None] = [fixed] * frame.height
    else:
        sensor_ids = [s or None for s in frame["sensor_id"].to_list()]
    ts_us = frame["ts"].dt.epoch("us")
    ts_ms: list[int | None] = [None if v is None else round(v / 1000) for v in ts_us.to_list()]

    # sensors as small ints, for per-sensor numpy work; -1 where a row has no sensor id
    codes: dict[str, int] = {}
    group = np.array(
        [-1 if s is None else codes.setdefault(s, len(codes)) for s in sensor_ids], dtype=np.int64
    )
    has_t = np.array([t is not None for t in ts_ms], dtype=bool)
    t_arr = np.array([0 if t is None else t for t in ts_ms], dtype=np.int64)
    ok = has_t & (group >= 0)
    hop_ms = (
        max(1, round(opts.hop.total_seconds() * 1000)) if opts.hop is not None
        else _sampling_interval(t_arr[ok], group[ok])
    )
    cfg = _settings(settings or Settings.from_env(), hop_ms, opts.window_rows, opts.detector)

    records, used = _readings(frame, sensor_ids, ts_ms)
    got = _run_flow(cfg, records, opts.batch_rows) if records else _Collected()

    row_record = _row_records(got.scores, group, codes, t_arr, used, hop_ms)
    state = _alert_states(got.scores, got.alerts, cfg.alert_resolve_after)
    has = row_record >= 0
    pick = np.where(has, row_record, 0)
    if got.scores:
        raw = np.where(has, np.array([r.score for r in got.scores])[pick], 0.0)
        score = np.where(has, np.array([r.surprise for r in got.scores])[pick], 0.0)
        alert = np.where(has, state[pick], 0).astype(np.int8)
    else:
        score, raw, alert = (np.zeros(frame.height), np.zeros(frame.height),
                             np.zeros(frame.height, dtype=np.int8))

    output = pl.DataFrame({
        "timestamp": raw_times,
        "anomaly_score": np.clip(score, 0.0, 1.0),
        "alert": alert,
    })
    late = sum(1 for d in got.dead if d.reason == "late")
    ts = frame["ts"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    threshold = got.scores[0].threshold if got.scores else cfg.alert_likelihood
    return ScoreResult(
        path=path, fmt=fmt, output=output, ts=ts, sensor_ids=sensor_ids, raw_score=raw,
        threshold=threshold, settings=cfg, hop=timedelta(milliseconds=hop_ms),
        records=got.scores, row_record=row_record, alerts=got.alerts, late=late,
        dead=len(got.dead), seconds=time.perf_counter() - t0,
    )


def write_output(result: ScoreResult, path: str | Path) -> None:
    """Write ``timestamp,anomaly_score,alert`` (header exactly so) to ``path``."""
    result.output.select(OUTPUT_COLUMNS).write_csv(path)


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bench.score`` command line."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.score",
        description=(
            "Score a SKAB, NAB or Vigil CSV/Parquet file through the real Vigil dataflow "
            "(event time, no look-ahead) and write one row per input row, in input order: "
            "timestamp,anomaly_score,alert. anomaly_score is the flow's combined anomaly "
            "likelihood in [0, 1]; alert is 1 while the flow has an alert open for the "
            "row's sensor. Other settings are read from VIGIL_* variables (see "
            "docs/configuration.md); the flags below override them."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--input", required=True, type=Path, metavar="FILE",
                    help="CSV or Parquet file to score")
    ap.add_argument("--output", required=True, type=Path, metavar="OUT.csv",
                    help="where to write timestamp,anomaly_score,alert")
    ap.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                    help="input format; auto judges it from the header")
    ap.add_argument("--tz", default="UTC", help="IANA time zone of naive timestamps")
    ap.add_argument("--sensor-id", metavar="ID",
                    help="sensor id for SKAB/NAB files (default: derived from the path)")
    w = ap.add_argument_group("windows")
    w.add_argument("--hop", type=positive_duration, metavar="DURATION",
                   help="window hop, e.g. 1s or 5m (default: the file's median sampling "
                        "interval)")
    w.add_argument("--window-rows", type=positive_int, default=10, metavar="N",
                   help="window length in hops")
    d = ap.add_argument_group("detector and alerts (override VIGIL_*)")
    d.add_argument("--detector", type=_detector_arg, metavar="NAME[,NAME]",
                   help=f"detector(s) that score the windows: {', '.join(DETECTORS)} "
                        "(default: VIGIL_DETECTORS; lstm_ae needs a model trained for the "
                        "file's windows in VIGIL_MODEL_REGISTRY, else it is left out)")
    d.add_argument("--threshold", type=positive_float, metavar="L",
                   help="combined likelihood that makes a window anomalous "
                        "(VIGIL_ALERT_LIKELIHOOD)")
    d.add_argument("--open-after", type=positive_int, metavar="N",
                   help="anomalous windows before an alert opens (VIGIL_ALERT_OPEN_AFTER)")
    d.add_argument("--resolve-after", type=positive_int, metavar="N",
                   help="normal windows that resolve an alert (VIGIL_ALERT_RESOLVE_AFTER)")
    d.add_argument("--seed", type=int, metavar="N", help="HST forest seed (VIGIL_HST_SEED)")
    c = ap.add_argument_group("calibration (detectors/calibration.py)")
    c.add_argument("--calib-history", type=positive_int, metavar="N",
                   help="raw scores of history per sensor (VIGIL_CALIBRATION_HISTORY)")
    c.add_argument("--calib-short", type=positive_int, metavar="K",
                   help="newest raw scores averaged into the short-term mean "
                        "(VIGIL_CALIBRATION_SHORT)")
    c.add_argument("--calib-warmup", type=positive_int, metavar="N",
                   help="raw scores a sensor needs before it is calibrated "
                        "(VIGIL_CALIBRATION_WARMUP)")
    ap.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    return ap


def options_from_args(args: argparse.Namespace) -> ScoreOptions:
    """ScoreOptions from parsed flags."""
    return ScoreOptions(
        fmt=args.format, tz=args.tz, sensor_id=args.sensor_id, window_rows=args.window_rows,
        hop=args.hop, detector=args.detector,
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``VIGIL_*`` settings with the detector/alert flags applied (validated)."""
    settings = Settings.from_env()
    changes = {
        name: value
        for name, value in (
            ("alert_likelihood", args.threshold),
            ("alert_open_after", args.open_after),
            ("alert_resolve_after", args.resolve_after),
            ("hst_seed", args.seed),
            ("calibration_history", args.calib_history),
            ("calibration_short", args.calib_short),
            ("calibration_warmup", args.calib_warmup),
        )
        if value is not None
    }
    settings = dataclasses.replace(settings, **changes)
    settings.validate()
    return settings


def quiet_flow_logs() -> None:
    """Only warnings on stderr: not the flow's INFO lines (its import-time demo set-up, one
    line per alert), which would bury this command's own output. flows.detect installs its
    log handler at import (done here first), so only the level changes."""
    os.environ.setdefault("VIGIL_LOG_LEVEL", "WARNING")  # for that import-time set-up
    import flows.detect  # noqa: F401  (its import configures logging; it must come first)

    logging.getLogger().setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Score one file; exit 0, or 2 on bad input or settings."""
    args = build_parser().parse_args(argv)
    quiet_flow_logs()
    try:
        settings = settings_from_args(args)
        opts = options_from_args(args)
        result = score_file(args.input, opts, settings)
        write_output(result, args.output)
    except (SettingsError, ReplayError, ValueError, OSError, pl.exceptions.PolarsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
