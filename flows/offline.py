"""Offline features for training and evaluation, computed by the flow's own code.

polars reads the history (CSV or Parquet) and shapes the result; the windows themselves are
computed by ``flows.stages.FeatureStage``, the very class the streaming operator runs, fed in
file order. So training and serving see identical features by construction, and a test holds
the two paths to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl

from flows.schemas import Reading
from flows.stages import FeatureStage
from flows.windows import FEATURES, WindowSpec


def readings_from_frame(
    df: pl.DataFrame, metrics: Sequence[str], sensor_col: str = "sensor_id", ts_col: str = "ts"
) -> Iterable[Reading]:
    """Rows as Readings (nulls dropped per metric; rows with no value skipped)."""
    if df.schema[ts_col] == pl.Datetime or isinstance(df.schema[ts_col], pl.Datetime):
        ts = df[ts_col].dt.epoch("ms")
    else:
        ts = df[ts_col]
    cols = [df[m].cast(pl.Float64).to_list() for m in metrics]
    for sid, t, *vals in zip(df[sensor_col].to_list(), ts.to_list(), *cols, strict=True):
        values = {m: v for m, v in zip(metrics, vals, strict=True) if v is not None}
        if values:
            yield Reading(sid, int(t), values)


def compute_features(
    df: pl.DataFrame,
    spec: WindowSpec,
    metrics: Sequence[str] | None = None,
    sensor_col: str = "sensor_id",
    ts_col: str = "ts",
    batch_rows: int = 10_000,
) -> pl.DataFrame:
    """Windowed features of every sensor in ``df``, one row per (sensor, window).

    Columns: sensor_id, start, end (UTC datetimes), readings, then ``metric.feature`` for each
    metric in ``metrics`` (default: every numeric column) and each of ``FEATURES``. Rows are
    processed in the frame's order, exactly as a topic partition would deliver them; late
    rows are dropped as the flow would dead-letter them.
    """
    if metrics is None:
        metrics = [
            c for c, t in df.schema.items()
            if c not in (sensor_col, ts_col) and t.is_numeric()
        ]
    stage = FeatureStage(spec)
    rows: list[tuple[str, int, int, int, dict[str, float]]] = []
    batch: list[Reading] = []

    def drain(windows: Iterable) -> None:
        for sid, w in windows:
            rows.append((sid, w.start_ms, w.end_ms, w.readings, w.features))

    for reading in readings_from_frame(df, metrics, sensor_col, ts_col):
        batch.append(reading)
        if len(batch) >= batch_rows:
            drain(stage.process([batch]).windows)
            batch = []
    drain(stage.process([batch]).windows)
    drain(stage.flush().windows)
    names = [f"{m}.{f}" for m in metrics for f in FEATURES]
    data: dict[str, list] = {
        "sensor_id": [r[0] for r in rows],
        "start": [r[1] for r in rows],
        "end": [r[2] for r in rows],
        "readings": [r[3] for r in rows],
    }
    for name in names:
        data[name] = [r[4].get(name) for r in rows]
    schema = {"sensor_id": pl.String, "start": pl.Int64, "end": pl.Int64, "readings": pl.Int64}
    schema |= {n: pl.Float64 for n in names}
    out = pl.DataFrame(data, schema=schema)
    return out.with_columns(
        pl.from_epoch("start", time_unit="ms").dt.replace_time_zone("UTC"),
        pl.from_epoch("end", time_unit="ms").dt.replace_time_zone("UTC"),
    )
