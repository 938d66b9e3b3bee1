#!/usr/bin/env python3
"""Every strategy through ``orbitfl demo --strategy NAME``: the real ground and agent processes,
one strategy at a time, each with its defaults, on the demo's default data (non-IID digits).

Prints and writes a table of strategy, final accuracy, mean accuracy of the last five rounds,
uplink bytes, rounds and seconds, plus each run's JSON report. The heavy counterpart of
tests/integration/test_strategies_daemons.py, kept out of the default test run.

    nice -n 5 .venv/bin/python tools/strategy_sweep.py                     # all, 60 rounds each
    .venv/bin/python tools/strategy_sweep.py --rounds 20 --only fedadam fedyogi --out sweep/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from orbitfl.ground.strategies import STRATEGIES


def run(name: str, rounds: int, out: Path, extra: list[str]) -> dict[str, Any]:
    report = out / f"{name}.json"
    cmd = [sys.executable, "-m", "orbitfl.cli", "demo", "--strategy", name, "--rounds", str(rounds)]
    cmd += ["--report", str(report), "--workdir", str(out / f"work-{name}"), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"{name}.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        return {"strategy": name, "error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    rep: dict[str, Any] = json.loads(report.read_text())
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--only", nargs="+", choices=sorted(STRATEGIES), help="these strategies only")
    p.add_argument("--out", help="folder for reports and logs (default: a temporary one)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="passed on to orbitfl demo after --")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="orbitfl-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    extra = [x for x in a.demo_args if x != "--"]
    rows = []
    print(f"{'strategy':<11} {'final acc':>9} {'last-5 acc':>10} {'uplink bytes':>13} {'rounds':>6} {'s':>5}")
    for name in a.only or list(STRATEGIES):
        rep = run(name, a.rounds, out, extra)
        rows.append(rep)
        if "error" in rep:
            print(f"{name:<11} failed: {rep['error']}", flush=True)
            continue
        print(
            f"{name:<11} {rep['final_accuracy']:>9.4f} {rep['accuracy_mean_last5']:>10.4f} "
            f"{rep['uplink_bytes']:>13,} {len(rep['rounds']):>6} {rep['seconds']:>5.0f}",
            flush=True,
        )
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"reports in {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
