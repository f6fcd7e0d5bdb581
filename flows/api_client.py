"""Pushing alerts and scores from the flow to the Vigil API, without ever losing an alert.

``ApiPusher`` is plain Python (a background thread and an httpx client), so it is tested
against a real API without Bytewax; flows.detect wraps it in a thin sink.

* **Alerts** queue in a bounded buffer and go out in batches of ``VIGIL_API_SINK_BATCH``
  once ``VIGIL_API_SINK_FLUSH_INTERVAL`` has passed since the first one waited. A failed push
  (API down, 5xx, timeout, 401) is retried in order with exponential backoff (0.1 s doubling
  to 5 s). A full buffer *blocks* the caller (backpressure on the flow) instead of dropping.
  Only a 422 (a batch the API will never accept) is given up, logged and counted: the alerts
  topic stays the source of truth. What is still pending at a snapshot becomes the sink's
  recovery state, so a crash re-sends it; the API de-duplicates on ``alert_id``.
* **Scores** are aggregated per sensor: between pushes (every ``VIGIL_API_SCORE_INTERVAL``)
  only the highest-scoring window of each sensor is kept, so the API sees every anomaly peak
  without one request per window. Scores are best-effort: new sensors beyond the buffer, and
  windows replaced by a higher one, are counted as dropped.
* A **heartbeat** goes out regularly so ``GET /ready`` can tell the flow is alive. Given a
  ``stats`` callable (flows.metrics.totals in the flow), it also carries the readings and
  dead letters per second since the previous heartbeat and the consumer lag, which the web
  page's status strip shows. An API too old to accept those fields gets bare heartbeats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import httpx
import msgspec
from prometheus_client import Counter, Gauge

from flows.metrics import FlowTotals
from flows.schemas import Alert, ScoreRecord

log = logging.getLogger("vigil.api_push")

PUSHED = Counter(
    "vigil_api_push_records_total", "Records accepted by the API, by kind.", ["kind"]
)
PUSH_FAILURES = Counter(
    "vigil_api_push_failures_total", "Failed pushes to the API (retried), by kind and reason.",
    ["kind", "reason"],
)
REJECTED = Counter(
    "vigil_api_push_rejected_total",
    "Alerts the API rejected as invalid (422); still on the alerts topic.",
)
SCORES_DROPPED = Counter(
    "vigil_api_scores_dropped_total",
    "Score records not pushed: aggregated away (a higher window of the same sensor was kept) "
    "or the buffer was full.", ["reason"],
)
PENDING = Gauge("vigil_api_push_pending_alerts", "Alerts waiting to be pushed to the API.")
BLOCKED = Counter(
    "vigil_api_push_blocked_seconds_total",
    "Time the flow waited because the alert buffer was full (API down or slow).",
)

_alerts_encoder = msgspec.json.Encoder()
_alerts_decoder = msgspec.json.Decoder(list[Alert])


class _Rejected(Exception):
    """The API answered 422: retrying the same batch cannot help."""


class ApiPusher:
    """Buffers alerts and scores and pushes them to the API from a background thread."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        buffer: int = 10_000,
        batch: int = 500,
        flush_interval: float = 0.1,
        score_interval: float = 5.0,
        heartbeat_interval: float = 5.0,
        source: str = "flow",
        timeout: float = 5.0,
        max_backoff: float = 5.0,
        stats: Callable[[], FlowTotals] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url, timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        self.buffer = buffer
        self.batch = batch
        self.flush_interval = flush_interval
        self.score_interval = score_interval
        self.heartbeat_interval = heartbeat_interval
        self.source = source
        self.max_backoff = max_backoff
        self._stats = stats
        self._last_totals: tuple[float, FlowTotals] | None = None  # (monotonic time, totals)
        self._alerts: deque[Alert] = deque()
        self._inflight: list[Alert] = []
        self._first_wait = 0.0  # monotonic time the oldest queued alert arrived
        self._scores: dict[str, ScoreRecord] = {}
        self._next_scores = time.monotonic() + score_interval
        self._next_heartbeat = time.monotonic()
        self._cond = threading.Condition()
        self._stopping = False
        self._backoff = 0.0
        self.pushed_alerts = 0
        self.failures = 0
        self._failed_kinds: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="vigil-api-push", daemon=True)
        self._thread.start()

    # -- called by the flow ------------------------------------------------------------------
    def put_alerts(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts; blocks while the buffer is full (never drops)."""
        with self._cond:
            for a in alerts:
                if self._pending_count() >= self.buffer:
                    t0 = time.monotonic()
                    log.warning("API push buffer full (%d alerts); waiting for %s",
                                self.buffer, self.url)
                    while self._pending_count() >= self.buffer:
                        self._cond.notify_all()
                        self._cond.wait(0.5)
                    BLOCKED.inc(time.monotonic() - t0)
                if not self._alerts:
                    self._first_wait = time.monotonic()
                self._alerts.append(a)
            PENDING.set(self._pending_count())
            self._cond.notify_all()

    def put_scores(self, scores: Iterable[ScoreRecord]) -> None:
        """Keep each sensor's highest score since the last push."""
        with self._cond:
            for s in scores:
                old = self._scores.get(s.sensor_id)
                if old is None:
                    if len(self._scores) >= self.buffer:
                        SCORES_DROPPED.labels("buffer_full").inc()
                        continue
                    self._scores[s.sensor_id] = s
                elif s.score >= old.score:
                    self._scores[s.sensor_id] = s
                    SCORES_DROPPED.labels("aggregated").inc()
                else:
                    SCORES_DROPPED.labels("aggregated").inc()

    def pending(self) -> list[Alert]:
        """Alerts not yet acknowledged by the API, oldest first (in-flight included)."""
        with self._cond:
            return [*self._inflight, *self._alerts]

    def drain(self, timeout: float) -> bool:
        """Wait until every queued alert is accepted; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._first_wait = 0.0  # no more batching delay: push now
            self._cond.notify_all()
            while self._pending_count():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 60.0) -> int:
        """Push what is pending (up to ``timeout``), stop; returns alerts left unpushed."""
        if not self.drain(timeout):
            log.error("%d alert(s) not pushed to %s before shutdown; they remain on the alerts "
                      "topic", self._pending_count(), self.url)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        self._client.close()
        return len(self.pending())

    # -- background thread -------------------------------------------------------------------
    def _pending_count(self) -> int:
        return len(self._alerts) + len(self._inflight)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    last = list(self._scores.values())
                    self._scores.clear()
                    break
                now = time.monotonic()
                due_alerts = bool(self._alerts) and (
                    len(self._alerts) >= self.batch
                    or now - self._first_wait >= self.flush_interval
                )
                due_scores = bool(self._scores) and now >= self._next_scores
                due_beat = self.heartbeat_interval > 0 and now >= self._next_heartbeat
                if not (due_alerts or due_scores or due_beat):
                    waits = [self._next_scores - now if self._scores else 1.0,
                             self._next_heartbeat - now if self.heartbeat_interval else 1.0]
                    if self._alerts:
                        waits.append(self._first_wait + self.flush_interval - now)
                    self._cond.wait(max(0.001, min(waits)))
                    continue
                if due_alerts:
                    n = min(self.batch, len(self._alerts))
                    self._inflight = [self._alerts.popleft() for _ in range(n)]
                    self._first_wait = time.monotonic() if self._alerts else 0.0
                scores = list(self._scores.values()) if due_scores else []
                if due_scores:
                    self._scores.clear()
                    self._next_scores = now + self.score_interval
            ok = True
            if due_alerts:
                ok = self._push_alerts()
            if ok and scores:
                ok = self._push_scores(scores)
            if ok and due_beat:
                ok = self._heartbeat()
                if ok:
                    self._next_heartbeat = time.monotonic() + self.heartbeat_interval
            if ok:
                self._backoff = 0.0
            else:
                self._backoff = min(self.max_backoff, max(0.1, self._backoff * 2))
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(self._backoff)
        if last:  # one last try for the final scores; they are best-effort
            self._push_scores(last)

    def _push_alerts(self) -> bool:
        batch = self._inflight
        try:
            ok = self._post("alerts", "/v1/alerts", _alerts_encoder.encode(batch))
        except _Rejected as exc:
            REJECTED.inc(len(batch))
            log.error("API rejected %d alert(s) as invalid, not retrying: %s", len(batch), exc)
            ok = True
        with self._cond:
            if ok:
                self.pushed_alerts += len(batch)
                PUSHED.labels("alerts").inc(len(batch))
                self._inflight = []
            else:  # keep order: retry the same batch first
                self._alerts.extendleft(reversed(self._inflight))
                self._inflight = []
                self._first_wait = 0.0
            PENDING.set(self._pending_count())
            self._cond.notify_all()
        return ok

    def _push_scores(self, scores: list[ScoreRecord]) -> bool:
        for i in range(0, len(scores), self.batch):
            chunk = scores[i:i + self.batch]
            try:
                if not self._post("scores", "/v1/scores", msgspec.json.encode(chunk)):
                    with self._cond:  # put back what was not sent, unless newer arrived
                        for s in scores[i:]:
                            self._scores.setdefault(s.sensor_id, s)
                    return False
            except _Rejected as exc:
                log.error("API rejected %d score record(s): %s", len(chunk), exc)
                SCORES_DROPPED.labels("rejected").inc(len(chunk))
                continue
            PUSHED.labels("scores").inc(len(chunk))
        return True

    def heartbeat_body(self) -> dict[str, object]:
        """The next heartbeat: the source, plus rates since the previous call when ``stats``
        was given (the first call only primes them) and the current lag."""
        body: dict[str, object] = {"source": self.source}
        if self._stats is None:
            return body
        now, totals = time.monotonic(), self._stats()
        if self._last_totals is not None:
            then, before = self._last_totals
            dt = now - then
            if dt > 0:
                body["readings_per_s"] = round(max(0.0, totals.readings - before.readings) / dt, 3)
                body["dead_letters_per_s"] = round(
                    max(0.0, totals.dead_letters - before.dead_letters) / dt, 3)
        if totals.lag_messages is not None:
            body["lag_messages"] = totals.lag_messages
        self._last_totals = (now, totals)
        return body

    def _heartbeat(self) -> bool:
        body = self.heartbeat_body()
        try:
            return self._post("heartbeat", "/v1/heartbeat", msgspec.json.encode(body))
        except _Rejected as exc:
            # An API from before the throughput fields: fall back to bare heartbeats rather
            # than stopping this thread (which also pushes the alerts).
            if self._stats is not None:
                log.warning("API rejected the heartbeat's throughput fields (%s); sending "
                            "bare heartbeats from now on", exc)
                self._stats = None
            else:
                log.error("API rejected a heartbeat: %s", exc)
            return True

    def _post(self, kind: str, path: str, payload: bytes) -> bool:
        """True when the API accepted; False to retry later; _Rejected on 422."""
        try:
            r = self._client.post(path, content=payload)
        except httpx.HTTPError as exc:
            self._failed(kind, type(exc).__name__, str(exc))
            return False
        if r.status_code < 300:
            return True
        if r.status_code == 422:
            raise _Rejected(r.text[:500])
        if r.status_code == 413 and self.batch > 1:
            self.batch = max(1, self.batch // 2)  # smaller batches fit the API's body limit
        self._failed(kind, str(r.status_code), r.text[:300])
        return False

    def _failed(self, kind: str, reason: str, detail: str) -> None:
        self.failures += 1
        PUSH_FAILURES.labels(kind, reason).inc()
        if kind not in self._failed_kinds or self.failures % 20 == 0:
            self._failed_kinds.add(kind)
            log.warning("push of %s to %s failed (%s: %s); retrying with backoff "
                        "(%d failures so far)", kind, self.url, reason, detail, self.failures)


def encode_pending(alerts: list[Alert]) -> bytes:
    """Sink recovery state: the alerts still to push."""
    return _alerts_encoder.encode(alerts)


def decode_pending(state: bytes | None) -> list[Alert]:
    """Inverse of ``encode_pending``."""
    return [] if not state else _alerts_decoder.decode(state)
