"""The daemons as systemd runs them: READY, WATCHDOG and STOPPING over a real NOTIFY_SOCKET,
a clean exit on SIGTERM, and a bad config refused with the key named and exit code 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def datagrams(sock: socket.socket, until: bytes, timeout_s: float) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            break
        if until in got[-1]:
            break
    return got


@pytest.mark.parametrize("which", ["ground", "agent"])
def test_daemon_notifies_systemd_and_stops_cleanly_on_sigterm(
    cluster: Any, tmp_path: Path, which: str
) -> None:
    c = cluster
    c.ground_config()
    c.agent_config("sat-0", 0, 2)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    try:
        if which == "agent":
            c.start_ground()
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
        args = (
            ["ground", "serve", "--config", str(c.root / "ground.toml")]
            if which == "ground"
            else ["agent", "run", "--config", str(c.root / "sat-0.toml")]
        )
        with open(tmp_path / f"{which}-svc.log", "wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "orbitfl.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                got = datagrams(notify, b"READY=1", 60)
                assert any(d.startswith(b"READY=1") for d in got), got
                pings = [d for d in datagrams(notify, b"never", 1.5) if d == b"WATCHDOG=1"]
                assert len(pings) >= 4, "the watchdog must be pinged every WATCHDOG_USEC/2 (0.2 s)"
                p.send_signal(signal.SIGTERM)
                assert p.wait(20) == 0
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        rest = datagrams(notify, b"STOPPING=1", 2)
        assert b"STOPPING=1" in rest
        assert "stopped (signal 15)" in (tmp_path / f"{which}-svc.log").read_text()
    finally:
        notify.close()


def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ground.toml"
    cfg.write_text(
        '[ground]\nbind = "tcp://127.0.0.1:1"\nstate_dir = "s"\ninsecure = true\n'
        "[federation]\nmin_updates = 0\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "federation.min_updates: must be >= 1, got 0" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "agent", "run", "--config", str(tmp_path / "no.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "cannot read config" in r.stderr
    cfg.write_text(
        f'[ground]\nbind = "tcp://127.0.0.1:1"\nstate_dir = "{tmp_path / "s"}"\ninsecure = true\n'
        '[federation]\ncodec = "topk:0.1 | nosuchstage"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "federation.codec:" in r.stderr and "nosuchstage" in r.stderr
