"""What a daemon shows a monitor over HTTP: ``/metrics`` (Prometheus text) and ``/healthz``.

``/healthz`` answers whether the daemon is serving (its loop ticked recently), as a short JSON
object with 200, or 503 when the loop has stalled; it never renders metrics. The server runs in
a thread of its own and only calls the two functions it is given, so the daemon's loop never
waits for a scraper. The text renderer here needs no prometheus_client (boards do not have it).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """One Prometheus metric family: ``samples`` maps a label tuple to a value."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: Mapping[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render_text(families: Iterable[Family]) -> str:
    """The Prometheus text exposition format (0.0.4) of ``families``."""
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for labels, value in f.samples.items():
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{f.name}{{{lab}}} {_number(value)}" if lab else f"{f.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def parse_text(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample in Prometheus text (what ``status`` reads)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            code, ctype, body = 200, CONTENT_TYPE, self.server.metrics().encode()
        elif path == "/healthz":
            code, doc = self.server.health()
            ctype, body = "application/json", (json.dumps(doc) + "\n").encode()
        else:
            code, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every 15 s is not an event worth a log line


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        addr: tuple[str, int],
        metrics: Callable[[], str],
        health: Callable[[], tuple[int, dict[str, object]]],
    ) -> None:
        self.metrics = metrics
        self.health = health
        super().__init__(addr, _Handler)


class ObserveServer:
    """Serves ``/metrics`` and ``/healthz`` on HOST:PORT (port 0 picks a free one; see ``port``).
    An address that cannot be bound raises OSError."""

    def __init__(
        self,
        host_port: str,
        metrics: Callable[[], str],
        health: Callable[[], tuple[int, dict[str, object]]],
    ) -> None:
        host, _, port = host_port.rpartition(":")
        self._server = _Server((host.strip("[]"), int(port)), metrics, health)
        self.port: int = self._server.server_address[1]
        # A short poll so that close() (the daemon stopping) does not wait half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="observe", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Health:
    """The loop's heartbeat for ``/healthz``: ``tick`` from the loop, ``report`` from the server."""

    def __init__(self, clock: Callable[[], float], stale_s: float) -> None:
        self.clock = clock
        self.stale_s = stale_s
        self.started = clock()
        self.last_tick = self.started

    def tick(self) -> None:
        self.last_tick = self.clock()

    def report(self, **extra: object) -> tuple[int, dict[str, object]]:
        age = max(0.0, self.clock() - self.last_tick)
        serving = age <= self.stale_s
        doc: dict[str, object] = {
            "serving": serving,
            "last_tick_age_s": round(age, 3),
            "uptime_s": round(self.clock() - self.started, 1),
            **extra,
        }
        return (200 if serving else 503), doc
