"""``orbitfl simulate``: a constellation federating on a virtual clock, in one process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orbitfl.apps.executors import Executor, make_executor, parse_executor
from orbitfl.apps.experiment.report import LAST_N, last_mean, run_record, write_report
from orbitfl.apps.progress import Progress
from orbitfl.apps.sim.orbits import write_csv
from orbitfl.apps.sim.runner import SimConfig, Simulation, iter_rows, load_windows

OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--sats", "sats", int, "satellites in the Walker constellation (default 12)"),
    ("--planes", "planes", int, "orbital planes (default 3)"),
    ("--altitude-km", "altitude_km", float, "orbit altitude (default 550)"),
    ("--inclination", "inclination_deg", float, "inclination in degrees (default 97.6)"),
    ("--orbits", "orbits", float, "simulated duration in orbital periods (default 100)"),
    ("--rounds", "rounds", int, "stop after this many rounds (default: when the orbits end)"),
    ("--model", "model", str, "zoo model, or the path of your own .onnx (default mlp)"),
    (
        "--dataset",
        "dataset",
        str,
        "digits | mnist | hyperspectral | mnist1d, or your data: .npz, .npy or IDX folder (default digits)",
    ),
    ("--mnist-path", "mnist_path", str, "folder with the MNIST IDX files (dataset mnist)"),
    ("--partition", "partition", str, "dirichlet | iid | shard (default dirichlet)"),
    ("--alpha", "alpha", float, "Dirichlet concentration of the non-IID split (default 0.5)"),
    ("--codec", "codec", str, "codec recipe of the updates (default fp32)"),
    ("--strategy", "strategy", str, "aggregation strategy (default fedavg)"),
    ("--min-updates", "min_updates", int, "updates that close a round (default: every satellite)"),
    ("--rate-bps", "rate_bps", float, "override every window's data rate"),
    ("--windows-csv", "windows_csv", str, "contact windows from this CSV instead of the geometry"),
    ("--tle", "tle_file", str, "propagate these TLEs with sgp4 instead of a Walker constellation"),
    ("--seed", "seed", int, "seed of data split, model and training (default 0)"),
    ("--target", "target_accuracy", float, "accuracy whose first simulated time is reported"),
    (
        "--topology",
        "topology",
        str,
        "single (every station feeds one ground, the default) | stations (a station machine per "
        "station, linked to one aggregator)",
    ),
    (
        "--backhaul-latency",
        "backhaul_latency_s",
        float,
        "station<->aggregator one-way latency, s (default 0.05)",
    ),
    ("--backhaul-rate-bps", "backhaul_rate_bps", float, "station<->aggregator rate (default: unlimited)"),
)


def load_toml(path: str | Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read config {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {p} is not valid TOML: {exc}") from None


def config_from_args(args: argparse.Namespace) -> SimConfig:
    base: dict[str, Any] = {}
    if args.config:
        raw = load_toml(args.config)
        base = dict(raw.get("sim", raw))
    for _, dest, _, _ in OPTIONS:
        v = getattr(args, dest)
        if v is not None:
            base[dest] = v
    if args.stations:
        base["stations"] = list(args.stations)
    if args.trainable:
        base["trainable"] = list(args.trainable)
    if args.backhaul_outages:
        base["backhaul_outages"] = list(args.backhaul_outages)
    return SimConfig.from_dict(base, str(args.config or "options"))


def _cmd(args: argparse.Namespace) -> int:
    executor: Executor | None = None
    display = Progress(1)
    try:
        spec = parse_executor(args.executor)
        cfg = config_from_args(args)
        windows = load_windows(cfg)
        if args.windows_out:
            write_csv(windows[0], args.windows_out)
            print(f"wrote {len(windows[0])} windows to {args.windows_out}")
        executor = make_executor(spec)

        def watch(now: float, duration: float, rounds: int) -> None:
            display.update(sim_s=now, rounds=rounds, fraction=now / duration)

        sim = Simulation(cfg, progress=display.line, windows=windows, executor=executor, watch=watch)
    except (ValueError, ImportError, OSError) as exc:
        if executor is not None:
            executor.close()
        print(f"orbitfl simulate: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, cfg, sim, windows, display, executor)
    finally:
        display.close()
        executor.close()


def _run(
    args: argparse.Namespace,
    cfg: SimConfig,
    sim: Simulation,
    windows: tuple[Any, ...],
    display: Progress,
    executor: Executor,
) -> int:
    ws = windows[0]
    mean = sum(w.duration for w in ws) / len(ws)
    print(
        f"{len(windows[1])} satellites, {len(ws)} contact windows over {windows[2] / 3600:.1f} h "
        f"(mean {mean / 60:.1f} min); {cfg.model} on {cfg.dataset} ({cfg.partition}), "
        f"codec {cfg.codec!r}, strategy {cfg.strategy!r}; training on executor {executor.spec}",
        flush=True,
    )
    res = sim.run()
    display.update(done=1, sim_s=res.sim_seconds, rounds=len(res.rounds), fraction=0.0, force=True)
    display.close()
    last5 = last_mean(list(iter_rows(res.rounds)))

    def x(a: int, b: int) -> str:
        return "-" if not b else f"{a / b:.1f}x"

    print(
        f"done: {len(res.rounds)} rounds, accuracy mean of the last {LAST_N} evaluations "
        f"{'-' if last5 is None else f'{last5:.4f}'} (final "
        f"{'-' if res.final_accuracy is None else f'{res.final_accuracy:.4f}'}); "
        f"{res.sim_seconds / 3600:.1f} simulated hours in {res.wall_seconds:.1f} s "
        f"({res.wall_seconds / max(1, len(res.rounds)):.2f} s per round)\n"
        f"uplink: updates {res.uplink_update_bytes:,} B + control {res.control_uplink_bytes:,} B "
        f"= {res.uplink_bytes:,} B on the air; the {res.accepted_updates} accepted updates as raw "
        f"float32: {res.float32_bytes:,} B, so {x(res.float32_bytes, res.uplink_update_bytes)} less "
        f"(updates only), {x(res.float32_bytes, res.uplink_bytes)} less (control included); "
        f"downlink {res.downlink_bytes:,} B"
    )
    if res.uplink_by_type:
        print("uplink by frame type: " + ", ".join(f"{k} {v:,} B" for k, v in res.uplink_by_type.items()))
    if res.time_to_target is not None:
        print(f"target accuracy {cfg.target_accuracy} reached at {res.time_to_target / 3600:.2f} h")
    if args.report:
        rec = run_record(
            res,
            {
                "codec": cfg.codec,
                "strategy": cfg.strategy,
                "dataset": cfg.dataset,
                "partition": cfg.partition,
                "seed": cfg.seed,
                "name": "simulate",
            },
        )
        paths = write_report([rec], Path(args.report))
        print("report: " + ", ".join(str(p) for p in paths))
    if args.json:
        print(json.dumps({"final_accuracy": res.final_accuracy, "rounds": len(res.rounds)}))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("simulate", help="a constellation federating on a virtual clock")
    p.add_argument("--config", help="TOML file (keys of [sim]; options given here override it)")
    for flag, dest, typ, help_text in OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_text)
    p.add_argument(
        "--stations",
        nargs="+",
        metavar="NAME:LAT:LON[:MASK[:RATE]]",
        help="ground stations (default: svalbard, toulouse, hawaii)",
    )
    p.add_argument(
        "--trainable",
        nargs="+",
        metavar="PATTERN",
        help="train only these parameters (names, globs, group prefixes); default: all",
    )
    p.add_argument(
        "--backhaul-outages",
        nargs="+",
        metavar="STATION:START_S:END_S",
        help="station<->aggregator outages (topology stations), or random:MEAN_UP_S:MEAN_DOWN_S",
    )
    p.add_argument("--windows-out", help="also write the contact windows to this CSV")
    p.add_argument(
        "--executor",
        default="local",
        help="where the satellites' training runs: local (default), processes[:N], ray[:ADDRESS]",
    )
    p.add_argument("--report", help="folder for report.json, rounds.csv and plots")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd)
