"""The ground's metrics in Prometheus text format, and its ``/metrics`` + ``/healthz`` endpoint.

The daemon loop owns the numbers and updates them under ``lock``; the HTTP thread renders a
snapshot at scrape time, so no metric is ever half-updated by two threads and the loop never
waits for a scraper. Names follow Prometheus conventions: counters end in ``_total``, byte
counters in ``_bytes_total``, times in ``_seconds`` (timestamps are Unix seconds).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orbitfl.runtime.observe import Family, Health, ObserveServer, render_text


@dataclass
class GroundMetrics:
    updates_accepted: int = 0
    updates_compact: int = 0  # of them, in the compact payload form (orbitfl.wire.compact)
    updates_refused: Counter[str] = field(default_factory=Counter)  # reason -> count
    aggregates_refused: int = 0  # round aggregates that would have made the model non-finite
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    round: int = 0
    model_version: int = 0
    federation_finished: bool = False  # the configured rounds are all closed
    agents_seen: set[str] = field(default_factory=set)
    agents_registered: int = 0
    agents_online: int = 0
    agent_last_seen: dict[str, float] = field(default_factory=dict)  # agent -> wall time
    agent_online: dict[str, bool] = field(default_factory=dict)  # agent -> heard within liveness
    agent_model: dict[str, int] = field(default_factory=dict)  # agent -> global version it holds
    rounds_closed: int = 0
    last_round_time: float | None = None  # wall time the last round closed
    last_round_seconds: float | None = None  # how long it was open
    accuracy: float | None = None  # of the current global model on the ground's held-out data
    dp_epsilon: float | None = None  # privacy spent so far, where the strategy reports it
    strategy: dict[str, float] = field(default_factory=dict)  # the strategy's figures, e.g. dp_epsilon
    # A ground network (None where the role does not have it): a station's updates ACKed to agents
    # and not yet ACKed by the aggregator, and relays counted on either side.
    forward_backlog: int | None = None
    relays: Counter[str] = field(default_factory=Counter)  # e.g. "acked", "duplicate", "accepted", "late"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self.updates_refused[reason] += n

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "updates_accepted": self.updates_accepted,
                "updates_compact": self.updates_compact,
                "updates_refused": dict(self.updates_refused),
                "aggregates_refused": self.aggregates_refused,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "round": self.round,
                "model_version": self.model_version,
                "federation_finished": int(self.federation_finished),
                "agents_seen": len(self.agents_seen),
                "agents_registered": self.agents_registered,
                "agents_online": self.agents_online,
                "agent_last_seen": dict(self.agent_last_seen),
                "agent_online": dict(self.agent_online),
                "agent_model": dict(self.agent_model),
                "rounds_closed": self.rounds_closed,
                "last_round_time": self.last_round_time,
                "last_round_seconds": self.last_round_seconds,
                "accuracy": self.accuracy,
                "dp_epsilon": self.dp_epsilon,
                "strategy": dict(self.strategy),
                "forward_backlog": self.forward_backlog,
                "relays": dict(self.relays),
            }


def _one(name: str, kind: str, help_: str, value: float) -> Family:
    return Family(name, kind, help_, {(): float(value)})


def families(s: dict[str, Any]) -> list[Family]:
    out = [
        _one(
            "orbitfl_updates_accepted_total",
            "counter",
            "Updates accepted (persisted, then ACKed)",
            s["updates_accepted"],
        ),
        _one(
            "orbitfl_updates_compact_total",
            "counter",
            "Accepted updates that came in the compact payload form",
            s.get("updates_compact", 0),
        ),
        Family(
            "orbitfl_updates_refused_total",
            "counter",
            "Frames or updates refused, by reason",
            {(("reason", r),): float(n) for r, n in sorted(s["updates_refused"].items())},
        ),
        _one(
            "orbitfl_aggregates_refused_total",
            "counter",
            "Round aggregates refused (non-finite); the previous weights were kept",
            s["aggregates_refused"],
        ),
        _one("orbitfl_received_bytes_total", "counter", "Bytes received in frames", s["bytes_in"]),
        _one("orbitfl_sent_bytes_total", "counter", "Bytes sent in frames", s["bytes_out"]),
        _one("orbitfl_frames_in_total", "counter", "Frames received", s["frames_in"]),
        _one("orbitfl_frames_out_total", "counter", "Frames sent", s["frames_out"]),
        _one("orbitfl_round", "gauge", "Current round", s["round"]),
        _one("orbitfl_model_version", "gauge", "Current global model version", s["model_version"]),
        _one("orbitfl_rounds_closed_total", "counter", "Rounds closed since start", s["rounds_closed"]),
        _one("orbitfl_agents_seen", "gauge", "Distinct agents heard from since start", s["agents_seen"]),
        _one(
            "orbitfl_federation_finished",
            "gauge",
            "1 once every configured round is closed",
            s["federation_finished"],
        ),
        _one("orbitfl_agents_registered", "gauge", "Agents that ever said HELLO", s["agents_registered"]),
        _one("orbitfl_agents_online", "gauge", "Agents heard from within liveness", s["agents_online"]),
        Family(
            "orbitfl_agent_last_seen_timestamp_seconds",
            "gauge",
            "When each agent was last heard from (Unix time)",
            {(("agent", a),): t for a, t in sorted(s["agent_last_seen"].items())},
        ),
        Family(
            "orbitfl_agent_online",
            "gauge",
            "1 while an agent is heard within liveness, 0 after it went silent or said bye",
            {(("agent", a),): 1.0 if up else 0.0 for a, up in sorted(s["agent_online"].items())},
        ),
        Family(
            "orbitfl_agent_model_version",
            "gauge",
            "The global model version each agent last said it holds",
            {(("agent", a),): float(v) for a, v in sorted(s["agent_model"].items())},
        ),
    ]
    if s["last_round_time"] is not None:
        out.append(
            _one(
                "orbitfl_last_round_timestamp_seconds",
                "gauge",
                "When the last round closed (Unix time)",
                s["last_round_time"],
            )
        )
    if s["last_round_seconds"] is not None:
        out.append(
            _one(
                "orbitfl_last_round_duration_seconds",
                "gauge",
                "How long the last round was open",
                s["last_round_seconds"],
            )
        )
    if s["accuracy"] is not None:
        out.append(
            _one(
                "orbitfl_accuracy",
                "gauge",
                "Global model accuracy on the ground's held-out data",
                s["accuracy"],
            )
        )
    if s["dp_epsilon"] is not None:
        out.append(
            _one(
                "orbitfl_dp_epsilon", "gauge", "Differential privacy spent so far (epsilon)", s["dp_epsilon"]
            )
        )
    if s["forward_backlog"] is not None:
        out.append(
            _one(
                "orbitfl_forward_backlog",
                "gauge",
                "Updates this station ACKed to agents and the aggregator has not ACKed yet",
                s["forward_backlog"],
            )
        )
    if s["relays"]:
        out.append(
            Family(
                "orbitfl_relays_total",
                "counter",
                "Relayed updates between stations and the aggregator, by outcome",
                {(("outcome", k),): float(n) for k, n in sorted(s["relays"].items())},
            )
        )
    for key, value in sorted(s["strategy"].items()):
        out.append(_one(f"orbitfl_strategy_{key}", "gauge", f"Strategy figure {key}", value))
    return out


def render(metrics: GroundMetrics) -> str:
    return render_text(families(metrics.snapshot()))


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on HOST:PORT (port 0 picks a free one; see ``port``)."""

    def __init__(
        self,
        metrics: GroundMetrics,
        host_port: str,
        health: Health | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health or Health(clock, stale_s=30.0)
        m = metrics

        def healthz() -> tuple[int, dict[str, object]]:
            s = m.snapshot()
            return self.health.report(
                round=s["round"], model_version=s["model_version"], agents_online=s["agents_online"]
            )

        self._server = ObserveServer(host_port, lambda: render(m), healthz)
        self.port: int = self._server.port

    def close(self) -> None:
        self._server.close()
