"""A model registry on disk: versioned ONNX models, one active at a time, with rollback.

Layout (``root`` is any folder)::

    <root>/<version>/model.onnx      the model (input ``[-1, seq_len, n_features]``)
    <root>/<version>/metadata.json   a ``ModelMetadata`` (features, scaler, threshold, ...)
    <root>/ACTIVE                    the active version id, one line
    <root>/ACTIVE.history            append-only log: ``<utc time>\\t<action>\\t<version>``

Contract
--------
* Version ids are ``v0001-<8 hex>``: a sequence number (so ids sort by age) and the first
  8 hex digits of the model's sha256 (so an id says which bytes it names). A version folder
  appears in one ``os.replace`` of a fully written temporary folder, and is never changed.
* ``ACTIVE`` is the single source of truth for what serves. It is written atomically (temp
  file, fsync, ``os.replace``), and only after ``check()`` has proved the version loads:
  the metadata parses and is self-consistent, ``model.onnx`` opens in onnxruntime, and one
  run on zeros of the declared input shape gives finite output of the declared shape. A
  failed check raises ``RegistryError`` and leaves ``ACTIVE`` untouched.
* ``ACTIVE.history`` is replayed as a stack (activate pushes, rollback pops), so repeated
  ``rollback()`` calls walk back through earlier versions instead of toggling between two.
  ``ACTIVE`` is written before the log line, so a crash in between loses at most one
  history entry, never the active pointer.
* Writers take an ``flock`` on ``<root>/.lock``; readers take no lock.

Pure Python plus onnxruntime and msgspec: nothing here imports torch, so the online flow can
import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import onnxruntime as ort

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "ACTIVE.history"
_LOCK_FILE = ".lock"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEQ_RE = re.compile(r"^v(\d+)-")


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says which version and why."""


# --- metadata schema --------------------------------------------------------------------------


class Scaler(msgspec.Struct, forbid_unknown_fields=True):
    """Z-score parameters per model feature, fitted on the training windows only."""

    mean: list[float]
    std: list[float]


class TrainingFile(msgspec.Struct):
    """One input file of the training run, pinned by content hash."""

    path: str
    sha256: str
    rows: int


class TrainingInfo(msgspec.Struct):
    """How the model was trained, enough to rerun it and to judge convergence."""

    epochs: int
    seed: int
    hidden_size: int
    lr: float
    batch_size: int
    loss_curve: list[float]  # mean training loss per epoch (scaled units)
    val_loss_curve: list[float] = []  # mean held-out loss per epoch
    train_sequences: int = 0
    holdout_sequences: int = 0
    holdout_fraction: float = 0.0
    seconds: float = 0.0
    torch_version: str = ""


class ValidationStats(msgspec.Struct):
    """Anomaly scores (last-step MSE, scaled units) on held-out normal sequences."""

    n: int
    mean: float
    p50: float
    p99: float
    max: float
    per_feature_mean: list[float] = []  # mean squared error per feature, for contributions


class ModelMetadata(msgspec.Struct):
    """Everything needed to serve a model the way it was trained, and to audit it.

    Inputs to the model are ``[batch, seq_len, n_features]`` float32, z-scored with
    ``scaler``, features in ``feature_names`` order (``metric.feature`` as the flow's windows
    name them). The anomaly score is the mean squared reconstruction error of the last time
    step; ``threshold`` is on that score.
    """

    version: str
    kind: Literal["lstm_ae"]
    created_at: datetime
    feature_names: list[str]
    metrics: list[str]
    window_length_ms: int
    window_hop_ms: int
    seq_len: int
    scaler: Scaler
    threshold: float
    threshold_quantile: float
    training_data: list[TrainingFile]
    training: TrainingInfo
    validation: ValidationStats
    onnx_opset: int
    input_name: str
    output_name: str
    input_shape: list[int]
    window_lateness_ms: int = 0
    format_version: int = 1

    @property
    def n_features(self) -> int:
        """Width of one window's feature vector."""
        return len(self.feature_names)

    def problems(self) -> list[str]:
        """Inconsistencies msgspec's types cannot express; empty when the metadata is sound."""
        out: list[str] = []
        f = len(self.feature_names)
        if f == 0:
            out.append("feature_names is empty")
        if len(set(self.feature_names)) != f:
            out.append("feature_names has duplicates")
        if len(self.scaler.mean) != f or len(self.scaler.std) != f:
            out.append(
                f"scaler has {len(self.scaler.mean)} means / {len(self.scaler.std)} stds "
                f"for {f} features"
            )
        if not all(math.isfinite(m) for m in self.scaler.mean):
            out.append("scaler.mean has non-finite values")
        if not all(math.isfinite(s) and s > 0 for s in self.scaler.std):
            out.append("scaler.std must be finite and positive")
        if self.seq_len < 1:
            out.append(f"seq_len {self.seq_len} < 1")
        if self.input_shape != [-1, self.seq_len, f]:
            out.append(f"input_shape {self.input_shape} is not [-1, {self.seq_len}, {f}]")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            out.append(f"threshold {self.threshold} is not a finite non-negative number")
        if not 0 < self.threshold_quantile <= 1:
            out.append(f"threshold_quantile {self.threshold_quantile} is not in (0, 1]")
        if self.window_hop_ms <= 0 or self.window_length_ms % max(self.window_hop_ms, 1):
            out.append("window length must be a positive whole multiple of the hop")
        if self.created_at.tzinfo is None:
            out.append("created_at has no time zone")
        return out


_decoder = msgspec.json.Decoder(ModelMetadata)
_encoder = msgspec.json.Encoder()


def encode_metadata(meta: ModelMetadata) -> bytes:
    """Metadata as indented JSON (people read these files)."""
    return msgspec.json.format(_encoder.encode(meta), indent=2) + b"\n"


def decode_metadata(data: bytes, where: str = "metadata") -> ModelMetadata:
    """Parse and validate metadata bytes; RegistryError on any problem."""
    try:
        meta = _decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise RegistryError(f"{where}: invalid metadata: {exc}") from None
    problems = meta.problems()
    if problems:
        raise RegistryError(f"{where}: inconsistent metadata: {'; '.join(problems)}")
    return meta


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One registered version: where it lives and what its metadata says."""

    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def model_path(self) -> Path:
        """The ONNX file of this version."""
        return self.path / MODEL_FILE

    @property
    def metadata_path(self) -> Path:
        """The metadata JSON of this version."""
        return self.path / METADATA_FILE


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (training inputs may be large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_session(info: ModelInfo, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``info`` with one intra-op thread by default.

    One thread, because the flow runs one scorer per worker process and parallelism comes
    from workers; a thread pool per session would oversubscribe the cores.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(info.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def _fsync_dir(path: Path) -> None:
    """Persist a rename in ``path`` (best effort; some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, and ``os.replace`` it in."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class ModelRegistry:
    """Versions of ONNX models under ``root``; see the module docstring for the contract."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------------
    def _version_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise RegistryError(f"{version!r} is not a valid version id")
        return self.root / version

    def info(self, version: str) -> ModelInfo:
        """Metadata of ``version`` (parsed and validated; the model itself is not opened)."""
        path = self._version_dir(version)
        meta_path = path / METADATA_FILE
        if not path.is_dir():
            raise RegistryError(f"version {version!r} does not exist in {self.root}")
        try:
            data = meta_path.read_bytes()
        except OSError as exc:
            raise RegistryError(
                f"version {version!r}: cannot read {METADATA_FILE}: {exc}"
            ) from None
        meta = decode_metadata(data, f"version {version!r}")
        if meta.version != version:
            raise RegistryError(
                f"version {version!r}: metadata names version {meta.version!r}"
            )
        return ModelInfo(version, path, meta)

    def versions(self) -> list[ModelInfo]:
        """Every version whose metadata is valid, oldest first (by created_at, then id).

        Folders with unreadable metadata are left out here; ``check()`` says what is wrong.
        """
        if not self.root.is_dir():
            return []
        out: list[ModelInfo] = []
        for p in self.root.iterdir():
            if not p.is_dir() or p.name.startswith(".") or not _VERSION_RE.match(p.name):
                continue
            try:
                out.append(self.info(p.name))
            except RegistryError:
                continue
        out.sort(key=lambda i: (i.metadata.created_at, i.version))
        return out

    def active_version(self) -> str | None:
        """The id in ``ACTIVE``, or None if nothing was ever activated."""
        try:
            text = (self.root / ACTIVE_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def active(self) -> ModelInfo | None:
        """The active version's info, or None if nothing is active.

        RegistryError if ``ACTIVE`` names a version whose folder or metadata is gone or bad.
        """
        version = self.active_version()
        return None if version is None else self.info(version)

    def history(self) -> list[tuple[datetime, str, str]]:
        """The activation log as (time, action, version), oldest first."""
        try:
            lines = (self.root / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[tuple[datetime, str, str]] = []
        for line in lines:
            parts = line.split("\t")
            if len(parts) != 3:
                continue  # a torn last line after a crash
            try:
                out.append((datetime.fromisoformat(parts[0]), parts[1], parts[2]))
            except ValueError:
                continue
        return out

    def _stack(self) -> list[str]:
        """Replay the history: activate pushes, rollback pops back to its target."""
        stack: list[str] = []
        for _, action, version in self.history():
            if action == "activate":
                if not stack or stack[-1] != version:
                    stack.append(version)
            elif action == "rollback":
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
        return stack

    def _previous_id(self) -> str | None:
        current = self.active_version()
        stack = self._stack()
        while stack and stack[-1] == current:
            stack.pop()
        return stack[-1] if stack else None

    def previous_active(self) -> ModelInfo | None:
        """The version that ``rollback()`` would activate, or None if there is none."""
        version = self._previous_id()
        return None if version is None else self.info(version)

    # -- validation --------------------------------------------------------------------------
    def check(self, version: str) -> ModelInfo:
        """Prove ``version`` can serve: metadata valid, model opens and runs on zeros.

        Raises RegistryError naming the version and the first problem found.
        """
        info = self.info(version)
        meta = info.metadata
        if not info.model_path.is_file():
            raise RegistryError(f"version {version!r}: {MODEL_FILE} is missing")
        try:
            sess = load_session(info)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise RegistryError(
                f"version {version!r}: onnxruntime cannot load {MODEL_FILE}: {exc}"
            ) from None
        inputs = [i.name for i in sess.get_inputs()]
        outputs = [o.name for o in sess.get_outputs()]
        if inputs != [meta.input_name]:
            raise RegistryError(
                f"version {version!r}: model inputs {inputs}, metadata says {meta.input_name!r}"
            )
        if meta.output_name not in outputs:
            raise RegistryError(
                f"version {version!r}: model outputs {outputs}, metadata says "
                f"{meta.output_name!r}"
            )
        shape = [1 if d < 0 else d for d in meta.input_shape]
        try:
            (out,) = sess.run([meta.output_name], {meta.input_name: np.zeros(shape, np.float32)})
        except Exception as exc:
            raise RegistryError(
                f"version {version!r}: model does not run on zeros of shape {shape}: {exc}"
            ) from None
        if list(out.shape) != shape:
            raise RegistryError(
                f"version {version!r}: output shape {list(out.shape)}, expected {shape}"
            )
        if not np.all(np.isfinite(out)):
            raise RegistryError(f"version {version!r}: output on zeros is not finite")
        return info

    # -- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / _LOCK_FILE).open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _next_seq(self) -> int:
        seqs = [0]
        if self.root.is_dir():
            for p in self.root.iterdir():
                m = _SEQ_RE.match(p.name)
                if m and p.is_dir():
                    seqs.append(int(m.group(1)))
        return max(seqs) + 1

    def new_version(self, name: str | None = None) -> Path:
        """Create and return an empty version folder ``v0001-<random 8 hex>`` (or ``name``).

        For callers that write files in place; ``add()`` is the atomic alternative and names
        the version after the model's hash.
        """
        with self._locked():
            if name is not None:
                path = self._version_dir(name)
            else:
                path = self.root / f"v{self._next_seq():04d}-{secrets.token_hex(4)}"
            try:
                path.mkdir()
            except FileExistsError:
                raise RegistryError(f"version {path.name!r} already exists") from None
            return path

    def add(self, src: str | Path, name: str | None = None) -> ModelInfo:
        """Register a folder holding ``model.onnx`` and ``metadata.json``; returns the new version.

        The files are copied (``src`` is left as it is), the metadata's ``version`` is set to
        the new id, and the version folder appears atomically. It is not activated.
        """
        src = Path(src)
        model = src / MODEL_FILE
        if not model.is_file():
            raise RegistryError(f"{src}: no {MODEL_FILE}")
        try:
            raw = (src / METADATA_FILE).read_bytes()
        except OSError as exc:
            raise RegistryError(f"{src}: cannot read {METADATA_FILE}: {exc}") from None
        meta = decode_metadata(raw, str(src))
        digest = sha256_file(model)[:8]
        with self._locked():
            version = name if name is not None else f"v{self._next_seq():04d}-{digest}"
            final = self._version_dir(version)
            if final.exists():
                raise RegistryError(f"version {version!r} already exists")
            tmp = self.root / f".tmp-{version}-{secrets.token_hex(4)}"
            try:
                tmp.mkdir()
                shutil.copyfile(model, tmp / MODEL_FILE)
                meta = msgspec.structs.replace(meta, version=version)
                _write_atomic(tmp / METADATA_FILE, encode_metadata(meta))
                with (tmp / MODEL_FILE).open("rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(self.root)
        return ModelInfo(version, final, meta)

    def _log(self, action: str, version: str) -> None:
        stamp = datetime.now(UTC).isoformat()
        with (self.root / HISTORY_FILE).open("a", encoding="utf-8") as f:
            f.write(f"{stamp}\t{action}\t{version}\n")
            f.flush()
            os.fsync(f.fileno())

    def activate(self, version: str) -> ModelInfo:
        """Check ``version`` (see ``check``) and make it the active one.

        On any problem RegistryError is raised and ``ACTIVE`` is left as it was.
        """
        info = self.check(version)
        with self._locked():
            _write_atomic(self.root / ACTIVE_FILE, f"{version}\n".encode())
            self._log("activate", version)
        return info

    def rollback(self) -> ModelInfo:
        """Re-activate the version that was active before the current one.

        Repeated calls walk further back. RegistryError if there is no earlier version or it
        no longer passes ``check`` (``ACTIVE`` then stays as it was).
        """
        target = self._previous_id()
        if target is None:
            raise RegistryError(f"{self.root}: no earlier active version to roll back to")
        info = self.check(target)
        with self._locked():
            _write_atomic(self.root / ACTIVE_FILE, f"{target}\n".encode())
            self._log("rollback", target)
        return info


def main(argv: list[str] | None = None) -> int:
    """``python -m detectors.registry``: list, check, activate and roll back model versions."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m detectors.registry",
        description="Inspect and switch the model versions of a Vigil model registry. A "
        "running flow picks up the new ACTIVE version within VIGIL_MODEL_RELOAD_INTERVAL.",
    )
    ap.add_argument("registry", type=Path, help="registry folder (VIGIL_MODEL_REGISTRY)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every version, its threshold and metrics; * marks ACTIVE")
    for name, text in (("check", "validate a version without activating it"),
                       ("activate", "validate a version and make it ACTIVE")):
        sub.add_parser(name, help=text).add_argument("version")
    sub.add_parser("rollback", help="re-activate the version active before the current one")
    sub.add_parser("history", help="the activation log, oldest first")
    args = ap.parse_args(argv)
    reg = ModelRegistry(args.registry)
    try:
        if args.command == "list":
            active = reg.active_version()
            for info in reg.versions():
                m = info.metadata
                mark = "*" if info.version == active else " "
                print(f"{mark} {info.version}  threshold {m.threshold:.5g}  seq_len {m.seq_len}"
                      f"  windows {m.window_length_ms}/{m.window_hop_ms} ms"
                      f"  metrics {','.join(m.metrics)}")
        elif args.command == "history":
            for stamp, action, version in reg.history():
                print(f"{stamp.isoformat()}  {action:8s}  {version}")
        elif args.command == "check":
            print(f"{reg.check(args.version).version}: ok")
        elif args.command == "activate":
            print(f"active: {reg.activate(args.version).version}")
        else:
            print(f"active: {reg.rollback().version}")
    except (RegistryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
