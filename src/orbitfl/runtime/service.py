"""Living under systemd: sd_notify, clean shutdown on SIGTERM/SIGINT, and log lines fit for the
journal (priorities, rate limits, no control characters from peers).

sd_notify is a datagram of ``KEY=value`` lines to the AF_UNIX socket named by ``NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace). Outside systemd the variable is unset and every
call is a no-op, so the daemons run the same way from a shell.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TextIO

# sd-daemon(3) priorities: journald reads a leading "<N>" as the line's syslog level.
_HANDLER = "orbitfl.stderr"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when stderr is connected to journald (``JOURNAL_STREAM`` names its device:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``: journald adds the time and unit, and keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += " " + self.formatException(record.exc_info).replace("\n", " | ")
        # One event, one journal entry: an embedded newline would start an unprioritised line.
        return f"<{prio}>" + text.replace("\n", " ")


def setup_logging(verbose: bool = False, *, journal: bool | None = None) -> None:
    """One log line per event on stderr: with a timestamp in a shell, with a priority prefix and
    no timestamp when stderr is the journal (it stamps each line itself)."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal() if journal is None else journal:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER:  # called again (tests): one line per event, not two
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # pyzmq's authenticator logs every handshake at DEBUG; the link logs refusals itself.
    logging.getLogger("orbitfl.runtime.link.auth").setLevel(logging.WARNING)


class Notifier:
    """READY / WATCHDOG / STATUS / STOPPING to systemd, and when the next WATCHDOG is due."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr:
            if addr[0] not in "/@":
                raise ValueError(f"NOTIFY_SOCKET must be a path or start with '@', got {addr!r}")
            self.address = "\0" + addr[1:] if addr[0] == "@" else addr
        # systemd asks for a ping every WATCHDOG_USEC; pinging at half of it leaves room for a slow poll.
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                value = int(usec)
            except ValueError:
                raise ValueError(f"WATCHDOG_USEC must be an integer, got {usec!r}") from None
            if value > 0:
                self.watchdog_s = value / 1e6 / 2
        self._next_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False when not under systemd or when the send failed."""
        if self.address is None:
            return False
        msg = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self, now: float) -> bool:
        """Ping the watchdog if it is due at monotonic time ``now``; True when a ping was sent."""
        if self.watchdog_s is None or now < self._next_watchdog:
            return False
        self._next_watchdog = now + self.watchdog_s
        return self.notify("WATCHDOG=1")

    def watchdog_due_in(self, now: float) -> float | None:
        if self.watchdog_s is None:
            return None
        return max(0.0, self._next_watchdog - now)


class Shutdown:
    """Set by SIGTERM or SIGINT; the daemon loop checks it between polls and exits cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> Shutdown:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)


class Reload:
    """Set by SIGHUP (``systemctl reload``); the daemon loop takes it between polls and rereads
    what can change without a restart (the ground's allow-list)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: object = None

    def install(self) -> Reload:
        self._previous = signal.signal(signal.SIGHUP, self._handle)
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)  # type: ignore[arg-type]
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._event.set()

    def request(self) -> None:
        self._event.set()

    def take(self) -> bool:
        """True once per request (several SIGHUPs before a look are one reload)."""
        if not self._event.is_set():
            return False
        self._event.clear()
        return True


def serve(
    notifier: Notifier,
    shutdown: Shutdown,
    step: Callable[[float], None],
    clock: Callable[[], float],
    *,
    ready: str,
    tick_s: float,
    close: Callable[[], None],
) -> None:
    """The daemons' main loop: READY, then steps of at most `tick_s` (shorter when the watchdog is
    due, so it is never starved) until SIGTERM/SIGINT; STOPPING and `close` however it ends."""
    notifier.ready(ready)
    try:
        while not shutdown.requested:
            due = notifier.watchdog_due_in(clock())
            step(tick_s if due is None else min(tick_s, due))
    finally:
        notifier.stopping()
        close()


MAX_LINE_CHARS = 1000


def printable(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` with control characters escaped and cut at ``limit``: text a peer chose (an id, a
    BYE reason) must not be able to forge log lines or flood one line."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit] + f"... ({len(out) - limit} more chars)"


class LogLimiter:
    """At most one line per key every ``interval_s``; the next line let through says how many
    were held back. Keys are bounded (``max_keys``): past it the oldest are forgotten."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str, now: float) -> tuple[bool, int]:
        """(log this line?, how many lines of this key were held back before it)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        if last is None and len(self._last) >= self.max_keys:
            oldest = min(self._last, key=self._last.__getitem__)
            del self._last[oldest]
            self._held.pop(oldest, None)
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def line(self, key: str | None, text: str, now: float) -> str | None:
        """The line to log for ``text`` (escaped; with the held-back count), or None to skip it."""
        if key is None:
            return printable(text)
        ok, held = self.admit(key, now)
        if not ok:
            return None
        suffix = f" ({held} more like it in the last {self.interval_s:g} s were not logged)" if held else ""
        return printable(text) + suffix
