"""sd_notify against a real AF_UNIX datagram socket, and signal-driven shutdown."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from orbitfl.runtime.service import Notifier, Shutdown


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(os.fspath(tmp_path / "notify"))
    s.settimeout(2.0)
    yield s  # type: ignore[misc]
    s.close()


def test_ready_status_watchdog_and_stopping_reach_the_socket(notify_socket: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_s == 1.0
    assert n.ready("serving on tcp://127.0.0.1:7700")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving on tcp://127.0.0.1:7700"
    assert n.watchdog(now=10.0)
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert not n.watchdog(now=10.5), "pinged again before half the watchdog interval"
    assert n.watchdog_due_in(10.5) == pytest.approx(0.5)
    assert n.watchdog(now=11.0)
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"orbitfl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2.0)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(100) == b"READY=1"


def test_outside_systemd_every_call_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog(0.0) and not n.stopping()
    assert n.watchdog_due_in(0.0) is None


def test_a_watchdog_meant_for_another_pid_is_ignored(notify_socket: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None


def test_bad_environment_values_are_value_errors() -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        Notifier({"NOTIFY_SOCKET": "relative/path"})
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"})


def test_a_vanished_socket_makes_notify_return_false(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": os.fspath(tmp_path / "gone")}).ready()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_request_shutdown(sig: int) -> None:
    s = Shutdown().install()
    try:
        assert not s.requested
        os.kill(os.getpid(), sig)
        assert s.wait(2.0)
        assert s.requested and s.signal == sig
    finally:
        s.restore()
