"""/dashboard in a real headless browser: after anomalous traffic through a real proxy, the rendered page shows it."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.harness.browser import chromium
from tests.harness.proxy import ProxyProcess

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


class RenderedDashboard(HTMLParser):
    """The parts of the rendered DOM a reader looks at: element texts by id and the anomaly table rows."""

    def __init__(self, dom: str):
        super().__init__()
        self.texts: dict[str, str] = {}
        self.rows: dict[tuple[str, str], list[str]] = {}
        self.body_state = None
        self._open_ids: list[tuple[str, str]] = []
        self._row: tuple[str, str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "body":
            self.body_state = attributes.get("data-state")
        if "id" in attributes:
            self._open_ids.append((tag, attributes["id"]))
            self.texts.setdefault(attributes["id"], "")
        if tag == "tr" and "data-field" in attributes:
            self._row = (attributes["data-field"], attributes["data-kind"])
            self.rows[self._row] = []
        if tag == "td" and self._row is not None:
            self.rows[self._row].append("")

    def handle_endtag(self, tag):
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        for _, element_id in self._open_ids:
            self.texts[element_id] += data
        if self._row is not None and self.rows[self._row]:
            self.rows[self._row][-1] += data.strip()


def render(url: str, tmp_path: Path) -> RenderedDashboard:
    result = chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    return RenderedDashboard(result.stdout)


def wait_for_requests(proxy: ProxyProcess, expected: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = proxy.get("/anomalies?since=5m").json()
        if report["requests"] >= expected or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


@pytest.fixture
def proxy(tiny_bundle, redis_server, redis_client, tmp_path):
    process = ProxyProcess(tiny_bundle, redis_server.url, workers=1, log_path=tmp_path / "proxy.log").start()
    yield process
    process.stop()


def test_the_page_is_self_contained(client):
    response = client.get("/dashboard")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, "the page must work offline: no CDN, no external fetch"
    assert '"anomalies?since=1h"' in page and '"healthz"' in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_anomalies_and_model_version_appear_in_the_rendered_page(proxy, loaded_bundle, tiny_holdout, tmp_path):
    clean = tiny_holdout[:20]
    out_of_range = [{**body, "weight_kg": 400.0} for body in tiny_holdout[20:27]]
    renamed = [{**{k: v for k, v in body.items() if k != "email"}, "user_email": body["email"]}
               for body in tiny_holdout[27:32]]
    new_market = [{**body, "country": "MX"} for body in tiny_holdout[32:35]]
    traffic = clean + out_of_range + renamed + new_market
    for body in traffic:
        assert proxy.predict(body).status_code == 200
    assert wait_for_requests(proxy, len(traffic))["requests"] == len(traffic)

    dashboard = render(proxy.url + "/dashboard", tmp_path)
    screenshot = tmp_path / "dashboard.png"
    result = chromium(proxy.url + "/dashboard", tmp_path / "profile-shot", f"--screenshot={screenshot}")

    assert dashboard.body_state == "ready", dashboard.texts.get("error")
    assert dashboard.texts["model-version"] == loaded_bundle.model_version
    assert dashboard.texts["total-requests"] == str(len(traffic))
    counts = {pair: int(cells[2]) for pair, cells in dashboard.rows.items()}
    assert counts == {("weight_kg", "out_of_range"): 7, ("email", "missing_field"): 5,
                      ("user_email", "unexpected_field"): 5, ("user_email", "suspected_rename"): 5,
                      ("country", "unknown_category"): 3}
    fallback = len(out_of_range) + len(new_market)
    assert dashboard.texts["fallback-rate"] == f"{100 * fallback / len(traffic):.1f}%"
    assert result.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_says_why_when_counts_are_off(tiny_bundle, redis_server, loaded_bundle, tmp_path):
    bare = ProxyProcess(tiny_bundle, redis_server.url, "--no-guard", workers=1).start()
    try:
        dashboard = render(bare.url + "/dashboard", tmp_path)
    finally:
        bare.stop()
    assert dashboard.body_state == "error"
    assert "anomaly counting is off" in dashboard.texts["error"]
    assert dashboard.texts["model-version"] == loaded_bundle.model_version


def test_live_hit_rates_appear_per_source(tiny_bundle, redis_server, redis_client, tiny_holdout, tmp_path):
    proxy = ProxyProcess(tiny_bundle, redis_server.url, workers=1, log_path=tmp_path / "proxy.log",
                         env={"RECGUARD_FEEDBACK_SECRET": "s" * 16, "RECGUARD_HOLDBACK": "0"}).start()
    try:
        answers = [proxy.predict(body).json() for body in tiny_holdout[:8]]
        for answer in answers[:2]:  # two of eight answers led to a click on a served item
            assert proxy.post("/feedback", json={"ticket": answer["ticket"], "item": answer["items"][0]}).status_code == 202
        deadline = time.monotonic() + 10
        while sum(group["answers_hit"] for group in proxy.get("/quality?by=source").json()["groups"]) < 2:
            assert time.monotonic() < deadline, "feedback never counted"
            time.sleep(0.1)
        dashboard = render(proxy.url + "/dashboard", tmp_path)
    finally:
        proxy.stop()
    assert dashboard.body_state == "ready", dashboard.texts.get("error")
    assert "model: 25.0% of 8" in dashboard.texts["legend-quality"]
