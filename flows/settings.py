"""One settings object for every Vigil process, read from ``VIGIL_*`` environment variables.

Twelve-factor: nothing is read from files, every field has a default that runs the embedded
demo, and ``Settings.from_env()`` validates everything at start, reporting *all* problems in
one error so an operator fixes them in one go. ``docs/configuration.md`` is checked against
this module by a test, so the two cannot drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.windows import WindowSpec

PREFIX = "VIGIL_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# what VIGIL_DETECTORS may list
DETECTOR_NAMES = ("hst", "lstm_ae", "seasonal", "novelty", "corr", "zscore")
_BROKER = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class SettingsError(ValueError):
    """Raised when one or more ``VIGIL_*`` variables are invalid; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid Vigil settings:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def parse_duration(text: str) -> timedelta:
    """Parse ``500ms``, ``30s``, ``5m``, ``1h``, ``2d`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not a duration; use a number with a unit, e.g. 500ms, 30s, 5m, 1h"
        )
    return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_brokers(text: str) -> tuple[str, ...]:
    """Parse a comma-separated ``host:port`` list; empty means "no broker, embedded mode"."""
    items = tuple(b.strip() for b in text.split(",") if b.strip())
    bad = [b for b in items if not _BROKER.match(b) or not 0 < int(b.rsplit(":", 1)[1]) < 65536]
    if bad:
        raise ValueError(
            f"cannot parse broker(s) {', '.join(map(repr, bad))}; "
            "expected comma-separated host:port, e.g. localhost:9092,redpanda:9092"
        )
    return items


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class Settings:
    """Everything a Vigil process can be told. Field name ``x_y`` is variable ``VIGIL_X_Y``."""

    # --- Kafka / Redpanda -------------------------------------------------------------------
    brokers: tuple[str, ...] = _doc(
        "Comma-separated Kafka/Redpanda bootstrap servers. Empty runs the embedded simulated "
        "fleet and prints alerts to stdout instead of using a broker.",
        default=(),
    )
    readings_topic: str = _doc("Topic the flow reads sensor readings from.", default="readings")
    alerts_topic: str = _doc("Topic alerts are written to, keyed by sensor_id.", default="alerts")
    scores_topic: str = _doc(
        "Topic one score record per sensor per window hop is written to.", default="scores"
    )
    dead_letter_topic: str = _doc(
        "Topic for records that could not be processed, with the reason.",
        default="readings-dead-letter",
    )
    starting_offset: str = _doc(
        "Where to start reading a partition with no recovery state: `earliest` or `latest`.",
        default="earliest",
    )
    exit_at_end: bool = _doc(
        "Stop once every readings partition is read up to the end offset it had at start, "
        "closing all open windows first: for backfills, benchmarks and tests.",
        default=False,
    )
    consumer_batch_size: int = _doc(
        "Most messages taken from one partition per poll; bigger batches amortise overhead.",
        default=5000,
    )
    consumer_poll_ms: int = _doc(
        "Longest wait for a poll to fill a batch. 0 takes what the client has already fetched "
        "and goes on (an empty poll is retried 1 ms later): measured, one broker hop p50 "
        "14 -> 9 ms and the flow's alert p99 at 20k readings/s 140-156 -> 113-130 ms against "
        "10, with no throughput lost; an idle flow uses 3 % of a core instead of 1 % "
        "(docs/benchmarks.md).",
        default=0,
    )
    fetch_wait_max_ms: int = _doc(
        "librdkafka `fetch.wait.max.ms`: how long the broker may hold a fetch; bounds latency.",
        default=10,
    )
    fetch_queue_backoff_ms: int = _doc(
        "librdkafka `fetch.queue.backoff.ms`: how long the readings consumer pauses fetching "
        "once it holds `queued.min.messages` (100,000) unread. librdkafka's 1000 ms let a flow "
        "that drains 100,000 readings in under a second (catching up a backlog) wait idle: "
        "every consumer of a partition capped near 100k readings/s (docs/benchmarks.md).",
        default=10,
    )
    producer_linger_ms: int = _doc(
        "librdkafka `linger.ms` for the alert, score and dead-letter producers.", default=5
    )
    kafka_security_protocol: str = _doc(
        "librdkafka `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.",
        default="plaintext",
    )
    kafka_sasl_mechanism: str = _doc(
        "librdkafka `sasl.mechanism` (e.g. SCRAM-SHA-256, PLAIN); empty for none.", default=""
    )
    kafka_sasl_username: str = _doc("librdkafka `sasl.username`.", default="")
    kafka_sasl_password: str = _doc(
        "librdkafka `sasl.password`. Secret: never logged.", default=""
    )
    kafka_ssl_ca_location: str = _doc(
        "librdkafka `ssl.ca.location`: CA bundle used to verify the brokers.", default=""
    )

    # --- Event time and windows -------------------------------------------------------------
    window_length: timedelta = _doc(
        "Length of the sliding feature window (e.g. 5m for minute data, 30s for 1 Hz rigs).",
        default=timedelta(minutes=5),
    )
    window_hop: timedelta = _doc(
        "How often a window closes and is scored; the window length must be a multiple of it.",
        default=timedelta(minutes=1),
    )
    allowed_lateness: timedelta = _doc(
        "How far behind a sensor's newest reading a reading may arrive and still be counted. "
        "Older readings go to the dead-letter topic with reason `late`.",
        default=timedelta(minutes=1),
    )
    window_stagger: timedelta = _doc(
        "0 aligns every sensor's windows to the hop. A step such as 10s shifts each sensor's "
        "window grid by a whole number of steps below one hop (fixed per sensor id), so a "
        "fleet reporting in step closes its windows spread over the hop instead of all at "
        "once: lower p99 latency, same features. Must divide the hop; changing it needs a "
        "fresh recovery store.",
        default=timedelta(0),
    )
    max_future: timedelta = _doc(
        "Readings stamped further than this ahead of the wall clock are dead-lettered.",
        default=timedelta(minutes=5),
    )
    max_record_bytes: int = _doc(
        "Readings larger than this many bytes are dead-lettered without being parsed.",
        default=65536,
    )
    instances: int = _doc(
        "Independent flow processes that share the readings topic, each with its own recovery "
        "store and metrics port. With more than 1, this process reads only the partitions p "
        "with p % VIGIL_INSTANCES == VIGIL_INSTANCE, so no reading crosses between processes "
        "(Bytewax's `-i/-a` cluster mode exchanges them instead). Needs readings keyed by "
        "sensor_id, so each sensor stays in one partition; changing it needs fresh recovery "
        "stores.",
        default=1,
    )
    instance: int = _doc(
        "This process's index among VIGIL_INSTANCES, from 0.", default=0,
    )
    state_shards: int = _doc(
        "Per-sensor state is grouped into this many keyed shards (crc32 of sensor_id): the "
        "unit Bytewax spreads over workers. Each shard is windowed and scored with its own "
        "calls, whose fixed cost is paid per shard and batch, so one worker does best with "
        "one shard (measured against 8: 1.5x the throughput, alert p99 at 20k readings/s "
        "52-62 instead of 145-163 ms). A Bytewax cluster (-w N, -i/-a) needs at least 4 per "
        "worker to spread them evenly (the flow warns at start); independent instances "
        "(VIGIL_INSTANCES) are one worker each. A recovery store keeps the count it was "
        "written with; a flow with another count refuses to resume from it.",
        default=1,
    )

    # --- Detectors --------------------------------------------------------------------------
    detectors: str = _doc(
        "Comma-separated detectors to run: hst (River Half-Space Trees), lstm_ae (ONNX LSTM "
        "autoencoder), seasonal (newest value vs its usual level at this time of day), novelty "
        "(how rarely the newest value has been where it is now, lately), corr (Hotelling T² of "
        "the metric means: a broken correlation between a sensor's metrics; needs two or more "
        "metrics), zscore (robust z-score). Their raw scores are calibrated per sensor and "
        "combined into one anomaly likelihood (docs/architecture.md#detection).",
        default="hst,lstm_ae,seasonal,novelty,corr",
    )
    model_registry: str = _doc(
        "Model registry folder for lstm_ae (versions + ACTIVE pointer); empty uses the model "
        "bundled with Vigil, trained for the default 5m/1m windows on simulated data.",
        default="",
    )
    model_reload_interval: timedelta = _doc(
        "How often the flow checks the registry for a newly activated model version.",
        default=timedelta(seconds=5),
    )

    # --- Robust z-score detector ------------------------------------------------------------
    zscore_threshold: float = _doc(
        "Robust z-score (|x - median| / (1.4826·MAD)) at which a window is anomalous.",
        default=6.0,
    )
    zscore_history: int = _doc(
        "Windows of per-sensor history the robust z-score compares against.", default=60
    )
    zscore_warmup: int = _doc(
        "Windows a sensor must have seen before it can raise an alert.", default=10
    )

    # --- Half-Space Trees detector ----------------------------------------------------------
    hst_threshold: float = _doc(
        "HST score (0..1) at which the detector itself calls a window anomalous and stops "
        "learning it (its protection against incidents becoming normal).",
        default=0.35,
    )
    hst_seed: int = _doc("Random seed of the Half-Space Trees forests.", default=42)
    hst_half_life: timedelta = _doc(
        "Event-time half-life of HST's per-sensor running standardiser: how fast a sensor's "
        "normal level may drift.",
        default=timedelta(minutes=30),
    )
    hst_warmup: int = _doc(
        "Windows a sensor's standardiser must see before HST scores it.", default=30
    )

    # --- Seasonal profile detector ---------------------------------------------------------
    seasonal_period: timedelta = _doc(
        "Period of the seasonal detector's profile: the cycle a sensor's normal level repeats. "
        "The detector has no opinion on a sensor until it has seen it for one period.",
        default=timedelta(days=1),
    )
    seasonal_buckets: int = _doc(
        "Phases the seasonal period is cut into, each with its own learned level per metric.",
        default=48,
    )

    # --- Value novelty detector ------------------------------------------------------------
    novelty_bin_width: float = _doc(
        "Bin width of the novelty detector, in units of log2(1 + abs(z)) of the newest value's "
        "deviation from its running level (1: one bin per doubling).",
        default=1.0,
    )
    novelty_tilings: int = _doc(
        "Offset bin grids (tilings) the novelty detector counts in; its score is the mean "
        "rarity over them, which keeps it from hinging on where one grid's edges fall.",
        default=3,
    )
    novelty_rate: float = _doc(
        "Per-window EWMA rate of the novelty detector's running level and deviation, "
        "against which a value is placed in a bin.",
        default=0.005,
    )
    novelty_decay: float = _doc(
        "Per-window decay of the novelty detector's bin counts: a place not visited for "
        "about 1/decay windows is novel again.",
        default=0.0005,
    )
    novelty_warmup_period: timedelta = _doc(
        "The novelty detector has no opinion on a sensor until it has seen it this long "
        "(and for 30 windows), so its counts cover a daily cycle.",
        default=timedelta(days=1),
    )

    # --- Correlation (T²) detector ---------------------------------------------------------
    corr_threshold: float = _doc(
        "Score of the corr detector (Hotelling T² of the metric means divided by the number "
        "of metrics, about 1 for a typical window) at which it calls a window anomalous and "
        "learns it at a reduced weight, so an incident does not become its baseline.",
        default=5.0,
    )
    corr_half_life: timedelta = _doc(
        "Event-time half-life of the corr detector's per-sensor mean and covariance: how fast "
        "the learned relation between a sensor's metrics may change.",
        default=timedelta(minutes=20),
    )
    corr_shrinkage: float = _doc(
        "Weight (0..1] of the identity mixed into the corr detector's correlation matrix; "
        "keeps it invertible with few windows or metrics that never moved.",
        default=0.2,
    )
    corr_warmup: int = _doc(
        "Windows a sensor's corr detector must learn before it scores.", default=60
    )

    # --- Calibration and alert policy -------------------------------------------------------
    calibration_history: int = _doc(
        "Raw scores per sensor and detector that a new score is ranked against.", default=300
    )
    calibration_short: int = _doc(
        "Newest raw scores averaged before ranking (smooths single-window noise).", default=3
    )
    calibration_warmup: int = _doc(
        "Raw scores a sensor needs per detector before it can alert.", default=30
    )
    calibration_precision: str = _doc(
        "Storage type of the raw-score histories: float16 (default) keeps 3 significant "
        "digits in half the memory of float32 (0.6 instead of 1.2 KiB per sensor, detector "
        "and calibrator); measured on SKAB and NAB it detects as well (docs/accuracy.md).",
        default="float16",
    )
    alert_likelihood: float = _doc(
        "Combined anomaly likelihood (0..1) at or above which a window is anomalous; "
        "0.9995 means about one window in 2,000 of a steady sensor (chosen for the default "
        "detectors, docs/accuracy.md; with HST and the LSTM-AE alone 0.998 did best).",
        default=0.9995,
    )
    critical_likelihood: float = _doc(
        "Peak likelihood at which an alert's severity is critical instead of warning.",
        default=0.99999,
    )
    alert_open_after: int = _doc(
        "Consecutive anomalous windows before an alert opens (debounce).", default=2
    )
    alert_resolve_after: int = _doc(
        "Consecutive normal windows after which an open alert is resolved.", default=3
    )

    # --- Embedded simulated fleet (used when no broker is set) -----------------------------
    sim_sensors: int = _doc("Number of simulated sensors.", default=20)
    sim_seed: int = _doc("Seed of the simulator; the same seed gives the same fleet.", default=7)
    sim_interval: timedelta = _doc(
        "Event-time spacing between two readings of one simulated sensor.",
        default=timedelta(seconds=10),
    )
    sim_speed: float = _doc(
        "Simulated seconds per wall-clock second while catching up on history.", default=600.0
    )
    sim_backfill: timedelta = _doc(
        "The simulation starts this far in the past and runs at `sim_speed` until it reaches "
        "now, then continues in real time.",
        default=timedelta(hours=6),
    )
    sim_anomaly_rate: float = _doc(
        "Expected injected anomalies per sensor per simulated day.", default=6.0
    )
    sim_limit: int = _doc(
        "Stop the embedded simulator after this many readings (0 = run forever).", default=0
    )

    # --- Alerts API (api/) and the flow's push to it ------------------------------------------
    api_url: str = _doc(
        "Base URL of the Vigil API the flow pushes alerts and scores to, e.g. "
        "http://api:8000. Empty: the flow does not push (the alerts topic is always written).",
        default="",
    )
    api_token: str = _doc(
        "Bearer token for the API's write endpoints (ingest, acknowledge, model activation); "
        "the flow sends it when pushing. Empty on the API: writes are refused. Secret.",
        default="",
    )
    api_auth_reads: bool = _doc(
        "Make the API's reads (every GET under /v1/, the live stream included) need the "
        "same bearer token as writes. /health, /ready, /metrics and the web page's static "
        "files stay open for probes, scrapers and the sign-in form.",
        default=False,
    )
    api_db: str = _doc(
        "SQLite database file of the API (created, WAL mode, migrated at start).",
        default="vigil-api.sqlite3",
    )
    api_host: str = _doc("Address `python -m api` listens on.", default="127.0.0.1")
    api_port: int = _doc("Port `python -m api` listens on.", default=8000)
    api_workers: int = _doc(
        "API worker processes; they share the database. Live streams are woken within "
        "100 ms by ingest in any worker.",
        default=1,
    )
    api_max_body_bytes: int = _doc(
        "Largest request body the API accepts; bigger ones get 413.", default=1_048_576
    )
    api_score_retention: timedelta = _doc(
        "Score history kept per sensor, counted back from that sensor's newest score "
        "(event time, so replays of old data keep their history).",
        default=timedelta(days=7),
    )
    api_heartbeat_stale: timedelta = _doc(
        "GET /ready reports the flow as stale when its last heartbeat is older than this.",
        default=timedelta(seconds=60),
    )
    api_sink_buffer: int = _doc(
        "Alerts the flow holds while the API is unreachable; when full the flow waits "
        "(backpressure) instead of dropping. Also the most sensors with a pending score.",
        default=10_000,
    )
    api_sink_batch: int = _doc("Most records in one push to the API.", default=500)
    api_sink_flush_interval: timedelta = _doc(
        "How long the flow lets alerts gather before pushing them to the API.",
        default=timedelta(milliseconds=100),
    )
    api_score_interval: timedelta = _doc(
        "Scores are aggregated per sensor and pushed at most this often: the highest score "
        "of each sensor since the last push (so anomalies are never sampled away).",
        default=timedelta(seconds=5),
    )
    api_metrics_sensors: int = _doc(
        "The API's /metrics exports the latest score of at most this many sensors (the first "
        "by sensor_id) as `vigil_api_sensor_score`, bounding the series Prometheus stores; "
        "0 exports none. Every sensor's history stays available at /v1/sensors/{id}/scores.",
        default=100,
    )

    # --- Process ----------------------------------------------------------------------------
    log_level: str = _doc("Log level: DEBUG, INFO, WARNING or ERROR.", default="INFO")
    log_format: str = _doc(
        "`json`: one JSON object per line on stderr (time, level, logger, msg and fields such "
        "as sensor_id or alert_id), for log collectors; `text`: one readable line per event.",
        default="json",
    )
    metrics_port: int = _doc(
        "Port of the flow's Prometheus /metrics endpoint; 0 turns it off.", default=0
    )
    keep_freed_memory: bool = _doc(
        "From its first recovery snapshot on, the flow process keeps memory it freed for "
        "reuse (glibc malloc: no mmap per large block, no trimming) instead of handing it "
        "back to the OS at once, so each snapshot writes into pages already mapped: about "
        "twice as fast for large fleets (docs/benchmarks.md). Resident memory then stays "
        "near its peak. Restores at start run before it, with glibc's defaults. No effect "
        "outside glibc on Linux, or without a recovery store.",
        default=True,
    )

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), raising one SettingsError."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        known = {f"{PREFIX}{f.name.upper()}" for f in fields(cls)}
        for f in fields(cls):
            var = f"{PREFIX}{f.name.upper()}"
            if var not in env:
                continue
            raw = env[var]
            try:
                values[f.name] = _parse(f.type, raw)
            except ValueError as exc:
                problems.append(f"{var}={raw!r}: {exc}")
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        for var in unknown:
            if var.startswith("VIGIL_TEST_"):
                continue  # read by the test suite
            problems.append(f"{var}: unknown setting (see docs/configuration.md)")
        settings = cls(**values)
        try:
            settings.validate()
        except SettingsError as exc:
            problems.extend(exc.problems)
        if problems:
            raise SettingsError(problems)
        return settings

    def validate(self) -> None:
        """Check cross-field rules; raise SettingsError listing every violation."""
        p: list[str] = []
        if self.window_length <= timedelta(0):
            p.append(f"VIGIL_WINDOW_LENGTH must be positive, got {_show(self.window_length)}")
        if self.window_hop <= timedelta(0):
            p.append(f"VIGIL_WINDOW_HOP must be positive, got {_show(self.window_hop)}")
        elif self.window_length > timedelta(0):
            ratio = self.window_length / self.window_hop
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                p.append(
                    f"VIGIL_WINDOW_LENGTH ({_show(self.window_length)}) must be a whole "
                    f"multiple of VIGIL_WINDOW_HOP ({_show(self.window_hop)})"
                )
            elif round(ratio) > 1000:
                p.append("VIGIL_WINDOW_LENGTH / VIGIL_WINDOW_HOP must be at most 1000 panes")
        if self.window_stagger < timedelta(0):
            p.append(f"VIGIL_WINDOW_STAGGER must not be negative, got {_show(self.window_stagger)}")
        elif self.window_stagger > timedelta(0) and self.window_hop > timedelta(0):
            steps = self.window_hop / self.window_stagger
            if abs(steps - round(steps)) > 1e-9 or self.window_stagger % timedelta(milliseconds=1):
                p.append(
                    f"VIGIL_WINDOW_STAGGER ({_show(self.window_stagger)}) must divide "
                    f"VIGIL_WINDOW_HOP ({_show(self.window_hop)}) into whole steps of whole "
                    "milliseconds"
                )
        if self.allowed_lateness < timedelta(0):
            p.append(
                f"VIGIL_ALLOWED_LATENESS must not be negative, got {_show(self.allowed_lateness)}"
            )
        if self.max_future <= timedelta(0):
            p.append("VIGIL_MAX_FUTURE must be positive")
        if self.starting_offset not in ("earliest", "latest"):
            p.append(
                "VIGIL_STARTING_OFFSET must be 'earliest' or 'latest', "
                f"got {self.starting_offset!r}"
            )
        for name in (
            "consumer_batch_size", "state_shards", "zscore_history", "sim_sensors",
            "max_record_bytes",
        ):
            if getattr(self, name) < 1:
                p.append(f"VIGIL_{name.upper()} must be at least 1")
        for name in ("fetch_wait_max_ms", "fetch_queue_backoff_ms", "producer_linger_ms",
                     "sim_limit", "zscore_warmup", "consumer_poll_ms"):
            if getattr(self, name) < 0:
                p.append(f"VIGIL_{name.upper()} must not be negative")
        if self.instances < 1:
            p.append("VIGIL_INSTANCES must be at least 1")
        elif not 0 <= self.instance < self.instances:
            p.append(
                f"VIGIL_INSTANCE must be 0..{self.instances - 1} with VIGIL_INSTANCES="
                f"{self.instances}, got {self.instance}"
            )
        if not 0 <= self.metrics_port < 65536:
            p.append("VIGIL_METRICS_PORT must be a port number (0 turns metrics off)")
        if self.api_url and not re.match(r"^https?://[^/\s]+", self.api_url):
            p.append(f"VIGIL_API_URL must be an http:// or https:// URL, got {self.api_url!r}")
        if not 0 < self.api_port < 65536:
            p.append("VIGIL_API_PORT must be a port number")
        if self.api_metrics_sensors < 0:
            p.append("VIGIL_API_METRICS_SENSORS must not be negative")
        for name in ("api_workers", "api_max_body_bytes", "api_sink_buffer", "api_sink_batch"):
            if getattr(self, name) < 1:
                p.append(f"VIGIL_{name.upper()} must be at least 1")
        for name in (
            "api_score_retention", "api_heartbeat_stale", "api_sink_flush_interval",
            "api_score_interval",
        ):
            if getattr(self, name) <= timedelta(0):
                p.append(f"VIGIL_{name.upper()} must be positive")
        if not self.api_db:
            p.append("VIGIL_API_DB must name a database file")
        unknown = [n for n in self.detector_names if n not in DETECTOR_NAMES]
        if unknown or not self.detector_names:
            p.append(
                f"VIGIL_DETECTORS={self.detectors!r}: unknown or no detector "
                f"({', '.join(unknown) or 'empty'}); choose from {', '.join(DETECTOR_NAMES)}"
            )
        if self.model_reload_interval <= timedelta(0):
            p.append("VIGIL_MODEL_RELOAD_INTERVAL must be positive")
        if self.seasonal_period <= timedelta(0):
            p.append("VIGIL_SEASONAL_PERIOD must be positive")
        if self.novelty_bin_width <= 0:
            p.append("VIGIL_NOVELTY_BIN_WIDTH must be positive")
        if not 0 < self.novelty_rate <= 1:
            p.append(f"VIGIL_NOVELTY_RATE must lie in (0, 1], got {self.novelty_rate}")
        if not 0 < self.novelty_decay < 1:
            p.append(f"VIGIL_NOVELTY_DECAY must lie in (0, 1), got {self.novelty_decay}")
        if self.novelty_warmup_period < timedelta(0):
            p.append("VIGIL_NOVELTY_WARMUP_PERIOD must not be negative")
        for name in (
            "alert_resolve_after", "alert_open_after", "hst_warmup", "seasonal_buckets",
            "novelty_tilings",
        ):
            if getattr(self, name) < 1:
                p.append(f"VIGIL_{name.upper()} must be at least 1")
        if not self.calibration_short < self.calibration_warmup <= self.calibration_history:
            p.append(
                "need VIGIL_CALIBRATION_SHORT < VIGIL_CALIBRATION_WARMUP <= "
                "VIGIL_CALIBRATION_HISTORY"
            )
        if not 0.5 <= self.alert_likelihood < 1.0:
            p.append(f"VIGIL_ALERT_LIKELIHOOD must lie in [0.5, 1), got {self.alert_likelihood}")
        if not self.alert_likelihood <= self.critical_likelihood <= 1.0:
            p.append("VIGIL_CRITICAL_LIKELIHOOD must lie between VIGIL_ALERT_LIKELIHOOD and 1")
        if not 0.0 < self.hst_threshold < 1.0:
            p.append(f"VIGIL_HST_THRESHOLD must lie in (0, 1), got {self.hst_threshold}")
        if self.hst_half_life <= timedelta(0):
            p.append("VIGIL_HST_HALF_LIFE must be positive")
        if self.corr_threshold <= 0:
            p.append(f"VIGIL_CORR_THRESHOLD must be positive, got {self.corr_threshold}")
        if self.corr_half_life <= timedelta(0):
            p.append("VIGIL_CORR_HALF_LIFE must be positive")
        if not 0.0 < self.corr_shrinkage <= 1.0:
            p.append(f"VIGIL_CORR_SHRINKAGE must lie in (0, 1], got {self.corr_shrinkage}")
        if self.corr_warmup < 2:
            p.append("VIGIL_CORR_WARMUP must be at least 2")
        if self.zscore_threshold <= 0:
            p.append("VIGIL_ZSCORE_THRESHOLD must be positive")
        if self.zscore_warmup > self.zscore_history:
            p.append("VIGIL_ZSCORE_WARMUP must not exceed VIGIL_ZSCORE_HISTORY")
        if self.sim_interval <= timedelta(0) or self.sim_speed <= 0:
            p.append("VIGIL_SIM_INTERVAL and VIGIL_SIM_SPEED must be positive")
        if self.sim_anomaly_rate < 0:
            p.append("VIGIL_SIM_ANOMALY_RATE must not be negative")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            p.append(
                f"VIGIL_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )
        if self.calibration_precision not in ("float16", "float32"):
            p.append(
                "VIGIL_CALIBRATION_PRECISION must be float16 or float32, "
                f"got {self.calibration_precision!r}"
            )
        if self.log_format.lower() not in ("json", "text"):
            p.append(f"VIGIL_LOG_FORMAT must be json or text, got {self.log_format!r}")
        if self.kafka_security_protocol.lower() not in (
            "plaintext", "ssl", "sasl_plaintext", "sasl_ssl"
        ):
            p.append(
                "VIGIL_KAFKA_SECURITY_PROTOCOL must be plaintext, ssl, sasl_plaintext or sasl_ssl"
            )
        topics = [self.readings_topic, self.alerts_topic, self.scores_topic, self.dead_letter_topic]
        if any(not t for t in topics):
            p.append("topic names must not be empty")
        elif len(set(topics)) != len(topics):
            p.append("the readings, alerts, scores and dead-letter topics must all differ")
        if p:
            raise SettingsError(p)

    @property
    def detector_names(self) -> tuple[str, ...]:
        """The configured detectors, in order, without duplicates."""
        names = [n.strip() for n in self.detectors.split(",") if n.strip()]
        return tuple(dict.fromkeys(names))

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the flow runs on the simulated fleet."""
        return not self.brokers

    def window_spec(self) -> WindowSpec:
        """The window settings in integer milliseconds, as the window store works in them."""
        from flows.windows import WindowSpec  # numpy: only where windows are computed

        def ms(d: timedelta) -> int:
            return round(d.total_seconds() * 1000)

        return WindowSpec(ms(self.window_length), ms(self.window_hop),
                          ms(self.allowed_lateness), ms(self.window_stagger))

    def kafka_config(self) -> dict[str, str]:
        """Settings mapped onto librdkafka keys, shared by every consumer, producer and admin."""
        cfg = {
            "bootstrap.servers": ",".join(self.brokers),
            "security.protocol": self.kafka_security_protocol.lower(),
        }
        if self.kafka_sasl_mechanism:
            cfg["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            cfg["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            cfg["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_ca_location:
            cfg["ssl.ca.location"] = self.kafka_ssl_ca_location
        return cfg

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line (tokens, passwords), longest first."""
        values = {getattr(self, f.name) for f in fields(self) if _is_secret(f.name)}
        return tuple(sorted((v for v in values if v), key=len, reverse=True))

    def describe(self) -> dict[str, str]:
        """Every setting as text for start-up logs, with secrets masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if _is_secret(f.name) and value:
                value = "***"
            out[f.name] = _format(value)
        return out


def _is_secret(name: str) -> bool:
    return "password" in name or "token" in name


def _parse(tp: Any, raw: str) -> Any:
    tp = str(tp)
    if tp == "str":
        return raw.strip()
    if tp == "int":
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
    if tp == "float":
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if tp == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("expected true or false")
    if tp == "timedelta":
        text = raw.strip()
        if text.startswith("-"):
            # parse the magnitude so the cross-field check reports "must be positive"
            return -parse_duration(text[1:])
        return parse_duration(text)
    if tp == "tuple[str, ...]":
        return parse_brokers(raw)
    raise TypeError(f"unsupported settings type {tp}")


def _format(value: Any) -> str:
    if isinstance(value, timedelta):
        secs = value.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if secs >= size and secs % size == 0:
                return f"{int(secs // size)}{unit}"
        return f"{int(secs * 1000)}ms"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _show(value: timedelta) -> str:
    return "-" + _format(-value) if value < timedelta(0) else _format(value)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting; used to write and check the docs."""
    defaults = Settings()
    return [
        (f"{PREFIX}{f.name.upper()}", _format(getattr(defaults, f.name)), f.metadata["doc"])
        for f in fields(Settings)
    ]


def markdown_table() -> str:
    """The settings table as Markdown, for docs/configuration.md."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var, default, doc in settings_table():
        lines.append(f"| `{var}` | `{default}` | {doc} |")
    return "\n".join(lines)


def update_docs(path: str) -> None:
    """Rewrite the Markdown settings table in ``path`` (the first table headed 'Variable')."""
    with open(path) as fh:
        lines = fh.read().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| Variable |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = markdown_table().split("\n")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.settings``: check the environment, or print the docs table."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.settings",
        description="Validate the VIGIL_* environment and show the effective settings.",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print every variable as a Markdown table"
    )
    parser.add_argument(
        "--update-docs", metavar="FILE",
        help="replace the settings table in FILE (e.g. docs/configuration.md) with the current one",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
        return 0
    if args.update_docs:
        update_docs(args.update_docs)
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc)
        return 2
    for name, value in settings.describe().items():
        print(f"{PREFIX}{name.upper()}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
