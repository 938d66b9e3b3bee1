"""``orbitfl demo``: a ground and N agents as separate processes on 127.0.0.1, accuracy against bytes.

Everything is real: Curve keys made in a temporary folder, the two daemons started with their own
TOML configs, ZeroMQ over loopback TCP, ONNX Runtime training on non-IID shares of the digits,
the codec on every update. The demo only writes the configs, starts and stops the processes and
reads the ground's round log (``rounds.jsonl``) to print the table, the JSON report and the plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orbitfl.apps.demo_network import write_network_configs
from orbitfl.codec.inputs import check_recipe
from orbitfl.ground.strategies import STRATEGIES, make_strategy
from orbitfl.models.manifest import is_model_path
from orbitfl.runtime.keys import new_keypair

# DGC at 3 % with signs after a 6-round geometric warm-up (25 % -> 3 %): on the demo's digits
# (seeds 0-4, last-5 mean) 64.7x less than float32 with every frame counted at +0.12 points, where
# the former default, DGC 1.5 % without warm-up, gave 89.1x at +1.03: the rounds where a non-IID
# federation settles are worth their bytes (docs/algorithms.md, "Measured on digits":
# tools/demo_frontier.py).
DEFAULT_RECIPE = "dgc:0.03,warmup=6,ramp=geometric | sign | zstd"
# Link settings of the demo: short, so that --outages exceeds every one of them many times over.
HEARTBEAT_S = 0.5
LIVENESS = 3
BACKOFF_MAX_S = 2.0
RETRANSMIT_S = 4.0


@dataclass(frozen=True)
class DemoSettings:
    agents: int = 4
    rounds: int = 60
    codec: str = DEFAULT_RECIPE
    epochs: int = 2
    alpha: float = 0.5
    seed: int = 0
    outages: bool = False
    outage_up_s: float = 3.0
    outage_down_s: float = 8.0
    # With outages each job takes at least this long, as on a real board, so rounds span several
    # contact windows instead of all finishing inside the first one.
    outage_pace_s: float = 1.0
    insecure: bool = False
    timeout_s: float = 600.0
    # A zoo model or the path of your own .onnx ("": the strategy's default); a built-in data set
    # or the path of your data.
    model: str = ""
    data: str = "digits"
    strategy: str = "fedavg"
    strategy_options: tuple[tuple[str, Any], ...] = ()
    # A ground network: an aggregator and this many station daemons, agents moving between them
    # (0: one ground daemon doing both).
    stations: int = 0

    @property
    def demo_model(self) -> str:
        """Your model if given; else EMS-FL's mixture of experts, or the digits mlp for the rest."""
        if self.model:
            return self.model
        return "moe" if self.strategy == "emsfl" else "mlp"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r} is not one of {', '.join(sorted(STRATEGIES))}")
        make_strategy(self.strategy, **dict(self.strategy_options))  # a bad option fails here, by name
        if self.agents < 1:
            raise ValueError(f"--agents must be >= 1, got {self.agents}")
        if self.stations < 0:
            raise ValueError(f"--stations must be >= 0, got {self.stations}")
        if self.stations and self.outages:
            raise ValueError(
                "--stations and --outages together are not supported: agents already move between stations"
            )
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.alpha > 0:
            raise ValueError(f"--alpha must be > 0, got {self.alpha}")
        for flag, v in (("--model", self.model), ("--data", self.data)):
            if ("/" in v or "." in v) and not Path(v).exists():
                raise ValueError(f"{flag}: {v} does not exist")
        if self.outages and self.outage_down_s <= max(HEARTBEAT_S * LIVENESS, BACKOFF_MAX_S, RETRANSMIT_S):
            raise ValueError("outages must last longer than every link timeout")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_str(p: Path | str) -> str:
    return json.dumps(str(p))  # a JSON string is a valid TOML basic string


def write_configs(work: Path, s: DemoSettings) -> tuple[Path, list[Path]]:
    """Keys and TOML configs for the ground and each agent, all inside ``work``."""

    keys, allowed = work / "keys", work / "allowed"
    if not s.insecure:
        new_keypair("ground", keys)
    port, metrics = free_port(), free_port()
    fed_min = s.agents
    # With outages, a round closes at its deadline with whoever got through; updates that arrive
    # later count in the next round (staleness 1), so nothing trained is wasted.
    deadline = 4.0 if s.outages else 120.0
    link = (
        f"[link]\nheartbeat_s = {HEARTBEAT_S}\nliveness = {LIVENESS}\n"
        f"backoff_initial_s = 0.2\nbackoff_max_s = {BACKOFF_MAX_S}\n"
    )
    security_g = (
        "insecure = true\n"
        if s.insecure
        else f"secret_key = {_toml_str(keys / 'ground.key_secret')}\nallowed_keys = {_toml_str(allowed)}\n"
    )
    ground = work / "ground.toml"
    ground.write_text(
        f'[ground]\nbind = "tcp://127.0.0.1:{port}"\nstate_dir = {_toml_str(work / "ground")}\n'
        f'{security_g}metrics = "127.0.0.1:{metrics}"\n\n'
        f"[federation]\nmodel = {_toml_str(s.demo_model)}\nmodel_seed = {s.seed}\n"
        f"codec = {_toml_str(s.codec)}\n"
        f"rounds = {s.rounds}\nmin_updates = {fed_min}\nround_deadline_s = {deadline}\n"
        f"max_staleness = 2\nretransmit_s = {RETRANSMIT_S}\neval_dataset = {_toml_str(s.data)}\n"
        f'data_seed = {s.seed}\nstrategy = "{s.strategy}"\n\n{link}\n[strategy]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in s.strategy_options)
    )
    agents = []
    pace = s.outage_pace_s if s.outages else 0.0
    for i in range(s.agents):
        name = f"sat-{i}"
        if not s.insecure:
            new_keypair(name, keys, allow_dir=allowed)
        security_a = (
            "insecure = true\n"
            if s.insecure
            else f"secret_key = {_toml_str(keys / f'{name}.key_secret')}\n"
            f"ground_key = {_toml_str(keys / 'ground.key')}\n"
        )
        outages = (
            f"[outages]\nup_s = {s.outage_up_s}\ndown_s = {s.outage_down_s}\nseed = {s.seed + i}\n"
            if s.outages
            else ""
        )
        cfg = work / f"{name}.toml"
        cfg.write_text(
            f'[agent]\nname = "{name}"\nground = "tcp://127.0.0.1:{port}"\n'
            f"state_dir = {_toml_str(work / name)}\n{security_a}retransmit_s = {RETRANSMIT_S}\n\n"
            f'[data]\ndataset = {_toml_str(s.data)}\nsplit = "dirichlet"\npartition = {i}\n'
            f"num_partitions = {s.agents}\nalpha = {s.alpha}\nseed = {s.seed}\n\n"
            f"[train]\nmodel = {_toml_str(s.demo_model)}\nepochs = {s.epochs}\npace_s = {pace}\n\n"
            # the .tflite exporter knows the zoo's graphs; your own model stays ONNX
            f"[inference]\nexport_tflite = {'false' if is_model_path(s.demo_model) else 'true'}\n\n"
            f"{outages}{link}"
        )
        agents.append(cfg)
    return ground, agents


class Processes:
    """The daemons as child processes, each logging to its own file; stopped with SIGTERM."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        logf = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        p = subprocess.Popen(
            [sys.executable, "-m", "orbitfl.cli", *args],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append((name, p, logf))
        return p

    def failed(self) -> list[str]:
        return [n for n, p, _ in self.procs if p.poll() is not None and p.returncode != 0]

    def stop(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        end = time.monotonic() + timeout_s
        for name, p, logf in self.procs:
            try:
                codes[name] = p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
            logf.close()
        self.procs.clear()
        return codes


def read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            rows.append(json.loads(line))
    return rows


def _row(r: dict[str, Any]) -> str:
    acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
    ratio = r["float32_bytes"] / r["uplink_bytes"] if r["uplink_bytes"] else float("nan")
    return f"{r['round']:>5}  {r['updates']:>6}  {acc:>8}  {r['uplink_bytes']:>12,}  {ratio:>9.1f}x"


HEADER = f"{'round':>5}  {'agents':>6}  {'accuracy':>8}  {'uplink bytes':>12}  {'vs fp32':>10}"


def run_demo(s: DemoSettings, work: Path, out: IO[str] = sys.stdout) -> dict[str, Any]:
    check_recipe(s.codec)
    station_cfgs: list[Path] = []
    if s.stations:
        link = (
            f"[link]\nheartbeat_s = {HEARTBEAT_S}\nliveness = {LIVENESS}\n"
            f"backoff_initial_s = 0.2\nbackoff_max_s = {BACKOFF_MAX_S}\n"
        )
        ports = [free_port() for _ in range(2 + s.stations)]
        net = write_network_configs(work, s, ports, link, RETRANSMIT_S, 120.0)
        ground_cfg, station_cfgs, agent_cfgs, rounds_file = (
            net.aggregator,
            net.stations,
            net.agents,
            net.rounds_file,
        )
        what = f"1 aggregator + {s.stations} stations + {s.agents} agents moving between them"
    else:
        ground_cfg, agent_cfgs = write_configs(work, s)
        rounds_file = work / "ground" / "rounds.jsonl"
        what = f"1 ground + {s.agents} agents"
    procs = Processes(work)
    t0 = time.monotonic()
    shown = 0
    security = "plaintext (--insecure)" if s.insecure else "CurveZMQ keys in " + str(work / "keys")
    print(f"orbitfl demo: {what} on 127.0.0.1, {security}", file=out)
    print(
        f"  {s.demo_model} on non-IID {s.data} (Dirichlet alpha={s.alpha}), codec {s.codec!r}, "
        f"strategy {s.strategy}, {s.rounds} rounds"
        + (
            f", contacts of ~{s.outage_up_s:.0f} s between {s.outage_down_s:.0f} s outages"
            if s.outages
            else ""
        ),
        file=out,
    )
    print(f"  logs and state in {work}", file=out)
    print(HEADER, file=out, flush=True)
    try:
        procs.start(ground_cfg.stem, "ground", "serve", "--config", str(ground_cfg))
        for cfg in station_cfgs:
            procs.start(cfg.stem, "ground", "serve", "--config", str(cfg))
        for cfg in agent_cfgs:
            procs.start(cfg.stem, "agent", "run", "--config", str(cfg))
        while True:
            rows = read_rounds(rounds_file)
            for r in rows[shown:]:
                print(_row(r), file=out, flush=True)
            shown = len(rows)
            if shown >= s.rounds:
                break
            bad = procs.failed()
            if bad:
                raise RuntimeError(f"{', '.join(bad)} stopped with an error; see the logs in {work}")
            if time.monotonic() - t0 > s.timeout_s:
                raise RuntimeError(
                    f"only {shown} of {s.rounds} rounds after {s.timeout_s:.0f} s; logs in {work}"
                )
            time.sleep(0.2)
    finally:
        codes = procs.stop()
    rows = read_rounds(rounds_file)[: s.rounds]
    up = sum(r["uplink_bytes"] for r in rows)
    f32 = sum(r["float32_bytes"] for r in rows)
    # everything the agents sent until the last round closed: updates and control traffic
    total = int(rows[-1].get("received_bytes", up))
    report: dict[str, Any] = {
        "final_accuracy": rows[-1]["accuracy"],
        # One round's accuracy moves by a point or two on 360 test digits; this is steadier.
        "accuracy_mean_last5": sum(r["accuracy"] for r in rows[-5:]) / len(rows[-5:]),
        "codec": s.codec,
        "strategy": s.strategy,
        "strategy_options": dict(s.strategy_options),
        "agents": s.agents,
        "stations": s.stations,
        "outages": s.outages,
        "seconds": round(time.monotonic() - t0, 2),
        "uplink_bytes": up,
        "uplink_total_bytes": total,
        "control_uplink_bytes": total - up,
        "float32_bytes": f32,
        "uplink_ratio": f32 / up if up else None,
        "uplink_ratio_all": f32 / total if total else None,
        "exit_codes": codes,
        "rounds": [
            {
                k: r[k]
                for k in (
                    "round",
                    "accuracy",
                    "uplink_bytes",
                    "float32_bytes",
                    "updates",
                    "samples",
                    "dp_epsilon",
                )
                if k in r
            }
            for r in rows
        ],
    }
    print(
        f"accuracy mean of the last 5 rounds {report['accuracy_mean_last5']:.4f} (final "
        f"{report['final_accuracy']:.4f}); uplink: accepted updates {up:,} B + everything else "
        f"{total - up:,} B = {total:,} B, against {f32:,} B for the updates as raw float32 "
        f"({_x(f32, up)} less, {_x(f32, total)} with control traffic) in {report['seconds']:.0f} s",
        file=out,
    )
    return report


def _points(drop: float) -> str:
    """A drop in accuracy points as a reader says it: "0.50 points lower" or "0.50 points higher"."""
    if round(drop, 2) == 0:
        return "the same (0.00 points)"
    return f"{abs(drop):.2f} points {'lower' if drop > 0 else 'higher'}"


def _x(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` of --strategy-option; the value as a TOML scalar would read (a number, true or
    false, else the string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--strategy-option {text!r} must be KEY=VALUE")
    value: Any = raw.strip()
    if value in ("true", "false"):
        value = value == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
    return key.strip(), value


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for rep in reports:
        xs, total = [], 0
        for r in rep["rounds"]:
            total += r["uplink_bytes"]
            xs.append(total)
        ax.plot(xs, [r["accuracy"] for r in rep["rounds"]], marker="o", ms=3, label=rep["codec"])
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bytes (all agents)")
    ax.set_ylabel("test accuracy of the global model")
    ax.set_title("orbitfl demo: accuracy against bytes sent")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        settings = DemoSettings(
            agents=args.agents,
            rounds=args.rounds,
            codec=args.codec,
            epochs=args.epochs,
            alpha=args.alpha,
            seed=args.seed,
            outages=args.outages,
            insecure=args.insecure,
            timeout_s=args.timeout,
            model=str(Path(args.model).resolve()) if args.model else "",
            data=str(Path(args.data).resolve()) if args.data else "digits",
            strategy=args.strategy,
            strategy_options=tuple(parse_option(o) for o in args.strategy_option),
            stations=args.stations,
        )
        check_recipe(settings.codec)
        if args.compare:
            check_recipe("fp32")
    except ValueError as exc:
        print(f"orbitfl demo: {exc}", file=sys.stderr)
        return 2
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="orbitfl-demo-"))
    runs = [settings]
    if args.compare:
        from dataclasses import replace

        runs.insert(0, replace(settings, codec="fp32"))
    reports = []
    try:
        for i, st in enumerate(runs):
            work = (
                base / (f"run{i}-" + ("fp32" if st.codec == "fp32" else "codec")) if len(runs) > 1 else base
            )
            work.mkdir(parents=True, exist_ok=True)
            reports.append(run_demo(st, work))
    except (RuntimeError, ValueError) as exc:
        print(f"orbitfl demo: {exc}", file=sys.stderr)
        return 1
    report: dict[str, Any] = dict(reports[-1])
    if len(reports) > 1:
        f32, codec = reports
        report["baseline"] = f32
        report["accuracy_drop_points"] = round(100 * (f32["final_accuracy"] - codec["final_accuracy"]), 2)
        report["accuracy_drop_points_mean_last5"] = round(
            100 * (f32["accuracy_mean_last5"] - codec["accuracy_mean_last5"]), 2
        )
        report["uplink_ratio_vs_fp32_run"] = f32["uplink_bytes"] / codec["uplink_bytes"]
        report["uplink_ratio_vs_fp32_run_all"] = f32["uplink_total_bytes"] / codec["uplink_total_bytes"]
        print(
            f"float32 run: accuracy last-5 mean {f32['accuracy_mean_last5']:.4f} (final "
            f"{f32['final_accuracy']:.4f}), uplink {f32['uplink_bytes']:,} B of updates, "
            f"{f32['uplink_total_bytes']:,} B in all\n"
            f"codec {codec['codec']!r}: accuracy last-5 mean {codec['accuracy_mean_last5']:.4f} (final "
            f"{codec['final_accuracy']:.4f}), uplink {codec['uplink_bytes']:,} B of updates, "
            f"{codec['uplink_total_bytes']:,} B in all\n"
            f"  against its accepted updates as raw float32: "
            f"{_x(codec['float32_bytes'], codec['uplink_bytes'])} less (updates), "
            f"{_x(codec['float32_bytes'], codec['uplink_total_bytes'])} (control included)\n"
            f"  against the float32 run's uplink: {report['uplink_ratio_vs_fp32_run']:.1f}x less (updates), "
            f"{report['uplink_ratio_vs_fp32_run_all']:.1f}x (control included)\n"
            f"  accuracy {_points(report['accuracy_drop_points_mean_last5'])} on the last-5 mean "
            f"(final round: {_points(report['accuracy_drop_points'])}, "
            "which one evaluation's noise can swing)"
        )
    report_path = Path(args.report) if args.report else base / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_path = Path(args.plot) if args.plot else report_path.with_suffix(".png")
    plot(reports, plot_path)
    print(f"report: {report_path}\nplot:   {plot_path}")
    if not args.keep and not args.workdir:
        shutil.rmtree(base / "keys", ignore_errors=True)  # the secrets go; logs and state stay
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="a ground and N agents as local processes: accuracy against bytes")
    p.add_argument("--agents", type=int, default=4, help="number of agent processes (default 4)")
    p.add_argument(
        "--stations",
        type=int,
        default=0,
        help="a ground network: an aggregator and this many station daemons, agents moving between "
        "them round by round (default 0: one ground daemon)",
    )
    p.add_argument("--rounds", type=int, default=60, help="federated rounds (default 60)")
    p.add_argument("--codec", default=DEFAULT_RECIPE, help=f"update recipe (default {DEFAULT_RECIPE!r})")
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round (default 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of the non-IID split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--outages",
        action="store_true",
        help="contact windows: ~3 s of link, then 8 s without (longer than every link timeout)",
    )
    p.add_argument(
        "--strategy",
        default="fedavg",
        choices=sorted(STRATEGIES),
        metavar="NAME",
        help="aggregation strategy (default fedavg): " + ", ".join(sorted(STRATEGIES)),
    )
    p.add_argument(
        "--strategy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the strategy, as in the ground's [strategy] section (repeatable)",
    )
    p.add_argument("--compare", action="store_true", help="run float32 first, then the codec, and compare")
    p.add_argument("--insecure", action="store_true", help="plaintext instead of CurveZMQ")
    p.add_argument("--model", help="your own .onnx model (default: the zoo's mlp)")
    p.add_argument(
        "--data", help="your data: .npz (x, y[, x_test, y_test]), .npy or IDX folder (default: digits)"
    )
    p.add_argument("--report", help="JSON report path (default: WORKDIR/report.json)")
    p.add_argument("--plot", help="PNG plot path (default: next to the report)")
    p.add_argument("--workdir", help="keep configs, keys, logs and state here (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary keys too")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.set_defaults(func=_cmd_demo)
