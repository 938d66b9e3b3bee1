"""The ``orbitfl codec`` command group: ``bench`` (speed/size/error table) and ``inspect`` (a recipe)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from orbitfl import _core
from orbitfl.codec import bench
from orbitfl.codec.recipe import parse_recipe


def register(subparsers: Any) -> None:
    codec = subparsers.add_parser("codec", help="compression recipes: benchmark and inspect")
    sub = codec.add_subparsers(dest="codec_command", metavar="SUBCOMMAND")
    codec.set_defaults(func=lambda _args: _usage(codec))

    bench = sub.add_parser(
        "bench",
        help="compare recipes: ratio, bits/param, error, encode/decode GB/s vs NumPy and memcpy",
        description="Benchmark recipes on a synthetic model update (about --size float32 values) or on the "
        "float arrays of an .npz file; also 1-D k-means against scikit-learn.",
    )
    bench.add_argument(
        "--recipe",
        action="append",
        metavar="R",
        help="recipe to run (repeatable); default: a comparison set from fp32 to alq",
    )
    bench.add_argument("--npz", metavar="FILE", help="tensors to compress (float arrays of a .npz)")
    bench.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    bench.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="N",
        help="values in the synthetic tensor set (default 4000000)",
    )
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts (default 3)")
    bench.add_argument(
        "--kmeans-values",
        type=int,
        default=None,
        metavar="N",
        help="values for the k-means rows (default 1000000, or --size if smaller)",
    )
    bench.add_argument(
        "--budget-bits", type=float, default=2.0, help="alq's byte budget in bits per parameter (default 2)"
    )
    bench.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    bench.add_argument(
        "--sklearn-full",
        action="store_true",
        help="compare k=256 with scikit-learn on all --kmeans-values values (slow: about a "
        "minute on a small machine); by default that comparison uses 100000 values",
    )
    bench.set_defaults(func=_bench)

    inspect = sub.add_parser(
        "inspect", help="parse a recipe and show its canonical form, or say what is wrong"
    )
    inspect.add_argument("recipe")
    inspect.set_defaults(func=_inspect)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _inspect(args: argparse.Namespace) -> int:
    try:
        recipe = parse_recipe(args.recipe)
    except ValueError as exc:
        print(f"orbitfl codec: {exc}", file=sys.stderr)
        return 2
    print(recipe.text)
    for chain in recipe.chains:
        flags = [s for s, on in (("error feedback", chain.ef), ("lossless", chain.lossless)) if on]
        print(f"  {chain.text}: {', '.join(flags) or 'lossy'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    recipes = args.recipe or list(bench.DEFAULT_RECIPES)
    try:
        for r in recipes:
            parse_recipe(r)
        if args.size is not None and args.size < 1:
            raise ValueError(f"--size must be >= 1, got {args.size}")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        if not 0 < args.budget_bits <= 32:
            raise ValueError(f"--budget-bits must be in (0, 32], got {args.budget_bits}")
        if args.npz:
            if args.size is not None:
                raise ValueError("--size applies to the synthetic set; not with --npz")
            tensors = bench.load_npz(args.npz)
        else:
            tensors = bench.synthetic_update(args.size or bench.DEFAULT_SIZE)
    except (ValueError, OSError) as exc:
        print(f"orbitfl codec bench: {exc}", file=sys.stderr)
        return 2
    n = sum(x.size for x in tensors.values())
    km = args.kmeans_values or min(bench.KMEANS_VALUES, max(n, 256))
    cfg = bench.BenchConfig(
        recipes, args.repeats, args.budget_bits, km, not args.no_sklearn, args.sklearn_full
    )
    log = None
    if not args.json:
        src = args.npz or "synthetic update"
        print(
            f"{src}: {len(tensors)} tensors, {n} float32 values ({4 * n / 1e6:.1f} MB); "
            f"kernels: C++ ({_core.simd}); speeds in GB/s of float32 input, best of {args.repeats}"
        )
        print(bench.LEGEND)
        print(bench.HEADER)
        log = print
    t0 = time.perf_counter()
    try:
        rows = bench.run(tensors, cfg, log)
    except ValueError as exc:
        print(f"orbitfl codec bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1, default=_plain))
    else:
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")
