#!/usr/bin/env python3
"""Old against new encoders, side by side in one run: encode GB/s, ratio and error per recipe.

    nice -n 10 .venv/bin/python tools/bench_speedup.py --old /tmp/old-pkg

``--first-round`` also times each recipe's first encode from a new state, old and new in turns
(for DGC with a warm-up that is its densest round; the main row's best is a later round).

``--old`` is a directory holding an older build of the package (e.g. main's, installed with
``pip install --no-deps --no-build-isolation --target /tmp/old-pkg /path/to/main``). Two worker
processes, one importing each build, encode the same synthetic update (``orbitfl codec bench``'s,
about 3.95M values) in turns, repeat after repeat, so both see the same load on a shared
machine; the best time of each counts. The new worker also times memcpy (``np.copyto`` of the
same bytes). The old worker runs without ``site`` (so this checkout's editable install cannot
shadow the old package) and finds NumPy and the other dependencies on this venv's site-packages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

RECIPES = ("laq:2", "alq:0/1/2/4", "gcc:16", "coreset:16", "topk:0.01+ef|quant:8|zstd", "fp32|zstd")

# The worker: reads recipes on stdin, answers one JSON line each (time of one encode, payload size,
# relative error of the first round; with "per-tensor" as its last argument also each tensor's
# payload bytes encoded alone, None for recipes that need curvature or a budget, and its error in
# the first round); "memcpy" answers the time of one copy of the input's bytes, "first:RECIPE" the
# time of an encode from a new state (the recipe's first round) instead of the next round's.
WORKER = r"""
import json, math, sys, time
import numpy as np
from orbitfl.codec import bench
from orbitfl.codec.pipeline import Pipeline

tensors = bench.synthetic_update()
curv = bench.synthetic_curvature(tensors)
PER_TENSOR = sys.argv[-1] == "per-tensor"
n = sum(x.size for x in tensors.values())
pipes = {}
src = np.ones(n, np.float32)
dst = np.empty_like(src)
print(json.dumps({"values": n}), flush=True)
for line in sys.stdin:
    recipe = line.strip()
    fresh = recipe.startswith("first:")  # the first round, from a new state (DGC's densest)
    recipe = recipe.removeprefix("first:")
    if recipe == "memcpy":
        t0 = time.perf_counter()
        np.copyto(dst, src)
        print(json.dumps({"time": time.perf_counter() - t0}), flush=True)
        continue
    kw = {}
    if "laq" in recipe or "alq" in recipe:
        kw["curvature"] = curv
    if "alq" in recipe:
        kw["budget_bytes"] = max(1, int(n * 2.0 / 8))
    out = {}
    if recipe not in pipes:
        pipe = Pipeline.parse(recipe, "cpp")
        payload = pipe.encode(tensors, pipe.new_state(), **kw)
        dec = pipe.decode(payload)
        err2 = sum(float(np.sum((x.astype(np.float64) - dec.get(k, 0.0)) ** 2)) for k, x in tensors.items())
        ref2 = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in tensors.values())
        per = {
            k: [pipe.encode({k: x}, pipe.new_state(), **kw).nbytes if not kw else None,
                math.sqrt(float(np.sum((x.astype(np.float64) - dec.get(k, 0.0)) ** 2))
                          / max(float(np.sum(x.astype(np.float64) ** 2)), 1e-300))]
            for k, x in tensors.items()
        } if PER_TENSOR else {}
        out = {"bytes": payload.nbytes, "rel_error": math.sqrt(err2 / ref2), "tensors": per}
        pipes[recipe] = (pipe, pipe.new_state())
    pipe, state = pipes[recipe]
    if fresh:
        state = pipe.new_state()
    t0 = time.perf_counter()
    pipe.encode(tensors, state, **kw)
    out["time"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)
"""


class Worker:
    def __init__(self, env: dict[str, str], flags: list[str], per_tensor: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-c", WORKER, *(["per-tensor"] if per_tensor else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.values = int(self._read()["values"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, what: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, type=Path, help="directory holding the old orbitfl package")
    ap.add_argument("--recipe", action="append", help="recipe (repeatable); default: the slow encoders")
    ap.add_argument("--repeats", type=int, default=5, help="encodes per recipe and build (default 5)")
    ap.add_argument(
        "--first-round",
        action="store_true",
        help="also time each recipe's first encode from a new state (a DGC warm-up's densest round)",
    )
    ap.add_argument(
        "--per-tensor",
        action="store_true",
        help="also print each tensor's payload bytes (encoded alone) and relative error, old -> new",
    )
    args = ap.parse_args()
    if not (args.old / "orbitfl" / "__init__.py").exists():
        ap.error(f"--old {args.old}: no orbitfl package there")
    twice = sorted({r for r in args.recipe or [] if args.recipe.count(r) > 1})
    if twice:
        # the workers measure size and error only the first time they see a recipe
        ap.error(f"--recipe given more than once: {', '.join(twice)}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    site = sysconfig.get_paths()["purelib"]
    old_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.old), site]))
    new = Worker(dict(os.environ), [], args.per_tensor)
    old = Worker(old_env, ["-S"], args.per_tensor)
    if old.values != new.values:
        raise SystemExit(f"the builds made different bench sets ({old.values} and {new.values} values)")
    nbytes = 4 * new.values
    memcpy = min(new.ask("memcpy")["time"] for _ in range(20))
    load = os.getloadavg()[0]
    print(
        f"{new.values} float32 values ({nbytes / 1e6:.1f} MB); memcpy {nbytes / memcpy / 1e9:.2f} GB/s; "
        f"load average {load:.2f}; best of {args.repeats} encodes each, old and new in turns"
    )
    head = (
        f"{'recipe':<28} {'old GB/s':>9} {'new GB/s':>9} {'speedup':>8} {'new/memcpy':>10} "
        f"{'old ratio':>9} {'new ratio':>9} {'old err':>9} {'new err':>9}"
    )
    print(head)
    for recipe in args.recipe or RECIPES:
        first_old, first_new = old.ask(recipe), new.ask(recipe)
        t_old, t_new = first_old["time"], first_new["time"]
        for _ in range(args.repeats - 1):
            t_old = min(t_old, old.ask(recipe)["time"])
            t_new = min(t_new, new.ask(recipe)["time"])
        print(
            f"{recipe:<28} {nbytes / t_old / 1e9:9.3f} {nbytes / t_new / 1e9:9.3f} {t_old / t_new:7.2f}x "
            f"{memcpy / t_new:10.3f} {nbytes / first_old['bytes']:9.3f} {nbytes / first_new['bytes']:9.3f} "
            f"{first_old['rel_error']:9.3e} {first_new['rel_error']:9.3e}",
            flush=True,
        )
        if args.first_round:
            f_old = f_new = math.inf
            for _ in range(args.repeats):
                f_old = min(f_old, old.ask("first:" + recipe)["time"])
                f_new = min(f_new, new.ask("first:" + recipe)["time"])
            speeds = f"{nbytes / f_old / 1e9:9.3f} {nbytes / f_new / 1e9:9.3f} {f_old / f_new:7.2f}x"
            print(f"  (first round) {speeds} {memcpy / f_new:10.3f}", flush=True)
        for name, (b_old, e_old) in first_old.get("tensors", {}).items():
            b_new, e_new = first_new["tensors"][name]
            flag = "  (higher)" if e_new > e_old else ""
            print(f"  {name:<16} bytes {b_old} -> {b_new}  rel. error {e_old:.10g} -> {e_new:.10g}{flag}")
        if not math.isclose(first_old["bytes"], first_new["bytes"], rel_tol=0.01):
            print(f"  note: payload size changed by over 1 % ({first_old['bytes']} -> {first_new['bytes']})")
    old.close()
    new.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
