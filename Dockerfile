# syntax=docker/dockerfile:1
# Vigil image: the detection flow by default; the same image runs the simulator and replay CLIs.
#
#   docker build -t vigil:latest .          (or: docker compose build)
#   docker run --rm --init vigil:latest     embedded demo: simulated fleet, alerts on stdout
#                                           (--init: a python PID 1 ignores SIGTERM)
#
# Checked by tests/test_compose.py (bench/compose_check.py): the CMD module exists, the runtime
# user is not root, and the builder copies every package pyproject.toml installs.

# --- builder: install the project and its dependencies into a self-contained venv ------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the readme, so the build needs it too.
COPY pyproject.toml README.md ./
COPY flows/ flows/
COPY detectors/ detectors/
COPY api/ api/
COPY bench/ bench/
# A regular (non-editable) install: the runtime stage needs only /opt/venv.
RUN pip install .

# --- runtime: the same base image (the venv's python links to it), no build context ----------
FROM python:3.11-slim AS runtime

# Numeric ids so that Kubernetes' runAsNonRoot can verify them. /recovery is created here so a
# named volume mounted there starts out owned by the vigil user.
RUN groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid vigil --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin vigil \
 && mkdir -p /app /recovery \
 && chown vigil:vigil /app /recovery

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIGIL_METRICS_PORT=9100

WORKDIR /app
USER 10001:10001

# 9100: the flow's /metrics; 8000: the API (`python -m api`, compose service `api`)
EXPOSE 9100 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"]

CMD ["python", "-m", "bytewax.run", "flows.detect"]
