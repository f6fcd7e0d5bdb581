"""Helpers shared by the route modules."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Request
from litestar.exceptions import ValidationException

from api._context import Context
from api._store import to_ms

MAX_PAGE = 500
"""Hard page-size limit of every list endpoint."""


def ctx(request: Request) -> Context:
    """The app's Context."""
    return request.app.state.ctx


def ms_or_none(name: str, value: datetime | None) -> int | None:
    """A query timestamp as epoch ms; naive times are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return to_ms(value)


def check_range(since: int | None, until: int | None) -> None:
    """422 when the range is empty by construction."""
    if since is not None and until is not None and since >= until:
        raise ValidationException("`since` must be earlier than `until`")
