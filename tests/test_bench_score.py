"""bench.score (one output row per input row, causal) and bench.accuracy on tiny corpora."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bench import accuracy, score
from bench.score import OUTPUT_COLUMNS, ScoreOptions, score_file
from flows.settings import Settings

T0 = datetime(2024, 3, 1, 0, 0, 0)


def _nab_csv(path: Path, n: int = 400, shift_at: int = 300, seed: int = 0,
             step: timedelta = timedelta(minutes=5)) -> list[str]:
    """A NAB-format file: noise around 10, a level shift of +8 from ``shift_at``."""
    rng = np.random.default_rng(seed)
    values = 10 + rng.normal(0, 0.5, n)
    values[shift_at:] += 8
    stamps = [(T0 + i * step).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]
    lines = ["timestamp,value", *(f"{t},{v:.4f}" for t, v in zip(stamps, values, strict=True))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return stamps


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, schema_overrides={"timestamp": pl.String})


def test_cli_writes_one_row_per_input_row_in_order(tmp_path: Path) -> None:
    src = tmp_path / "series.csv"
    stamps = _nab_csv(src, n=900, shift_at=700)  # HST + calibration warm up in ~310 windows
    out = tmp_path / "out.csv"
    assert score.main(["--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert out.read_text().splitlines()[0] == "timestamp,anomaly_score,alert"
    got = _read(out)
    assert got.columns == list(OUTPUT_COLUMNS)
    assert got["timestamp"].to_list() == stamps  # as written in the input, in input order
    s = got["anomaly_score"].to_numpy()
    assert np.all((s >= 0) & (s <= 1))
    assert set(got["alert"].unique().to_list()) <= {0, 1}
    assert np.all(s[:9] == 0) and np.all(got["alert"].to_numpy()[:9] == 0)  # no window yet
    # the level shift at row 700 is seen at once and alerted on (after the two-window
    # debounce), never before it happens
    alert = got["alert"].to_numpy()
    assert alert[:700].mean() < 0.02
    assert alert[700:704].max() == 1
    assert s[700] > 0.95 and s[701:704].max() > 0.998  # the onset ranks at the top
    assert alert[704:720].min() == 1  # and the alert stays open while the shift lasts


@pytest.mark.parametrize("cut", [120, 301, 350])
def test_outputs_up_to_a_row_do_not_depend_on_later_rows(tmp_path: Path, cut: int) -> None:
    full = tmp_path / "full.csv"
    _nab_csv(full, seed=1)
    lines = full.read_text().splitlines()
    changed = tmp_path / "changed.csv"
    rng = np.random.default_rng(9)
    tail = [f"{ln.split(',')[0]},{rng.normal(50, 20):.4f}" for ln in lines[1 + cut :]]
    changed.write_text("\n".join([*lines[: 1 + cut], *tail]) + "\n")
    prefix = tmp_path / "prefix.csv"
    prefix.write_text("\n".join(lines[: 1 + cut]) + "\n")
    opts = ScoreOptions(sensor_id="s")
    a = score_file(full, opts).output
    b = score_file(changed, opts).output
    c = score_file(prefix, opts).output
    assert a.head(cut).equals(b.head(cut))
    assert a.head(cut).equals(c)
    assert not a.equals(b)  # the change after the cut does show after it


def test_late_and_duplicate_rows_keep_their_place(tmp_path: Path) -> None:
    src = tmp_path / "messy.csv"
    stamps = _nab_csv(src, n=200, shift_at=150)
    lines = src.read_text().splitlines()
    # row 100 repeats row 99's time (shares its pane); row 120 steps back an hour (late)
    lines[1 + 100] = stamps[99] + "," + lines[1 + 100].split(",")[1]
    lines[1 + 120] = (T0 + timedelta(minutes=5 * 108)).strftime("%Y-%m-%d %H:%M:%S") + ",10.0"
    src.write_text("\n".join(lines) + "\n")
    res = score_file(src, ScoreOptions(sensor_id="s"))
    out = res.output
    assert out.height == 200 and res.late == 1
    assert out["timestamp"].to_list()[120] == lines[1 + 120].split(",")[0]
    assert out.row(120)[1:] == out.row(119)[1:]  # a dropped late row repeats the state
    assert out.row(100)[1:] == out.row(99)[1:]  # rows in one pane share its window
    assert res.row_record[100] == res.row_record[99]


def test_multi_sensor_simulator_parquet(tmp_path: Path) -> None:
    from flows import simulator

    src = tmp_path / "fleet.parquet"
    assert simulator.main([
        "--sensors", "3", "--ticks", "400", "--interval", "10s", "--out", str(src), "--quiet",
    ]) == 0
    inp = pl.read_parquet(src)
    res = score_file(src)
    assert res.output.height == inp.height
    assert res.output["timestamp"].to_list() == inp["ts"].to_list()
    assert res.hop == timedelta(seconds=10)
    assert {r.sensor_id for r in res.records} == set(inp["sensor_id"].unique().to_list())
    s = res.anomaly_score
    assert np.all((s >= 0) & (s <= 1)) and s.max() > 0
    # each row reports a window of its own sensor
    rec_sensor = [res.records[k].sensor_id if k >= 0 else None for k in res.row_record]
    own = [a == b for a, b in zip(rec_sensor, inp["sensor_id"].to_list(), strict=True)
           if a is not None]
    assert all(own) and len(own) > 0.9 * inp.height


def test_help_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.score", "--help"], capture_output=True, text=True,
        check=False,
    )
    assert done.returncode == 0
    assert "timestamp,anomaly_score,alert" in done.stdout and "--window-rows" in done.stdout
    assert score.main(["--input", str(tmp_path / "missing.csv"), "--output",
                       str(tmp_path / "o.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        score.main(["--input", "x.csv", "--output", "o.csv", "--detector", "nope"])


def _skab_csv(path: Path, n: int = 700, start: int = 480, end: int = 600) -> None:
    rng = np.random.default_rng(3)
    rows = ["datetime;Accelerometer1RMS;Pressure;Temperature;anomaly;changepoint"]
    for i in range(n):
        bad = start <= i < end
        t = (T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        acc = 0.2 + rng.normal(0, 0.01) + (0.3 if bad else 0.0)
        label, change = float(bad), float(i == start)
        rows.append(f"{t};{acc:.5f};{1 + rng.normal(0, 0.05):.5f};"
                    f"{70 + rng.normal(0, 0.2):.4f};{label};{change}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def test_accuracy_on_a_tiny_corpus(tmp_path: Path) -> None:
    _skab_csv(tmp_path / "skab" / "valve1" / "0.csv")
    _skab_csv(tmp_path / "skab" / "anomaly-free" / "anomaly-free.csv", start=0, end=0)
    _nab_csv(tmp_path / "nab" / "data" / "artificialWithAnomaly" / "tiny.csv", n=500,
             shift_at=400)
    (tmp_path / "nab" / "combined_windows.json").write_text(json.dumps({
        "artificialWithAnomaly/tiny.csv": [
            [(T0 + timedelta(minutes=5 * 390)).strftime("%Y-%m-%d %H:%M:%S.%f"),
             (T0 + timedelta(minutes=5 * 430)).strftime("%Y-%m-%d %H:%M:%S.%f")],
        ],
    }))
    report = tmp_path / "report"
    code = accuracy.main([
        "--skab", str(tmp_path / "skab"), "--nab", str(tmp_path / "nab"), "--out", str(report),
        "--no-progress",
    ])
    assert code == 0
    doc = json.loads((report / "accuracy.json").read_text())
    skab = doc["skab"]
    assert [f["file"] for f in skab["files"]] == ["valve1/0.csv"]  # anomaly-free not scored
    assert skab["test_rows"] == 300
    lb = skab["leaderboard"]
    assert lb["tp"] + lb["fp"] + lb["fn"] + lb["tn"] == 300
    assert lb["tp"] > 0
    nab = doc["nab"]
    assert set(nab["profiles"]) == {"standard", "reward_low_FP", "reward_low_FN"}
    assert nab["profiles"]["standard"]["detected"] == 1
    assert nab["profiles"]["standard"]["score"] > 50
    md = (report / "accuracy.md").read_text()
    assert "| Profile | Score |" in md and "Conv-AE (published)" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not doc["runtime"]["plots"]
    else:
        assert sorted(p.name for p in (report / "plots").iterdir()) == [
            "artificialWithAnomaly__tiny.png", "valve1__0.png",
        ]


def test_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_ZSCORE_THRESHOLD", "4.5")
    args = score.build_parser().parse_args(
        ["--input", "a.csv", "--output", "b.csv", "--resolve-after", "5"]
    )
    s = score.settings_from_args(args)
    assert s.zscore_threshold == 4.5 and s.alert_resolve_after == 5
    src = tmp_path / "x.csv"
    _nab_csv(src, n=120)
    res = score_file(src, ScoreOptions(window_rows=4, hop=timedelta(minutes=10)), Settings())
    assert res.settings.window_hop == timedelta(minutes=10)
    assert res.settings.window_length == timedelta(minutes=40)
    assert res.settings.allowed_lateness == timedelta(0)
