"""The web console: static pages under /ui/ that call the same REST API as any client.

The shell (HTML, JS modules, CSS) loads without a key; every data call sends the key the user typed, which the
page keeps in sessionStorage and sends as `Authorization: Bearer` (never in a URL or a cookie). Page routes such as
/ui/jobs/<id> all answer index.html and the JS router draws the page; files under /ui/static/ are served as they
are. A Content-Security-Policy lets the pages load and call nothing but this server."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SHELL_HEADERS = {
    "Content-Security-Policy": POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """Static files with the console's security headers; revalidated on each load (no stale JS after an upgrade)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SHELL_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await super().__call__(scope, receive, with_headers)


async def console_root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


async def console_page(request: Request) -> Response:
    """Every page of the console is the same shell; its JS router reads the path (and ignores any query)."""
    return FileResponse(STATIC / "index.html", headers=SHELL_HEADERS)


def mount_console(app: FastAPI) -> None:
    """/ui/static/ (files), then the shell for any other /ui/ path. Plain Starlette routes, not API operations:
    they take no key, are not in the OpenAPI schema, and the API's strict query check does not apply to them."""
    app.mount("/ui/static", ConsoleFiles(directory=STATIC), name="console-static")
    app.add_route("/ui", console_root, methods=["GET", "HEAD"])
    app.add_route("/ui/{page:path}", console_page, methods=["GET", "HEAD"])
