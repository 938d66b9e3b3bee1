"""The ground's metrics endpoint, scraped over real HTTP: Prometheus text on /metrics, health (not
metrics) on /healthz."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from orbitfl.ground.metrics import GroundMetrics, MetricsServer, render
from orbitfl.runtime.observe import Health, parse_text


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        body: bytes = r.read()
        assert r.headers["Content-Type"].startswith(
            "text/plain" if path == "/metrics" else "application/json"
        )
    return body.decode()


def test_metrics_endpoint_serves_prometheus_text_that_follows_the_loop() -> None:
    m = GroundMetrics()
    server = MetricsServer(m, "127.0.0.1:0")
    try:
        first = scrape(server.port)
        assert "orbitfl_updates_accepted_total 0.0" in first
        assert "# TYPE orbitfl_updates_refused_total counter" in first
        assert "orbitfl_accuracy" not in first, "no accuracy before any evaluation"
        m.updates_accepted = 7
        m.refuse("bad_version")
        m.refuse("nan", 2)
        m.bytes_in, m.bytes_out = 1234, 99
        m.round, m.model_version = 3, 4
        m.agents_seen.update({"sat-1", "sat-2"})
        m.agents_online, m.agents_registered = 1, 2
        m.agent_last_seen.update({"sat-1": 1700000000.5, "sat-2": 1700000001.0})
        m.last_round_time, m.last_round_seconds, m.accuracy = 1700000002.0, 12.5, 0.875
        text = scrape(server.port)
    finally:
        server.close()
    assert "orbitfl_updates_accepted_total 7.0" in text
    assert 'orbitfl_updates_refused_total{reason="bad_version"} 1.0' in text
    assert 'orbitfl_updates_refused_total{reason="nan"} 2.0' in text
    assert "orbitfl_received_bytes_total 1234.0" in text
    assert "orbitfl_sent_bytes_total 99.0" in text
    assert "orbitfl_round 3.0" in text
    assert "orbitfl_model_version 4.0" in text
    assert "orbitfl_agents_seen 2.0" in text
    assert "orbitfl_agents_online 1.0" in text
    assert 'orbitfl_agent_last_seen_timestamp_seconds{agent="sat-1"} 1700000000.5' in text
    assert "orbitfl_last_round_timestamp_seconds 1700000002.0" in text
    assert "orbitfl_last_round_duration_seconds 12.5" in text
    assert "orbitfl_accuracy 0.875" in text
    assert render(m) == text
    samples = parse_text(text)
    assert samples['orbitfl_updates_refused_total{reason="nan"}'] == 2.0
    # Every counter follows the convention; every family is declared once.
    types = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")]
    assert all(name.endswith("_total") for name, kind in types if kind == "counter")
    assert len({name for name, _ in types}) == len(types)


def test_healthz_answers_health_not_metrics_and_turns_503_when_the_loop_stalls() -> None:
    now = [100.0]
    health = Health(lambda: now[0], stale_s=5.0)
    m = GroundMetrics(round=2, model_version=1, agents_online=3)
    server = MetricsServer(m, "127.0.0.1:0", health)
    try:
        doc = json.loads(scrape(server.port, "/healthz"))
        assert doc["serving"] is True and doc["round"] == 2 and doc["agents_online"] == 3
        assert "orbitfl_" not in json.dumps(doc)
        now[0] += 6.0  # no tick for longer than stale_s
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(server.port, "/healthz")
        with err.value as resp:
            assert resp.code == 503
            assert json.loads(resp.read())["last_tick_age_s"] == pytest.approx(6.0)
        health.tick()
        assert json.loads(scrape(server.port, "/healthz"))["serving"] is True
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(server.port, "/nothing")
        with err.value as resp:
            assert resp.code == 404
    finally:
        server.close()
