"""The live web page: static files under /ui/ (no build step), and / pointing there.

The files hold no data, so they are served without a token even when reads need one: the
page asks for the token and sends it with every API request itself. A strict
Content-Security-Policy allows only this origin's scripts, styles and connections.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Request, Response, get
from litestar.response import Redirect
from litestar.router import Router
from litestar.static_files import create_static_files_router

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _slash(request: Request) -> Redirect | None:
    """/ui -> /ui/: without the slash the page's relative links would miss the folder."""
    raw = request.scope.get("raw_path") or b""  # `path` has its trailing slash removed
    if raw.split(b"?")[0] == b"/ui":
        return Redirect("/ui/")
    return None


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def static_router() -> Router:
    """/ui/ and its files; index.html for the folder itself."""
    return create_static_files_router(
        path="/ui", directories=[UI_DIR], html_mode=True, name="ui", before_request=_slash,
        after_request=_secure,
        include_in_schema=False,
    )


@get("/", include_in_schema=False)
async def to_ui() -> Redirect:
    """The API's root leads to the page."""
    return Redirect("/ui/")
