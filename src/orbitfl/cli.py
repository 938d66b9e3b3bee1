"""The ``orbitfl`` command: one entry point, one subcommand group per room.

Each group lives in the module that owns it and is imported only when used, so that
``orbitfl codec bench`` never loads ONNX Runtime and ``orbitfl agent run`` never loads the bench.
A module listed here exposes ``register(subparsers) -> None``; the parser it adds sets ``func``,
a callable taking the parsed namespace and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from orbitfl import __version__

# group name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "codec": ("orbitfl.codec.cli", "compression recipes: benchmark and inspect"),
    "keys": ("orbitfl.runtime.keys_cli", "CurveZMQ key pairs for the ground and agents"),
    "ground": ("orbitfl.ground.daemon", "the ground station daemon"),
    "agent": ("orbitfl.agent.daemon", "the agent daemon that runs on a board"),
    "demo": ("orbitfl.apps.demo", "a ground and N agents as local processes: accuracy against bytes"),
    "model": ("orbitfl.apps.model", "model zoo: build ONNX Runtime training artifacts, train, export"),
    "bench": ("orbitfl.apps.training_bench", "benchmarks: ONNX Runtime vs PyTorch training"),
    "simulate": ("orbitfl.apps.sim.cli", "a constellation federating on a virtual clock, in one process"),
    "experiment": ("orbitfl.apps.experiment.sweep", "sweep codec x strategy x data split on the simulator"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbitfl", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if args.version:
        print(__version__)
        return 0
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
