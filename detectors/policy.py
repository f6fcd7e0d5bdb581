"""Alert policy: turn per-window verdicts into incidents, one alert per incident.

An incident opens once ``open_after`` consecutive windows are anomalous (debounce: a single
odd window raises nothing; the incident's start is the first window of the run), emitting an
``open`` alert; it absorbs every later anomalous window and resolves after ``resolve_after``
consecutive normal windows (a ``resolved`` alert with the same ``alert_id`` and the
incident's full span is emitted). The id comes from ``flows.schemas.alert_id_for``, so
replaying the same input yields the same ids. Severity is ``critical`` once the peak score
reaches ``critical``, else ``warning``. The contributors are those of the peak window.
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
        critical: float,
        resolve_after: int = 3,
        open_after: int = 1,
        detectors: tuple[str, ...] = ("hst",),
    ) -> None:
        if resolve_after < 1 or open_after < 1:
            raise ValueError("open_after and resolve_after must be at least 1")
        self.critical = critical
        self.resolve_after = resolve_after
        self.open_after = open_after
        self.detectors = list(detectors)
        self.open: dict[str, Incident] = {}
        self.pending: dict[str, Incident] = {}  # anomalous runs shorter than open_after

    def severity(self, score: float) -> Severity:
        """Critical from ``critical`` up, warning below."""
        return "critical" if score >= self.critical else "warning"

    def update(
        self, sensor_id: str, start: datetime, end: datetime, verdict: Verdict,
        model_version: str, fired: tuple[str, ...] = (),
    ) -> Alert | None:
        """Advance the sensor's incident with one window; return an alert to emit, if any.

        ``fired`` names the detectors that found this window anomalous (default: all).
        """
        inc = self.open.get(sensor_id)
        if verdict.anomalous:
            fired = fired or tuple(self.detectors)
            if inc is None:
                run = self.pending.pop(sensor_id, None)
                if run is None:
                    run = Incident(
                        alert_id_for(sensor_id, start, self.detectors),
                        start, end, verdict.score, tuple(verdict.contributors), 1, fired=fired,
                    )
                else:
                    run = self._grow(run, end, verdict, fired)
                if run.windows < self.open_after:
                    self.pending[sensor_id] = run
                    return None
                self.open[sensor_id] = run
                return self._alert(sensor_id, run, "open", model_version)
            self.open[sensor_id] = self._grow(inc, end, verdict, fired)
            return None
        self.pending.pop(sensor_id, None)
        if inc is None:
            return None
        if inc.normal_streak + 1 >= self.resolve_after:
            del self.open[sensor_id]
            return self._alert(sensor_id, inc, "resolved", model_version)
        self.open[sensor_id] = replace(inc, normal_streak=inc.normal_streak + 1)
        return None

    @staticmethod
    def _grow(
        inc: Incident, end: datetime, verdict: Verdict, fired: tuple[str, ...]
    ) -> Incident:
        peak = verdict.score > inc.peak
        return replace(
            inc,
            end=end,
            peak=max(inc.peak, verdict.score),
            contributors=tuple(verdict.contributors) if peak else inc.contributors,
            windows=inc.windows + 1,
            normal_streak=0,
            fired=tuple(dict.fromkeys(inc.fired + fired)),
        )

    def _alert(self, sensor_id: str, inc: Incident, status: str, version: str) -> Alert:
        return Alert(
            alert_id=inc.alert_id,
            sensor_id=sensor_id,
            status=status,  # type: ignore[arg-type]
            start=inc.start,
            end=inc.end,
            score=round(inc.peak, 6),
            severity=self.severity(inc.peak),
            detectors=list(inc.fired or self.detectors),
            contributors=list(inc.contributors),
            model_version=version,
            windows=inc.windows,
        )
