"""The accuracy side of ``orbitfl demo`` in one process, for screening recipes over many seeds:
the same data split, model, trainer (``train_task`` on a ``Learner`` per agent, seeded by the
round as the agent daemon seeds it), codec pipeline per agent, FedAvg and evaluator, without
processes, sockets or the wire. A run takes seconds where the demo takes a minute or more, and
gives the demo's per-round accuracies (tests/integration/test_demo_twin.py holds it to that).

    python tools/demo_twin.py --seeds 0 1 2 3 4 5 6 7 fp32 "dgc:0.03,warmup=6,ramp=geometric|sign|zstd"

Bytes here are serialised payloads, not the demo's compact frames: measure ratios with
tools/demo_frontier.py (the real daemons), and report accuracies from it too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.daemon import load_partition
from orbitfl.agent.learner import Learner
from orbitfl.agent.strategy_side import train_task
from orbitfl.codec import Payload, Pipeline
from orbitfl.ground.daemon import Evaluator
from orbitfl.ground.strategies import make_strategy
from orbitfl.models import zoo
from orbitfl.models.artifacts import build_artifacts
from orbitfl.runtime.config import DataSection

# The demo's settings (orbitfl.apps.demo.DemoSettings and the agents' [train] defaults).
AGENTS, ROUNDS, EPOCHS, ALPHA, BATCH, LR = 4, 60, 2, 0.5, 32, 0.01


def run(recipe: str, seed: int, *, rounds: int = ROUNDS, epochs: int = EPOCHS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orbitfl-twin-") as tmp:
        art = Path(tmp) / "artifacts"
        build_artifacts(zoo.resolve("mlp"), art, optimizer="adamw")
        spec = zoo.resolve("mlp", seed=seed)  # the ground's federation.model_seed
        weights = zoo.get_weights(spec.model)
        evaluator = Evaluator(spec, "digits", seed)
        learners, pipes, states = [], [], []
        for i in range(AGENTS):
            data = DataSection(
                dataset="digits",
                split="dirichlet",
                partition=i,
                num_partitions=AGENTS,
                alpha=ALPHA,
                seed=seed,
            )
            x, y = load_partition(data, None)
            learners.append(Learner(open_trainer(art, learning_rate=LR), x, y))
            pipe = Pipeline.parse(recipe)
            pipes.append(pipe)
            states.append(pipe.new_state())
        fedavg = make_strategy("fedavg")
        curve: list[float] = []
        payload_bytes = 0
        for r in range(1, rounds + 1):
            fedavg.reset(weights)
            for i in range(AGENTS):
                done = train_task(
                    learners[i], f"sat-{i}", weights, {}, epochs=epochs, batch_size=BATCH, seed=r
                )
                blob = pipes[i].encode(done.delta, states[i]).to_bytes()
                payload_bytes += len(blob)
                fedavg.accumulate(pipes[i].decode(Payload.from_bytes(blob)), done.samples)
            weights = fedavg.finalize(weights)
            curve.append(evaluator.accuracy(weights))
    return {
        "recipe": recipe,
        "seed": seed,
        "acc_last5": float(np.mean(curve[-5:])),
        "payload_bytes": payload_bytes,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", help="codec recipes; the first is the baseline (fp32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--out", type=Path, help="append each run as a JSON line here")
    a = p.parse_args(argv)
    rows = []
    for recipe in a.recipes:
        for seed in a.seeds:
            row = run(recipe, seed, rounds=a.rounds)
            rows.append(row)
            if a.out:
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{recipe} seed {seed}: last-5 {row['acc_last5']:.4f}", file=sys.stderr, flush=True)
    base = {r["seed"]: r["acc_last5"] for r in rows if r["recipe"] == a.recipes[0]}
    print(f"{'recipe':52s} {'seeds':>5s} {'Δpoints':>8s}  per seed")
    for recipe in a.recipes:
        pts = [100 * (base[r["seed"]] - r["acc_last5"]) for r in rows if r["recipe"] == recipe]
        each = " ".join(f"{x:+.2f}" for x in pts)
        print(f"{recipe:52s} {len(pts):5d} {sum(pts) / len(pts):+8.2f}  {each}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
