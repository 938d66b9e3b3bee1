"""A link cut mid-transfer for longer than every heartbeat, liveness, backoff and retransmit setting:
the agent's chunked upload resumes from where it stopped and completes exactly once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.integration

RATE = 20_000  # bytes per second each way: a slow radio link, so a transfer spans the cut


class Proxy:
    """A TCP relay in front of the ground that throttles, and can cut every connection and refuse
    new ones, as the end of a contact window does. It sees only Curve-encrypted bytes."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.up_bytes = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pipe, args=(src, dst, up), daemon=True)
                t.start()
                self.threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not self.down.is_set():
                data = src.recv(1024)
                if not data:
                    break
                time.sleep(len(data) / RATE)
                if self.down.is_set():
                    break
                dst.sendall(data)
                if up:
                    with self.lock:
                        self.up_bytes += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.stop.set()
        self.cut()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=2)


def test_upload_cut_longer_than_every_timeout_resumes_and_completes_once(cluster: Any) -> None:
    c = cluster
    link = {"heartbeat_s": 0.3, "liveness": 3, "backoff_max_s": 1.0, "chunk_bytes": 2048, "window": 2}
    c.ground_config(rounds=1, min_updates=1, retransmit_s=2.0, link=link)
    proxy = Proxy(c.port)
    try:
        c.agent_config("sat-0", 0, 1, endpoint=f"tcp://127.0.0.1:{proxy.port}", link=link)
        c.start_ground()
        c.start_agent("sat-0")
        c.wait("the update queued", lambda: "is in the outbox" in c.log("sat-0"), 60)
        start = proxy.up_bytes
        c.wait("a good part of the upload through", lambda: proxy.up_bytes - start >= 16_000, 30)
        assert c.rounds() == [], "the upload finished before the cut"
        before_cut = proxy.up_bytes - start
        proxy.cut()
        # Down for longer than every timeout: liveness 0.9 s, backoff cap 1 s, retransmit 2 s.
        c.wait("the agent noticing", lambda: "link down" in c.log("sat-0"), 10)
        time.sleep(5.0)
        assert c.rounds() == []
        proxy.restore()
        c.wait("the round closed", lambda: len(c.rounds()) == 1, 60)
        row = c.rounds()[0]
        assert row["updates"] == 1
        total = proxy.up_bytes - start
        # Restarting from zero would cost before_cut + the whole update again; resuming costs the
        # rest plus chunk headers, acks and at most a window resent.
        assert total < row["uplink_bytes"] + 0.7 * before_cut, (total, row["uplink_bytes"], before_cut)
        log = c.log("sat-0")
        assert log.index("link down") < log.rindex("link up")
        assert "acknowledged" in log
    finally:
        proxy.close()
