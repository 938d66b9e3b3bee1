"""The ground's metrics in Prometheus text format.

The daemon loop owns the numbers and updates them in place; an HTTP thread from prometheus_client
renders them at scrape time through a collector, so no metric is ever half-updated by two threads
and the loop never waits for a scraper.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class GroundMetrics:
    updates_accepted: int = 0
    updates_refused: Counter[str] = field(default_factory=Counter)  # reason -> count
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    round: int = 0
    model_version: int = 0
    agents_seen: set[str] = field(default_factory=set)
    strategy: dict[str, float] = field(default_factory=dict)  # the strategy's figures, e.g. dp_epsilon
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self.updates_refused[reason] += n

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "updates_accepted": self.updates_accepted,
                "updates_refused": dict(self.updates_refused),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "round": self.round,
                "model_version": self.model_version,
                "agents_seen": len(self.agents_seen),
                "strategy": dict(self.strategy),
            }


class _Collector(Collector):
    def __init__(self, metrics: GroundMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s = self.metrics.snapshot()
        yield CounterMetricFamily(
            "orbitfl_updates_accepted",
            "Updates accepted (persisted, then ACKed)",
            value=s["updates_accepted"],
        )
        refused = CounterMetricFamily(
            "orbitfl_updates_refused", "Frames or updates refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(s["updates_refused"].items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("orbitfl_bytes_in", "Bytes received in frames", value=s["bytes_in"])
        yield CounterMetricFamily("orbitfl_bytes_out", "Bytes sent in frames", value=s["bytes_out"])
        yield CounterMetricFamily("orbitfl_frames_in", "Frames received", value=s["frames_in"])
        yield CounterMetricFamily("orbitfl_frames_out", "Frames sent", value=s["frames_out"])
        yield GaugeMetricFamily("orbitfl_round", "Current round", value=s["round"])
        yield GaugeMetricFamily(
            "orbitfl_model_version", "Current global model version", value=s["model_version"]
        )
        yield GaugeMetricFamily(
            "orbitfl_agents_seen", "Distinct agents heard from since start", value=s["agents_seen"]
        )
        for key, value in sorted(s["strategy"].items()):
            yield GaugeMetricFamily(f"orbitfl_strategy_{key}", f"Strategy figure {key}", value=value)


def registry_for(metrics: GroundMetrics) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(_Collector(metrics))
    return reg


def render(metrics: GroundMetrics) -> str:
    return generate_latest(registry_for(metrics)).decode()


class MetricsServer:
    """Serves ``/metrics`` on HOST:PORT (port 0 picks a free one; see ``port``)."""

    def __init__(self, metrics: GroundMetrics, host_port: str) -> None:
        host, _, port = host_port.rpartition(":")
        server, thread = start_http_server(int(port), addr=host, registry=registry_for(metrics))
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
