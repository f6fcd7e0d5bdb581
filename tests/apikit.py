"""Helpers for API tests: alert factories, a real uvicorn server in a thread, an SSE reader."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import uvicorn
from litestar import Litestar

from flows.schemas import Alert, Contributor, ScoreRecord

T0 = datetime(2024, 5, 1, tzinfo=UTC)
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def alert(n: int, *, sensor: str = "pump-1", status: str = "open", minutes: int | None = None,
          severity: str = "warning", detectors: tuple[str, ...] = ("zscore",),
          score: float = 2.0, end_minutes: int = 1) -> Alert:
    """Alert number ``n``; its start is T0 + ``minutes`` (default ``n``) minutes."""
    start = T0 + timedelta(minutes=n if minutes is None else minutes)
    return Alert(
        alert_id=f"a{n:05d}", sensor_id=sensor, status=status,  # type: ignore[arg-type]
        start=start, end=start + timedelta(minutes=end_minutes), score=score,
        severity=severity, detectors=list(detectors),  # type: ignore[arg-type]
        contributors=[Contributor("pressure", score)], model_version="zscore-1",
    )


def score(sensor: str, minute: int, value: float = 0.5) -> ScoreRecord:
    """A one-minute window ending T0 + ``minute`` minutes."""
    end = T0 + timedelta(minutes=minute)
    return ScoreRecord(
        sensor_id=sensor, window_start=end - timedelta(minutes=1), window_end=end, score=value,
        threshold=1.0, anomalous=value >= 1.0, detectors={"zscore": value}, contributors=[],
        readings=6, model_version="zscore-1",
    )


def body(records: list) -> bytes:
    """JSON body of a batch."""
    return msgspec.json.encode(records)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Litestar, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` over real HTTP with uvicorn (on a free port by default); yields its URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1,
        lifespan="on",
    ))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class SseEvent:
    """One parsed Server-Sent Event."""

    id: int | None
    event: str | None
    data: str
    received: float  # time.monotonic() when its last line arrived


def read_events(url: str, n: int, headers: dict[str, str] | None = None,
                timeout: float = 10, on_open: object = None) -> list[SseEvent]:
    """Open the stream, call ``on_open()`` once it answers, return its first ``n`` events."""
    out: list[SseEvent] = []
    fields: dict[str, str] = {}
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client, client.stream(
        "GET", url, headers=headers or {}
    ) as r:
        r.raise_for_status()
        if callable(on_open):
            on_open()
        for line in r.iter_lines():
            if line == "":
                if "data" in fields:
                    out.append(SseEvent(
                        int(fields["id"]) if "id" in fields else None, fields.get("event"),
                        fields["data"], time.monotonic(),
                    ))
                    if len(out) >= n:
                        break
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    return out
