"""The agent's metrics in Prometheus text format (``[agent] metrics = "host:port"``).

The daemon loop updates the numbers under ``lock``; the HTTP thread renders a snapshot at
scrape time. Rendered without prometheus_client, which a board does not install.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from orbitfl.runtime.observe import Family, Health, ObserveServer, render_text

Labels = tuple[tuple[str, str], ...]


@dataclass
class AgentMetrics:
    link_up: bool = False
    last_contact: float | None = None  # wall time the ground was last heard from
    outbox: int = 0  # updates waiting for an ACK
    model_version: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    reconnects: int = 0
    key_refused: int = 0
    rounds_trained: int = 0
    events: Counter[tuple[str, Labels]] = field(default_factory=Counter)  # the machine's Counts
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "link_up": self.link_up,
                "last_contact": self.last_contact,
                "outbox": self.outbox,
                "model_version": self.model_version,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "reconnects": self.reconnects,
                "key_refused": self.key_refused,
                "rounds_trained": self.rounds_trained,
                "events": dict(self.events),
            }


def families(s: dict[str, Any]) -> list[Family]:
    def one(name: str, kind: str, help_: str, value: float) -> Family:
        return Family(name, kind, help_, {(): float(value)})

    out = [
        one("orbitfl_agent_link_up", "gauge", "1 while the ground answers", 1.0 if s["link_up"] else 0.0),
        one("orbitfl_agent_outbox_updates", "gauge", "Updates in the outbox, not yet ACKed", s["outbox"]),
        one("orbitfl_agent_sent_bytes_total", "counter", "Bytes sent in frames", s["bytes_out"]),
        one("orbitfl_agent_received_bytes_total", "counter", "Bytes received in frames", s["bytes_in"]),
        one(
            "orbitfl_agent_reconnects_total", "counter", "Times the link dialled the ground", s["reconnects"]
        ),
        one("orbitfl_agent_key_refused_total", "counter", "Handshakes the ground refused", s["key_refused"]),
        one("orbitfl_agent_rounds_trained_total", "counter", "Tasks trained", s["rounds_trained"]),
    ]
    if s["model_version"] is not None:
        out.append(
            one("orbitfl_agent_model_version", "gauge", "Global model version held", s["model_version"])
        )
    if s["last_contact"] is not None:
        out.append(
            one(
                "orbitfl_agent_last_contact_timestamp_seconds",
                "gauge",
                "When the ground was last heard from (Unix time)",
                s["last_contact"],
            )
        )
    by_name: dict[str, dict[Labels, float]] = {}
    for (name, labels), n in sorted(s["events"].items()):
        by_name.setdefault(name, {})[labels] = float(n)
    for name, samples in by_name.items():
        out.append(Family(f"orbitfl_agent_{name}_total", "counter", f"Agent events: {name}", samples))
    return out


def render(metrics: AgentMetrics) -> str:
    return render_text(families(metrics.snapshot()))


class AgentMetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on HOST:PORT (port 0 picks a free one; see ``port``)."""

    def __init__(self, metrics: AgentMetrics, host_port: str, health: Health) -> None:
        m = metrics

        def healthz() -> tuple[int, dict[str, object]]:
            s = m.snapshot()
            return health.report(link_up=s["link_up"], outbox=s["outbox"], model_version=s["model_version"])

        self._server = ObserveServer(host_port, lambda: render(m), healthz)
        self.port: int = self._server.port

    def close(self) -> None:
        self._server.close()
