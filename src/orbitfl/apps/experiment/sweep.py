"""``orbitfl experiment``: a sweep of recipes (codec × strategy) × data splits × seeds on the
constellation simulator, written as one table and one set of plots.

Config (TOML)::

    [experiment]
    name = "digits"
    seeds = [0, 1]
    baseline = "fp32-fedavg"      # the run every other is compared with
    target_accuracy = 0.85

    [base]                        # SimConfig keys shared by every run
    orbits = 100

    [[datasets]]                  # data splits; SimConfig keys (dataset, partition, alpha, model, ...)
    dataset = "digits"

    [[recipes]]                   # what is compared; SimConfig keys (codec, strategy, hints, ...)
    name = "fp32-fedavg"
    codec = "fp32"

A split with ``dataset = "mnist"`` runs only when ``mnist_path`` names a folder (or ``--mnist`` is
given); otherwise it is skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orbitfl.apps.experiment.report import compare_to_baseline, run_record, write_report
from orbitfl.apps.sim.cli import load_toml
from orbitfl.apps.sim.runner import SimConfig, Simulation, load_windows
from orbitfl.codec.inputs import check_recipe
from orbitfl.ground.strategies import STRATEGIES
from orbitfl.runtime.config import is_path_ref

SECTIONS = ("experiment", "base", "datasets", "recipes")
EXPERIMENT_KEYS = ("name", "seeds", "baseline", "target_accuracy")


@dataclass(frozen=True)
class Run:
    name: str
    split: str
    seed: int
    config: SimConfig


@dataclass
class Plan:
    name: str
    baseline: str | None
    runs: list[Run]
    skipped: list[str]


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ValueError(f"{where}: [{key}] must be a table")
    return dict(v)


def _tables(raw: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError(f"{where}: [[{key}]] must be an array of tables")
    return [dict(x) for x in v]


def _own_paths(keys: dict[str, Any], where: str) -> dict[str, Any]:
    """Your own model and data, given relative to the experiment file, as paths that work from
    any folder (a zoo or data set name stays as it is)."""
    here = Path(where).parent if Path(where).is_file() else None
    for key in ("model", "dataset"):
        v = keys.get(key)
        if (
            here is not None
            and isinstance(v, str)
            and is_path_ref(v)
            and not Path(v).expanduser().is_absolute()
        ):
            keys[key] = str(here / v)
    return keys


def available_strategies() -> list[str]:
    return sorted(STRATEGIES)


def plan(
    raw: Mapping[str, Any],
    where: str = "config",
    *,
    mnist: str | None = None,
    skip_unavailable: bool = False,
    seeds: list[int] | None = None,
    orbits: float | None = None,
) -> Plan:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    exp = _table(raw, "experiment", where)
    bad = sorted(set(exp) - set(EXPERIMENT_KEYS))
    if bad:
        raise ValueError(f"{where}: [experiment] unknown key(s) {bad}; known: {list(EXPERIMENT_KEYS)}")
    base = _table(raw, "base", where)
    splits = _tables(raw, "datasets", where) or [{}]
    recipes = _tables(raw, "recipes", where)
    if not recipes:
        raise ValueError(f"{where}: no [[recipes]]: nothing to compare")
    seed_list = seeds if seeds is not None else exp.get("seeds", [0])
    if not isinstance(seed_list, list) or not seed_list or not all(isinstance(s, int) for s in seed_list):
        raise ValueError(f"{where}: [experiment] seeds must be a non-empty list of integers")
    names = [r.get("name") for r in recipes]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{where}: every [[recipes]] needs a unique non-empty name, got {names}")
    target = exp.get("target_accuracy")
    strategies = available_strategies()
    runs: list[Run] = []
    skipped: list[str] = []
    for sp in splits:
        sp = dict(sp)
        if mnist is not None and sp.get("dataset") == "mnist":
            sp["mnist_path"] = mnist
        ds = str(sp.get("dataset", base.get("dataset", "digits")))
        split = f"{Path(ds).name}/{sp.get('partition', base.get('partition', 'dirichlet'))}"
        if sp.get("dataset") == "mnist":
            path = sp.get("mnist_path")
            if not path or not Path(str(path)).is_dir():
                skipped.append(
                    f"{split}: skipped — MNIST needs the IDX files; set mnist_path in [[datasets]] or pass "
                    f"--mnist FOLDER (got {path!r})"
                )
                continue
        for rec in recipes:
            rec = dict(rec)
            name = rec.pop("name")
            keys = _own_paths({**base, **sp, **rec}, where)
            if target is not None:
                keys.setdefault("target_accuracy", target)
            if orbits is not None:
                keys["orbits"] = orbits
            strat = keys.get("strategy", "fedavg")
            problem = None
            if strat not in strategies:
                problem = f"strategy {strat!r} is not available in this build; available: {strategies}"
            else:
                try:
                    check_recipe(str(keys.get("codec", "fp32")))
                except ValueError as exc:
                    problem = str(exc)
            if problem is not None:
                msg = f"recipe {name!r} on {split}: {problem}"
                if not skip_unavailable:
                    raise ValueError(f"{where}: {msg} (or pass --skip-unavailable)")
                skipped.append(f"{msg}: skipped")
                continue
            for seed in seed_list:
                cfg = SimConfig.from_dict({**keys, "seed": seed}, f"{where} recipe {name!r} on {split}")
                runs.append(Run(name, split, seed, cfg))
    baseline = exp.get("baseline")
    if baseline is not None and baseline not in names:
        raise ValueError(f"{where}: baseline {baseline!r} is not one of the recipes {names}")
    return Plan(str(exp.get("name", Path(where).stem)), baseline, runs, skipped)


def run_plan(
    p: Plan, out: Path, progress: Callable[[str], None] = print, verbose: bool = False
) -> list[Path]:
    records: list[dict[str, Any]] = []
    windows_cache: dict[tuple[Any, ...], Any] = {}
    t0 = time.monotonic()
    for i, r in enumerate(p.runs, 1):
        c = r.config
        key = (
            c.sats,
            c.planes,
            c.phasing,
            c.altitude_km,
            c.inclination_deg,
            tuple(c.stations),
            c.orbits,
            c.windows_csv,
            c.tle_file,
            c.step_s,
            c.rate_bps,
        )
        if key not in windows_cache:
            windows_cache[key] = load_windows(c)
        sim = Simulation(c, windows=windows_cache[key], progress=progress if verbose else None)
        res = sim.run()
        rec = run_record(
            res,
            {
                "name": r.name,
                "codec": c.codec,
                "strategy": c.strategy,
                "dataset": c.dataset,
                "partition": c.partition,
                "seed": r.seed,
                "model": c.model,
            },
        )
        records.append(rec)
        acc = "-" if res.final_accuracy is None else f"{res.final_accuracy:.4f}"
        progress(
            f"[{i}/{len(p.runs)}] {r.name:<22} {r.split:<22} seed {r.seed}: acc {acc}, "
            f"{len(res.rounds)} rounds, uplink {res.uplink_update_bytes:,} B, "
            f"{res.sim_seconds / 3600:.1f} sim h in {res.wall_seconds:.1f} s"
        )
    if p.baseline:
        compare_to_baseline(records, p.baseline)
    extra = {
        "experiment": p.name,
        "baseline": p.baseline,
        "skipped": p.skipped,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    return write_report(records, out, extra=extra)


def _cmd(args: argparse.Namespace) -> int:
    try:
        raw = load_toml(args.config)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        p = plan(
            raw,
            args.config,
            mnist=args.mnist,
            skip_unavailable=args.skip_unavailable,
            seeds=seeds,
            orbits=args.orbits,
        )
    except (ValueError, ImportError) as exc:
        print(f"orbitfl experiment: {exc}", file=sys.stderr)
        return 2
    for s in p.skipped:
        print(s)
    if not p.runs:
        print("orbitfl experiment: nothing to run", file=sys.stderr)
        return 2
    print(f"experiment {p.name!r}: {len(p.runs)} runs")
    paths = run_plan(p, Path(args.report), verbose=args.verbose)
    print((Path(args.report) / "summary.md").read_text())
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("experiment", help="sweep codec × strategy × data split on the simulator")
    p.add_argument("--config", required=True, help="experiment TOML (see experiments/)")
    p.add_argument("--report", required=True, help="folder for results.json/csv, summary.csv and plots")
    p.add_argument("--mnist", help="folder with the MNIST IDX files (enables the mnist splits)")
    p.add_argument("--seeds", help="comma-separated seeds, overriding the config's")
    p.add_argument("--orbits", type=float, help="override every run's duration in orbits")
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip recipes whose strategy or codec this build lacks instead of failing",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every round of every run")
    p.set_defaults(func=_cmd)
