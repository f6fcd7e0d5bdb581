"""The Litestar application: ``create_app(settings)`` wires store, routes, auth and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.logging.config import LoggingConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from api._context import Context
from api._metrics import ApiMetrics, SensorScoreCollector, metrics_middleware
from api._store import Store
from api._stream import Broadcaster
from api.routes import alerts, health, models, sensors, ui
from api.schemas import AlertPatch, Heartbeat
from detectors.defaults import DEFAULT_REGISTRY
from flows.schemas import Alert, ScoreRecord
from flows.settings import Settings

ROUTES = [
    alerts.ingest_alerts, alerts.list_alerts, alerts.stream_alerts, alerts.get_alert,
    alerts.update_alert, sensors.ingest_scores, sensors.list_sensors, sensors.get_sensor,
    sensors.sensor_scores, models.list_models, models.activate_model, health.health,
    health.ready, health.metrics, health.heartbeat, ui.to_ui,
]


_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/alerts"): msgspec.json.Decoder(list[Alert]),
    ("POST", "/v1/scores"): msgspec.json.Decoder(list[ScoreRecord]),
    ("PATCH", "/v1/alerts/{alert_id}"): msgspec.json.Decoder(AlertPatch),
    ("POST", "/v1/heartbeat"): msgspec.json.Decoder(Heartbeat),
}


def _body_problem(request: Request) -> str | None:
    """msgspec's own message for the body, which names the field: `... - at `$[3].score``.

    Litestar's message drops that path, so the body (already read and cached) is decoded
    again here, only on the error path.
    """
    decoder = _BODIES.get((request.method, request.scope.get("path_template", "")))
    body = getattr(request, "_connection_state", None)
    raw = getattr(body, "body", None)
    if decoder is None or not isinstance(raw, bytes):
        return None
    try:
        decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return str(exc)
    return None


def _validation_error(request: Request, exc: ValidationException) -> Response:
    """422 with the field path of every problem, e.g. `Expected float, got str - at $[0].score`."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    detail = exc.detail
    precise = _body_problem(request)
    if precise:
        detail = f"invalid request body: {precise}"
        errors = [{"message": precise, "source": "body"}]
    elif errors:
        parts = []
        for e in errors:
            if isinstance(e, dict):
                where = e.get("key") or e.get("source") or ""
                parts.append(f"{e.get('message', '')}" + (f" (in {where})" if where else ""))
        detail = f"{detail}: " + "; ".join(parts) if parts else detail
    return Response(
        {"status_code": 422, "detail": detail, "errors": errors},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY, media_type=MediaType.JSON,
    )


def _bad_request(request: Request, exc: HTTPException) -> Response:
    """A body that is not even JSON: 422 with msgspec's message, like any invalid body."""
    if isinstance(exc, ValidationException):  # Litestar picks handlers by status code first
        return _validation_error(request, exc)
    precise = _body_problem(request)
    if precise:
        return Response(
            {"status_code": 422, "detail": f"request body is not valid JSON: {precise}",
             "errors": [{"message": precise, "source": "body"}]},
            status_code=HTTP_422_UNPROCESSABLE_ENTITY, media_type=MediaType.JSON,
        )
    return Response({"status_code": exc.status_code, "detail": exc.detail},
                    status_code=exc.status_code, media_type=MediaType.JSON)


def _logging_config() -> LoggingConfig:
    """Litestar logs through the root handler flows.logs set up (JSON, secrets masked).

    Left to itself Litestar replaces the root logger's handlers with its own text format.
    Unhandled errors (500s) are logged with their traceback; 4xx answers are not (Litestar
    would log each as an "Uncaught exception" ERROR: a page waiting for its token, or a
    client probing ids, would flood the log). Refused tokens get their own warning in _auth.
    """
    return LoggingConfig(
        configure_root_logger=False,
        log_exceptions="always",
        disable_stack_trace={400, 401, 403, 404, 405, 409, 413, 422},
        handlers={},
        formatters={},
        loggers={"litestar": {"handlers": [], "propagate": True}},
    )


def _one_value_per_query_parameter(request: Request) -> None:
    """422 for a query parameter given more than once.

    Every query parameter of the API takes one value, and Litestar would silently keep one
    of the repeated ones: ``until=2024-05-01T00:00:00Z&until=1714564800`` slipped a bare
    number past the RFC 3339 check (found by schemathesis)."""
    for name, values in request.query_params.dict().items():
        if len(values) > 1:
            raise ValidationException(
                f"query parameter `{name}` is given {len(values)} times; give it once"
            )


def create_app(settings: Settings, store: Store | None = None) -> Litestar:
    """The API for ``settings``: opens (and migrates) ``settings.api_db`` unless given a store."""
    store = store or Store(
        settings.api_db, round(settings.api_score_retention.total_seconds() * 1000)
    )
    root = Path(settings.model_registry) if settings.model_registry else DEFAULT_REGISTRY
    ctx = Context(
        settings=settings, store=store, broadcaster=Broadcaster(), metrics=ApiMetrics(),
        registry_root=root,
        registry_writable=root.resolve() != DEFAULT_REGISTRY.resolve(),
    )
    app = Litestar(
        route_handlers=[*ROUTES, ui.static_router()],
        middleware=[metrics_middleware],
        exception_handlers={ValidationException: _validation_error, 400: _bad_request},
        before_request=_one_value_per_query_parameter,
        request_max_body_size=settings.api_max_body_bytes,
        on_shutdown=[lambda: store.close()],
        logging_config=_logging_config(),
        openapi_config=OpenAPIConfig(
            title="Vigil API", version="1.0.0",
            description="Alerts, sensors, scores and models of the Vigil anomaly detector. "
            "Write endpoints need `Authorization: Bearer <VIGIL_API_TOKEN>`; with "
            "VIGIL_API_AUTH_READS the /v1 reads too. The live web page is at /ui/.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(), RedocRenderPlugin(path="/redoc")],
        ),
    )
    ctx.metrics.registry.register(SensorScoreCollector(store, settings.api_metrics_sensors))
    _strict_bodies(app)
    app.state.ctx = ctx
    return app


def _strict_bodies(app: Litestar) -> None:
    """Say in the schema what the body decoders enforce, where Litestar leaves it out:
    ``additionalProperties: false`` for ``forbid_unknown_fields`` structs, and the bounds of
    optional numbers (``Annotated[int, Meta(ge=0)] | None`` loses ``minimum``/``maximum``).
    Without this, clients (and schemathesis) think such bodies valid until the API says 422."""
    schemas = app.openapi_schema.components.schemas or {}
    for struct in (AlertPatch, Heartbeat):
        schema = schemas.get(struct.__name__)
        if schema is None:
            continue
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        info = msgspec.inspect.type_info(struct)
        for f in info.fields:  # type: ignore[attr-defined]
            prop = (schema.properties or {}).get(f.encode_name)
            kinds = getattr(f.type, "types", ())
            for kind in kinds:
                ge, le = getattr(kind, "ge", None), getattr(kind, "le", None)
                if (ge is None and le is None) or prop is None:
                    continue
                for branch in getattr(prop, "one_of", None) or []:
                    if getattr(branch, "type", None) is not None and str(
                        getattr(branch.type, "value", branch.type)
                    ) in ("number", "integer"):
                        branch.minimum, branch.maximum = ge, le


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory api.app:app_from_env`` (used by ``python -m api``)."""
    return create_app(Settings.from_env())
