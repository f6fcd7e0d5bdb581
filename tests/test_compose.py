"""compose.yaml and the Dockerfile are checked statically against the code they run.

No Docker engine is available where the suite runs, so neither file is started here. The checks
live in ``bench.compose_check`` (also ``python -m bench.compose_check``); every one returns a list
of problems, and the last tests feed deliberately broken files to the same functions to show
that each kind of mistake is reported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import compose_check as cc
from bench.broker import default_topics
from flows.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RAW = cc.load_compose(ROOT / "compose.yaml")
COMPOSE = cc.resolve(RAW, cc.defaults_env(RAW))  # defaults; a placeholder API token
IMAGE = cc.parse_dockerfile((ROOT / "Dockerfile").read_text())
PROJECT = cc.Project.load(ROOT)


def _service(name: str) -> cc.Service:
    return next(s for s in cc.services_of(COMPOSE, IMAGE) if s.name == name)


# --- compose.yaml -------------------------------------------------------------------------------


def test_the_stack_has_broker_console_topics_flow_api_monitoring_and_demo_simulator():
    services = COMPOSE["services"]
    assert set(services) == {
        "redpanda", "console", "init-topics", "detect", "simulator", "api", "prometheus",
        "grafana",
    }
    assert services["simulator"]["profiles"] == ["demo"]
    assert "version" not in RAW  # Compose spec: the key is obsolete


def test_every_service_has_an_image_or_a_build():
    assert cc.check_images(COMPOSE) == []


def test_redpanda_images_are_pinned_to_a_v24_or_v25_release():
    for name in ("redpanda", "init-topics"):
        image = COMPOSE["services"][name]["image"]
        assert image.startswith("docker.redpanda.com/redpandadata/redpanda:v2")
        assert image.rsplit(":", 1)[1].split(".")[0] in ("v24", "v25"), image
    assert not COMPOSE["services"]["console"]["image"].endswith(":latest")


def test_python_commands_run_modules_that_exist():
    assert cc.check_python_commands(COMPOSE, IMAGE) == []
    modules = {
        c.module for s in cc.services_of(COMPOSE, IMAGE) for c in s.python_calls() if c.module
    }
    # not vacuous: the commands below were found and checked
    assert modules == {"bytewax.run", "bytewax.recovery", "flows.simulator", "api"}


def test_detect_initialises_recovery_once_and_runs_flows_detect_from_the_volume():
    detect = _service("detect")
    calls = {c.module: c.args for c in detect.python_calls() if c.module}
    assert calls["bytewax.recovery"] == ["/recovery", "1"]
    assert calls["bytewax.run"] == ["flows.detect", "-r", "/recovery", "-s", "10", "-b", "0"]
    assert "recovery:/recovery" in COMPOSE["services"]["detect"]["volumes"]
    assert cc.dataflow_problem("flows.detect") is None
    assert COMPOSE["services"]["detect"]["restart"] == "unless-stopped"


def test_every_vigil_variable_is_a_real_setting_with_a_valid_value():
    assert cc.check_vigil_environment(COMPOSE, IMAGE, raw=RAW) == []
    detect = Settings.from_env({k: v for k, v in _service("detect").env.items()
                                if k.startswith("VIGIL_")})
    assert detect.brokers == ("redpanda:9092",) and detect.metrics_port == 9100


def test_vigil_services_reach_the_broker_by_its_service_name():
    assert cc.check_brokers(COMPOSE, IMAGE) == []


def test_depends_on_names_defined_services_with_valid_conditions():
    assert cc.check_depends_on(COMPOSE, IMAGE) == []
    deps = COMPOSE["services"]["detect"]["depends_on"]
    assert deps["init-topics"]["condition"] == "service_completed_successfully"


def test_long_running_services_have_healthchecks_and_init_topics_is_one_shot():
    assert cc.one_shot_services(COMPOSE) == {"init-topics"}
    assert cc.check_healthchecks(COMPOSE, IMAGE) == []


def test_published_ports_do_not_collide():
    assert cc.check_ports(COMPOSE) == []
    published = {p for spec in COMPOSE["services"].values() for _, p, _ in cc.published_ports(spec)}
    assert published == {19092, 18081, 9644, 8080, 8000, 9090, 3000}


def test_init_topics_creates_the_topics_the_flow_uses_by_default():
    assert cc.check_topics(COMPOSE, IMAGE) == []
    _, topics, problems = cc.created_topics(COMPOSE)
    assert problems == []
    assert {t.name: t.partitions for t in topics} == default_topics(Settings())
    s = Settings()
    assert [t.name for t in topics] == [
        s.readings_topic, s.alerts_topic, s.scores_topic, s.dead_letter_topic
    ]


def test_topic_names_set_in_the_shell_reach_both_init_topics_and_the_flow():
    env = {"VIGIL_READINGS_TOPIC": "plant-a.readings", "READINGS_PARTITIONS": "8"}
    compose = cc.resolve(RAW, env)
    _, topics, _ = cc.created_topics(compose)
    assert topics[0] == cc.TopicSpec("plant-a.readings", 8, 604800000)
    for name in ("detect", "simulator"):
        service = next(s for s in cc.services_of(compose, IMAGE) if s.name == name)
        assert service.env["VIGIL_READINGS_TOPIC"] == "plant-a.readings"


def test_named_volumes_are_declared():
    assert cc.check_volumes(COMPOSE) == []


def test_the_whole_compose_check_passes():
    assert cc.check_compose(RAW, IMAGE, root=ROOT) == []


def test_redpanda_runs_its_schema_registry_and_console_uses_it():
    command = " ".join(COMPOSE["services"]["redpanda"]["command"].split())
    assert "--schema-registry-addr internal://0.0.0.0:8081" in command
    console = COMPOSE["services"]["console"]["environment"]
    assert console["KAFKA_SCHEMAREGISTRY_URLS"] == "http://redpanda:8081"


def test_the_api_token_is_required_from_the_operator_and_shared_by_api_and_flow():
    assert cc.required_variables(RAW) == {"VIGIL_API_TOKEN"}
    text = "\n".join(cc.check_compose(RAW, IMAGE, env={}))
    assert "${VIGIL_API_TOKEN} is required: set VIGIL_API_TOKEN in .env" in text
    env = {"VIGIL_API_TOKEN": "t0k"}
    resolved = cc.resolve(RAW, env)
    by_name = {s.name: s for s in cc.services_of(resolved, IMAGE)}
    assert by_name["api"].env["VIGIL_API_TOKEN"] == by_name["detect"].env["VIGIL_API_TOKEN"]
    assert by_name["detect"].env["VIGIL_API_URL"] == "http://api:8000"


def test_the_api_service_serves_on_all_interfaces_with_a_volume_and_a_health_check():
    api = _service("api")
    assert cc.listening_ports(api) == {8000}
    assert api.env["VIGIL_API_HOST"] == "0.0.0.0" and api.env["VIGIL_API_DB"] == "/data/api.sqlite3"
    assert "api-data:/data" in COMPOSE["services"]["api"]["volumes"]
    assert "http://127.0.0.1:8000/health" in " ".join(api.health_argv() or [])
    deps = COMPOSE["services"]["detect"]["depends_on"]
    assert deps["api"]["condition"] == "service_healthy"
    assert COMPOSE["services"]["grafana"]["depends_on"]["prometheus"]["condition"] == (
        "service_healthy"
    )


def test_ports_urls_mounts_prometheus_and_grafana_checks_pass_on_the_committed_files():
    assert cc.check_listen_ports(COMPOSE, IMAGE) == []
    assert cc.check_service_urls(COMPOSE, IMAGE) == []
    assert cc.check_mounts(COMPOSE, ROOT) == []
    assert cc.check_prometheus(COMPOSE, ROOT, IMAGE) == []
    assert cc.check_grafana(COMPOSE, ROOT, IMAGE) == []
    mounted = {m.source.relative_to(ROOT).as_posix() for m in cc.bind_mounts(COMPOSE, ROOT)}
    assert mounted == {
        "ops/prometheus/prometheus.yml", "ops/prometheus/rules", "ops/grafana/provisioning",
        "ops/grafana/dashboards",
    }


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_the_way_pyproject_defines_it():
    assert PROJECT.packages == ("api", "bench", "detectors", "flows")
    assert cc.check_dockerfile(IMAGE, PROJECT) == []
    assert [s.name for s in IMAGE.stages] == ["builder", "runtime"]
    assert IMAGE.runtime.base == "python:3.11-slim"


def test_dockerfile_cmd_runs_the_detect_flow_module():
    assert IMAGE.cmd() == ["python", "-m", "bytewax.run", "flows.detect"]
    assert cc.module_problem("bytewax.run") is None
    assert cc.dataflow_problem("flows.detect") is None


def test_dockerfile_runtime_stage_runs_as_a_non_root_user():
    user = IMAGE.user()
    assert user is not None and user.split(":")[0] not in ("root", "0")


def test_dockerfile_health_check_probes_the_metrics_port_it_sets():
    assert IMAGE.env()["VIGIL_METRICS_PORT"] == "9100"
    assert IMAGE.env()["PYTHONUNBUFFERED"] == "1"
    assert "http://127.0.0.1:9100/metrics" in " ".join(IMAGE.healthcheck() or [])


def test_dockerignore_keeps_what_the_image_copies_and_drops_local_state():
    assert cc.check_dockerignore(IMAGE, ROOT) == []
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "recovery/", ".pytest_cache"} <= set(ignored)


def test_check_command_line_reports_no_problems():
    out = subprocess.run(
        [sys.executable, "-m", "bench.compose_check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "bench.compose_check", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "compose.yaml" in helped.stdout


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if ok.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose CLI (needs no engine)")
def test_docker_compose_itself_accepts_the_file():
    cli = _compose_cli()
    assert cli is not None
    out = subprocess.run(
        [*cli, "-f", "compose.yaml", "--profile", "demo", "config", "--quiet"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr


# --- The checks catch mistakes ------------------------------------------------------------------


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert cc.interpolate("$$HOME ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", env) == (
        "$HOME x x d d "
    )
    assert cc.interpolate("${SET:+alt}${UNSET:+alt}", env) == "alt"
    with pytest.raises(cc.InterpolationError):
        cc.interpolate("${UNSET:?set it}", env)


BROKEN = {
    "version": "3.8",
    "services": {
        "detect": {
            "build": ".",
            "image": "vigil:latest",
            "command": ["python", "-m", "bytewax.run", "flows.no_such_flow"],
            "environment": {
                "VIGIL_BROKERS": "redpanda:9092",
                "VIGIL_METRICS_PORT": "9200",
                "VIGIL_WINDOW_SIZE": "5m",
                "VIGIL_WINDOW_LENGTH": "-5m",
                "VIGIL_EXIT_AT_END": "sometimes",
                "VIGIL_LOG_LEVEL": "${VIGIL_VERBOSITY:-INFO}",
            },
            "depends_on": {
                "ghost": {"condition": "service_healthy"},
                "redpanda": {"condition": "service_ready"},
            },
            "ports": ["8080:8080"],
        },
        "worker": {
            "image": "vigil:latest",
            "command": "python -m flows.no_such_module",
            "environment": {"VIGIL_BROKERS": "kafka:9092"},
            "ports": ["127.0.0.1:8080:80"],
        },
        "redpanda": {"ports": ["19092:19092"]},
        "replayer": {
            "image": "vigil:latest",
            "command": "python -m bytewax.run flows.detect -r /recovery -s 10 -b 0",
            "healthcheck": {"test": ["CMD", "python", "-c", "import no_such_lib"]},
            "volumes": ["undeclared:/data"],
        },
    },
}


def test_the_checks_report_each_problem_of_a_broken_compose_file():
    problems = cc.check_compose(BROKEN, IMAGE)
    text = "\n".join(problems)
    expected = [
        "`version` key is obsolete",
        "redpanda: has neither `image` nor `build`",
        "detect: depends_on undefined service 'ghost'",
        "invalid condition 'service_ready'",
        "worker: command: module 'flows.no_such_module' does not exist",
        "dataflow 'flows.no_such_flow': module 'flows.no_such_flow' does not exist",
        "detect: VIGIL_WINDOW_SIZE is not a Vigil setting",
        "detect: VIGIL_WINDOW_LENGTH must be positive",
        "detect: VIGIL_EXIT_AT_END='sometimes': expected true or false",
        "compose interpolates ${VIGIL_VERBOSITY}, which is not a Vigil setting",
        "host port 8080/tcp is already published by 'detect'",
        "worker: VIGIL_BROKERS host 'kafka' is not a service",
        "replayer: bytewax recovery directory '/recovery' is not a volume",
        "detect: healthcheck probes port 9100 but VIGIL_METRICS_PORT is '9200'",
        # worker inherits the image's /metrics healthcheck but runs no flow
        "worker: healthcheck probes /metrics on 9100 but the service runs no Vigil flow",
        "redpanda: long-running service without a healthcheck",
        "imports 'no_such_lib', which does not exist",
        "replayer: mounts volume 'undeclared', which is not declared",
        "no service creates the topics",
    ]
    missing = [e for e in expected if e not in text]
    assert not missing, f"not reported: {missing}\nreported:\n{text}"


def test_the_topic_check_reports_a_topic_the_flow_reads_but_init_topics_does_not_create():
    compose = cc.resolve(RAW, {})
    compose["services"]["init-topics"]["environment"]["TOPICS"] = "readings:2:1000 alerts:1:1000"
    text = "\n".join(cc.check_topics(compose, IMAGE))
    assert "creates topics ['alerts', 'readings'] but the Settings defaults are" in text
    assert "'readings' gets 2 partitions" in text
    assert "detect: VIGIL_SCORES_TOPIC='scores' is not created by init-topics" in text


def test_the_dockerfile_check_reports_root_user_missing_package_and_missing_module():
    broken = cc.parse_dockerfile(
        "FROM python:3.12-slim AS builder\n"
        "COPY pyproject.toml ./\n"
        "COPY flows/ flows/\n"
        "RUN pip install -e . && pip install .\n"
        "FROM python:3.10-slim\n"
        "COPY --from=builder /opt/venv /opt/venv\n"
        "RUN pip install requests\n"
        'CMD ["python", "-m", "bytewax.run", "flows.nothing_here"]\n'
    )
    text = "\n".join(cc.check_dockerfile(broken, PROJECT))
    for expected in (
        "does not COPY detectors",
        "does not COPY api",
        "does not COPY bench",
        "does not COPY README.md",
        "editable install",
        "runtime base 'python:3.10-slim' differs from builder base",
        "older than requires-python",
        "the runtime stage installs packages",
        "runs as root",
        "PYTHONUNBUFFERED=1 missing",
        "no WORKDIR",
        "no HEALTHCHECK",
        "dataflow 'flows.nothing_here'",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def _broken_copy(tmp_path: Path) -> Path:
    """The repository's compose.yaml, Dockerfile and ops/ configs, copied to be broken."""
    for name in ("compose.yaml", "Dockerfile", "pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "ops", tmp_path / "ops")
    return tmp_path


def test_a_broken_copy_of_the_stack_fails_on_modules_ports_mounts_settings_and_metrics(tmp_path):
    import yaml

    root = _broken_copy(tmp_path)
    assert cc.check_all(root) == []  # the untouched copy passes
    raw = cc.load_compose(root / "compose.yaml")
    services = raw["services"]
    services["simulator"]["command"][2] = "flows.simulatorr"
    services["api"]["environment"]["VIGIL_API_PORT"] = "8001"
    services["api"]["environment"]["VIGIL_API_WORKER"] = "2"
    services["detect"]["environment"]["VIGIL_METRICS_PORT"] = "9200"
    services["grafana"]["volumes"][0] = "./ops/grafana/provision:/etc/grafana/provisioning:ro"
    services["prometheus"]["ports"] = ["9091:9091"]
    (root / "compose.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prom = root / "ops/prometheus/prometheus.yml"
    prom.write_text(prom.read_text().replace('"api:8000"', '"vigil-api:8000"'))
    rules = root / "ops/prometheus/rules/vigil.rules.yml"
    rules.write_text(rules.read_text().replace("vigil_consumer_lag_messages",
                                               "vigil_consumer_lag"))
    text = "\n".join(cc.check_all(root))
    for expected in (
        "simulator: command: module 'flows.simulatorr' does not exist",  # module
        "api: VIGIL_API_WORKER is not a Vigil setting",  # setting
        "detect: VIGIL_API_URL: http://api:8000: service 'api' listens on [8001], not 8000",
        "api: publishes container port 8000, but the service listens on [8001]",  # ports
        "api: healthcheck probes port 8000, but the service listens on [8001]",
        "detect: healthcheck probes port 9100 but VIGIL_METRICS_PORT is '9200'",
        "prometheus: publishes container port 9091, but the service listens on [9090]",
        "prometheus: job 'vigil-flow': http://detect:9100/metrics: service 'detect' listens on "
        "[9200], not 9100",
        "prometheus: job 'vigil-api': http://vigil-api:8000/metrics names host 'vigil-api', "
        "which is not a service",
        "grafana: mounts ops/grafana/provision, which does not exist",  # mounted config
        "grafana: /etc/grafana/provisioning is not a mounted folder",
        "uses metric 'vigil_consumer_lag', which neither the flow nor the API exports",
    ):
        assert expected in text, f"{expected!r} not reported:\n{text}"


def test_the_api_on_localhost_inside_its_container_is_reported():
    compose = cc.resolve(RAW, cc.defaults_env(RAW))
    compose["services"]["api"]["environment"]["VIGIL_API_HOST"] = "127.0.0.1"
    text = "\n".join(cc.check_listen_ports(compose, IMAGE))
    assert "api: the API listens on 127.0.0.1, which other containers" in text


def test_the_dockerfile_must_expose_the_api_and_metrics_ports():
    text = (ROOT / "Dockerfile").read_text().replace("EXPOSE 9100 8000", "EXPOSE 9100")
    problems = cc.check_dockerfile(cc.parse_dockerfile(text), PROJECT)
    assert problems == ["Dockerfile: EXPOSE lacks 8000, a port the image serves (API or flow "
                        "metrics)"]
