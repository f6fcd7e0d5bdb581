"""bench.accuracy --train-lstm-on-probation: a per-file LSTM-AE from the probationary rows only.

Training tests skip unless the ``train`` extra (torch) is installed, as in test_lstm_ae.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bench import accuracy
from bench.metrics import probation_length
from bench.probation import head_csv

T0 = datetime(2024, 3, 1)
ROWS, SHIFT = 1500, 1300  # probation 225 rows: 216 windows of 10 rows


def _nab_csv(path: Path, n: int, shift_at: int = 10**9, seed: int = 0) -> list[str]:
    """A NAB-format file every 5 minutes: noise around 10, a level shift of +8 from
    ``shift_at``."""
    rng = np.random.default_rng(seed)
    values = 10 + rng.normal(0, 0.5, n)
    values[shift_at:] += 8
    stamps = [(T0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["timestamp,value", *(f"{t},{v:.4f}" for t, v in
                                                   zip(stamps, values, strict=True))]) + "\n")
    return stamps


def _corpus(root: Path, seed: int = 0) -> Path:
    """A one-file NAB folder: noise, a level shift labeled at ``SHIFT``."""
    _nab_csv(root / "data" / "artificialWithAnomaly" / "tiny.csv", n=ROWS, shift_at=SHIFT,
             seed=seed)
    (root / "combined_windows.json").write_text(json.dumps({
        "artificialWithAnomaly/tiny.csv": [
            [(T0 + timedelta(minutes=5 * (SHIFT - 20))).strftime("%Y-%m-%d %H:%M:%S.%f"),
             (T0 + timedelta(minutes=5 * (SHIFT + 40))).strftime("%Y-%m-%d %H:%M:%S.%f")],
        ],
    }))
    return root


def _run(nab: Path, out: Path, *extra: str) -> dict:
    code = accuracy.main(["--nab", str(nab), "--only", "nab", "--out", str(out), "--no-plots",
                          "--no-progress", "--train-lstm-on-probation", "--lstm-epochs", "2",
                          "--lstm-seq-len", "10", "--lstm-hidden", "8", *extra])
    assert code == 0
    return json.loads((out / "accuracy.json").read_text())


def test_head_csv_keeps_the_header_and_first_rows(tmp_path: Path) -> None:
    src = tmp_path / "s.csv"
    stamps = _nab_csv(src, n=50)
    head = head_csv(src, 20, tmp_path / "head.csv")
    lines = head.read_text().splitlines()
    assert lines[0] == "timestamp,value" and len(lines) == 21
    assert lines[-1].startswith(stamps[19] + ",")


def test_needs_lstm_ae_among_the_detectors(tmp_path: Path, capsys) -> None:
    nab = _corpus(tmp_path / "nab")
    code = accuracy.main(["--nab", str(nab), "--only", "nab", "--out", str(tmp_path / "r"),
                          "--no-plots", "--no-progress", "--train-lstm-on-probation",
                          "--detector", "seasonal"])
    assert code == 2
    assert "needs lstm_ae" in capsys.readouterr().err


def test_trains_on_probation_only_and_scores_with_the_model(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    doc = _run(_corpus(tmp_path / "nab"), tmp_path / "r", "--detector", "lstm_ae")
    (f,) = doc["nab"]["files"]
    lstm = f["lstm_probation"]
    assert lstm["rows"] == probation_length(ROWS)
    assert lstm["hop_s"] == 300
    assert lstm["windows_scored"] > ROWS - probation_length(ROWS)  # the flow used the model
    assert doc["config"]["lstm_on_probation"]["epochs"] == 2
    assert doc["nab"]["profiles"]["standard"]["detected"] == 1  # the level shift
    # Causal: other values after the probationary period train the very same model.
    other = tmp_path / "nab2"
    _corpus(other)
    path = other / "data" / "artificialWithAnomaly" / "tiny.csv"
    lines = path.read_text().splitlines()
    cut = probation_length(ROWS) + 1  # header + probationary rows
    lines[cut:] = [f"{line.split(',')[0]},99.0" for line in lines[cut:]]
    path.write_text("\n".join(lines) + "\n")
    again = _run(other, tmp_path / "r2", "--detector", "lstm_ae")["nab"]["files"][0]
    assert again["lstm_probation"]["final_loss"] == lstm["final_loss"]
    assert again["lstm_probation"]["final_val_loss"] == lstm["final_val_loss"]
