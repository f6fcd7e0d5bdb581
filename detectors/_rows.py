"""Per-sensor state as rows of shared numpy tables, not one small object per sensor.

Why: a detector or calibrator that keeps one Python object (with its own little arrays) per
sensor pays Python-level work per sensor on every batch (gathering rings with ``np.stack``,
updating each object) and a pickle entry per sensor in every snapshot. With one table per
kind of state, a batch is gathered and updated with a few fancy-indexing calls, and a
snapshot is a handful of contiguous arrays whatever the sensor count.

``SensorRows`` maps sensor ids to row numbers of its tables, grows the tables by doubling,
and reuses the rows of forgotten sensors. Its snapshot holds only rows in use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureSets", "SensorRows"]


class SensorRows:
    """Sensor id → row of every table in ``tables`` (name → (row shape, dtype, fill)).

    ``fill`` is what a new row holds: a scalar, or one value per column of a 1-D row.
    """

    def __init__(self, tables: dict[str, tuple[tuple[int, ...], Any, Any]]) -> None:
        self.specs = dict(tables)
        self.index: dict[str, int] = {}
        self.free: list[int] = []
        self.size = 0  # rows handed out so far (high-water mark)
        self.tables: dict[str, np.ndarray] = {
            name: np.full((0, *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in self.specs.items()
        }

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tables[name]

    def get(self, sensor_id: str) -> int | None:
        """The sensor's row, or None if it has none."""
        return self.index.get(sensor_id)

    def rows(self, sensor_ids: Sequence[str]) -> npt.NDArray[np.intp]:
        """Rows of these sensors, new (filled) rows for sensors not seen before."""
        index = self.index
        out = np.empty(len(sensor_ids), dtype=np.intp)
        for j, sid in enumerate(sensor_ids):
            row = index.get(sid)
            out[j] = self._new(sid) if row is None else row
        return out

    def known(self, sensor_ids: Sequence[str]) -> npt.NDArray[np.intp]:
        """Rows of these sensors, -1 for sensors without one (nothing is allocated)."""
        index = self.index
        return np.fromiter(
            (index.get(s, -1) for s in sensor_ids), dtype=np.intp, count=len(sensor_ids)
        )

    def _new(self, sensor_id: str) -> int:
        if self.free:
            row = self.free.pop()
        else:
            if self.size == len(next(iter(self.tables.values()))):
                self._grow(max(16, 2 * self.size))
            row = self.size
            self.size += 1
        self.index[sensor_id] = row
        return row

    def _grow(self, capacity: int) -> None:
        for name, (shape, dtype, fill) in self.specs.items():
            old = self.tables[name]
            grown = np.full((capacity, *shape), fill, dtype=dtype)
            grown[: len(old)] = old
            self.tables[name] = grown

    def refill(self, rows: npt.NDArray[np.intp] | slice) -> None:
        """Make rows as new, keeping their sensors (e.g. a detector re-baselining them)."""
        for name, (_, _, fill) in self.specs.items():
            self.tables[name][rows] = fill

    def drop(self, sensor_id: str) -> None:
        """Forget a sensor; its row is refilled and reused by the next new sensor."""
        row = self.index.pop(sensor_id, None)
        if row is not None:
            self.refill(np.array([row]))
            self.free.append(row)

    def clear(self) -> None:
        """Forget every sensor (the tables keep their capacity)."""
        self.refill(slice(0, self.size))
        self.index.clear()
        self.free.clear()
        self.size = 0

    def snapshot(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """Sensor ids and, per table, their rows in that order.

        Where the rows are 0..n-1 in id order (no sensor forgotten: the common case) the
        tables are views, not copies, so pickling them copies the state once instead of
        twice; pickle them before the tables change.
        """
        ids = list(self.index)
        n = len(ids)
        rows = np.fromiter(self.index.values(), dtype=np.intp, count=n)
        if n and rows[0] == 0 and rows[-1] == n - 1 and (np.diff(rows) == 1).all():
            return ids, {name: table[:n] for name, table in self.tables.items()}
        return ids, {name: table[rows] for name, table in self.tables.items()}

    def restore(self, ids: list[str], tables: dict[str, np.ndarray], adopt: bool = False) -> None:
        """Replace everything with ``snapshot()`` output (rows renumbered 0..n-1).

        ``adopt=True`` takes the arrays over as the tables instead of copying them, for a
        caller that built them for this and keeps no reference (a restore then writes the
        state once, not twice: at 100,000 sensors each pass is ~0.5 GiB).
        """
        self.clear()
        n = len(ids)
        if n > len(next(iter(self.tables.values()))):
            for name, (shape, dtype, _) in self.specs.items():
                given = tables[name]
                if adopt and given.dtype == dtype and given.shape == (n, *shape) \
                        and given.flags.c_contiguous and given.flags.writeable:
                    self.tables[name] = given
                else:  # every row is overwritten below: no fill pass first
                    self.tables[name] = np.empty((n, *shape), dtype=dtype)
        for name in self.specs:
            if self.tables[name] is not tables[name]:
                self.tables[name][:n] = tables[name]
        self.index = dict(zip(ids, range(n), strict=True))
        self.size = n


TableSpec = dict[str, tuple[tuple[int, ...], Any, Any]]


class FeatureSets:
    """One ``SensorRows`` per feature set, and which set each sensor belongs to.

    For detectors whose per-sensor state depends on a sensor's features (a sensor with four
    metrics needs rows four wide): sensors with the same features share one set of tables,
    so a group of them is scored with one vectorised call. ``select(features)`` names the
    features a sensor is judged on, from its first window; ``spec(keys)`` gives the tables
    for a feature set. Their snapshot is a list of ``(keys, sensor ids, tables)``.
    """

    def __init__(
        self,
        spec: Callable[[tuple[str, ...]], TableSpec],
        select: Callable[[Mapping[str, float]], tuple[str, ...]],
    ) -> None:
        self.spec = spec
        self.select = select
        self.groups: dict[tuple[str, ...], SensorRows] = {}
        self.keys: dict[str, tuple[str, ...]] = {}

    def table(self, keys: tuple[str, ...]) -> SensorRows:
        """The tables of feature set ``keys`` (made on first use)."""
        table = self.groups.get(keys)
        if table is None:
            table = self.groups[keys] = SensorRows(self.spec(keys))
        return table

    def keys_of(self, sensor_id: str, features: Mapping[str, float]) -> tuple[str, ...]:
        """The sensor's feature set: chosen from its first window, then kept."""
        keys = self.keys.get(sensor_id)
        if keys is None:
            keys = self.keys[sensor_id] = self.select(features)
        return keys

    def snapshot(self) -> list[tuple[tuple[str, ...], list[str], dict[str, np.ndarray]]]:
        """Every feature set's keys, sensor ids and table rows."""
        return [(keys, *table.snapshot()) for keys, table in self.groups.items()]

    def restore(
        self,
        groups: Sequence[tuple[Sequence[str], list[str], dict[str, np.ndarray]]],
        keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Replace everything with ``snapshot()`` output; ``keys`` adds sensors that belong
        to no table (e.g. a feature set a detector has no opinion on)."""
        self.groups, self.keys = {}, dict(keys or {})
        for set_keys, ids, tables in groups:
            set_keys = tuple(set_keys)
            self.table(set_keys).restore(ids, tables)
            self.keys.update(dict.fromkeys(ids, set_keys))

    def forget(self, sensor_id: str) -> None:
        """Drop a sensor (its row is reused by the next new sensor of its set)."""
        keys = self.keys.pop(sensor_id, None)
        if keys is not None:
            table = self.groups.get(keys)
            if table is not None:
                table.drop(sensor_id)
