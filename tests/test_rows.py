"""``detectors._rows.SensorRows``: the per-sensor tables detectors and calibrators keep."""

from __future__ import annotations

import numpy as np

from detectors._rows import SensorRows

SPEC = {"count": ((), np.int64, 0), "ring": ((3,), np.float32, np.nan)}


def _filled(ids: list[str]) -> SensorRows:
    rows = SensorRows(SPEC)
    r = rows.rows(ids)
    rows["count"][r] = np.arange(1, len(ids) + 1)
    rows["ring"][r] = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    return rows


def test_restoring_a_live_snapshot_copies_it_so_two_objects_never_share_state():
    src = _filled(["a", "b", "c"])
    ids, tables = src.snapshot()  # views of src's tables
    dst = SensorRows(SPEC)
    dst.restore(ids, tables)
    dst["count"][0] = 99
    assert src["count"][0] == 1
    assert dst.rows(["c"]).tolist() == [2] and dst["ring"][2].tolist() == [6, 7, 8]


def test_adopting_takes_the_arrays_over_and_new_sensors_still_get_fresh_rows():
    ids = ["a", "b"]
    tables = {"count": np.array([5, 6], np.int64),
              "ring": np.ones((2, 3), np.float32)}
    rows = SensorRows(SPEC)
    rows.restore(ids, tables, adopt=True)
    assert rows["count"] is tables["count"]  # no copy
    new = rows.rows(["z"])[0]
    assert new == 2 and rows["count"][new] == 0 and np.isnan(rows["ring"][new]).all()
    assert rows["count"][:2].tolist() == [5, 6] and rows.get("b") == 1


def test_adopting_an_array_of_another_type_or_shape_copies_it_instead():
    tables = {"count": np.array([5, 6], np.int32),  # not the table's int64
              "ring": np.ones((2, 3), np.float32)[:, ::-1]}  # not contiguous
    rows = SensorRows(SPEC)
    rows.restore(["a", "b"], tables, adopt=True)
    assert rows["count"].dtype == np.int64 and rows["count"] is not tables["count"]
    assert rows["ring"].flags.c_contiguous and rows["ring"] is not tables["ring"]
    assert rows["count"].tolist() == [5, 6]
