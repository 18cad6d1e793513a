"""Serves the web console (`kaon.console`): `/console/` is its page, `/console/<file>` its
scripts, styles and vendored libraries, and `/` sends a browser there.

The files are public (they hold no data; every number the console shows comes from the
API with the signed-in token). Pages are addressed by the URL's fragment
(`/console/#/jobs`), so the server only ever serves files that exist.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from kaon.console import INDEX, STATIC_DIR
from kaon.core.errors import NotFoundError

router = APIRouter(tags=["console"], include_in_schema=False)
# Every file is revalidated (cheap: 304), so an upgraded Kaon never runs yesterday's script.
NO_STALE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _page_policy() -> str:
    """The page runs only its own files and its one inline script (the import map, allowed
    by its hash) and talks only to this server: injected markup cannot run a script that
    reads the token from sessionStorage, nor send it elsewhere. Inline styles stay allowed
    (the charts and meters set widths with them)."""
    inline = re.findall(r"<script[^>]*>(.*?)</script>", INDEX.read_text(), re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in inline
        if s.strip()
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


PAGE_HEADERS = {**NO_STALE, "Content-Security-Policy": _page_policy()}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console")
async def console_bare() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console/")
async def index() -> FileResponse:
    return FileResponse(INDEX, headers=PAGE_HEADERS)


@router.get("/console/{path:path}")
async def asset(path: str) -> FileResponse:
    """A file of the console's package; nothing outside it, whatever `..` the path holds."""
    root = STATIC_DIR.resolve()
    found = (root / path).resolve()
    if not found.is_relative_to(root) or not found.is_file():
        raise NotFoundError(f"no console file {path!r}")
    return FileResponse(found, headers=NO_STALE)
