"""CORS through a real browser: headless Chromium (Debian's `chromium`, installed by
`make test`) loads a page from one loopback origin that POSTs events to the API on
another port.

The page sends what browsers send: a JSON `POST /ingest` (a preflighted request) and an
analytics.js-style `text/plain` `POST /v1/t` (a "simple" request, sent without asking).
From the allowed origin both land; from another origin the browser refuses the first
after its preflight, the API refuses the second (403) and the page cannot read either:
nothing is written. Chromium runs with `--dump-dom` and a virtual time budget (which does
not run out while a fetch is pending), and the page writes its results into the DOM;
every run is bounded by a wall-clock timeout.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from serving import uvicorn_serving

from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from wotr_domain.errors import ConfigError

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html>
<html><head><title>wotr CORS</title></head><body><pre id="result">pending</pre><script>
const api = %(api)s, origin = location.origin, results = {};
async function send(name, path, type, body) {
  try {
    const r = await fetch(api + path, {method: "POST", headers: {"Content-Type": type}, body: JSON.stringify(body)});
    results[name] = {status: r.status, body: await r.json()};
  } catch (e) {
    results[name] = {error: String(e)};
  }
}
(async () => {
  await send("ingest", "/ingest", "application/json", {payload: {origin}, source: "browser"});
  await send("track", "/v1/t", "text/plain",
             {type: "track", anonymousId: "a-1", event: "Clicked", properties: {origin}, messageId: "m-" + location.port});
  document.getElementById("result").textContent = "RESULT " + JSON.stringify(results);
})();
</script></body></html>
"""


class _Pages(http.server.BaseHTTPRequestHandler):
    api = ""

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        body = (PAGE % {"api": json.dumps(self.api)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def page_server(sock: socket.socket, api: str) -> Iterator[str]:
    """Serves the page on the bound `sock` (the page's origin is its address)."""
    handler = type("Pages", (_Pages,), {"api": api})
    server = http.server.ThreadingHTTPServer(sock.getsockname(), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    sock.listen()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serving(env: dict[str, str]) -> Iterator[tuple[str, object]]:
    """The API on a real uvicorn server on 127.0.0.1 (an ephemeral port), in a thread."""
    container = build_container(Settings.from_env(env), with_workers=False)
    with uvicorn_serving(container) as port:
        yield f"http://127.0.0.1:{port}", container


def browse(url: str, tmp_path) -> dict:
    """Load `url` in headless Chromium; the page's results once its fetches are done."""
    if CHROMIUM is None:  # in CI (CI set) a missing browser fails the run, as a missing service does
        (pytest.fail if os.environ.get("CI") else pytest.skip)("chromium is not installed (`make test` installs it)")
    profile = tmp_path / f"profile-{url.rsplit(':', 1)[1]}"
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90,
    )
    match = re.search(r'<pre id="result">RESULT (.*?)</pre>', out.stdout, re.S)
    assert match, f"the page did not finish: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


@pytest.fixture
def origins():
    allowed, other = _listening(), _listening()
    yield allowed, other
    allowed.close()
    other.close()


def test_a_page_on_an_allowed_origin_posts_events_and_another_origin_cannot(origins, tmp_path):
    allowed_sock, other_sock = origins
    allowed_origin = f"http://127.0.0.1:{allowed_sock.getsockname()[1]}"
    env = {"WOTR_PROFILE": "memory", "WOTR_CORS_ORIGINS": allowed_origin}
    with serving(env) as (api, container), page_server(allowed_sock, api) as allowed, \
            page_server(other_sock, api) as other:
        assert allowed == allowed_origin
        repo = container.metadata_repo()

        results = browse(f"{allowed}/", tmp_path)
        assert results["ingest"]["status"] == 202, results
        assert results["track"] == {"status": 200, "body": {"success": True, "id": f"m-{allowed.rsplit(':', 1)[1]}",
                                                            "duplicate": False}}
        landed = repo.get(results["ingest"]["body"]["id"])
        assert (landed.source, repo.count()) == ("browser", 2)
        assert repo.get(results["track"]["body"]["id"]).type == "track:Clicked"

        refused = browse(f"{other}/", tmp_path)
        assert set(refused) == {"ingest", "track"}
        assert all("Failed to fetch" in r.get("error", "") for r in refused.values()), refused
        assert repo.count() == 2  # nothing of the other origin was written


def test_the_preflight_answers_the_allowed_origin_only():
    origin = "https://app.example.com"
    with serving({"WOTR_PROFILE": "memory", "WOTR_CORS_ORIGINS": origin}) as (api, _):
        asking = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, x-write-key"}
        ok = httpx.options(f"{api}/ingest", headers={"Origin": origin, **asking}, timeout=10)
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == origin and "POST" in ok.headers["access-control-allow-methods"]
        assert {"content-type", "x-write-key"} <= set(ok.headers["access-control-allow-headers"].split(", "))
        assert httpx.options(f"{api}/ingest", headers={"Origin": "https://evil.example", **asking}, timeout=10).status_code == 400
        post = httpx.post(f"{api}/ingest", json={"payload": {}}, headers={"Origin": origin}, timeout=10)
        assert post.status_code == 202 and post.headers["access-control-allow-origin"] == origin
        assert "retry-after" in post.headers["access-control-expose-headers"].lower()
    with serving({"WOTR_PROFILE": "memory"}) as (api, _):  # off by default: no CORS headers at all
        off = httpx.options(f"{api}/ingest", headers={"Origin": origin, **asking}, timeout=10)
        assert "access-control-allow-origin" not in off.headers


def test_the_cors_setting_is_off_by_default_and_names_itself_when_wrong():
    assert Settings.from_env({}).cors_origins == ()
    both = Settings.from_env({"WOTR_CORS_ORIGINS": " https://app.example.com , http://127.0.0.1:3000,https://*.example.com"})
    assert both.cors_origins == ("https://app.example.com", "http://127.0.0.1:3000", "https://*.example.com")
    assert Settings.from_env({"WOTR_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    for wrong in ("app.example.com", "https://app.example.com/path"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"WOTR_CORS_ORIGINS": wrong})
        assert info.value.variable == "WOTR_CORS_ORIGINS"
