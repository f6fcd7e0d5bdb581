"""The whole Vigil stack as local processes, without Docker: ``python -m bench.stack up``.

Starts, in order, and waits for each to be ready before the next:

1. a Kafka-protocol broker (tansu, in memory, from the ``dev`` extra) with Vigil's topics,
   dead-letter topic included (or ``--brokers`` to use one that already runs, e.g. Redpanda);
2. the alerts API (``python -m api``, with the web page at ``/ui/``) on a fresh SQLite file,
   with a generated token;
3. the detection flow (``python -m bytewax.run flows.detect``) with a recovery store, its
   Prometheus metrics port, and pushing alerts to the API;
4. the simulator (``python -m flows.simulator --produce``) feeding the readings topic.

It then prints where everything is and supervises: Ctrl-C or SIGTERM stops the processes in
the reverse order (simulator, flow, API, broker), each with its own graceful signal, and
exits 0. A child that dies on its own stops the stack with its log tail and exit status 1.

Any ``VIGIL_*`` setting in the environment reaches the API and the flow (for example
``VIGIL_DETECTORS=zscore`` for alerts within seconds), except those the stack sets itself:
brokers, topics, API URL/token/port/database and the metrics port. The broker keeps data in
memory, so every ``up`` starts from empty topics, a fresh recovery store and a fresh API
database; logs stay in the state folder after a stop. The same file is what the end-to-end
test (tests/test_stack.py) drives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from bench.broker import (
    BrokerError,
    ExternalBroker,
    TestBroker,
    default_topics,
    free_port,
    port_in_use,
)
from flows.cli import non_negative_float, positive_duration, positive_int
from flows.settings import Settings, SettingsError, parse_brokers

ROOT = Path(__file__).resolve().parents[1]
# Settings the stack decides; a value in the caller's environment would contradict it.
OWNED = (
    "VIGIL_BROKERS", "VIGIL_READINGS_TOPIC", "VIGIL_ALERTS_TOPIC", "VIGIL_SCORES_TOPIC",
    "VIGIL_DEAD_LETTER_TOPIC", "VIGIL_API_URL", "VIGIL_API_TOKEN", "VIGIL_API_DB",
    "VIGIL_API_HOST", "VIGIL_API_PORT", "VIGIL_METRICS_PORT",
)


MARKER = ".vigil-stack"  # marks a folder this command made, so it may empty it again


class StackError(RuntimeError):
    """Something the operator can fix (code 2: a port in use, bad settings) or a part that
    failed to start (code 1); the message says which and what to do."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _port(text: str) -> int:
    value = int(text) if text.strip().isdigit() else -1
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535, or 0 for any free)")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.stack",
        description="Run the whole Vigil stack (broker, topics, API, flow, simulator) as local "
        "processes, without Docker. Ctrl-C stops everything.",
        epilog="examples:\n"
        "  python -m bench.stack up\n"
        "  VIGIL_DETECTORS=zscore python -m bench.stack up --sensors 20 --rate 500\n"
        "  python -m bench.stack up --brokers localhost:19092 --no-simulator\n\n"
        "Other VIGIL_* variables in the environment reach the API and the flow "
        "(docs/configuration.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="up", required=True)
    up = sub.add_parser(
        "up", help="start everything and run until Ctrl-C / SIGTERM",
        description="Start broker, topics, API, flow and simulator; stop them on Ctrl-C.",
    )
    up.add_argument("--state-dir", type=Path, default=Path(".vigil-stack"), metavar="DIR",
                    help="recovery store, API database and logs (default .vigil-stack); "
                    "emptied at start")
    up.add_argument("--brokers", metavar="HOST:PORT,...",
                    help="use this running broker instead of starting tansu")
    up.add_argument("--broker-port", type=_port, default=9092,
                    help="port of the local tansu broker (default 9092; 0 = any free)")
    up.add_argument("--api-port", type=_port, default=8000,
                    help="port of the API (default 8000; 0 = any free)")
    up.add_argument("--metrics-port", type=_port, default=9100,
                    help="port of the flow's /metrics (default 9100; 0 = any free)")
    up.add_argument("--token", help="API write token (default: a new random one)")
    up.add_argument("--partitions", type=positive_int, default=4,
                    help="partitions of the readings topic (default 4)")
    up.add_argument("--snapshot-interval", type=positive_int, default=10, metavar="S",
                    help="seconds between recovery snapshots (default 10)")
    up.add_argument("--workers", type=positive_int, default=1,
                    help="Bytewax workers in the flow process (-w, default 1)")
    sim = up.add_argument_group("simulator")
    sim.add_argument("--no-simulator", action="store_true",
                     help="do not start the simulator (produce readings yourself)")
    sim.add_argument("--sensors", type=positive_int, default=50,
                     help="simulated sensors (default 50)")
    sim.add_argument("--rate", type=non_negative_float, default=200.0,
                     help="readings per second (default 200; 0 = as fast as possible)")
    sim.add_argument("--interval", type=positive_duration, default=timedelta(seconds=10),
                     metavar="DURATION", help="event time between two readings of a sensor "
                     "(default 10s)")
    sim.add_argument("--anomaly-rate", type=non_negative_float, default=6.0, metavar="R",
                     help="injected anomalies per sensor per simulated day (default 6)")
    return p


@dataclass
class Child:
    """One supervised process: how to stop it gracefully and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: signal.Signals
    may_exit: bool = False  # the simulator may finish on its own

    def tail(self, lines: int = 20) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(log is empty)"


@dataclass
class Stack:
    """The running stack; ``stop()`` ends it in reverse start order."""

    state_dir: Path
    broker: TestBroker | ExternalBroker | None = None
    children: list[Child] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str],
              stop_signal: signal.Signals, may_exit: bool = False) -> Child:
        """Start ``argv`` in its own session (a terminal's Ctrl-C reaches only the stack,
        which then stops the children in order), logging to ``logs/NAME.log``."""
        log = self.state_dir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        child = Child(name, proc, log, stop_signal, may_exit)
        self.children.append(child)
        return child

    def failed(self) -> Child | None:
        """A child that exited although it should still run."""
        for c in self.children:
            code = c.proc.poll()
            if code is not None and (code != 0 or not c.may_exit):
                return c
        return None

    def stop(self, say: Callable[[str], None] = print) -> None:
        """Stop every child newest first (graceful signal, then SIGTERM, then SIGKILL)."""
        for c in reversed(self.children):
            if c.proc.poll() is None:
                say(f"stopping {c.name} (pid {c.proc.pid})")
            for sig, wait in ((c.stop_signal, 15.0), (signal.SIGTERM, 5.0),
                              (signal.SIGKILL, 5.0)):
                if c.proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=wait)
        self.children.clear()
        if isinstance(self.broker, TestBroker):
            say("stopping broker")
            self.broker.stop()
        self.broker = None


def _wait_http(url: str, child: Child, timeout: float) -> None:
    """Wait until ``url`` answers 200; fail early, with the log, if the child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise StackError(
                f"{child.name} exited with status {child.proc.returncode} while starting; "
                f"its log ({child.log}):\n{child.tail()}", code=1,
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise StackError(
        f"{child.name} did not answer {url} within {timeout:g}s:\n{child.tail()}", code=1
    )


def _pick(port: int, what: str, flag: str) -> int:
    if port == 0:
        return free_port()
    if port_in_use(port):
        raise StackError(
            f"port {port} ({what}) is already in use; stop what listens there or pass "
            f"{flag} with another port (0 picks a free one)"
        )
    return port


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """The caller's environment with the stack's own VIGIL_* values on top."""
    env = {k: v for k, v in os.environ.items() if k not in OWNED}
    env.update(settings)
    env["PYTHONUNBUFFERED"] = "1"
    # the children must import this checkout's packages, wherever the stack was started
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def up(args: argparse.Namespace, stop: threading.Event, say: Callable[[str], None] = print
       ) -> int:
    """Bring the stack up, supervise until ``stop`` is set, then bring it down."""
    try:
        base = Settings.from_env({k: v for k, v in os.environ.items() if k not in OWNED})
    except SettingsError as exc:
        raise StackError(str(exc)) from None
    ours = [k for k in OWNED if k in os.environ]
    if ours:
        say(f"note: {', '.join(ours)} from the environment ignored; the stack sets them")
    state = args.state_dir.resolve()
    if state.exists() and any(state.iterdir()) and not (state / MARKER).exists():
        raise StackError(
            f"--state-dir {state} is not empty and was not made by `python -m bench.stack`; "
            "it is emptied at every start, so pick a new folder"
        )
    api_port = _pick(args.api_port, "API", "--api-port")
    metrics_port = _pick(args.metrics_port, "flow metrics", "--metrics-port")
    if api_port == metrics_port:
        raise StackError("--api-port and --metrics-port must differ")
    if state.exists():
        shutil.rmtree(state)  # the broker is in memory: old offsets and alerts mean nothing
    (state / "logs").mkdir(parents=True)
    (state / MARKER).write_text("made by python -m bench.stack; emptied at every start\n")
    stack = Stack(state)
    topics = {**default_topics(base), base.readings_topic: args.partitions}
    token = args.token or secrets.token_urlsafe(18)
    try:
        if args.brokers:
            try:
                brokers = ",".join(parse_brokers(args.brokers))
            except ValueError as exc:
                raise StackError(f"--brokers: {exc}") from None
            stack.broker = ExternalBroker(brokers, base.kafka_config())
            kind = "existing broker"
        else:
            port = _pick(args.broker_port, "broker", "--broker-port")
            stack.broker = TestBroker(port=port).start()
            kind = "tansu, in memory"
        created = stack.broker.create_topics(topics)
        bootstrap = stack.broker.bootstrap

        api_url = f"http://127.0.0.1:{api_port}"
        common = {
            "VIGIL_BROKERS": bootstrap,
            "VIGIL_READINGS_TOPIC": base.readings_topic,
            "VIGIL_ALERTS_TOPIC": base.alerts_topic,
            "VIGIL_SCORES_TOPIC": base.scores_topic,
            "VIGIL_DEAD_LETTER_TOPIC": base.dead_letter_topic,
            "VIGIL_API_TOKEN": token,
        }
        api = stack.start("api", [sys.executable, "-m", "api"], child_env({
            **common, "VIGIL_API_DB": str(state / "api.sqlite3"),
            "VIGIL_API_HOST": "127.0.0.1", "VIGIL_API_PORT": str(api_port),
        }), signal.SIGINT)
        _wait_http(f"{api_url}/health", api, 30)

        from bytewax.recovery import init_db_dir

        recovery = state / "recovery"
        recovery.mkdir()
        init_db_dir(recovery, 1)
        # SIGTERM ends the flow at once, as `docker stop` does; it would resume from its last
        # snapshot (alerts at-least-once, same ids). SIGINT would surface as a Rust panic.
        flow = stack.start("flow", [
            sys.executable, "-m", "bytewax.run", "flows.detect", "-w", str(args.workers),
            "-r", str(recovery), "-s", str(args.snapshot_interval), "-b", "0",
        ], child_env({**common, "VIGIL_API_URL": api_url,
                      "VIGIL_METRICS_PORT": str(metrics_port)}), signal.SIGTERM)
        _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", flow, 60)

        if not args.no_simulator:
            sim = stack.start("simulator", [
                sys.executable, "-m", "flows.simulator", "--produce", "--brokers", bootstrap,
                "--topic", base.readings_topic, "--rate", f"{args.rate:g}",
                "--sensors", str(args.sensors),
                "--interval", f"{args.interval.total_seconds():g}s",
                "--anomaly-rate", f"{args.anomaly_rate:g}", "--quiet",
            ], child_env(common), signal.SIGINT, may_exit=True)
            time.sleep(0.2)
            if sim.proc.poll() not in (None, 0):
                raise StackError(f"the simulator failed to start:\n{sim.tail()}", code=1)

        stack.info = {
            "brokers": bootstrap, "broker": kind,
            "topics": created,
            "api_url": api_url, "api_token": token, "ui_url": f"{api_url}/ui/",
            "reads_need_token": base.api_auth_reads,
            "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
            "state_dir": str(state), "recovery": str(recovery),
            "logs": {c.name: str(c.log) for c in stack.children},
            "pids": {c.name: c.proc.pid for c in stack.children} | (
                {"broker": stack.broker.process.pid}
                if isinstance(stack.broker, TestBroker) and stack.broker.process else {}
            ),
            "simulator": None if args.no_simulator else {
                "sensors": args.sensors, "rate": args.rate,
                "interval_s": args.interval.total_seconds(),
            },
        }
        (state / "stack.json").write_text(json.dumps(stack.info, indent=2) + "\n")
        say(summary(stack.info))
        return _supervise(stack, stop, say)
    except BrokerError as exc:
        stack.stop(say)
        raise StackError(str(exc), code=1) from None
    except BaseException:
        stack.stop(say)
        raise


def _supervise(stack: Stack, stop: threading.Event, say: Callable[[str], None]) -> int:
    code = 0
    while not stop.wait(0.5):
        broker = stack.broker
        if isinstance(broker, TestBroker) and not broker.running:
            say(f"error: the broker exited unexpectedly:\n{broker.log_tail()}")
            code = 1
            break
        dead = stack.failed()
        if dead is not None:
            say(f"error: {dead.name} exited with status {dead.proc.returncode}; "
                f"its log ({dead.log}):\n{dead.tail()}")
            code = 1
            break
    say("stopping the stack")
    stack.stop(say)
    say(f"stopped; logs are in {stack.state_dir / 'logs'}")
    return code


def summary(info: dict[str, Any]) -> str:
    """Where everything is, as printed once the stack is up."""
    topics = ", ".join(f"{n} ({p})" for n, p in info["topics"].items())
    sim = info["simulator"]
    lines = [
        "Vigil stack is up. Ctrl-C stops everything.",
        "",
        f"  broker ({info['broker']}):  {info['brokers']}",
        f"  topics:       {topics}",
        f"  API:          {info['api_url']}   (docs {info['api_url']}/schema, "
        f"metrics {info['api_url']}/metrics)",
        f"  web page:     {info['ui_url']}   (live alerts, sensor scores, flow status)",
        f"  API token:    {info['api_token']}" + (
            "   (reads need it too: VIGIL_API_AUTH_READS)" if info["reads_need_token"] else ""),
        f"  flow metrics: {info['metrics_url']}",
        "  simulator:    " + (
            f"{sim['sensors']} sensors, {sim['rate']:g} readings/s, one per sensor every "
            f"{sim['interval_s']:g}s of event time" if sim else "not started (--no-simulator)"
        ),
        f"  state, logs:  {info['state_dir']}  (logs/api.log, logs/flow.log, ...)",
        "",
        "Try:",
        f"  curl -s '{info['api_url']}/v1/alerts?limit=5'" + (
            f" -H 'Authorization: Bearer {info['api_token']}'" if info["reads_need_token"]
            else ""),
        f"  curl -s {info['metrics_url']} | grep ^vigil_readings_total",
        f"  export VIGIL_BROKERS={info['brokers']} VIGIL_API_URL={info['api_url']} "
        f"VIGIL_API_TOKEN={info['api_token']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.stack``; exit 0 after a requested stop, 1 on a failure, 2 on misuse."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        return up(args, stop, say)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
