"""/v1/models: the registry the flow serves from; activation is picked up by hot reload."""

from __future__ import annotations

from litestar import Request, get, post
from litestar.concurrency import sync_to_thread
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath

from api._auth import require_read_token, require_token
from api.routes._common import ctx, errors
from api.schemas import ModelList, ModelVersion
from detectors.registry import ModelInfo, ModelRegistry, RegistryError


def _view(info: ModelInfo, active: str | None) -> ModelVersion:
    m = info.metadata
    v = m.validation
    return ModelVersion(
        version=info.version, kind=m.kind, created_at=m.created_at,
        active=info.version == active, threshold=m.threshold,
        threshold_quantile=m.threshold_quantile, features=m.n_features, seq_len=m.seq_len,
        window_length_ms=m.window_length_ms, window_hop_ms=m.window_hop_ms,
        validation={"n": v.n, "mean": v.mean, "p50": v.p50, "p99": v.p99, "max": v.max},
        training_epochs=m.training.epochs,
        final_loss=m.training.loss_curve[-1] if m.training.loss_curve else None,
        final_val_loss=m.training.val_loss_curve[-1] if m.training.val_loss_curve else None,
    )


def _list(request: Request) -> ModelList:
    c = ctx(request)
    reg = ModelRegistry(c.registry_root)
    active = reg.active_version()
    return ModelList(str(c.registry_root), active, c.registry_writable,
                     [_view(i, active) for i in reg.versions()])


@get(
    "/v1/models", guards=[require_read_token], tags=["models"],
    summary="Model versions, the active one, their metrics", responses=errors(401),
)
async def list_models(request: Request) -> ModelList:
    """Every valid version in VIGIL_MODEL_REGISTRY (or the bundled model)."""
    return _list(request)


@post(
    "/v1/models/{version:str}/activate", guards=[require_token], status_code=200,
    tags=["models"], summary="Activate a model version (the flow hot-reloads it)",
    responses=errors(401, 404, 409),
)
async def activate_model(request: Request, version: FromPath[str]) -> ModelList:
    """Check the version loads and runs, then point ACTIVE at it.

    The flow's lstm_ae detector notices within VIGIL_MODEL_RELOAD_INTERVAL. The model bundled
    inside the package is read-only: set VIGIL_MODEL_REGISTRY to a registry of your own.
    """
    c = ctx(request)
    if not c.registry_writable:
        raise ClientException(
            "the bundled default model registry is read-only; set VIGIL_MODEL_REGISTRY (for "
            "the API and the flow) to a registry folder of your own to activate versions",
            status_code=409,
        )
    reg = ModelRegistry(c.registry_root)
    try:
        await sync_to_thread(reg.info, version)
    except RegistryError as exc:
        if "does not exist" in str(exc) or "not a valid version id" in str(exc):
            raise NotFoundException(str(exc)) from None
        raise ClientException(str(exc), status_code=409) from None
    try:
        await sync_to_thread(reg.activate, version)
    except RegistryError as exc:
        raise ClientException(f"not activated: {exc}", status_code=409) from None
    return _list(request)
