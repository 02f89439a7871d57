"""Hostile input against the service served by uvicorn on 127.0.0.1 (fake tollama daemon behind it): every class of input
that used to answer 500 is a 4xx naming what is wrong, a body over the limit is 413 before it is read, the OpenAPI document
lists every status the routes answer with the error body's schema, a client's bad input never opens the breaker, and a
backend refusing our credentials shows as misconfigured."""
from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import uvicorn

from tsfm_wb.tsfm.api import create_app
from tsfm_wb.tsfm.fake_tollama import FakeTollama
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig

T_END = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
REGISTRY = ModelsRegistry(models={"chronos2": {"license_tag": "apache-2.0"}}, prod={"allowed_models": ["chronos2"]})


def body(n: int = 40, **kw) -> dict:
    ts = [(T_END - timedelta(minutes=5 * (n - 1 - i))).isoformat() for i in range(n)]
    return {"market_id": "m-1", "as_of_ts": T_END.isoformat(), "y": [round(0.4 + 0.002 * i, 4) for i in range(n)], "y_ts": ts,
            "liquidity_bucket": "high", **kw}


@pytest.fixture(scope="module")
def service():
    "The app on uvicorn (127.0.0.1, a free port) in a thread; its runner on a fake daemon. Yields (url, fake, runner)."
    with FakeTollama() as fake:
        adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=10.0, max_retries=0))
        runner = TSFMRunner(RunnerConfig(http={"max_body_bytes": 1_048_576, "max_points": 2000}), adapter=adapter,
                            guard=LicenseGuard(REGISTRY), postprocess=PostprocessSettings())
        with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(runner=runner), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True); thread.start()
        end = time.monotonic() + 30
        while not server.started and time.monotonic() < end: time.sleep(0.01)
        try: yield f"http://127.0.0.1:{port}", fake, runner
        finally:
            server.should_exit = True; thread.join(10)


def post_raw(url: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{url}/tsfm/forecast", content=content, headers={"content-type": "application/json"}, timeout=30)


HOSTILE = [   # (what, raw JSON body, status, text the answer must contain)
    ("numeric as_of_ts that overflows", json.dumps({**body(), "as_of_ts": 1e20}), 422, "as_of_ts"),
    ("numeric y_ts that overflows", json.dumps({**body(3), "y_ts": [0, 300, 1e300]}), 422, "y_ts[2]"),
    ("as_of_ts + horizon past the supported range", json.dumps({**body(), "as_of_ts": "9999-12-31T23:55:00Z", "y_ts": None}), 422,
     "as_of_ts"),
    ("as_of_ts + horizon past 2200", json.dumps({**body(1), "as_of_ts": "2199-12-31T23:55:00Z", "y_ts": None}), 422,
     "reach past 2200-01-01"),
    ("implied first value before 1900", json.dumps({**body(40), "as_of_ts": "1900-01-01T01:00:00Z", "y_ts": None}), 422,
     "would start before 1900-01-01"),
    ("freq whose count overflows", json.dumps({**body(), "freq": "99999999999999999999m"}), 422, "freq"),
    ("freq of 19,000 years", json.dumps({**body(), "freq": "9999999999m"}), 422, "send one from 1 s to 366 days"),
    ("quantiles that collide as keys", json.dumps({**body(), "quantiles": [0.1234561, 0.1234562]}), 422, "are the same quantile"),
    ("NaN inside model.params", json.dumps({**body(), "model": {"model_name": "chronos2", "params": {"t": float("nan")}}}), 422,
     "non-finite number"),
    ("Infinity as volume_24h", json.dumps({**body(), "volume_24h": float("inf")}), 422, "volume_24h"),
    ("more points than the service accepts", json.dumps({**body(2001), "y": [0.5] * 2001}), 422, "at most 2000 (http.max_points)"),
    ("a body that is not UTF-8 text", b'{"market_id": "\xff\xfe"', 400, "error parsing the body"),
    ("nesting deep enough to exhaust the parser", b'{"model": {"params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}}", 400, "detail"),
]


@pytest.mark.parametrize("what, content, status, text", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_a_4xx_naming_the_problem(service, what, content, status, text):
    url, fake, runner = service
    fake.reset()
    r = post_raw(url, content if isinstance(content, bytes) else content.encode())
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    assert text in r.text and r.json()["request_id"] == r.headers["x-request-id"], r.text[:300]
    assert fake.stats.forecast_requests == 0                       # refused before any backend call


def test_no_server_error_was_counted_and_the_breaker_stayed_closed(service):
    url, fake, runner = service
    fake.reset()
    for _ in range(6): post_raw(url, json.dumps({**body(), "model": {"params": {"t": float("nan")}}}).encode())
    assert httpx.get(f"{url}/health", timeout=10).json()["breaker"] == "closed"
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert "tsfm_http_server_errors_total{" not in text
    assert 'tsfm_http_requests_total{method="POST",route="/tsfm/forecast",status="422"}' in text


def test_a_declared_50_mb_body_is_refused_before_it_is_read(service):
    url, _, _ = service
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /tsfm/forecast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        head = sock.recv(65536).split(b"\r\n")[0]
    assert head.startswith(b"HTTP/1.1 413")


def test_openapi_lists_every_status_with_the_error_schema(service):
    url, _, _ = service
    doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    want = {("/tsfm/forecast", "post"): {"200", "400", "403", "413", "422", "500", "502"},
            ("/health", "get"): {"200", "500"}, ("/metrics", "get"): {"200", "500"},
            ("/admin/rollback", "post"): {"200", "401", "403", "409", "413", "422", "500", "503"},
            ("/admin/phase/{name}", "post"): {"200", "401", "403", "404", "409", "413", "422", "500", "503"}}
    for (path, method), statuses in want.items():
        got = doc["paths"][path][method]["responses"]
        assert set(got) == statuses, (path, sorted(got))
        for status in statuses - {"200", "422"}:
            assert got[status]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody", (path, status)
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"detail", "error", "request_id"}


def test_a_backend_refusing_our_key_is_misconfigured_and_backed_off(service):
    url, fake, runner = service
    fake.reset(api_key="not-ours")
    try:
        answers = [httpx.post(f"{url}/tsfm/forecast", json=body(market_id=f"k{i}"), timeout=10).json() for i in range(3)]
        health = httpx.get(f"{url}/health", timeout=10).json()
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally: fake.reset(); runner.backend.auth.accepted()
    assert [a["meta"]["fallback_reason"] for a in answers] == ["backend_misconfigured"] * 3
    assert (health["backend"], health["status"], health["breaker"], health["auth"]["refusals"]) == ("misconfigured", "degraded", "closed", 1)
    assert "tsfm_backend_misconfigured 1.0" in text.splitlines()
