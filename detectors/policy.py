"""Alert policy: turn per-window verdicts into incidents, one alert per incident.

An incident opens on the first anomalous window (an ``open`` alert is emitted), absorbs every
later anomalous window, and resolves after ``resolve_after`` consecutive normal windows (a
``resolved`` alert with the same ``alert_id`` and the incident's full span is emitted). The
id comes from ``flows.schemas.alert_id_for``, so replaying the same input yields the same ids.
Severity is ``critical`` once the peak score reaches ``critical_ratio × threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from detectors.base import Verdict
from flows.schemas import Alert, Contributor, Severity, alert_id_for


@dataclass(frozen=True, slots=True)
class Incident:
    """An open incident of one sensor (kept in the flow's recoverable state)."""

    alert_id: str
    start: datetime
    end: datetime
    peak: float
    contributors: tuple[Contributor, ...]
    windows: int
    normal_streak: int = 0
    fired: tuple[str, ...] = ()


class AlertPolicy:
    """Per-sensor incident tracking; state is a dict sensor_id -> Incident."""

    def __init__(
        self,
        threshold: float,
        resolve_after: int = 3,
        critical_ratio: float = 2.0,
        detectors: tuple[str, ...] = ("zscore",),
    ) -> None:
        self.threshold = threshold
        self.resolve_after = resolve_after
        self.critical_ratio = critical_ratio
        self.detectors = list(detectors)
        self.open: dict[str, Incident] = {}

    def severity(self, score: float) -> Severity:
        """Warning above threshold, critical above critical_ratio × threshold."""
        return "critical" if score >= self.critical_ratio * self.threshold else "warning"

    def update(
        self, sensor_id: str, start: datetime, end: datetime, verdict: Verdict,
        model_version: str, fired: tuple[str, ...] = (),
    ) -> Alert | None:
        """Advance the sensor's incident with one window; return an alert to emit, if any.

        ``fired`` names the detectors that found this window anomalous (default: all).
        """
        inc = self.open.get(sensor_id)
        fired = fired or tuple(self.detectors)
        if verdict.anomalous:
            if inc is None:
                inc = Incident(
                    alert_id_for(sensor_id, start, self.detectors),
                    start, end, verdict.score, tuple(verdict.contributors), 1, fired=fired,
                )
                self.open[sensor_id] = inc
                return self._alert(sensor_id, inc, "open", model_version)
            peak = verdict.score > inc.peak
            self.open[sensor_id] = replace(
                inc,
                end=end,
                peak=max(inc.peak, verdict.score),
                contributors=tuple(verdict.contributors) if peak else inc.contributors,
                windows=inc.windows + 1,
                normal_streak=0,
                fired=tuple(dict.fromkeys(inc.fired + fired)),
            )
            return None
        if inc is None:
            return None
        if inc.normal_streak + 1 >= self.resolve_after:
            del self.open[sensor_id]
            return self._alert(sensor_id, inc, "resolved", model_version)
        self.open[sensor_id] = replace(inc, normal_streak=inc.normal_streak + 1)
        return None

    def _alert(self, sensor_id: str, inc: Incident, status: str, version: str) -> Alert:
        return Alert(
            alert_id=inc.alert_id,
            sensor_id=sensor_id,
            status=status,  # type: ignore[arg-type]
            start=inc.start,
            end=inc.end,
            score=round(inc.peak, 4),
            severity=self.severity(inc.peak),
            detectors=list(inc.fired or self.detectors),
            contributors=list(inc.contributors),
            model_version=version,
            windows=inc.windows,
        )
