"""Ratio against accuracy for codec recipes in ``orbitfl demo`` on digits (issue 16's ≥ 50× at ≤ 0.5
points), counted the honest way: accuracy as the mean of the last 5 rounds; the ratio as the raw
float32 size of the accepted updates over the bytes the ground received, (a) UPDATE frames only
and (b) every frame (HELLO, heartbeats, acks too: the ground's ``orbitfl_received_bytes_total``,
read from its /metrics endpoint while the demo runs, last reading before it stops).

    python tools/demo_frontier.py --seeds 0 1 --out /tmp/frontier.json \\
        fp32 "topk:0.01+ef|quant:4|zstd" "dgc:0.01|quant:4|zstd"

Each run is a real ``orbitfl demo`` (one ground and 4 agents as processes); runs go one at a time.
The first recipe is the baseline the points are counted against (use fp32).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

_RECEIVED = re.compile(r"^orbitfl_received_bytes_total(?:\{[^}]*\})?\s+([0-9.e+]+)", re.M)


def _poll_received(work: Path, stop: threading.Event, box: list[int]) -> None:
    port = None
    while not stop.is_set():
        if port is None:
            cfg = work / "ground.toml"
            m = re.search(r'metrics = "127\.0\.0\.1:(\d+)"', cfg.read_text()) if cfg.is_file() else None
            port = int(m.group(1)) if m else None
        if port is not None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    got = _RECEIVED.search(r.read().decode())
                if got:
                    box[0] = max(box[0], int(float(got.group(1))))
            except OSError:
                pass
        stop.wait(0.25)


def run(recipe: str, seed: int, epochs: int, orbitfl: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orbitfl-frontier-") as tmp:
        work = Path(tmp) / "w"
        report = Path(tmp) / "r.json"
        box = [0]
        stop = threading.Event()
        t = threading.Thread(target=_poll_received, args=(work, stop, box), daemon=True)
        t.start()
        cmd = [orbitfl, "demo", "--codec", recipe, "--seed", str(seed), "--epochs", str(epochs)]
        cmd += ["--insecure", "--workdir", str(work), "--report", str(report)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        stop.set()
        t.join()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{recipe} seed {seed}: demo failed\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        r = json.loads(report.read_text())
    return {
        "recipe": recipe,
        "seed": seed,
        "acc_last5": r["accuracy_mean_last5"],
        "final_accuracy": r["final_accuracy"],
        "update_bytes": r["uplink_bytes"],
        "received_bytes": box[0],
        "float32_bytes": r["float32_bytes"],
        "seconds": round(time.monotonic() - t0, 1),
        # per-round accuracies, to tell slow convergence from a plateau when a seed lags
        "curve": [round(float(x["accuracy"]), 4) for x in r["rounds"]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", help="codec recipes; the first is the baseline (fp32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--orbitfl", default=str(Path(sys.executable).with_name("orbitfl")))
    p.add_argument("--out", type=Path, help="append each run as a JSON line here")
    a = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for recipe in a.recipes:
        for seed in a.seeds:
            row = run(recipe, seed, a.epochs, a.orbitfl)
            rows.append(row)
            if a.out:
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    base = {r["seed"]: r for r in rows if r["recipe"] == a.recipes[0]}
    print(f"\n{'recipe':48s} {'seeds':>5s} {'Δpoints':>8s} {'×upd':>7s} {'×all':>7s}")
    for recipe in a.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        pts = [100 * (base[r["seed"]]["acc_last5"] - r["acc_last5"]) for r in mine]
        upd = sum(r["float32_bytes"] for r in mine) / sum(r["update_bytes"] for r in mine)
        rec = sum(r["received_bytes"] for r in mine)
        allx = sum(r["float32_bytes"] for r in mine) / rec if rec else float("nan")
        spread = f" ({min(pts):+.2f}..{max(pts):+.2f})" if len(pts) > 1 else ""
        print(f"{recipe:48s} {len(mine):5d} {sum(pts) / len(pts):+8.2f} {upd:7.1f} {allx:7.1f}{spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
