"""The agent's /metrics and /healthz over real HTTP, rendered without prometheus_client."""

from __future__ import annotations

import json
import urllib.request

from orbitfl.agent.metrics import AgentMetrics, AgentMetricsServer
from orbitfl.runtime.observe import Health, parse_text


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def test_agent_metrics_follow_the_loop_and_healthz_reports_the_link() -> None:
    m = AgentMetrics()
    now = [0.0]
    server = AgentMetricsServer(m, "127.0.0.1:0", Health(lambda: now[0], stale_s=5.0))
    try:
        first = parse_text(get(server.port, "/metrics"))
        assert first["orbitfl_agent_link_up"] == 0.0
        assert "orbitfl_agent_model_version" not in first, "no model held yet"
        with m.lock:
            m.link_up, m.outbox, m.model_version, m.last_contact = True, 2, 7, 1700000000.0
            m.bytes_out = 4096
            m.events[("updates_acked", ())] += 3
            m.events[("nacks_received", (("reason", "stale"),))] += 1
        text = get(server.port, "/metrics")
        health = json.loads(get(server.port, "/healthz"))
    finally:
        server.close()
    s = parse_text(text)
    assert s["orbitfl_agent_link_up"] == 1.0 and s["orbitfl_agent_outbox_updates"] == 2.0
    assert s["orbitfl_agent_model_version"] == 7.0
    assert s["orbitfl_agent_last_contact_timestamp_seconds"] == 1700000000.0
    assert s["orbitfl_agent_sent_bytes_total"] == 4096.0
    assert s["orbitfl_agent_updates_acked_total"] == 3.0
    assert s['orbitfl_agent_nacks_received_total{reason="stale"}'] == 1.0
    assert "# TYPE orbitfl_agent_updates_acked_total counter" in text
    assert health == {
        "serving": True,
        "last_tick_age_s": 0.0,
        "uptime_s": 0.0,
        "link_up": True,
        "outbox": 2,
        "model_version": 7,
    }
