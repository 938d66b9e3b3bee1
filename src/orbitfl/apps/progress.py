"""Progress of a long sweep or simulation: a bar redrawn in place on a terminal, plain lines every
``interval`` seconds when the output is a file or a pipe (CI logs, ``nohup``), where carriage
returns would only make noise.

It shows runs done of the total, simulated time, rounds and an ETA from the rate so far. Messages
printed through :meth:`Progress.line` appear above the bar.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(
        self,
        total_runs: int,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        tty: bool | None = None,
        label: str = "",
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        # A bar costs nothing to redraw; a log line every few seconds would flood a log.
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self.total = max(1, total_runs)
        self.label = label
        self.done = 0
        self.sim_s = 0.0  # simulated seconds of the runs done, plus the current run's
        self.rounds = 0
        self.fraction = 0.0  # of the current run(s), 0..1, when the runner can tell
        self._t0 = time.monotonic()
        self._last = -1e9
        self._drawn = False

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def eta(self) -> float | None:
        frac = (self.done + self.fraction) / self.total
        if frac <= 0:
            return None
        return self.elapsed() * (1 - frac) / frac

    def text(self) -> str:
        eta = self.eta()
        return (
            f"{self.label}{self.done}/{self.total} runs, {self.sim_s / 3600:.1f} sim h, "
            f"{self.rounds} rounds, {_clock(self.elapsed())} elapsed, "
            f"ETA {'-' if eta is None else _clock(eta)}"
        )

    def update(
        self,
        *,
        done: int | None = None,
        sim_s: float | None = None,
        rounds: int | None = None,
        fraction: float | None = None,
        force: bool = False,
    ) -> None:
        if done is not None:
            self.done = done
        if sim_s is not None:
            self.sim_s = sim_s
        if rounds is not None:
            self.rounds = rounds
        if fraction is not None:
            self.fraction = min(1.0, max(0.0, fraction))
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self._draw()

    def _draw(self) -> None:
        if self.tty:
            width = 24
            frac = min(1.0, (self.done + self.fraction) / self.total)
            bar = "#" * int(frac * width)
            self.stream.write(f"\r\x1b[2K[{bar:<{width}}] {self.text()}")
            self._drawn = True
        else:
            self.stream.write(f"progress: {self.text()}\n")
        self.stream.flush()

    def line(self, message: str) -> None:
        """Print ``message`` on its own line (above the bar on a terminal)."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
        self.stream.write(message + "\n")
        if self.tty and self._drawn:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K" + self.text() + "\n")
            self.stream.flush()
            self._drawn = False
