"""The Prometheus SLO rules (configs/prometheus/tsfm_slo.rules.yml): well formed, thresholds and durations as the SLOs
state them, every metric they read exposed by the service, and (where promtool is installed) accepted by
`promtool check rules` and passing their promtool unit tests."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO_ROOT

RULES = REPO_ROOT / "configs" / "prometheus" / "tsfm_slo.rules.yml"
RULE_TESTS = REPO_ROOT / "configs" / "prometheus" / "tsfm_slo.rules.test.yml"
_METRIC = re.compile(r"\b(tsfm_[a-z0-9_]+)")
_DURATION = re.compile(r"^\d+[smh]$")


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"], "top level must be a non-empty 'groups' list"
    return [r for g in doc["groups"] for r in g["rules"]]


def test_rules_are_well_formed():
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    for r in rules:
        assert ("record" in r) != ("alert" in r) and r["expr"].strip(), r
        if "alert" in r:
            assert _DURATION.match(r["for"]) and r["labels"]["severity"] in {"page", "warning"}, r
            assert r["annotations"]["summary"] and r["annotations"]["runbook"].startswith("operations runbook"), r
            used = set(re.findall(r"\btsfm:[a-z0-9_:]+", r["expr"]))
            assert used <= recorded, f"{r['alert']} reads unrecorded series {used - recorded}"
    assert all(re.fullmatch(r"tsfm:[a-z0-9_]+:[a-z0-9_]+", name) for name in recorded)


def test_slo_thresholds_and_durations():
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    latency, errors = alerts["TsfmForecastLatencyP95High"], alerts["TsfmForecastErrorRateHigh"]
    assert latency["expr"].replace(" ", "") == "tsfm:forecast_latency_seconds:p95_5m>0.3" and latency["for"] == "10m"
    assert errors["expr"].replace(" ", "") == "tsfm:forecast_error_ratio:rate5m>0.05" and errors["for"] == "10m"
    records = {r["record"]: " ".join(r["expr"].split()) for r in _rules() if "record" in r}
    assert "histogram_quantile(0.95," in records["tsfm:forecast_latency_seconds:p95_5m"]
    assert 'status=~"5.."' in records["tsfm:forecast_error_ratio:rate5m"]


def rule_metric_names() -> set[str]:
    "Metric names the rules read (histogram series reduced to the histogram's name)."
    names = {m for r in _rules() for m in _METRIC.findall(r["expr"])}
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_rules_and_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True, text=True, cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_metric_the_rules_read_is_exposed_by_the_service():
    import asyncio
    from datetime import datetime, timedelta, timezone

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tsfm_wb.tsfm.api import create_app
    from tsfm_wb.tsfm.fake_tollama import serve_fake_tollama
    from tsfm_wb.tsfm.runner.service import TSFMRunner
    from tsfm_wb.tsfm.tollama import TollamaAdapter

    t = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
    body = {"market_id": "m", "as_of_ts": t.isoformat(), "y": [0.5] * 40, "liquidity_bucket": "high",
            "y_ts": [(t - timedelta(minutes=5 * (39 - i))).isoformat() for i in range(40)]}
    async def scrape(url: str) -> str:
        runner = TSFMRunner(adapter=TollamaAdapter(base_url=url))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runner=runner)), base_url="http://svc") as c:
            assert (await c.post("/tsfm/forecast", json=body)).status_code == 200
            text = (await c.get("/metrics")).text
        await runner.aclose()
        return text
    with serve_fake_tollama() as fake: text = asyncio.run(scrape(fake.url))
    exposed = {f.name for f in text_string_to_metric_families(text)}
    exposed |= {f"{n}_total" for n in exposed}                 # the parser drops counters' _total suffix
    assert rule_metric_names() <= exposed, rule_metric_names() - exposed
