"""The API's SQLite database: alerts with their lifecycle, sensors, score history, events.

* WAL mode and a busy timeout, so several API workers share one file (one writer at a time,
  readers never blocked).
* Migrations are an ordered list applied at start inside ``BEGIN IMMEDIATE``; the applied ones
  are recorded in ``schema_migrations``, so starting twice (or two workers at once) is safe.
* Ingest is idempotent on ``alert_id``: the stored alert is a merge of everything the flow said
  (widest span, peak score, resolved once resolved), so a duplicate changes nothing and an
  ``open`` arriving after its ``resolved`` does not reopen it.
* Every change appends one row to ``alert_events``; its autoincrement id is the Server-Sent
  Events id, so ``Last-Event-ID`` resumes from the table without gaps.
* Times are stored as integer epoch milliseconds.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from api.schemas import AlertView, Heartbeat, ScorePoint, SensorStatus
from flows.schemas import Alert, Contributor, ScoreRecord

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    sensor_id TEXT NOT NULL,
    status TEXT NOT NULL,
    flow_status TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    score REAL NOT NULL,
    severity TEXT NOT NULL,
    detectors TEXT NOT NULL,
    contributors TEXT NOT NULL,
    model_version TEXT NOT NULL,
    windows INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    acknowledged_ms INTEGER,
    acknowledged_by TEXT,
    resolved_ms INTEGER,
    resolved_by TEXT,
    note TEXT
);
CREATE INDEX alerts_by_start ON alerts (start_ms DESC, alert_id DESC);
CREATE INDEX alerts_by_sensor ON alerts (sensor_id, start_ms DESC, alert_id DESC);
CREATE INDEX alerts_open_by_sensor ON alerts (sensor_id, status);
CREATE TABLE alert_events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE sensors (
    sensor_id TEXT PRIMARY KEY,
    last_seen_ms INTEGER,
    last_score_end_ms INTEGER,
    last_score REAL,
    threshold REAL,
    anomalous INTEGER,
    model_version TEXT
);
CREATE TABLE scores (
    sensor_id TEXT NOT NULL,
    window_end_ms INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    anomalous INTEGER NOT NULL,
    detectors TEXT NOT NULL,
    model_version TEXT NOT NULL,
    readings INTEGER NOT NULL,
    PRIMARY KEY (sensor_id, window_end_ms)
) WITHOUT ROWID;
CREATE TABLE heartbeats (
    source TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
"""),
    (2, """
ALTER TABLE heartbeats ADD COLUMN readings_per_s REAL;
ALTER TABLE heartbeats ADD COLUMN dead_letters_per_s REAL;
ALTER TABLE heartbeats ADD COLUMN lag_messages INTEGER;
"""),
]

_json = msgspec.json.Encoder()
_contributors = msgspec.json.Decoder(list[Contributor])
_strings = msgspec.json.Decoder(list[str])
_floats = msgspec.json.Decoder(dict[str, float])
_view = msgspec.json.Decoder(AlertView)
_cursor_type = msgspec.json.Decoder(tuple[int, str])


class CursorError(ValueError):
    """A pagination cursor that this API did not hand out."""


class NotFound(LookupError):
    """No row with that id."""


def to_ms(dt: datetime) -> int:
    """Aware datetime to epoch milliseconds."""
    return round(dt.timestamp() * 1000)


def from_ms(ms: int | None) -> datetime | None:
    """Epoch milliseconds to an aware UTC datetime (None stays None)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def now_ms() -> int:
    """Wall clock in epoch milliseconds."""
    return int(time.time() * 1000)


def encode_cursor(key: tuple[int, str]) -> str:
    """Opaque cursor for a sort key: base64url of its JSON."""
    return base64.urlsafe_b64encode(_json.encode(key)).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str]:
    """Inverse of ``encode_cursor``; CursorError on anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return _cursor_type.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise CursorError(
            "`cursor` is not a cursor from this API; pass `next_cursor` of the previous page"
        ) from None


@dataclass(frozen=True)
class AlertFilter:
    """Query filters; None means "any"."""

    sensor_id: str | None = None
    severity: str | None = None
    status: str | None = None
    detector: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, a: AlertView) -> bool:
        """The same filter applied in Python, for the live stream."""
        start, end = to_ms(a.start), to_ms(a.end)
        return (
            (self.sensor_id is None or a.sensor_id == self.sensor_id)
            and (self.severity is None or a.severity == self.severity)
            and (self.status is None or a.status == self.status)
            and (self.detector is None or self.detector in a.detectors)
            and (self.since_ms is None or end >= self.since_ms)
            and (self.until_ms is None or start < self.until_ms)
        )


@dataclass
class Event:
    """One row of ``alert_events``."""

    event_id: int
    kind: str
    alert: AlertView


def _row_view(r: sqlite3.Row) -> AlertView:
    return AlertView(
        alert_id=r["alert_id"],
        sensor_id=r["sensor_id"],
        status=r["status"],
        flow_status=r["flow_status"],
        start=from_ms(r["start_ms"]),  # type: ignore[arg-type]
        end=from_ms(r["end_ms"]),  # type: ignore[arg-type]
        score=r["score"],
        severity=r["severity"],
        detectors=_strings.decode(r["detectors"]),
        contributors=_contributors.decode(r["contributors"]),
        model_version=r["model_version"],
        windows=r["windows"],
        created_at=from_ms(r["created_ms"]),  # type: ignore[arg-type]
        updated_at=from_ms(r["updated_ms"]),  # type: ignore[arg-type]
        acknowledged_at=from_ms(r["acknowledged_ms"]),
        acknowledged_by=r["acknowledged_by"],
        resolved_at=from_ms(r["resolved_ms"]),
        resolved_by=r["resolved_by"],
        note=r["note"],
    )


_ALERT_COLUMNS = (
    "alert_id", "sensor_id", "status", "flow_status", "start_ms", "end_ms", "score", "severity",
    "detectors", "contributors", "model_version", "windows", "created_ms", "updated_ms",
    "acknowledged_ms", "acknowledged_by", "resolved_ms", "resolved_by", "note",
)
_UPSERT = (
    f"INSERT OR REPLACE INTO alerts ({', '.join(_ALERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_ALERT_COLUMNS))})"
)


def merge_alert(old: dict[str, Any] | None, a: Alert, at_ms: int) -> tuple[dict[str, Any], str]:
    """The stored row after ``a`` arrives, and the event kind ("" when nothing changed).

    Commutative enough for at-least-once delivery: the span only widens, the score is the
    peak, ``critical`` never downgrades, and once resolved (by the flow or an operator) an
    alert stays resolved whatever order the flow's records arrive in.
    """
    start, end = to_ms(a.start), to_ms(a.end)
    if old is None:
        resolved = a.status == "resolved"
        row = {
            "alert_id": a.alert_id, "sensor_id": a.sensor_id, "status": a.status,
            "flow_status": a.status, "start_ms": start, "end_ms": end, "score": a.score,
            "severity": a.severity, "detectors": _json.encode(a.detectors).decode(),
            "contributors": _json.encode(a.contributors).decode(),
            "model_version": a.model_version, "windows": a.windows, "created_ms": at_ms,
            "updated_ms": at_ms, "acknowledged_ms": None, "acknowledged_by": None,
            "resolved_ms": at_ms if resolved else None,
            "resolved_by": "flow" if resolved else None, "note": None,
        }
        return row, "created"
    row = dict(old)
    newer = end >= old["end_ms"]
    row["start_ms"] = min(old["start_ms"], start)
    row["end_ms"] = max(old["end_ms"], end)
    row["score"] = max(old["score"], a.score)
    row["windows"] = max(old["windows"], a.windows)
    if a.severity == "critical":
        row["severity"] = "critical"
    if newer:
        row["contributors"] = _json.encode(a.contributors).decode()
        row["model_version"] = a.model_version
    kind = "updated"
    if a.status == "resolved":
        row["flow_status"] = "resolved"
        if old["status"] != "resolved":
            row["status"] = "resolved"
            row["resolved_ms"] = at_ms
            row["resolved_by"] = "flow"
            kind = "resolved"
    if all(row[k] == old[k] for k in _ALERT_COLUMNS):
        return row, ""
    row["updated_ms"] = at_ms
    return row, kind


class Store:
    """One connection to the database file; safe to share between threads (one lock)."""

    def __init__(self, path: str | Path, score_retention_ms: int = 7 * 86_400_000) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.score_retention_ms = score_retention_ms
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 10000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and self.path != ":memory:":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    # -- plumbing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _write(self) -> _Tx:
        return _Tx(self)

    def migrate(self) -> list[int]:
        """Apply every migration not yet recorded; returns the versions applied now."""
        applied_now: list[int] = []
        with self._write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)"
            )
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                for stmt in filter(str.strip, sql.split(";")):
                    db.execute(stmt)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, now_ms())
                )
                applied_now.append(version)
        return applied_now

    def schema_version(self) -> int:
        """Highest applied migration."""
        with self._lock:
            return self._db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]

    def ping(self) -> None:
        """Raise sqlite3.Error if the database does not answer a read."""
        with self._lock:
            self._db.execute("SELECT count(*) FROM schema_migrations").fetchone()

    # -- alerts ------------------------------------------------------------------------------
    def ingest_alerts(self, alerts: Sequence[Alert]) -> tuple[list[Event], int]:
        """Merge a batch in one transaction; returns (events appended, unchanged count)."""
        at = now_ms()
        events: list[Event] = []
        unchanged = 0
        with self._write() as db:
            for a in alerts:
                r = db.execute("SELECT * FROM alerts WHERE alert_id = ?", (a.alert_id,)).fetchone()
                old = dict(r) if r is not None else None
                row, kind = merge_alert(old, a, at)
                if not kind:
                    unchanged += 1
                    continue
                db.execute(_UPSERT, [row[k] for k in _ALERT_COLUMNS])
                events.append(self._append_event(db, row, kind, at))
                db.execute(
                    "INSERT INTO sensors (sensor_id, last_seen_ms, model_version) VALUES (?,?,?) "
                    "ON CONFLICT (sensor_id) DO UPDATE SET "
                    "last_seen_ms = max(coalesce(last_seen_ms, 0), excluded.last_seen_ms), "
                    "model_version = coalesce(model_version, excluded.model_version)",
                    (a.sensor_id, row["end_ms"], a.model_version),
                )
        return events, unchanged

    def _append_event(self, db: sqlite3.Connection, row: dict[str, Any], kind: str,
                      at: int) -> Event:
        view = _row_view(row)  # type: ignore[arg-type]
        cur = db.execute(
            "INSERT INTO alert_events (alert_id, kind, at_ms, payload) VALUES (?,?,?,?)",
            (row["alert_id"], kind, at, _json.encode(view)),
        )
        return Event(cur.lastrowid or 0, kind, view)

    def update_lifecycle(
        self, alert_id: str, status: str, by: str, note: str | None
    ) -> tuple[AlertView, Event | None]:
        """Acknowledge or resolve; repeating the same change is a no-op (no event).

        A resolved alert cannot be acknowledged (ValueError says so).
        """
        at = now_ms()
        with self._write() as db:
            r = db.execute("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
            if r is None:
                raise NotFound(alert_id)
            row = dict(r)
            if row["status"] == status:
                return _row_view(r), None
            if row["status"] == "resolved":
                raise ValueError(
                    f"alert {alert_id} is already resolved (by {row['resolved_by']}); "
                    "it cannot be acknowledged"
                )
            row["status"] = status
            if status == "acknowledged":
                row["acknowledged_ms"], row["acknowledged_by"] = at, by
            else:
                row["resolved_ms"], row["resolved_by"] = at, by
            if note is not None:
                row["note"] = note
            row["updated_ms"] = at
            db.execute(_UPSERT, [row[k] for k in _ALERT_COLUMNS])
            event = self._append_event(db, row, status, at)
        return event.alert, event

    def get_alert(self, alert_id: str) -> AlertView:
        """One alert; NotFound if unknown."""
        with self._lock:
            r = self._db.execute("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        if r is None:
            raise NotFound(alert_id)
        return _row_view(r)

    def list_alerts(
        self, f: AlertFilter, limit: int, after: tuple[int, str] | None = None
    ) -> tuple[list[AlertView], tuple[int, str] | None]:
        """A page newest-first by (start, alert_id) and the key to continue after, if any.

        The sort key never changes for an alert, so walking pages while alerts arrive or
        change status never repeats or skips one that existed when the walk began.
        """
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("sensor_id", f.sensor_id), ("severity", f.severity),
                         ("status", f.status)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if f.detector is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(alerts.detectors) WHERE value = ?)")
            args.append(f.detector)
        if f.since_ms is not None:
            where.append("end_ms >= ?")
            args.append(f.since_ms)
        if f.until_ms is not None:
            where.append("start_ms < ?")
            args.append(f.until_ms)
        if after is not None:
            where.append("(start_ms < ? OR (start_ms = ? AND alert_id < ?))")
            args += [after[0], after[0], after[1]]
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ms DESC, alert_id DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = (rows[-1]["start_ms"], rows[-1]["alert_id"]) if more and rows else None
        return [_row_view(r) for r in rows], nxt

    def events_after(self, event_id: int, limit: int = 500) -> list[Event]:
        """Events with a larger id, oldest first: what a resuming stream has missed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, kind, payload FROM alert_events WHERE event_id > ? "
                "ORDER BY event_id LIMIT ?", (event_id, limit),
            ).fetchall()
        return [Event(r[0], r[1], _view.decode(r[2])) for r in rows]

    def last_event_id(self) -> int:
        """Newest event id (0 when there is none)."""
        with self._lock:
            return self._db.execute(
                "SELECT coalesce(max(event_id), 0) FROM alert_events"
            ).fetchone()[0]

    # -- scores and sensors ------------------------------------------------------------------
    def ingest_scores(self, records: Iterable[ScoreRecord]) -> int:
        """Store scores (re-sent windows overwrite), update sensors, prune old history."""
        stored = 0
        touched: set[str] = set()
        with self._write() as db:
            for s in records:
                end = to_ms(s.window_end)
                db.execute(
                    "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?)",
                    (s.sensor_id, end, to_ms(s.window_start), s.score, s.threshold,
                     int(s.anomalous), _json.encode(s.detectors).decode(), s.model_version,
                     s.readings),
                )
                db.execute(
                    "INSERT INTO sensors VALUES (?,?,?,?,?,?,?) ON CONFLICT (sensor_id) DO UPDATE "
                    "SET last_seen_ms = max(coalesce(last_seen_ms, 0), excluded.last_seen_ms), "
                    "last_score_end_ms = excluded.last_score_end_ms, "
                    "last_score = excluded.last_score, threshold = excluded.threshold, "
                    "anomalous = excluded.anomalous, model_version = excluded.model_version "
                    "WHERE last_score_end_ms IS NULL "
                    "OR excluded.last_score_end_ms >= last_score_end_ms",
                    (s.sensor_id, end, end, s.score, s.threshold, int(s.anomalous),
                     s.model_version),
                )
                touched.add(s.sensor_id)
                stored += 1
            for sensor in touched:
                db.execute(
                    "DELETE FROM scores WHERE sensor_id = ? AND window_end_ms < ("
                    "SELECT max(window_end_ms) FROM scores WHERE sensor_id = ?) - ?",
                    (sensor, sensor, self.score_retention_ms),
                )
        return stored

    def scores(
        self, sensor_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> tuple[list[ScorePoint], bool]:
        """Scores of windows ending in [since, until), oldest first; (items, truncated)."""
        sql = "SELECT * FROM scores WHERE sensor_id = ?"
        args: list[Any] = [sensor_id]
        if since_ms is not None:
            sql += " AND window_end_ms >= ?"
            args.append(since_ms)
        if until_ms is not None:
            sql += " AND window_end_ms < ?"
            args.append(until_ms)
        sql += " ORDER BY window_end_ms LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        points = [
            ScorePoint(
                window_start=from_ms(r["window_start_ms"]),  # type: ignore[arg-type]
                window_end=from_ms(r["window_end_ms"]),  # type: ignore[arg-type]
                score=r["score"], threshold=r["threshold"], anomalous=bool(r["anomalous"]),
                detectors=_floats.decode(r["detectors"]), model_version=r["model_version"],
                readings=r["readings"],
            )
            for r in rows[:limit]
        ]
        return points, len(rows) > limit

    _SENSOR_SQL = (
        "SELECT s.*, (SELECT count(*) FROM alerts a WHERE a.sensor_id = s.sensor_id "
        "AND a.status != 'resolved') AS open_alerts FROM sensors s"
    )

    @staticmethod
    def _sensor(r: sqlite3.Row) -> SensorStatus:
        return SensorStatus(
            sensor_id=r["sensor_id"], last_seen=from_ms(r["last_seen_ms"]),
            last_score=r["last_score"], threshold=r["threshold"],
            anomalous=None if r["anomalous"] is None else bool(r["anomalous"]),
            model_version=r["model_version"], open_alerts=r["open_alerts"],
        )

    def sensor(self, sensor_id: str) -> SensorStatus:
        """One sensor's status; NotFound if the API never heard of it."""
        with self._lock:
            r = self._db.execute(
                self._SENSOR_SQL + " WHERE s.sensor_id = ?", (sensor_id,)
            ).fetchone()
        if r is None:
            raise NotFound(sensor_id)
        return self._sensor(r)

    def sensors(self, limit: int, after: str | None) -> tuple[list[SensorStatus], str | None]:
        """A page of sensors by id, and the id to continue after, if any."""
        sql, args = self._SENSOR_SQL, []
        if after is not None:
            sql += " WHERE s.sensor_id > ?"
            args.append(after)
        sql += " ORDER BY s.sensor_id LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [self._sensor(r) for r in rows], (rows[-1]["sensor_id"] if more else None)

    # -- heartbeats --------------------------------------------------------------------------
    def heartbeat(self, beat: Heartbeat) -> None:
        """Record a sign of life from a flow worker, with the throughput it reported."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO heartbeats (source, at_ms, readings_per_s, "
                "dead_letters_per_s, lag_messages) VALUES (?, ?, ?, ?, ?)",
                (beat.source, now_ms(), beat.readings_per_s, beat.dead_letters_per_s,
                 beat.lag_messages),
            )

    def last_heartbeat(self) -> tuple[Heartbeat, int] | None:
        """The newest heartbeat and when it arrived (epoch ms), or None."""
        with self._lock:
            r = self._db.execute(
                "SELECT source, at_ms, readings_per_s, dead_letters_per_s, lag_messages "
                "FROM heartbeats ORDER BY at_ms DESC LIMIT 1"
            ).fetchone()
        if r is None:
            return None
        return Heartbeat(r[0], r[2], r[3], r[4]), r[1]


class _Tx:
    """``with store._write() as db``: the lock plus a ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        try:
            self._store._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._store._lock.release()
            raise
        return self._store._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._store._lock.release()
