"""``lakeloom tui serve``: the same app in a browser, through textual-serve.

Every browser tab starts its own ``python -m tui <overrides>`` process (same lake, runs
folder and TUI config), drawn by Textual's web driver; nothing but the server listens.

The page drives a process that can write review tags, so the server is locked like a
Jupyter server: it binds the loopback interface only, and every request needs the random
token of the URL it prints (``http://127.0.0.1:PORT/?token=...``). The page hands the
token on to its own requests in a cookie and to its WebSocket in the path
(``/ws/<token>``); the WebSocket also needs the ``Origin`` of the server itself, so no
other web page open in the browser can drive the app. The page loads nothing from
another host: textual-serve's page asks a public font server for its font, which is
replaced by the copy textual-serve ships.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lake.errors import ConfigError

SERVE_KEYS = ("host", "port", "token")  # read by the server, not passed on to the app
TEMPLATE = "app_index.html"
# the <link> of textual-serve's page that loads a stylesheet from a public host
EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*>", re.S)
LOCAL_FONT = """<style>
      @font-face {
        font-family: "Roboto Mono";
        src: url("{{ config.static.url }}fonts/RobotoMono-VariableFont_wght.ttf");
      }
    </style>"""


def app_command(overrides: Sequence[str], python: str | None = None) -> str:
    """The shell command each browser session runs."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SERVE_KEYS]
    return shlex.join([python or sys.executable, "-m", "tui", *keep])


def loopback_host(host: str) -> str:
    """The address to bind: ``host`` when it is a loopback IPv4 address (``localhost``
    means ``127.0.0.1``); anything else is refused (the token travels in clear)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or address.version != 4 or not address.is_loopback:
        raise ConfigError(
            f"tui serve: host={host!r} is not allowed; the server binds a loopback "
            "address only (127.0.0.1); reach it from elsewhere through an SSH tunnel "
            "(ssh -L PORT:127.0.0.1:PORT)"
        )
    return host


def page_template(path: Path) -> str:
    """textual-serve's page with its external stylesheet replaced by the local font."""
    html = path.read_text(encoding="utf-8")
    html, n = EXTERNAL_LINK.subn("", html)
    if n:
        html = html.replace("</head>", f"  {LOCAL_FONT}\n  </head>", 1)
    return html


def make_server(
    overrides: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
) -> Any:
    """A token-guarded textual-serve server for the app (not started).

    ``token``: the secret the URL carries; None draws one (``secrets.token_urlsafe``).
    """
    from textual_serve.server import Server

    class GuardedServer(Server):
        """textual-serve's server behind the token, the Origin check and local assets."""

        def __init__(self) -> None:
            bind = loopback_host(host)
            super().__init__(app_command(overrides), host=bind, port=port, title="lakeloom")
            self.token = token or secrets.token_urlsafe(32)
            self.cookie = f"lakeloom_tui_{port}"  # cookies are per host, not per port
            self.hosts = {f"{name}:{port}" for name in (bind, "localhost")}

        @property
        def url(self) -> str:
            """The URL to open, token included."""
            return f"http://{self.host}:{self.port}/?token={self.token}"

        def _valid(self, given: str | None) -> bool:
            return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

        async def _make_app(self) -> Any:
            import aiohttp_jinja2
            import jinja2
            from aiohttp import web

            templates = Path(self.templates_path)
            loader = jinja2.FunctionLoader(
                lambda name: page_template(templates / name) if name == TEMPLATE else None
            )

            @web.middleware
            async def guard(request: web.Request, handler: Any) -> Any:
                if request.host not in self.hosts:  # DNS rebinding: a foreign name
                    raise web.HTTPForbidden(text="unknown host")
                given = request.cookies.get(self.cookie)
                if request.path == "/":
                    given = request.query.get("token") or given
                elif request.path.startswith("/ws/"):
                    given = request.match_info.get("token")
                    origin = request.headers.get("Origin")
                    if origin not in {f"http://{h}" for h in self.hosts}:
                        raise web.HTTPForbidden(text="cross-origin WebSocket refused")
                if not self._valid(given):
                    raise web.HTTPForbidden(text="a valid token is required (see the URL printed)")
                response = await handler(request)
                if request.path == "/":
                    response.set_cookie(
                        self.cookie, self.token, httponly=True, samesite="Strict", path="/"
                    )
                return response

            app = web.Application(middlewares=[guard])
            aiohttp_jinja2.setup(app, loader=loader)
            app.add_routes(
                [
                    web.get("/", self.handle_index, name="index"),
                    web.get("/ws/{token}", self.handle_websocket, name="websocket"),
                    web.get("/download/{key}", self.handle_download, name="download"),
                    web.static("/static", self.statics_path, name="static"),
                ]
            )
            app.on_startup.append(self.on_startup)
            app.on_shutdown.append(self.on_shutdown)
            return app

        @aiohttp_jinja2_template(TEMPLATE)
        async def handle_index(self, request: Any) -> dict[str, Any]:
            """The page, its WebSocket URL on the host the browser used."""
            return {
                "font_size": _int(request.query.get("fontsize"), 16),
                "app_websocket_url": f"ws://{request.host}/ws/{self.token}",
                "config": {"static": {"url": "/static/"}},
                "application": {"name": self.title},
            }

        async def on_startup(self, app: Any) -> None:
            # one line, never wrapped: scripts read the URL from it
            self.console.print(
                f"Serving lakeloom on [bold]{self.url}[/]", highlight=False, soft_wrap=True
            )
            self.console.print("Open that URL (the token is required). Ctrl+C quits.")

    return GuardedServer()


def aiohttp_jinja2_template(name: str) -> Any:
    """``aiohttp_jinja2.template`` (imported only when a server is built)."""
    import aiohttp_jinja2

    return aiohttp_jinja2.template(name)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default
