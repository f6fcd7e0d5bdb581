"""Live alerts as Server-Sent Events, resumable from ``alert_events``.

Ingest in this process wakes every subscriber at once (an asyncio.Event each); a short poll of
the events table also catches what other worker processes wrote. A subscriber always reads
*from the table*, after the last id it sent, so a wake-up that races an ingest, a slow client,
or a reconnect with ``Last-Event-ID`` never skips or repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
from litestar.response.sse import ServerSentEventMessage

from api._metrics import ApiMetrics
from api._store import AlertFilter, Store
from api.schemas import AlertView

POLL_SECONDS = 0.05  # bounds delivery latency for events written by another worker
KEEPALIVE_SECONDS = 15.0
BATCH = 500


class StreamEvent(msgspec.Struct):
    """The ``data`` of one SSE message; its ``id`` is the event id, its ``event`` is ``alert``."""

    kind: str  # created, updated, acknowledged, resolved
    alert: AlertView


class Broadcaster:
    """Wakes every live stream in this process when alerts change."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def subscribe(self) -> asyncio.Event:
        """A new wake-up flag for one stream."""
        ev = asyncio.Event()
        self._waiters.add(ev)
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        """Forget a closed stream."""
        self._waiters.discard(ev)

    def notify(self) -> None:
        """Called on the event loop after a write that appended events."""
        for ev in self._waiters:
            ev.set()


_encode = msgspec.json.Encoder().encode


async def alert_events(
    store: Store, broadcaster: Broadcaster, metrics: ApiMetrics, flt: AlertFilter,
    after: int | None,
) -> AsyncIterator[ServerSentEventMessage]:
    """Events after ``after`` (default: from now on) that match ``flt``, forever."""
    last = store.last_event_id() if after is None else after
    wake = broadcaster.subscribe()
    metrics.subscribers.inc()
    quiet_since = time.monotonic()
    try:
        yield ServerSentEventMessage(comment="vigil alert stream", retry=1000, data=None)
        while True:
            wake.clear()  # before reading, so a write after the read still wakes us
            events = store.events_after(last, BATCH)
            for e in events:
                last = e.event_id
                if flt.matches(e.alert):
                    metrics.streamed.inc()
                    quiet_since = time.monotonic()
                    yield ServerSentEventMessage(
                        data=_encode(StreamEvent(e.kind, e.alert)).decode(),
                        event="alert", id=e.event_id,
                    )
            if len(events) == BATCH:
                continue
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ServerSentEventMessage(comment="keepalive", data=None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    finally:
        broadcaster.unsubscribe(wake)
        metrics.subscribers.dec()
