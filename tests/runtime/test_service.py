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


def test_journal_is_detected_only_when_journal_stream_names_stderr(tmp_path: Path) -> None:
    from orbitfl.runtime.service import stderr_is_journal

    with open(tmp_path / "stderr", "w") as f, open(tmp_path / "other", "w") as g:
        st, other = os.fstat(f.fileno()), os.fstat(g.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}, f)
        assert not stderr_is_journal({}, f)
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f)


def test_journal_lines_carry_the_priority_and_no_timestamp(tmp_path: Path) -> None:
    import logging

    from orbitfl.runtime.service import JournalFormatter

    fmt = JournalFormatter()

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("orbitfl.ground", level, __file__, 1, msg, None, None))

    assert line(logging.ERROR, "disk full") == "<3>orbitfl.ground: disk full"
    assert line(logging.WARNING, "refused") == "<4>orbitfl.ground: refused"
    assert line(logging.INFO, "round 1 -> v1") == "<6>orbitfl.ground: round 1 -> v1"
    assert line(logging.DEBUG, "detail") == "<7>orbitfl.ground: detail"
    assert "\n" not in line(logging.INFO, "two\nlines"), "one event must stay one journal entry"


def test_sighup_requests_one_reload_and_does_not_stop_the_daemon() -> None:
    from orbitfl.runtime.service import Reload

    reload, shutdown = Reload().install(), Shutdown().install()
    try:
        assert not reload.take()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        assert reload.take(), "SIGHUP was not seen"
        assert not reload.take(), "two SIGHUPs before a look are one reload"
        assert not shutdown.requested
    finally:
        reload.restore()
        shutdown.restore()


def test_log_limiter_holds_back_repeats_and_says_how_many() -> None:
    from orbitfl.runtime.service import LogLimiter

    lim = LogLimiter(interval_s=10.0, max_keys=2)
    assert lim.line("peer:schema", "refused 1", 0.0) == "refused 1"
    assert [lim.line("peer:schema", f"refused {i}", 1.0 + i) for i in range(5)] == [None] * 5
    assert lim.line("other:schema", "other", 2.0) == "other"  # keys are independent
    assert lim.line("peer:schema", "refused 9", 10.5) == (
        "refused 9 (5 more like it in the last 10 s were not logged)"
    )
    assert lim.line(None, "always", 10.6) == "always" and lim.line(None, "always", 10.7) == "always"
    lim.line("third", "x", 11.0)  # a third key evicts the oldest: memory stays bounded
    assert len(lim._last) == 2


def test_peer_text_cannot_forge_log_lines() -> None:
    from orbitfl.runtime.service import printable

    assert (
        printable("bye\nFAKE 2026 INFO ground: all good\x1b[31m")
        == "bye\\nFAKE 2026 INFO ground: all good\\x1b[31m"
    )
    assert printable("x" * 2000, limit=10) == "x" * 10 + "... (1990 more chars)"
