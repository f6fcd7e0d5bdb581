"""LSTM autoencoder: reproducible training, ONNX parity, registry safety, scoring, CLI.

Registry and scoring-contract tests use a tiny ONNX model stored in this file, so they need
only onnxruntime; training tests skip unless the ``train`` extra (torch) is installed.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from detectors.lstm_ae import LstmAutoencoder, build_sequences, model_feature_names
from detectors.registry import (
    ACTIVE_FILE,
    METADATA_FILE,
    MODEL_FILE,
    ModelMetadata,
    ModelRegistry,
    RegistryError,
    Scaler,
    TrainingInfo,
    ValidationStats,
    encode_metadata,
)

REPO = Path(__file__).resolve().parents[1]
ANOMALY_FREE = REPO.parent / "shared" / "datasets" / "skab" / "anomaly-free" / "anomaly-free.csv"
needs_skab = pytest.mark.skipif(not ANOMALY_FREE.is_file(), reason="SKAB data absent")

SEQ, HIDDEN, EPOCHS = 10, 8, 3


# --- helpers ----------------------------------------------------------------------------------


def _metadata(seq_len: int = 4, metrics: tuple[str, ...] = ("a",)) -> ModelMetadata:
    names = model_feature_names(metrics)
    f = len(names)
    return ModelMetadata(
        version="staging",
        kind="lstm_ae",
        created_at=datetime.now(UTC),
        feature_names=names,
        metrics=list(metrics),
        window_length_ms=10_000,
        window_hop_ms=1_000,
        seq_len=seq_len,
        scaler=Scaler(mean=[0.0] * f, std=[1.0] * f),
        threshold=1.0,
        threshold_quantile=0.995,
        training_data=[],
        training=TrainingInfo(epochs=1, seed=0, hidden_size=1, lr=1e-3, batch_size=1,
                              loss_curve=[1.0]),
        validation=ValidationStats(n=1, mean=0.0, p50=0.0, p99=0.0, max=0.0),
        onnx_opset=17,
        input_name="windows",
        output_name="reconstruction",
        input_shape=[-1, seq_len, f],
    )


# ``0.5 * windows`` for input [batch, 4, 6] (opset 17), i.e. a stand-in model whose output is
# known. Serialized once with ``onnx.helper`` (Mul node, scalar initializer k=0.5) so these
# tests need only onnxruntime, not the ``train`` extra.
HALF_MODEL = base64.b64decode(
    "CAgSC3ZpZ2lsLXRlc3RzOoYBCiEKB3dpbmRvd3MKAWsSDnJlY29uc3RydWN0aW9uIgNNdWwSBXNjYWxlKgsQASIE"
    "AAAAP0IBa1oiCgd3aW5kb3dzEhcKFQgBEhEKBxIFYmF0Y2gKAggECgIIBmIpCg5yZWNvbnN0cnVjdGlvbhIXChUI"
    "ARIRCgcSBWJhdGNoCgIIBAoCCAZCBAoAEBE="
)


def _stage(tmp: Path, name: str) -> Path:
    """A folder ready for ``ModelRegistry.add``: the half model and matching metadata."""
    src = tmp / name
    src.mkdir()
    (src / MODEL_FILE).write_bytes(HALF_MODEL)
    (src / METADATA_FILE).write_bytes(encode_metadata(_metadata()))
    return src


# --- registry (no torch) ----------------------------------------------------------------------


def test_registry_activate_rollback_and_pointer(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.versions() == [] and reg.active() is None and reg.previous_active() is None
    v1 = reg.add(_stage(tmp_path, "a"))
    v2 = reg.add(_stage(tmp_path, "b"))
    v3 = reg.add(_stage(tmp_path, "c"))
    assert [v.version for v in reg.versions()] == [v1.version, v2.version, v3.version]
    assert v1.version.startswith("v0001-") and v3.version.startswith("v0003-")
    assert reg.info(v2.version).metadata.version == v2.version  # add() rewrote the id
    assert reg.active() is None  # adding does not activate
    with pytest.raises(RegistryError, match="no earlier"):
        reg.rollback()

    for v in (v1, v2, v3):
        reg.activate(v.version)
    assert (reg.root / ACTIVE_FILE).read_text().strip() == v3.version
    assert reg.active().version == v3.version
    assert reg.previous_active().version == v2.version
    assert reg.rollback().version == v2.version  # repeated rollbacks walk back ...
    assert reg.rollback().version == v1.version
    assert reg.active().version == v1.version
    with pytest.raises(RegistryError):  # ... and stop at the first
        reg.rollback()
    assert [a for _, a, _ in reg.history()] == ["activate"] * 3 + ["rollback"] * 2
    assert not list(reg.root.glob(".*.tmp")) and not list(reg.root.glob(".tmp-*"))

    new_dir = reg.new_version()
    assert new_dir.is_dir() and new_dir.name.startswith("v0004-")


def test_registry_cli_lists_activates_and_rolls_back(tmp_path: Path, capsys) -> None:
    from detectors.registry import main

    reg = ModelRegistry(tmp_path / "reg")
    v1, v2 = (reg.add(_stage(tmp_path, n)).version for n in ("a", "b"))
    root = str(reg.root)
    assert main([root, "activate", v1]) == 0
    assert main([root, "activate", v2]) == 0
    assert main([root, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in listed[-2:]] == [v1, "*"]  # * marks the active one
    assert main([root, "rollback"]) == 0 and reg.active_version() == v1
    assert main([root, "activate", "v0404-missing"]) == 2
    assert "error:" in capsys.readouterr().err and reg.active_version() == v1
    assert main([root, "history"]) == 0
    assert capsys.readouterr().out.count("activate") == 2


@pytest.mark.parametrize("corruption", ["garbage-model", "missing-field", "wrong-shape"])
def test_registry_refuses_corrupt_version_and_keeps_active(
    tmp_path: Path, corruption: str
) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    good = reg.add(_stage(tmp_path, "good"))
    reg.activate(good.version)
    bad = reg.add(_stage(tmp_path, "bad"))
    if corruption == "garbage-model":
        bad.model_path.write_bytes(b"\x00not an onnx model\xff" * 50)
    else:
        doc = msgspec.json.decode(bad.metadata_path.read_bytes())
        if corruption == "missing-field":
            del doc["scaler"]
        else:
            doc["input_shape"] = [-1, 4, 99]
        bad.metadata_path.write_bytes(msgspec.json.encode(doc))
    with pytest.raises(RegistryError, match=bad.version):
        reg.activate(bad.version)
    assert reg.active().version == good.version
    assert (reg.root / ACTIVE_FILE).read_text().strip() == good.version
    assert [v for _, _, v in reg.history()] == [good.version]
    with pytest.raises(RegistryError, match="does not exist"):
        reg.activate("v9999-nothere")


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, detectors.registry, detectors.lstm_ae; "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_score_batch_contract_without_torch(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    info = reg.activate(reg.add(_stage(tmp_path, "half")).version)
    scorer = LstmAutoencoder.from_registry(reg, batch_size=3)
    x = np.arange(7 * 4 * 6, dtype=np.float64).reshape(7, 4, 6) / 10
    x[5, 0, 2] = np.nan  # a window missing a feature: that row only is NaN
    scores, errors = scorer.score_batch(x)
    expected = (0.25 * x[:, -1, :] ** 2).astype(np.float32)  # (0.5x - x)^2, float32 model
    ok = [i for i in range(7) if i != 5]
    np.testing.assert_allclose(errors[ok], expected[ok], rtol=1e-6)
    np.testing.assert_allclose(scores[ok], expected[ok].mean(axis=1), rtol=1e-6)
    assert np.isnan(scores[5]) and np.isnan(errors[5]).all()
    assert scorer.threshold == info.metadata.threshold
    with pytest.raises(ValueError, match="shape"):
        scorer.score_batch(np.zeros((2, 3, 6)))
    row = scorer.vectorize({"a.mean": 1.0, "a.count": 9.0, "b.mean": 2.0})
    assert row[0] == 1.0 and np.isnan(row[1:]).all()
    assert build_sequences(np.zeros((3, 2)), 4).shape == (0, 4, 2)
    seqs = build_sequences(np.arange(10.0).reshape(5, 2), 3)
    assert seqs.shape == (3, 3, 2) and seqs[1, 0, 0] == 2.0 and seqs[2, -1, 1] == 9.0


# --- training (torch) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skab_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 400 rows of SKAB's anomaly-free run, as a SKAB CSV."""
    if not ANOMALY_FREE.is_file():
        pytest.skip("SKAB data absent")
    path = tmp_path_factory.mktemp("data") / "anomaly-free-400.csv"
    with ANOMALY_FREE.open() as src, path.open("w") as dst:
        for i, line in enumerate(src):
            if i > 400:
                break
            dst.write(line)
    return path


def _train(data: Path, registry: Path, seed: int = 0):  # -> detectors.train.TrainResult
    from detectors.train import TrainConfig, train

    return train(TrainConfig(inputs=[data], registry=registry, seq_len=SEQ, hidden=HIDDEN,
                             epochs=EPOCHS, seed=seed, progress=False))


@pytest.fixture(scope="module")
def trained(skab_slice: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    return _train(skab_slice, tmp_path_factory.mktemp("reg"))


@needs_skab
def test_training_is_reproducible_by_seed(trained, skab_slice: Path, tmp_path: Path) -> None:
    again = _train(skab_slice, tmp_path / "reg")
    assert again.fit.loss_curve == trained.fit.loss_curve
    assert again.fit.val_loss_curve == trained.fit.val_loss_curve
    a = LstmAutoencoder(trained.info).reconstruct(trained.holdout_x)
    b = LstmAutoencoder(again.info).reconstruct(again.holdout_x)
    np.testing.assert_array_equal(a, b)
    assert again.info.metadata.threshold == trained.info.metadata.threshold
    other = _train(skab_slice, tmp_path / "reg2", seed=1)
    assert other.fit.loss_curve != trained.fit.loss_curve


@needs_skab
def test_onnx_matches_torch(trained) -> None:
    import torch

    x = trained.holdout_x
    with torch.no_grad():
        expected = trained.fit.model(torch.from_numpy(x)).numpy()
    scorer = LstmAutoencoder(trained.info, batch_size=7)  # uneven batches
    np.testing.assert_allclose(scorer.reconstruct(x), expected, atol=1e-5)
    np.testing.assert_allclose(scorer.reconstruct(x[:1]), expected[:1], atol=1e-5)
    meta = trained.info.metadata
    assert meta.feature_names == model_feature_names(meta.metrics)
    assert not any(n.endswith(".count") for n in meta.feature_names)
    assert meta.input_shape == [-1, SEQ, len(meta.feature_names)]
    assert meta.training_data[0].rows == 400 and len(meta.training_data[0].sha256) == 64
    assert meta.training.train_sequences == len(trained.train_x) > 0
    assert meta.validation.n == len(trained.holdout_x) > 0
    assert meta.threshold == pytest.approx(np.quantile(trained.holdout_scores, 0.995))


@needs_skab
def test_level_shift_scores_above_normal(trained, skab_slice: Path, tmp_path: Path) -> None:
    from detectors.train import load_series

    meta = trained.info.metadata
    raw = pl.read_csv(skab_slice, separator=";")
    shift = 5 * raw["Current"].std()
    shifted = raw.with_columns(
        pl.when(pl.int_range(pl.len()) >= 330)
        .then(pl.col("Current") + shift)
        .otherwise(pl.col("Current"))
        .alias("Current")
    )
    path = tmp_path / "shifted.csv"
    shifted.write_csv(path, separator=";")
    spec = trained.dataset.spec
    _, _, series = load_series([path], spec, metrics=meta.metrics)
    windows = series[0].windows
    cut = len(windows) - round(0.2 * len(windows))  # the same held-out windows as training
    seqs = build_sequences(windows[cut:], SEQ)
    assert len(seqs) == len(trained.holdout_x)
    scores, errors = LstmAutoencoder(trained.info).score_batch(seqs)
    normal = trained.holdout_scores
    late = scores[-40:]  # newest window entirely after the shift
    assert late.min() > normal.max()
    assert np.all(late > normal[-40:])  # paired with the same windows unshifted
    assert late.min() > meta.threshold
    top = np.argmax(errors[-40:].mean(axis=0))
    assert meta.feature_names[top].startswith("Current.")


@needs_skab
def test_cli_help_and_end_to_end(skab_slice: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    from detectors.train import main

    out = subprocess.run(
        [sys.executable, "-m", "detectors.train", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    for flag in ("--input", "--registry", "--seq-len", "--threshold-quantile", "--activate"):
        assert flag in out
    reg_dir = tmp_path / "reg"
    rc = main([
        "--input", str(skab_slice), "--registry", str(reg_dir), "--format", "skab",
        "--window", "10s", "--hop", "1s", "--seq-len", "8", "--hidden", "4", "--epochs", "1",
        "--metrics", "Current,Pressure", "--activate", "--no-progress",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    reg = ModelRegistry(reg_dir)
    (info,) = reg.versions()
    assert reg.active().version == info.version and info.version in printed
    assert info.metadata.metrics == ["Current", "Pressure"]
    assert info.metadata.n_features == 12 and info.metadata.seq_len == 8
    assert main(["--input", str(tmp_path / "missing.csv"), "--registry", str(reg_dir)]) == 2
