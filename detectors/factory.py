"""Build the detectors a flow runs from settings, refusing models that cannot fit the windows.

``VIGIL_DETECTORS`` lists them by name. The LSTM-AE comes from ``VIGIL_MODEL_REGISTRY`` (or
the model bundled with Vigil); a model trained for other windows than the flow computes
would score garbage, so it is left out with a warning that says what to do instead.
"""

from __future__ import annotations

import logging

from detectors.base import Detector
from detectors.ensemble import CalibrationConfig, Ensemble
from detectors.policy import AlertPolicy
from detectors.zscore import RobustZScore
from flows.settings import Settings
from flows.stages import ScoreStage

log = logging.getLogger("vigil.detectors")


_warned: set[tuple[str, tuple[int, int]]] = set()


class DetectorConfigError(ValueError):
    """The configured detectors cannot run; the message says why and what to change."""


def build_detectors(settings: Settings) -> list[Detector]:
    """One instance of each configured detector (the flow builds one set per state shard)."""
    out: list[Detector] = []
    for name in settings.detector_names:
        if name == "hst":
            from detectors.hst import HalfSpaceTreesDetector

            out.append(HalfSpaceTreesDetector(
                settings.hst_threshold,
                seed=settings.hst_seed,
                warmup=settings.hst_warmup,
                half_life_s=settings.hst_half_life.total_seconds(),
            ))
        elif name == "seasonal":
            from detectors.seasonal import SeasonalProfile

            out.append(SeasonalProfile(
                period_s=settings.seasonal_period.total_seconds(),
                buckets=settings.seasonal_buckets,
            ))
        elif name == "novelty":
            from detectors.novelty import ValueNovelty

            out.append(ValueNovelty(
                bin_width=settings.novelty_bin_width,
                tilings=settings.novelty_tilings,
                rate=settings.novelty_rate,
                decay=settings.novelty_decay,
                warmup_period_s=settings.novelty_warmup_period.total_seconds(),
            ))
        elif name == "corr":
            from detectors.corr import CorrelationDetector

            out.append(CorrelationDetector(
                settings.corr_threshold,
                half_life_s=settings.corr_half_life.total_seconds(),
                shrinkage=settings.corr_shrinkage,
                warmup=settings.corr_warmup,
            ))
        elif name == "zscore":
            out.append(RobustZScore(
                settings.zscore_threshold, settings.zscore_history, settings.zscore_warmup
            ))
        elif name == "lstm_ae":
            det = _autoencoder(settings)
            if det is not None:
                out.append(det)
    if not out:
        raise DetectorConfigError(
            "no detector can run with these settings (see the warnings above); "
            "set VIGIL_DETECTORS=hst or point VIGIL_MODEL_REGISTRY at a model trained "
            "for these windows"
        )
    return out


def build_score_stage(settings: Settings) -> ScoreStage:
    """Detectors, their calibration and the alert policy, as one state shard runs them."""
    detectors = build_detectors(settings)
    ensemble = Ensemble(detectors, CalibrationConfig(
        history=settings.calibration_history,
        short=settings.calibration_short,
        warmup=settings.calibration_warmup,
        precision=settings.calibration_precision,
        alert_likelihood=settings.alert_likelihood,
    ))
    policy = AlertPolicy(
        settings.critical_likelihood, settings.alert_resolve_after, settings.alert_open_after,
        detectors=ensemble.names,
    )
    return ScoreStage(ensemble, policy)


def _autoencoder(settings: Settings) -> Detector | None:
    from detectors.autoencoder import AutoencoderDetector
    from detectors.defaults import DEFAULT_REGISTRY
    from detectors.registry import ModelRegistry, RegistryError

    root = settings.model_registry or str(DEFAULT_REGISTRY)
    try:
        det = AutoencoderDetector(
            ModelRegistry(root), settings.model_reload_interval.total_seconds()
        )
    except (RegistryError, OSError) as exc:
        raise DetectorConfigError(
            f"VIGIL_MODEL_REGISTRY={root}: no usable active model ({exc}); train one with "
            "`python -m detectors.train ... --activate` or drop lstm_ae from VIGIL_DETECTORS"
        ) from exc
    meta = det.model.metadata
    wanted = (
        round(settings.window_length.total_seconds() * 1000),
        round(settings.window_hop.total_seconds() * 1000),
    )
    if (meta.window_length_ms, meta.window_hop_ms) != wanted:
        if (meta.version, wanted) in _warned:  # one line per run, not one per state shard
            return None
        _warned.add((meta.version, wanted))
        log.warning(
            "lstm_ae left out: model %s was trained on %d ms windows every %d ms, but the flow "
            "computes %d ms every %d ms; train a model for these windows "
            "(python -m detectors.train --window ... --hop ...) and set VIGIL_MODEL_REGISTRY",
            meta.version, meta.window_length_ms, meta.window_hop_ms, *wanted,
        )
        return None
    log.debug("lstm_ae: model %s from %s (metrics %s)", meta.version, root, ",".join(meta.metrics))
    return det
