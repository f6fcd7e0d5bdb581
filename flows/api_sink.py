"""Bytewax sinks around flows.api_client.ApiPusher: one for alerts, one for scores.

The alert sink's recovery state is the alerts not yet accepted by the API, so an epoch that
is committed before the API came back still has them after a crash (at-least-once; the API
de-duplicates on ``alert_id``). At each snapshot it first gives the pusher a moment to drain,
which keeps that state small in the normal case.
"""

from __future__ import annotations

import os
import socket

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows import metrics
from flows.api_client import ApiPusher, decode_pending, encode_pending
from flows.schemas import Alert, ScoreRecord
from flows.settings import Settings

SNAPSHOT_DRAIN_SECONDS = 0.25  # bounded: a down API must not stall every epoch
CLOSE_DRAIN_SECONDS = 60.0


def pusher_for(settings: Settings, heartbeat: bool) -> ApiPusher:
    """An ApiPusher configured from settings."""
    # often enough for the web page's status strip, and for /ready to notice a stale flow
    beat = min(5.0, max(1.0, settings.api_heartbeat_stale.total_seconds() / 4))
    return ApiPusher(
        settings.api_url, settings.api_token,
        buffer=settings.api_sink_buffer, batch=settings.api_sink_batch,
        flush_interval=settings.api_sink_flush_interval.total_seconds(),
        score_interval=settings.api_score_interval.total_seconds(),
        heartbeat_interval=beat if heartbeat else 0.0,
        source=f"flow@{socket.gethostname()}:{os.getpid()}",
        stats=metrics.totals if heartbeat else None,
    )


_heartbeats: dict[tuple[str, str], ApiPusher] = {}


def start_heartbeat(settings: Settings) -> ApiPusher:
    """This process's heartbeat to the API, from the flow's build on (one per API and token).

    Not the alert sink's job: Bytewax builds a sink partition only when its first item
    arrives, so heartbeats owned by it left ``/ready`` and the web page calling the flow stale
    until the first alert, minutes or hours after a healthy start.
    """
    key = (settings.api_url, settings.api_token)
    if key not in _heartbeats:
        _heartbeats[key] = pusher_for(settings, heartbeat=True)
    return _heartbeats[key]


class _AlertPartition(StatefulSinkPartition[Alert, bytes]):
    def __init__(self, settings: Settings, resume: bytes | None) -> None:
        self._pusher = pusher_for(settings, heartbeat=False)
        self._pusher.put_alerts(decode_pending(resume))

    def write_batch(self, values: list[Alert]) -> None:
        self._pusher.put_alerts(values)

    def snapshot(self) -> bytes:
        self._pusher.drain(SNAPSHOT_DRAIN_SECONDS)
        return encode_pending(self._pusher.pending())

    def close(self) -> None:
        self._pusher.close(CLOSE_DRAIN_SECONDS)


class _ScorePartition(StatefulSinkPartition[ScoreRecord, None]):
    def __init__(self, settings: Settings) -> None:
        self._pusher = pusher_for(settings, heartbeat=False)

    def write_batch(self, values: list[ScoreRecord]) -> None:
        self._pusher.put_scores(values)

    def snapshot(self) -> None:
        return None  # scores are best-effort; the scores topic has them all

    def close(self) -> None:
        self._pusher.close(5.0)


class ApiAlertSink(FixedPartitionedSink[Alert, bytes]):
    """Pushes alerts to ``VIGIL_API_URL``; upstream items are ``("api", alert)``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return ["api-alerts"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: bytes | None
                   ) -> _AlertPartition:
        return _AlertPartition(self._settings, resume_state)


class ApiScoreSink(FixedPartitionedSink[ScoreRecord, None]):
    """Pushes aggregated scores to ``VIGIL_API_URL``; upstream items are ``("api", score)``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return ["api-scores"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ScorePartition:
        return _ScorePartition(self._settings)
