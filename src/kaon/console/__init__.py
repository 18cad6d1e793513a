"""The web console: a single-page app of static files that the control plane serves at
`/console/` (see `kaon.server.routers.console`).

It is only a client of the REST API under `/api/v1`, signed in with a token like the CLI,
so it sees exactly what that token may see. Everything it loads ships in this package
(`static/`, with its vendored libraries and their licences in `static/vendor/`): no build
step, no npm and no internet on the user's machine. docs/console.md says why this stack.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
INDEX = STATIC_DIR / "index.html"
