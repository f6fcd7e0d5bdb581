"""Bearer-token guards: writes always need ``VIGIL_API_TOKEN``; reads only with
``VIGIL_API_AUTH_READS``. The same token serves both, so an operator enters one secret."""

from __future__ import annotations

import hmac
import logging

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vigil"'}
log = logging.getLogger("vigil.api.auth")


def _refused(connection: ASGIConnection, what: str, why: str) -> None:
    """One warning per refused request (never the token given), for audit and brute force."""
    client = connection.client.host if connection.client else None
    log.warning("%s refused: %s", what, why, extra={
        "method": connection.scope.get("method"), "path": connection.scope.get("path"),
        "client": client,
    })


def _check(connection: ASGIConnection, what: str) -> None:
    expected: str = connection.app.state.ctx.settings.api_token
    if not expected:
        _refused(connection, what, "no token configured")
        raise NotAuthorizedException(
            f"this API has no VIGIL_API_TOKEN configured, so {what} endpoints are disabled",
            headers=_CHALLENGE,
        )
    header = connection.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        _refused(connection, what, "missing bearer token")
        raise NotAuthorizedException(
            "missing bearer token: send `Authorization: Bearer <VIGIL_API_TOKEN>`",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        _refused(connection, what, "invalid bearer token")
        raise NotAuthorizedException("invalid bearer token", headers=_CHALLENGE)


def require_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Let a write through only with ``Authorization: Bearer <VIGIL_API_TOKEN>``.

    Compared in constant time. With no token configured every write is refused, so an API
    started without one is read-only rather than open.
    """
    _check(connection, "write")


def require_read_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """With ``VIGIL_API_AUTH_READS`` set, a read needs the token as well (else it is open).

    Sensor ids, scores and alerts can be business data; this closes them without a proxy.
    """
    if connection.app.state.ctx.settings.api_auth_reads:
        _check(connection, "read")
