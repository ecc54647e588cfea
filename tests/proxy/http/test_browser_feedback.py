"""Feedback from the site's own page: a real headless Chromium on a page of another origin posts a
click with fetch() (a JSON body, so a CORS preflight) and a purchase with navigator.sendBeacon (as
docs/quality.md's snippet does) to a real proxy, and both are counted; a page of an origin not
allowed cannot read its answer and its beacon is refused."""

from __future__ import annotations

import http.server
import json
import threading
import time
from html.parser import HTMLParser

import pytest

from tests.harness.browser import chromium
from tests.harness.proxy import ProxyProcess
from tests.harness.servers import free_port

pytestmark = pytest.mark.system  # real gunicorn and a real browser

PAGE = """<!doctype html><html><body data-fetch="pending"><script>
const proxy = {proxy}, ticket = {ticket}, item = {item};
fetch(proxy + "/feedback", {{method: "POST", keepalive: true, headers: {{"Content-Type": "application/json"}},
                             body: JSON.stringify({{ticket, item, event: "click"}})}})
  .then(answer => answer.json().then(body => {{ document.body.dataset.fetch = answer.status + " " + body.accepted; }}))
  .catch(error => {{ document.body.dataset.fetch = "refused: " + error.name; }});
document.body.dataset.beacon = String(navigator.sendBeacon(proxy + "/feedback",
                                                           JSON.stringify({{ticket, item, event: "purchase"}})));
</script></body></html>"""


class BodyData(HTMLParser):
    """The data-* attributes of the rendered page's body."""

    def __init__(self, dom: str):
        super().__init__()
        self.data: dict[str, str] = {}
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.data = {name[5:]: value for name, value in attrs if name.startswith("data-")}


class Site:
    """The shop's pages on a port of their own (another origin than the proxy's)."""

    def __init__(self, page: str, port: int):
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def feedback_counted(proxy: ProxyProcess, timeout: float = 10) -> int:
    """Feedback events /quality counts, once it stops changing."""
    deadline, last, seen = time.monotonic() + timeout, -1, 0
    while time.monotonic() < deadline:
        seen = sum(group["feedback"] for group in proxy.get("/quality?since=10m").json()["groups"])
        if seen == last and seen:
            return seen
        last = seen
        time.sleep(0.5)
    return seen


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-origin", "other-origin"])
def test_a_page_posts_feedback_cross_origin(tiny_bundle, redis_server, tiny_holdout, tmp_path, allowed):
    site_port = free_port()
    site_origin = f"http://127.0.0.1:{site_port}"
    origins = f"https://shop.example,{site_origin}" if allowed else "https://shop.example"
    proxy = ProxyProcess(tiny_bundle, redis_server.url, workers=1, log_path=tmp_path / "proxy.log",
                         env={"RECGUARD_FEEDBACK_SECRET": "browser-feedback-secret-01", "RECGUARD_HOLDBACK": "0",
                              "RECGUARD_REDIS_PREFIX": f"browser-{allowed}", "RECGUARD_FEEDBACK_ORIGINS": origins}).start()
    site = None
    try:
        answer = proxy.predict(tiny_holdout[0]).json()
        site = Site(PAGE.format(proxy=json.dumps(proxy.url), ticket=json.dumps(answer["ticket"]),
                                item=json.dumps(answer["items"][0])), site_port)
        result = chromium(f"{site_origin}/", tmp_path / "profile", "--dump-dom")
        assert result.returncode == 0, result.stderr[-2000:]
        body = BodyData(result.stdout).data
        assert body["beacon"] == "true", body  # the browser queued it either way: the server decides
        if allowed:
            assert body["fetch"] == "202 1", body  # the answer was readable: CORS let the page see it
            assert feedback_counted(proxy) == 2  # the click and the beacon's purchase
        else:
            assert body["fetch"] == "refused: TypeError", body  # the preflight was refused
            assert feedback_counted(proxy, timeout=3) == 0
    finally:
        proxy.stop()
        if site is not None:
            site.close()
