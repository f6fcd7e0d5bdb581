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

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SensorRows"]


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
        """Sensor ids and, per table, their rows in that order (copies)."""
        ids = list(self.index)
        rows = np.fromiter(self.index.values(), dtype=np.intp, count=len(ids))
        return ids, {name: table[rows] for name, table in self.tables.items()}

    def restore(self, ids: list[str], tables: dict[str, np.ndarray]) -> None:
        """Replace everything with ``snapshot()`` output (rows renumbered 0..n-1)."""
        self.clear()
        n = len(ids)
        if n > len(next(iter(self.tables.values()))):
            self._grow(n)
        for name in self.specs:
            self.tables[name][:n] = tables[name]
        self.index = dict(zip(ids, range(n), strict=True))
        self.size = n
