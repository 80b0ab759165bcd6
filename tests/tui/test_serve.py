"""``lakeloom tui serve`` locked down: loopback only, a token, same-origin WebSocket, no
asset from another host. The real server runs in a subprocess on a free port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lake.errors import ConfigError
from tests.conftest import REPO
from tui.serve import make_server

pytestmark = pytest.mark.anyio
TOKEN = "fixed-token-for-scripts"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, int, Path]:
    port = _free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui", "serve", f"port={port}", f"lake.uri={tmp_path}/lake",
         *overrides],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    end = time.monotonic() + 30
    while "token=" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, "the server did not start"
        time.sleep(0.1)
    return proc, port, log


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The real server with a fixed token (config), stopped by its PID."""
    proc, port, _ = _start(tmp_path, f"token={TOKEN}")
    yield port, TOKEN
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


async def test_page_needs_the_token_and_loads_nothing_from_other_hosts(server) -> None:
    port, token = server
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as r:
            assert r.status == 403
        async with http.get(f"{base}/?token=wrong") as r:
            assert r.status == 403
        async with http.get(f"{base}/static/js/textual.js") as r:  # no cookie yet
            assert r.status == 403
    # unsafe: keep cookies of an IP host, as browsers do (aiohttp's default jar does not)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/?token={token}") as r:
            assert r.status == 200
            html = await r.text()
        async with http.get(f"{base}/static/js/textual.js") as r:  # the page's cookie
            assert r.status == 200
        async with http.get(f"{base}/static/fonts/RobotoMono-VariableFont_wght.ttf") as r:
            assert r.status == 200
    html = re.sub(r'xmlns="[^"]*"', "", html)  # an XML namespace is a name, not a request
    hosts = set(re.findall(r"(?:https?|wss?)://([^/:\"'\s]+)", html))
    assert hosts <= LOCAL_HOSTS, hosts
    assert "fonts.googleapis" not in html and "RobotoMono-VariableFont_wght.ttf" in html
    assert f"/ws/{token}" in html


async def test_websocket_needs_the_token_and_the_servers_origin(server) -> None:
    port, token = server
    base = f"http://127.0.0.1:{port}"
    ws = f"ws://127.0.0.1:{port}/ws/{token}?width=80&height=24"
    async with aiohttp.ClientSession() as http:
        for url, origin in (
            (ws, "http://evil.example"),  # any web page open in the browser
            (ws, f"http://evil.example:{port}"),
            (ws, None),
            (f"ws://127.0.0.1:{port}/ws/wrong?width=80&height=24", base),
            (f"ws://127.0.0.1:{port}/ws?width=80&height=24", base),  # textual-serve's own
        ):
            headers = {"Origin": origin} if origin else {}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status in (403, 404), (url, origin)
        async with http.ws_connect(ws, headers={"Origin": base}) as sock:
            await sock.send_json(["ping", "x"])
            msg = await sock.receive(timeout=30)
            while msg.type != aiohttp.WSMsgType.TEXT or "pong" not in msg.data:
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
                msg = await sock.receive(timeout=30)
            assert json.loads(msg.data) == ["pong", "x"]  # accepted: the session answers


def test_a_random_token_is_printed_and_only_loopback_is_bound(tmp_path: Path) -> None:
    proc, port, log = _start(tmp_path)
    try:
        url = re.search(r"http://\S+", log.read_text()).group(0)
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[\w-]{{32,}}", url)
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        mine = [line for line in listening.splitlines() if f":{port} " in line]
        assert mine and all("127.0.0.1:" in line for line in mine), mine
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    a, b = make_server([]), make_server([])
    assert a.token != b.token and len(a.token) >= 32
    assert make_server([], host="localhost").host == "127.0.0.1"
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ConfigError, match="loopback"):
            make_server([], host=host)
