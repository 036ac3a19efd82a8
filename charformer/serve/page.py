"""The page at ``/`` to try the model from a browser: three static files (HTML, CSS and a plain script, in
static/), served as they are, with no build step and nothing loaded from elsewhere.

The script lists the served models (``GET /v1/models``), then sends each section's lines to its endpoint
and shows the answer; generation is read as server-sent events from a ``fetch`` stream (``EventSource``
cannot send the token header). The Content-Security-Policy allows scripts, styles and requests to this
origin only, so a text that happens to hold HTML can only ever be shown as text (the script writes results
with ``textContent``).
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8")}
HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def page_routes() -> list[Route]:
    """GET routes for the page's files (read once, here)."""
    routes = []
    for path, (name, media_type) in STATIC.items():
        content = (files(__package__) / "static" / name).read_bytes()

        async def serve(request: Request, content=content, media_type=media_type) -> Response:
            return Response(content, media_type=media_type, headers=HEADERS)

        routes.append(Route(path, serve))
    return routes
