"""``python -m api``: serve the alerts API with uvicorn, configured by ``VIGIL_API_*``."""

from __future__ import annotations

import argparse
import logging
import sys

from flows import logs
from flows.cli import positive_int
from flows.settings import Settings, SettingsError

log = logging.getLogger("vigil.api")


def main(argv: list[str] | None = None) -> int:
    """Validate settings, migrate the database once, then hand over to uvicorn."""
    parser = argparse.ArgumentParser(
        prog="python -m api",
        description="Serve the Vigil alerts API. Settings come from VIGIL_* variables "
        "(VIGIL_API_DB, VIGIL_API_TOKEN, VIGIL_API_HOST, VIGIL_API_PORT, VIGIL_API_WORKERS, "
        "...; see docs/configuration.md); the flags below override three of them.",
    )
    parser.add_argument("--host", help="listen address (default: VIGIL_API_HOST)")
    parser.add_argument("--port", type=positive_int, help="listen port (default: VIGIL_API_PORT)")
    parser.add_argument("--workers", type=positive_int,
                        help="worker processes (default: VIGIL_API_WORKERS)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"vigil api: {exc}", file=sys.stderr)
        return 2
    if settings.api_auth_reads and not settings.api_token:
        print("vigil api: VIGIL_API_AUTH_READS needs VIGIL_API_TOKEN (the token reads must "
              "carry); without one nothing could be read", file=sys.stderr)
        return 2
    logs.configure(settings)
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    workers = args.workers if args.workers is not None else settings.api_workers
    if port > 65535:
        parser.error(f"--port {port} is not a port number (1-65535)")

    import uvicorn

    from api._store import Store

    try:  # migrate once here, so workers start against an up-to-date schema
        Store(settings.api_db).close()
    except Exception as exc:
        print(f"vigil api: cannot open database {settings.api_db!r}: {exc}", file=sys.stderr)
        return 2
    log.info("database %s; %s; serving on http://%s:%d (web page /ui/) with %d worker(s)",
             settings.api_db,
             ("reads and writes need the bearer token" if settings.api_auth_reads
              else "writes need the bearer token") if settings.api_token
             else "no VIGIL_API_TOKEN: writes are disabled", host, port, workers)
    uvicorn.run(
        "api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=5,
        log_config=logs.uvicorn_log_config(settings),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
