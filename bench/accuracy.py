"""Detection accuracy on labeled public data: ``python -m bench.accuracy``.

Every file goes through :func:`bench.score.score_file` (the real dataflow, in this
process), so the numbers describe what the product would have said, row by row, causally.
One configuration is used for every file; nothing is tuned per file.

SKAB (``--skab DIR``: ``valve1/``, ``valve2/``, ``other/``; ``anomaly-free/`` is never scored)
    The published outlier-detection leaderboard protocol (``../shared/datasets/README.md``):
    per file the first 400 rows are the training part, which for an online detector means
    warm-up only; predictions are the ``alert`` column (0/1) on the remaining rows;
    confusion counts are summed over all files (micro) and F1 / FAR / MAR come from
    :func:`bench.metrics.skab_summary`. Also reported: the same metrics over every row of
    every file (the detector learns online from the first row, which is what the README's
    product-like protocol amounts to for a detector without offline training), and per
    labeled episode the delay to the first alert (:func:`bench.metrics.detection_delays`).

NAB (``--nab DIR``: ``data/<category>/<file>.csv`` and ``combined_windows.json``)
    NAB-style scoring of the ``anomaly_score`` column as implemented in
    :mod:`bench.metrics`: one threshold per cost profile for the whole corpus, optimised
    by an exact sweep (:func:`bench.metrics.optimise_all`); probationary period, window
    rewards and false-positive costs as documented there.

Writes ``REPORT_DIR/accuracy.json`` (everything), ``REPORT_DIR/accuracy.md`` (tables for
docs/accuracy.md) and, when matplotlib is installed, ``REPORT_DIR/plots/<file>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from tqdm import tqdm

from bench.metrics import (
    PROFILES,
    Confusion,
    NabFile,
    confusion,
    detection_delays,
    load_nab_windows,
    nab_detail,
    optimise_all,
    probation_length,
    skab_summary,
    window_rows,
)
from bench.probation import ProbationTraining, check_detectors, train_on_probation, with_model
from bench.score import (
    ScoreOptions,
    ScoreResult,
    options_from_args,
    quiet_flow_logs,
    score_file,
    settings_from_args,
)
from bench.score import (
    build_parser as score_parser,
)
from flows.cli import positive_int
from flows.replay import detect_format, load_frame
from flows.settings import Settings, SettingsError

SKAB_TRAIN_ROWS = 400  # the leaderboard's training part per file
SKAB_GROUPS = ("valve1", "valve2", "other")
# Published SKAB outlier-detection rows (F1, FAR %, MAR %), from the datasets README.
SKAB_PUBLISHED = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T²+Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "T²": (0.66, 19.21, 42.6),
    "LSTM-VAE": (0.56, 9.13, 55.03),
    "Isolation Forest": (0.29, 2.56, 82.89),
}
DEFAULT_SKAB = Path("../shared/datasets/skab")
DEFAULT_NAB = Path("../shared/datasets/nab")


# --- finding files ------------------------------------------------------------------------------


def _natural(path: Path) -> tuple:
    """valve1/2.csv before valve1/10.csv."""
    stem = path.stem
    return (path.parent.name, int(stem) if stem.isdigit() else math.inf, stem)


def skab_files(root: Path) -> list[Path]:
    """The experiment files under ``root`` (anomaly-free data is never scored)."""
    files = [p for p in root.rglob("*.csv") if "anomaly-free" not in p.parts]
    order = {g: i for i, g in enumerate(SKAB_GROUPS)}
    return sorted(files, key=lambda p: (order.get(p.parent.name, len(order)), *_natural(p)))


def nab_files(root: Path) -> tuple[list[tuple[str, Path]], dict[str, list]]:
    """``(category/file.csv, path)`` for each labeled file, and the label windows."""
    windows = load_nab_windows(root / "combined_windows.json")
    data = root / "data"
    found = [(key, data / key) for key in sorted(windows) if (data / key).is_file()]
    return found, windows


# --- per-file evaluation ------------------------------------------------------------------------


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _skab_labels(path: Path) -> npt.NDArray[np.int8]:
    col = pl.read_csv(path, separator=";", columns=["anomaly"])["anomaly"]
    return col.fill_null(0).cast(pl.Int8).to_numpy()


def _delay_summary(labels: np.ndarray, preds: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
    return detection_delays(labels, preds, ts).summary()


def _row_metrics(c: Confusion) -> dict[str, float | int]:
    return {
        "precision": round(c.precision, 3), "recall": round(c.recall, 3), "f1": round(c.f1, 3),
        "far": round(c.far, 2), "mar": round(c.mar, 2),
        "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn,
    }


@dataclass
class SkabReport:
    """SKAB outcome: per file and summed (leaderboard protocol and all rows)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    leaderboard: dict[str, Any] = field(default_factory=dict)
    all_rows: dict[str, Any] = field(default_factory=dict)
    delays: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0


@dataclass
class NabReport:
    """NAB outcome: the corpus score per profile and each file at the standard threshold."""

    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0  # LSTM-AE training on probationary rows, all files


Plotter = Callable[..., None]


def evaluate_skab(
    root: Path, options: ScoreOptions, settings: Settings, plot: Plotter | None = None,
    progress: bool = True,
) -> SkabReport:
    """Score every SKAB experiment and apply the leaderboard protocol."""
    t0 = time.perf_counter()
    report = SkabReport()
    test_conf: list[Confusion] = []
    all_conf: list[Confusion] = []
    episodes: list[dict[str, Any]] = []
    for path in tqdm(skab_files(root), desc="SKAB", unit="file", disable=not progress,
                     file=sys.stderr):
        res = score_file(path, options, settings)
        labels = _skab_labels(path)
        if labels.size != res.output.height:
            raise ValueError(f"{path}: {labels.size} labels for {res.output.height} rows")
        alert = res.alert.astype(np.int8)
        cut = min(SKAB_TRAIN_ROWS, labels.size)
        test = confusion(labels[cut:], alert[cut:])
        test_conf.append(test)
        all_conf.append(confusion(labels, alert))
        delay = detection_delays(labels[cut:], alert[cut:], res.ts[cut:])
        episodes.extend(
            {"file": _name(path, root), "delay_s": e.delay} for e in delay.episodes
        )
        report.files.append({
            "file": _name(path, root),
            "rows": int(labels.size),
            "test_rows": int(labels.size - cut),
            "anomalous_pct": round(100.0 * float(labels[cut:].mean()), 1) if labels.size > cut
            else 0.0,
            **_row_metrics(test),
            "delay": delay.summary(),
            "alerts": sum(a.status == "open" for a in res.alerts),
            "seconds": round(res.seconds, 2),
        })
        report.rows += labels.size
        if plot is not None:
            plot(res, _name(path, root), labels=labels, train_rows=cut)
    report.leaderboard = skab_summary(test_conf)
    report.all_rows = skab_summary(all_conf)
    delays = [e["delay_s"] for e in episodes if e["delay_s"] is not None]
    report.delays = {
        "episodes": len(episodes),
        "detected": len(delays),
        "median_s": float(np.median(delays)) if delays else None,
        "mean_s": float(np.mean(delays)) if delays else None,
    }
    report.seconds = time.perf_counter() - t0
    return report


def _score_with_probation_model(
    path: Path, options: ScoreOptions, settings: Settings, recipe: ProbationTraining,
) -> tuple[ScoreResult, dict[str, Any]]:
    """Train an LSTM-AE on the file's probationary rows (temporary registry), then score the
    file with it active; fails if the flow left the model out."""
    n_rows = load_frame(path, detect_format(path), options.tz).height
    with tempfile.TemporaryDirectory(prefix="vigil-probation-") as tmp:
        model = train_on_probation(path, n_rows, Path(tmp), recipe, options.window_rows,
                                   options.hop, options.tz)
        opts, cfg = with_model(options, settings, model)
        res = score_file(path, opts, cfg)
    used = sum("lstm_ae" in r.detectors for r in res.records)
    if not used:
        raise RuntimeError(f"{path}: the flow left the per-file LSTM-AE out")
    return res, {
        "rows": model.rows, "hop_s": model.hop.total_seconds(),
        "train_sequences": model.train_sequences, "holdout_sequences": model.holdout_sequences,
        "final_loss": round(model.final_loss, 5), "final_val_loss": round(model.final_val_loss, 5),
        "seconds": round(model.seconds, 2), "windows_scored": used,
    }


def evaluate_nab(
    root: Path, options: ScoreOptions, settings: Settings, plot: Plotter | None = None,
    progress: bool = True, train: ProbationTraining | None = None,
) -> NabReport:
    """Score every labeled NAB file, then optimise one threshold per profile for all.

    With ``train``, each file is scored with an LSTM-AE trained on its own probationary rows
    (``bench.probation``).
    """
    t0 = time.perf_counter()
    report = NabReport()
    found, windows = nab_files(root)
    if train is not None:
        check_detectors(options, settings)
    scored: list[tuple[str, ScoreResult, NabFile]] = []
    trained: dict[str, dict[str, Any]] = {}
    bar = tqdm(found, desc="NAB", unit="file", disable=not progress, file=sys.stderr)
    for key, path in bar:
        if train is None:
            res = score_file(path, options, settings)
        else:
            bar.set_postfix_str(f"training {Path(key).stem}")
            res, trained[key] = _score_with_probation_model(path, options, settings, train)
            report.train_seconds += trained[key]["seconds"]
            if progress:
                t = trained[key]
                tqdm.write(f"{key}: LSTM-AE on {t['rows']} probationary rows, "
                           f"{t['train_sequences']} sequences, loss {t['final_loss']:.4f} / "
                           f"held-out {t['final_val_loss']:.4f}, {t['seconds']:.1f} s",
                           file=sys.stderr)
        scored.append((key, res, NabFile(res.ts, res.anomaly_score, windows[key], key)))
        report.rows += res.output.height
    if not scored:
        raise ValueError(f"{root}: no labeled NAB files (data/<category>/<file>.csv)")
    corpus = [f for _, _, f in scored]
    best = optimise_all(corpus)
    report.profiles = {
        name: {
            "score": round(r.score, 2), "threshold": r.threshold, "detected": r.tp,
            "missed": r.fn, "fp_rows": r.fp, "windows": r.windows,
        }
        for name, r in best.items()
    }
    thr = best["standard"].threshold
    for key, res, f in scored:
        one = nab_detail([f], PROFILES["standard"], thr)
        n = f.scores.size
        prob = probation_length(n)
        in_window = np.zeros(n, dtype=np.int8)
        for start, end in f.windows:
            lo, hi = window_rows(f.timestamps, start, end)
            in_window[lo:hi] = 1
        fired = ((f.scores >= thr) & (np.arange(n) >= prob)).astype(np.int8)
        delay = detection_delays(in_window[prob:], fired[prob:], f.timestamps[prob:])
        report.files.append({
            "file": key,
            "rows": n,
            "windows": one.windows,
            "detected": one.tp,
            "missed": one.fn,
            "fp_rows": one.fp,
            "standard_score": round(one.score, 1),
            "delay": delay.summary(),
            "alerts": sum(a.status == "open" for a in res.alerts),
            "late_rows": res.late,
            "seconds": round(res.seconds, 2),
            **({"lstm_probation": trained[key]} if key in trained else {}),
        })
        if plot is not None:
            plot(res, key, windows=f.windows, threshold=thr)
    report.seconds = time.perf_counter() - t0
    return report


# --- plots --------------------------------------------------------------------------------------


def make_plotter(out_dir: Path) -> Plotter | None:
    """A function that writes one PNG per file, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)

    def spans(mask: np.ndarray) -> list[tuple[int, int]]:
        edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
        return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1,
                        strict=True))

    def plot(
        res: ScoreResult, name: str, labels: np.ndarray | None = None, train_rows: int = 0,
        windows: Sequence[tuple[Any, Any]] = (), threshold: float | None = None,
    ) -> None:
        frame = load_series(res)
        x = res.ts
        fig, axes = plt.subplots(3, 1, figsize=(13, 7), sharex=True,
                                 gridspec_kw={"height_ratios": [2, 1, 1]})
        for col in frame.columns[:3]:
            v = frame[col].to_numpy().astype(float)
            rng = np.nanmax(v) - np.nanmin(v) if np.isfinite(v).any() else 0.0
            scaled = (v - np.nanmin(v)) / rng if len(frame.columns) > 1 and rng > 0 else v
            axes[0].plot(x, scaled, lw=0.7, label=col)
        axes[0].set_ylabel("value" if len(frame.columns) == 1 else "value (min-max scaled)")
        axes[0].legend(loc="upper left", fontsize=7)
        from detectors.calibration import log_likelihood

        axes[1].plot(x, log_likelihood(res.raw_score), lw=0.7, color="tab:gray")
        axes[1].axhline(float(log_likelihood(res.threshold)), color="tab:red", ls="--", lw=0.8,
                        label=f"alert level {res.threshold:g}")
        axes[1].set_ylabel("log likelihood")
        axes[1].legend(loc="upper left", fontsize=7)
        axes[2].plot(x, res.anomaly_score, lw=0.7, color="tab:blue")
        if threshold is not None:
            axes[2].axhline(threshold, color="tab:red", ls="--", lw=0.8,
                            label=f"NAB standard threshold {threshold:.4g}")
            axes[2].legend(loc="upper left", fontsize=7)
        axes[2].set_ylabel("anomaly_score")
        axes[2].set_ylim(-0.02, 1.02)
        for ax in axes:
            if labels is not None:
                for lo, hi in spans(labels == 1):
                    ax.axvspan(x[lo], x[hi], color="tab:orange", alpha=0.18, lw=0)
            for start, end in windows:
                ax.axvspan(start, end, color="tab:orange", alpha=0.18, lw=0)
            for lo, hi in spans(res.alert == 1):
                ax.axvspan(x[lo], x[hi], ymin=0.0, ymax=0.06, color="tab:red", alpha=0.8, lw=0)
            if train_rows:
                ax.axvline(x[min(train_rows, len(x) - 1)], color="k", lw=0.6, ls=":")
        axes[0].set_title(f"{name}: labeled anomalies (orange), alerts (red bar)"
                          + (", training part left of dotted line" if train_rows else ""),
                          fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / (name.replace("/", "__").removesuffix(".csv") + ".png"), dpi=80)
        plt.close(fig)

    return plot


def load_series(res: ScoreResult) -> pl.DataFrame:
    """The metric columns of a scored file, for plotting."""
    frame = load_frame(res.path, res.fmt)
    return frame.drop("ts", "sensor_id", strict=False)


# --- report -------------------------------------------------------------------------------------


def _fmt_delay(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def markdown(result: dict[str, Any]) -> str:
    """Tables ready to paste into docs/accuracy.md."""
    out: list[str] = []
    cfg = result["config"]
    out.append(f"Configuration: detector `{cfg['detector']}`, window {cfg['window_rows']} rows "
               f"(hop = the file's sampling interval), {cfg['settings_summary']}; calibration "
               f"history {cfg['calib_history']}, short {cfg['calib_short']}, warm-up "
               f"{cfg['calib_warmup']}.")
    lstm = cfg.get("lstm_on_probation")
    if lstm:
        out.append(f"NAB: per file, an LSTM-AE trained on the file's probationary rows only "
                   f"(seed {lstm['seed']}, {lstm['epochs']} epochs, hidden {lstm['hidden']}, "
                   f"seq_len {lstm['seq_len']}).")
    skab = result.get("skab")
    if skab:
        lb, allr = skab["leaderboard"], skab["all_rows"]
        out += ["", "### SKAB (outlier-detection leaderboard protocol)", "",
                "| Detector | F1 | FAR % | MAR % | Precision | Recall |",
                "|---|---:|---:|---:|---:|---:|",
                f"| **Vigil {cfg['detector']} (alert column, causal)** | {lb['f1']:.2f} | "
                f"{lb['far']:.2f} | {lb['mar']:.2f} | {lb['precision']:.2f} | "
                f"{lb['recall']:.2f} |"]
        for name, (f1, far, mar) in SKAB_PUBLISHED.items():
            out.append(f"| {name} (published) | {f1:.2f} | {far:.2f} | {mar:.2f} | | |")
        out.append("| Always alarm | 0.70 | 100.00 | 0.00 | 0.54 | 1.00 |")
        d = skab["delays"]
        out += ["", f"Micro counts over {skab['test_rows']} test rows: TP {lb['tp']}, "
                f"FP {lb['fp']}, FN {lb['fn']}, TN {lb['tn']}. All rows of every file "
                f"(online from the first row): F1 {allr['f1']:.2f}, FAR {allr['far']:.2f} %, "
                f"MAR {allr['mar']:.2f} %. Episodes alerted in the test part: "
                f"{d['detected']} of {d['episodes']}, median delay "
                f"{_fmt_delay(d['median_s'])}.", "",
                "| File | Test rows | Anomalous % | Precision | Recall | F1 | FAR % | MAR % "
                "| Delay |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in skab["files"]:
            out.append(
                f"| {f['file']} | {f['test_rows']} | {f['anomalous_pct']:.1f} | "
                f"{f['precision']:.2f} | {f['recall']:.2f} | {f['f1']:.2f} | {f['far']:.1f} | "
                f"{f['mar']:.1f} | {_fmt_delay(f['delay']['median_delay'])} |"
            )
    nab = result.get("nab")
    if nab:
        out += ["", "### NAB-style score (one threshold per profile for all files)", "",
                "| Profile | Score | Threshold | Windows detected | Missed | FP rows |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, p in nab["profiles"].items():
            out.append(f"| {name} | {p['score']:.1f} | {p['threshold']:.6g} | "
                       f"{p['detected']} / {p['windows']} | {p['missed']} | {p['fp_rows']} |")
        out += ["", "Per file at the standard-profile threshold (file score normalised "
                "per file, for orientation only):", "",
                "| File | Rows | Windows | Detected | FP rows | Delay to first detection "
                "| File score |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for f in nab["files"]:
            out.append(
                f"| {f['file']} | {f['rows']} | {f['windows']} | {f['detected']} | "
                f"{f['fp_rows']} | {_fmt_delay(f['delay']['median_delay'])} | "
                f"{f['standard_score']:.1f} |"
            )
    rt = result["runtime"]
    out += ["", f"Runtime: {rt['total_s']:.0f} s on {rt['machine']} "
            f"(SKAB {rt.get('skab_s', 0):.0f} s for {rt.get('skab_rows', 0)} rows, "
            f"NAB {rt.get('nab_s', 0):.0f} s for {rt.get('nab_rows', 0)} rows).", ""]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(
    skab: Path | None, nab: Path | None, out: Path, options: ScoreOptions, settings: Settings,
    plots: bool = True, progress: bool = True, train: ProbationTraining | None = None,
) -> dict[str, Any]:
    """Evaluate the given corpora and write the report files; returns the JSON document.

    ``train``: score each NAB file with an LSTM-AE trained on its probationary rows.
    """
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    plot = make_plotter(out / "plots") if plots else None
    result: dict[str, Any] = {
        "config": {
            **{k: (str(v) if v is not None and k == "hop" else v)
               for k, v in asdict(options).items()},
            "detector": options.detector or settings.detectors,
            "settings_summary": (
                f"alert at likelihood {settings.alert_likelihood:g} for "
                f"{settings.alert_open_after} window(s), resolve after "
                f"{settings.alert_resolve_after}, HST seed {settings.hst_seed}, lateness 0"
            ),
            "calib_history": settings.calibration_history,
            "calib_short": settings.calibration_short,
            "calib_warmup": settings.calibration_warmup,
            "lstm_on_probation": asdict(train) if train is not None else None,
        },
        "runtime": {"machine": f"{platform.machine()}, {_cpus()} CPUs, "
                               f"Python {platform.python_version()}"},
    }
    if skab is not None:
        rep = evaluate_skab(skab, options, settings, plot, progress)
        result["skab"] = {
            "protocol": "leaderboard: first 400 rows per file are training (warm-up only); "
                        "alert column on the rest; micro-summed counts",
            "leaderboard": rep.leaderboard, "all_rows": rep.all_rows, "delays": rep.delays,
            "test_rows": sum(f["test_rows"] for f in rep.files), "files": rep.files,
        }
        result["runtime"].update(skab_s=rep.seconds, skab_rows=rep.rows)
    if nab is not None:
        rep_n = evaluate_nab(nab, options, settings, plot, progress, train)
        result["nab"] = {"profiles": rep_n.profiles, "files": rep_n.files}
        result["runtime"].update(nab_s=rep_n.seconds, nab_rows=rep_n.rows,
                                 nab_train_s=rep_n.train_seconds)
    result["runtime"]["total_s"] = time.perf_counter() - t0
    result["runtime"]["plots"] = plot is not None
    result = _jsonable(result)
    (out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "accuracy.md").write_text(markdown(result))
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def build_parser() -> argparse.ArgumentParser:
    """``python -m bench.accuracy``: the corpora, the report folder and bench.score's options."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.accuracy",
        description="Accuracy of Vigil's flow on SKAB (leaderboard protocol) and NAB "
        "(NAB-style score), one configuration for every file. Writes accuracy.json, "
        "accuracy.md and per-file plots.",
    )
    ap.add_argument("--skab", type=Path, metavar="DIR",
                    help=f"SKAB folder (default {DEFAULT_SKAB} when it exists)")
    ap.add_argument("--nab", type=Path, metavar="DIR",
                    help=f"NAB folder with data/ and combined_windows.json "
                         f"(default {DEFAULT_NAB} when it exists)")
    ap.add_argument("--only", choices=("skab", "nab"), help="evaluate one corpus only")
    ap.add_argument("--out", type=Path, default=Path("out/accuracy"), metavar="REPORT_DIR",
                    help="where to write the report (default: out/accuracy)")
    ap.add_argument("--no-plots", action="store_true", help="skip the per-file PNGs")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    # bench.score's window, detector and calibration options, same names and defaults
    for action in score_parser()._actions:
        if action.dest in ("help", "input", "output", "quiet", "format", "sensor_id"):
            continue
        kwargs: dict[str, Any] = {
            "dest": action.dest, "default": action.default,
            "help": action.help + (" (default: %(default)s)" if action.default else ""),
            "metavar": action.metavar,
        }
        if action.type is not None:
            kwargs["type"] = action.type
        if action.choices is not None:
            kwargs["choices"] = action.choices
        ap.add_argument(*action.option_strings, **kwargs)
    t = ap.add_argument_group("LSTM-AE per NAB file (needs torch: pip install -e '.[train]')")
    t.add_argument("--train-lstm-on-probation", action="store_true",
                   help="for each NAB file, train an LSTM-AE on its probationary rows only "
                        "(detectors.train, temporary registry) and score the file with it")
    rec = ProbationTraining()
    t.add_argument("--lstm-epochs", type=positive_int, default=rec.epochs, metavar="N",
                   help="training epochs (default: %(default)s)")
    t.add_argument("--lstm-hidden", type=positive_int, default=rec.hidden, metavar="N",
                   help="LSTM hidden size (default: %(default)s)")
    t.add_argument("--lstm-seq-len", type=positive_int, default=rec.seq_len, metavar="N",
                   help="windows per sequence (default: %(default)s)")
    t.add_argument("--lstm-seed", type=int, default=rec.seed, metavar="N",
                   help="training seed (default: %(default)s)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation and print the tables; exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    quiet_flow_logs()
    args.format, args.sensor_id = "auto", None
    skab = args.skab if args.skab is not None else (DEFAULT_SKAB if DEFAULT_SKAB.is_dir() else None)
    nab = args.nab if args.nab is not None else (DEFAULT_NAB if DEFAULT_NAB.is_dir() else None)
    if args.only == "skab":
        nab = None
    elif args.only == "nab":
        skab = None
    if skab is None and nab is None:
        print("error: no data; pass --skab DIR and/or --nab DIR", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
        train = (ProbationTraining(epochs=args.lstm_epochs, hidden=args.lstm_hidden,
                                   seq_len=args.lstm_seq_len, seed=args.lstm_seed)
                 if args.train_lstm_on_probation else None)
        result = run(skab, nab, args.out, options_from_args(args), settings,
                     plots=not args.no_plots, progress=not args.no_progress, train=train)
    except (SettingsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result))
    print(f"wrote {args.out / 'accuracy.json'} and {args.out / 'accuracy.md'}"
          + ("" if result["runtime"]["plots"] else " (no plots: matplotlib not installed)"
             if not args.no_plots else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
