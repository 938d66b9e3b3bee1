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
from orbitfl.runtime.config import ConfigError

# group name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "codec": ("orbitfl.codec.cli", "compression recipes: benchmark and inspect"),
    "keys": ("orbitfl.runtime.keys_cli", "CurveZMQ key pairs for the ground and agents"),
    "ground": ("orbitfl.ground.daemon", "the ground station daemon"),
    "agent": ("orbitfl.agent.daemon", "the agent daemon that runs on a board"),
    "demo": ("orbitfl.apps.demo", "a ground and N agents as local processes: accuracy against bytes"),
    "model": ("orbitfl.apps.model", "model zoo: build ONNX Runtime training artifacts, train, export"),
    "bench": ("orbitfl.apps.training_bench", "benchmarks: ONNX Runtime vs PyTorch training"),
    "data": ("orbitfl.apps.data_cli", "fetch data sets once for offline runs (real MNIST)"),
    "simulate": ("orbitfl.apps.sim.cli", "a constellation federating on a virtual clock, in one process"),
    "experiment": ("orbitfl.apps.experiment.sweep", "sweep codec x strategy x data split on the simulator"),
    "systemd": ("orbitfl.apps.systemd", "install the systemd units, sysusers.d/tmpfiles.d files and docs"),
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


# Long-running commands: an OSError after their start-up is not the user's input, and exit 2 would
# keep systemd from restarting them (RestartPreventExitStatus=2).
DAEMONS = ("ground serve", "agent run")


def _missing_package(command: str, exc: ModuleNotFoundError) -> int:
    """A missing optional dependency is an environment error like a bad config: one line, exit 2."""
    if (exc.name or "orbitfl").partition(".")[0] == "orbitfl":
        raise exc  # our own module missing is a broken install, not a missing extra
    print(
        f"orbitfl {command}: needs the Python package {exc.name!r}, which is not installed here; "
        "install orbitfl with the extra that provides it (docs/operations.md, section 1)",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in args_list if not a.startswith("-")), "")
    try:
        parser = build_parser(args_list)
    except ModuleNotFoundError as exc:
        return _missing_package(wanted, exc)
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
    except ConfigError as exc:
        # The one place a command's config or environment error becomes a line and exit 2 (the
        # units' RestartPreventExitStatus=2), for commands that do not report it themselves.
        print(f"orbitfl {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a deferred import of an optional dependency
        return _missing_package(wanted, exc)
    except OSError as exc:
        if " ".join([a for a in args_list if not a.startswith("-")][:2]) in DAEMONS:
            raise  # a daemon's own start-up reports its environment; later, a restart may help
        # A one-shot command's path that cannot be read or written: the user's to fix, so exit 2.
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"orbitfl {wanted}: {where}{exc.strerror or exc}; check the path and its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
