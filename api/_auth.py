"""Bearer-token guard for write endpoints; the token comes from ``VIGIL_API_TOKEN``."""

from __future__ import annotations

import hmac
import logging

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vigil"'}
log = logging.getLogger("vigil.api.auth")


def _refused(connection: ASGIConnection, why: str) -> None:
    """One warning per refused write (never the token given), for audit and brute force."""
    client = connection.client.host if connection.client else None
    log.warning("write refused: %s", why, extra={
        "method": connection.scope.get("method"), "path": connection.scope.get("path"),
        "client": client,
    })


def require_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Let the request through only with ``Authorization: Bearer <VIGIL_API_TOKEN>``.

    Compared in constant time. With no token configured every write is refused, so an API
    started without one is read-only rather than open.
    """
    expected: str = connection.app.state.ctx.settings.api_token
    if not expected:
        _refused(connection, "no token configured")
        raise NotAuthorizedException(
            "this API has no VIGIL_API_TOKEN configured, so write endpoints are disabled",
            headers=_CHALLENGE,
        )
    header = connection.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        _refused(connection, "missing bearer token")
        raise NotAuthorizedException(
            "missing bearer token: send `Authorization: Bearer <VIGIL_API_TOKEN>`",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        _refused(connection, "invalid bearer token")
        raise NotAuthorizedException("invalid bearer token", headers=_CHALLENGE)
