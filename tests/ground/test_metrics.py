"""The ground's metrics endpoint, scraped over real HTTP."""

from __future__ import annotations

import urllib.request

from orbitfl.ground.metrics import GroundMetrics, MetricsServer, render


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body: bytes = r.read()
        assert r.headers["Content-Type"].startswith("text/plain")
    return body.decode()


def test_metrics_endpoint_serves_prometheus_text_that_follows_the_loop() -> None:
    m = GroundMetrics()
    server = MetricsServer(m, "127.0.0.1:0")
    try:
        first = scrape(server.port)
        assert "orbitfl_updates_accepted_total 0.0" in first
        assert "# TYPE orbitfl_updates_refused_total counter" in first
        m.updates_accepted = 7
        m.refuse("bad_version")
        m.refuse("nan", 2)
        m.bytes_in, m.bytes_out = 1234, 99
        m.round, m.model_version = 3, 4
        m.agents_seen.update({"sat-1", "sat-2"})
        text = scrape(server.port)
    finally:
        server.close()
    assert "orbitfl_updates_accepted_total 7.0" in text
    assert 'orbitfl_updates_refused_total{reason="bad_version"} 1.0' in text
    assert 'orbitfl_updates_refused_total{reason="nan"} 2.0' in text
    assert "orbitfl_bytes_in_total 1234.0" in text
    assert "orbitfl_bytes_out_total 99.0" in text
    assert "orbitfl_round 3.0" in text
    assert "orbitfl_model_version 4.0" in text
    assert "orbitfl_agents_seen 2.0" in text
    assert render(m) == text
