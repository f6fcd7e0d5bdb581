"""Helpers shared by the route modules."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from litestar import Request
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec

from api._context import Context
from api._store import to_ms
from api.schemas import ErrorBody

MAX_PAGE = 500
"""Hard page-size limit of every list endpoint."""

# Stored times must read back as datetimes: the same 1970..2200 span readings are held to.
MIN_MS, MAX_MS = 0, 7_258_118_400_000

_ERRORS = {
    401: "No or a wrong `Authorization: Bearer <VIGIL_API_TOKEN>` header.",
    404: "No such record.",
    409: "The change conflicts with the record's state.",
    413: "The request body is larger than VIGIL_API_MAX_BODY_BYTES.",
    422: "A parameter or the body is invalid; `detail` names the field.",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers a handler gives, so clients (and schemathesis)
    know every status code it can return."""
    return {
        c: ResponseSpec(data_container=ErrorBody, description=_ERRORS[c], generate_examples=False)
        for c in codes
    }


def check_span(what: str, start_ms: int, end_ms: int) -> None:
    """422 for times outside 1970..2200, which the API could store but not read back."""
    if not (MIN_MS <= start_ms <= MAX_MS and MIN_MS <= end_ms <= MAX_MS):
        raise ValidationException(f"{what} lies outside 1970..2200 (UTC)")


_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def rfc3339_only(request: Request, *names: str) -> None:
    """422 for a bare number as a time filter. Litestar would read ``since=1714564800`` as
    epoch *seconds*, while readings take epoch *milliseconds*: refusing both is clearer than
    silently filtering on the wrong year."""
    for name in names:
        raw = request.query_params.get(name)
        if raw is not None and _NUMBER.match(raw):
            raise ValidationException(
                f"`{name}` must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z, "
                f"not a number ({raw!r})"
            )


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
