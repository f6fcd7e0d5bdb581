"""Helpers for the fault scenarios: a fault-injecting TCP proxy, a dedicated broker whose
clients all go through such a proxy, a steady producer, an API process, and the exact
reconciliation every scenario ends with.

The fleet's readings are in order per sensor and scored in tumbling windows, so each reading
feeds exactly one window: ``sum(readings of distinct (sensor, window) scores)`` must equal the
readings produced. A last *sentinel* reading per sensor, a day later, closes every real
window in a flow that keeps running (its own window stays open and is not counted).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from integration import ROOT, produce, read_decoded, wait_for

from bench.broker import free_port, tansu_binary
from flows.schemas import Alert, DeadLetter, Reading, ScoreRecord, encoder

LONG = os.environ.get("VIGIL_TEST_LONG", "") not in ("", "0")
T0 = 1_700_000_000_000
# Tumbling 10 s windows, z-score with a low alert level: alerts within a minute of data.
TUMBLING = {
    "window_length": "10s", "window_hop": "10s", "allowed_lateness": "2s",
    "max_future": "36500d", "detectors": "zscore", "zscore_warmup": "5",
    "alert_likelihood": "0.9", "alert_open_after": "1", "calibration_warmup": "10",
    "calibration_short": "2",
}


def fleet(sensors: int, seconds: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    """1 Hz readings of ``sensors`` sensors, every third one with a level shift now and then,
    then one sentinel per sensor a day later (``is_sentinel``)."""
    rng = random.Random(seed)
    out = []
    for i in range(seconds):
        for s in range(sensors):
            shift = 30.0 if (i // 150) % 2 == 1 and s % 3 == 0 and i % 150 < 30 else 0.0
            r = Reading(f"m{s}", T0 + i * 1000,
                        {"t": 50 + rng.gauss(0, 1) + shift, "p": 3 + rng.gauss(0, 0.1)})
            out.append((r.sensor_id.encode(), encoder.encode(r)))
    for s in range(sensors):
        r = Reading(f"m{s}", T0 + seconds * 1000 + 86_400_000, {"t": 50.0, "p": 3.0})
        out.append((r.sensor_id.encode(), encoder.encode(r)))
    return out


def real_readings(records: list[tuple[bytes, bytes]], sensors: int) -> int:
    """Readings that must be scored: all but the sentinels."""
    return len(records) - sensors


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``: ``cut()`` drops every connection and
    refuses new ones (a network outage), ``restore()`` ends it, ``delay`` slows every chunk
    forwarded towards the client (a slow peer)."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.delay = 0.0
        self._down = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._listen()

    def _listen(self) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_client and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns -= {src, dst}

    def cut(self) -> None:
        """Close the listener and every open connection: clients see resets, then refusals."""
        if self._server is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # port listening for as long as that accept() waits
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._listen()

    def close(self) -> None:
        """Stop for good."""
        self._stop.set()
        self.cut()


class ProxiedBroker:
    """A tansu broker of its own whose advertised address is a FaultProxy, so *every* client
    (the flow, the test's producer and readers) reaches it only through the proxy."""

    def __init__(self) -> None:
        self.broker_port = free_port()
        self.proxy = FaultProxy(self.broker_port)
        self.bootstrap = f"127.0.0.1:{self.proxy.port}"
        self._dir = tempfile.mkdtemp(prefix="vigil-proxied-tansu-")
        url = f"tcp://127.0.0.1:{self.broker_port}"
        with (Path(self._dir) / "tansu.log").open("wb") as log:
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                 f"tcp://127.0.0.1:{self.proxy.port}", "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        assert wait_for(lambda: _lists(admin), 15), "proxied tansu did not start"

    def unique_topics(self, prefix: str, topics: dict[str, int]) -> dict[str, str]:
        """Same as TestBroker.unique_topics, through the proxy."""
        from bench.broker import ExternalBroker

        return ExternalBroker(self.bootstrap).unique_topics(prefix, topics)

    def stop(self) -> None:
        """Stop broker and proxy."""
        self.proxy.close()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _lists(admin: object) -> bool:
    try:
        admin.list_topics(timeout=1)  # type: ignore[attr-defined]
        return True
    except Exception:
        return False


class SteadyProducer(threading.Thread):
    """Produces ``records`` at ``rate``/s in the background (librdkafka buffers outages)."""

    def __init__(self, bootstrap: str, topic: str, records: list, rate: float) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, records, rate)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            produce(*self.args, quiet=True)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float) -> None:
        """Wait for every record to be acknowledged."""
        self.join(timeout)
        assert not self.is_alive(), "producer did not finish"
        assert self.error is None, self.error


def start_api(db: Path, port: int, log: Path, token: str, **settings: str) -> subprocess.Popen:
    """``python -m api`` as a process, waited for until /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update({"VIGIL_API_DB": str(db), "VIGIL_API_PORT": str(port),
                "VIGIL_API_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 30), log.read_text()[-2000:]
    return proc


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Outcome:
    """What one run left on the topics (and in the API), de-duplicated and counted."""

    scores: dict[tuple[str, int], ScoreRecord] = field(default_factory=dict)
    score_records: int = 0
    alert_events: Counter = field(default_factory=Counter)  # (alert_id, status) -> copies
    dead: list[DeadLetter] = field(default_factory=list)
    api_ids: list[str] = field(default_factory=list)

    @property
    def scored_readings(self) -> int:
        """Readings in distinct (sensor, window) scores."""
        return sum(s.readings for s in self.scores.values())

    @property
    def alert_ids(self) -> set[str]:
        """Distinct alert ids on the topic."""
        return {a for a, _ in self.alert_events}


def outcome(bootstrap: str, topics: dict[str, str], api_url: str | None = None,
            token: str = "") -> Outcome:
    """Read the output topics (and the API's alerts) once."""
    out = Outcome()
    for _, s in read_decoded(bootstrap, topics["scores"], ScoreRecord, timeout=15):
        out.score_records += 1
        out.scores[(s.sensor_id, round(s.window_end.timestamp() * 1000))] = s
    for _, a in read_decoded(bootstrap, topics["alerts"], Alert, timeout=15):
        out.alert_events[(a.alert_id, a.status)] += 1
    out.dead = [d for _, d in read_decoded(bootstrap, topics["dead"], DeadLetter, timeout=15)]
    if api_url:
        cursor = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{api_url}/v1/alerts", params=params, timeout=10,
                             headers={"Authorization": f"Bearer {token}"}).json()
            out.api_ids += [a["alert_id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    return out


def wait_complete(bootstrap: str, topics: dict[str, str], expected: int, timeout: float,
                  api_url: str | None = None, token: str = "") -> Outcome:
    """Poll until every expected reading is in a score (and the API has every topic alert)."""
    deadline = time.monotonic() + timeout
    while True:
        got = outcome(bootstrap, topics, api_url, token)
        done = got.scored_readings + len(got.dead) >= expected and (
            api_url is None or set(got.api_ids) >= got.alert_ids)
        if done or time.monotonic() > deadline:
            return got
        time.sleep(2)


def kill_in_snapshot(proc: subprocess.Popen, recovery: Path, timeout: float = 10) -> bool:
    """SIGKILL ``proc`` the moment its recovery store changes on disk, i.e. while Bytewax is
    writing a snapshot (or within a few ms of its commit). False if none began in time
    (then it is killed anyway)."""

    def stamp() -> tuple:
        out = []
        for f in sorted(recovery.glob("part-*")):
            with contextlib.suppress(OSError):
                st = f.stat()
                out.append((f.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    before = stamp()
    deadline = time.monotonic() + timeout
    hit = False
    while time.monotonic() < deadline and proc.poll() is None:
        if stamp() != before:
            hit = True
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return hit


def flow_metric(port: int, name: str) -> float | None:
    """One unlabelled sample of the flow's /metrics (None when unreachable or absent)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
