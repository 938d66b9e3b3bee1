"""A Byzantine board, for tests only: the real agent daemon (``orbitfl agent run``) whose every
update is sign-flipped and scaled ×100 before it is encoded, as a poisoned or broken board would
send. Run as ``python byzantine_agent.py -m orbitfl.cli agent run --config ...`` (the Cluster's
``python=`` prefix)."""

from __future__ import annotations

import dataclasses
import sys

from orbitfl.agent import daemon
from orbitfl.cli import main
from orbitfl.runtime.events import StartTraining, TrainingDone

SCALE = -100.0
_honest = daemon.Board.train


def _poisoned(self: daemon.Board, start: StartTraining) -> TrainingDone:
    done = _honest(self, start)
    return dataclasses.replace(done, delta={k: (v * SCALE).astype(v.dtype) for k, v in done.delta.items()})


if __name__ == "__main__":
    daemon.Board.train = _poisoned  # type: ignore[method-assign]
    args = sys.argv[1:]
    if args[:2] == ["-m", "orbitfl.cli"]:
        args = args[2:]
    sys.exit(main(args))
