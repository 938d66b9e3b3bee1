"""``orbitfl bench training``: the trainer backends and PyTorch CPU, side by side.

For each model (``mlp``, ``lenet-s``) on scikit-learn's digits, each backend trains in its own
fresh subprocess so that its peak RSS (VmHWM) counts only its own imports and work:

- ``onnxruntime``: :class:`~orbitfl.agent.graph_trainer.GraphTrainer`, the default (stock ORT);
- ``onnxruntime-training``: :class:`~orbitfl.agent.ort_trainer.OrtTrainer`, run with the Python of
  ``.venv-ortt`` (``python3 tools/dev.py ortt``; x86-64, CPython <= 3.11), which also builds its
  artifacts, since onnxruntime-training cannot share a venv with stock onnxruntime;
- ``pytorch``: a twin of the model in PyTorch, only when torch is importable.

All start from the same initial weights, see the same batches in the same order and use the same
hyper-parameters: AdamW with ONNX Runtime training's defaults (lr 1e-3, betas 0.9/0.999, eps 1e-6,
weight decay 0.0, bias correction), batch 32, the same number of CPU threads. The data and the
artifacts are prepared by the parent and handed over as files, so no worker loads scikit-learn
(nor, for the ORT workers, onnx), as on a board. The PyTorch worker is the only code in orbitfl that
imports torch; it runs only here, only when torch is installed, and never in the runtime.

Rows (``--json``): model, backend, sec_per_epoch (wall clock, median over epochs after the first),
min_sec_per_epoch (the fastest, least disturbed by other load), cpu_sec_per_epoch and
min_cpu_sec_per_epoch (the process's CPU time per epoch, all its threads: on a shared machine the
wall clock mostly measures the other processes, the CPU time what the backend itself spent),
peak_rss_mib, accuracy (digits test set after the last epoch), epochs, threads, import_sec; a
backend that cannot run here has None figures and ``skipped`` saying why.
Each epoch is timed around the same scope in every worker: the shuffle and every batch's forward,
backward and AdamW step; the ORT figures also include the trainer's input checks and its per-batch
loss and accuracy bookkeeping, which the PyTorch loop does not do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("mlp", "lenet-s")
BACKENDS = ("onnxruntime", "onnxruntime-training", "pytorch")
ORTT_PYTHON = Path(__file__).resolve().parents[3] / ".venv-ortt" / "bin" / "python"
# How much faster than PyTorch CPU per epoch the default backend should be (issue 8).
TARGET_SPEEDUP = {"mlp": 5.0, "lenet-s": 2.0}
TARGET_RSS_RATIO = 0.5
LEARNING_RATE = 1e-3
# ONNX Runtime training's AdamW defaults (its artifacts' AdamWOptimizer), GraphTrainer's, and the twin's.
ADAM_BETAS, ADAM_EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-6, 0.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    p = sub.add_parser(
        "training", help="trainer backends vs PyTorch CPU training: s/epoch, peak RSS, accuracy"
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated zoo models (default mlp,lenet-s)"
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads per backend (default 1, as on a board)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="alternate the backends' processes N times")
    p.add_argument(
        "--no-agent",
        action="store_true",
        help="skip the agent-daemon row (peak RSS of a real agent over one lenet-s 28x28 round)",
    )
    p.set_defaults(func=cmd_training)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


# --- parent ---------------------------------------------------------------------------------------


def ortt_python() -> Path | None:
    """The Python of .venv-ortt (onnxruntime-training 1.19.2), if it was created."""
    env = os.environ.get("ORBITFL_ORTT_PYTHON")
    py = Path(env) if env else ORTT_PYTHON
    return py if py.exists() else None


def _graph_builder_ready() -> bool:
    import inspect

    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.models import artifacts

    return "backend" in inspect.signature(artifacts.build_artifacts).parameters


def _prepare(workdir: Path, model: str, seed: int) -> Path:
    """The stock-ORT artifacts (and init.npz, the initial weights every worker starts from)."""
    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.models import artifacts, zoo

    spec = zoo.build(model, seed=seed)
    art = workdir / model
    art.mkdir(parents=True, exist_ok=True)
    np.savez(art / "init.npz", **zoo.get_weights(spec.model))  # type: ignore[arg-type]
    if _graph_builder_ready():
        build: Any = artifacts.build_artifacts
        build(spec, art, optimizer="adamw", backend="onnxruntime")
    return art


def _prepare_ortt(art: Path, model: str, seed: int) -> None:
    """Runs in .venv-ortt: onnxruntime-training's own artifacts for the same model and init."""
    import inspect

    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.models import artifacts, zoo

    spec = zoo.build(model, seed=seed)
    kw = (
        {"backend": "onnxruntime-training"}
        if "backend" in inspect.signature(artifacts.build_artifacts).parameters
        else {}
    )
    artifacts.build_artifacts(spec, art, optimizer="adamw", **kw)


def _run(cmd: list[str], threads: int, what: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _run_worker(
    backend: str, art: Path, data: Path, epochs: int, threads: int, seed: int, python: str = sys.executable
) -> dict[str, Any]:
    cmd = [python, "-m", "orbitfl.apps.training_bench", "--worker", backend]
    cmd += [str(art), str(data), str(epochs), str(threads), str(seed)]
    out = _run(cmd, threads, f"{backend} worker")
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(models: list[str], epochs: int, threads: int, seed: int, repeats: int = 1) -> list[dict[str, Any]]:
    """One row per (model, backend). With ``repeats`` > 1 the backends' processes alternate
    (ORT, PyTorch, ORT, ...) so both meet the same background load; the row keeps the median of the
    runs' per-epoch medians, the fastest epoch seen and the highest peak RSS."""
    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.data import load_digits

    rows: list[dict[str, Any]] = []
    ortt = ortt_python()
    with tempfile.TemporaryDirectory(prefix="orbitfl-bench-") as tmp:
        work = Path(tmp)
        ds = load_digits(seed=seed)
        data = work / "digits.npz"
        np.savez(data, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        for model in models:
            art = _prepare(work, model, seed)
            skipped: dict[str, str] = {}
            if not (art / "train_step.onnx").exists():
                skipped["onnxruntime"] = "this orbitfl's builder cannot write portable training graphs yet"
            if ortt is None:
                skipped["onnxruntime-training"] = (
                    "no .venv-ortt with onnxruntime-training 1.19.2 (python3 tools/dev.py ortt; "
                    "x86-64, Python <= 3.11 only)"
                )
            else:
                ortt_art = work / f"{model}-ortt"
                _run(
                    [
                        str(ortt),
                        "-m",
                        "orbitfl.apps.training_bench",
                        "--prepare-ortt",
                        str(ortt_art),
                        model,
                        str(seed),
                    ],
                    threads,
                    "building onnxruntime-training artifacts",
                )
                (ortt_art / "init.npz").write_bytes((art / "init.npz").read_bytes())
            if not torch_available():
                skipped["pytorch"] = "torch is not installed (pip install torch)"
            runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
            for _ in range(repeats):  # alternate the backends so they meet the same background load
                for backend in BACKENDS:
                    if backend in skipped:
                        continue
                    if backend == "onnxruntime-training":
                        res = _run_worker(
                            backend, work / f"{model}-ortt", data, epochs, threads, seed, python=str(ortt)
                        )
                    else:
                        res = _run_worker(backend, art, data, epochs, threads, seed)
                    runs[backend].append(res)
            for backend in BACKENDS:
                if backend in skipped:
                    rows.append(
                        {
                            "model": model,
                            "backend": backend,
                            "sec_per_epoch": None,
                            "cpu_sec_per_epoch": None,
                            "peak_rss_mib": None,
                            "accuracy": None,
                            "skipped": skipped[backend],
                        }
                    )
                    continue
                got = runs[backend]
                row = dict(got[0])
                row["sec_per_epoch"] = statistics.median(r["sec_per_epoch"] for r in got)
                row["min_sec_per_epoch"] = min(r["min_sec_per_epoch"] for r in got)
                row["cpu_sec_per_epoch"] = statistics.median(r["cpu_sec_per_epoch"] for r in got)
                row["min_cpu_sec_per_epoch"] = min(r["min_cpu_sec_per_epoch"] for r in got)
                row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in got)
                row["repeats"] = len(got)
                rows.append({"model": model, "backend": backend, **row})
    return rows


AGENT_TARGET_RSS_MIB = 100.0
AGENT_SAMPLES = 512  # a board-sized share of the data


def _vm_hwm_mib(pid: int) -> float | None:
    """Peak resident memory of a live process (VmHWM of /proc/PID/status), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def agent_daemon_row(seed: int = 0, timeout_s: float = 120.0) -> dict[str, Any]:
    """Peak RSS of the real agent daemon over one federated round of lenet-s 28x28.

    A real ``orbitfl ground serve`` and ``orbitfl agent run`` (separate processes, CurveZMQ on
    127.0.0.1) federate one round: the agent trains an epoch, encodes its update with the demo's
    default recipe and sends it. The agent runs as a board does: artifacts and its share of the data
    built here beforehand (so it imports neither onnx nor scikit-learn). Its VmHWM is read once the
    ground has closed the round, before the agent is stopped."""
    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.apps.demo import DEFAULT_RECIPE, free_port
    from orbitfl.data import load_digits
    from orbitfl.data.partition_file import write_partition
    from orbitfl.models import zoo
    from orbitfl.models.artifacts import build_artifacts
    from orbitfl.runtime.keys import new_keypair

    row: dict[str, Any] = {"model": "lenet-s-28x28", "backend": "agent-daemon", "recipe": DEFAULT_RECIPE}
    with tempfile.TemporaryDirectory(prefix="orbitfl-bench-agent-") as tmp:
        work = Path(tmp)
        model = work / "lenet-s-28x28.onnx"
        zoo.write_inference_model(zoo.build("lenet-s", input="28x28", seed=seed), model)
        build_artifacts(zoo.load_user_model(model), work / "artifacts")
        ds = load_digits(seed=seed)
        # Digits upsampled to 28x28 (3x nearest, zero border): the geometry of MNIST, offline.
        x = ds.x_train[:AGENT_SAMPLES].reshape(-1, 8, 8).repeat(3, axis=1).repeat(3, axis=2)
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]
        part = write_partition(work / "part.npz", x, ds.y_train[:AGENT_SAMPLES])
        keys, allowed = work / "keys", work / "allowed"
        new_keypair("ground", keys)
        new_keypair("agent", keys, allow_dir=allowed)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        (work / "ground.toml").write_text(
            f"[ground]\nbind = {json.dumps(endpoint)}\nstate_dir = {json.dumps(str(work / 'g'))}\n"
            f"secret_key = {json.dumps(str(keys / 'ground.key_secret'))}\n"
            f"allowed_keys = {json.dumps(str(allowed))}\n"
            f"[federation]\nmodel = {json.dumps(str(model))}\nrounds = 1\nmin_updates = 1\n"
            f"codec = {json.dumps(DEFAULT_RECIPE)}\n"
        )
        (work / "agent.toml").write_text(
            f'[agent]\nname = "agent"\nground = {json.dumps(endpoint)}\n'
            f"state_dir = {json.dumps(str(work / 'a'))}\n"
            f"secret_key = {json.dumps(str(keys / 'agent.key_secret'))}\n"
            f"ground_key = {json.dumps(str(keys / 'ground.key'))}\n"
            f"artifacts = {json.dumps(str(work / 'artifacts'))}\n"
            f"[data]\nfile = {json.dumps(str(part))}\n[train]\nmodel = {json.dumps(str(model))}\n"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cli = [sys.executable, "-m", "orbitfl.cli"]
        procs: list[subprocess.Popen[bytes]] = []
        logs = {n: open(work / f"{n}.log", "wb") for n in ("ground", "agent")}  # noqa: SIM115
        try:
            procs.append(
                subprocess.Popen(
                    [*cli, "ground", "serve", "--config", str(work / "ground.toml")],
                    stdout=logs["ground"],
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
            agent = subprocess.Popen(
                [*cli, "agent", "run", "--config", str(work / "agent.toml")],
                stdout=logs["agent"],
                stderr=subprocess.STDOUT,
                env=env,
            )
            procs.append(agent)
            rounds = work / "g" / "rounds.jsonl"
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and not (rounds.exists() and rounds.read_text().strip()):
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.2)
            closed = rounds.exists() and bool(rounds.read_text().strip())
            peak = _vm_hwm_mib(agent.pid) if closed and agent.poll() is None else None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            for f in logs.values():
                f.close()
        if peak is None:
            tail = (work / "agent.log").read_text(errors="replace")[-1500:]
            row.update(peak_rss_mib=None, skipped=f"the round did not close: agent log ends {tail!r}")
            return row
        row.update(peak_rss_mib=round(peak, 1), target_mib=AGENT_TARGET_RSS_MIB, samples=AGENT_SAMPLES)
    return row


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per model: the default backend's CPU time, wall time and peak RSS as ratios of the others'."""
    lines = []
    by = {(r["model"], r["backend"]): r for r in rows}
    for r in rows:
        if r["backend"] == "agent-daemon":
            if r.get("peak_rss_mib") is None:
                lines.append(f"agent daemon, one {r['model']} round: not measured ({r.get('skipped')})")
            else:
                ok = "met" if r["peak_rss_mib"] <= AGENT_TARGET_RSS_MIB else "NOT met"
                lines.append(
                    f"agent daemon, one {r['model']} round (train, encode with {r['recipe']!r}, send): "
                    f"peak RSS {r['peak_rss_mib']:.1f} MiB (target <= {AGENT_TARGET_RSS_MIB:.0f}: {ok})"
                )
    for model in dict.fromkeys(r["model"] for r in rows if r["backend"] != "agent-daemon"):
        o = by.get((model, "onnxruntime"))
        if not o or o.get("cpu_sec_per_epoch") is None:
            lines.append(f"{model}: no onnxruntime (GraphTrainer) figures to compare")
            continue
        for other in ("onnxruntime-training", "pytorch"):
            t = by.get((model, other))
            if not t or t.get("cpu_sec_per_epoch") is None:
                lines.append(f"{model}: onnxruntime vs {other}: not measured ({(t or {}).get('skipped')})")
                continue
            cpu = o["cpu_sec_per_epoch"] / t["cpu_sec_per_epoch"]
            wall = o["sec_per_epoch"] / t["sec_per_epoch"]
            best = o["min_cpu_sec_per_epoch"] / t["min_cpu_sec_per_epoch"]
            rss = o["peak_rss_mib"] / t["peak_rss_mib"]
            line = (
                f"{model}: onnxruntime / {other}: CPU time per epoch {cpu:.2f}x (fastest epochs "
                f"{best:.2f}x), wall {wall:.2f}x, peak RSS {rss:.2f}x"
            )
            if other == "pytorch":
                speedup = TARGET_SPEEDUP.get(model, 5.0)
                line += (
                    f" (targets: {1 / cpu:.1f}x faster >= {speedup:.0f}x "
                    f"{'met' if 1 / cpu >= speedup else 'NOT met'}; RSS <= {TARGET_RSS_RATIO} "
                    f"{'met' if rss <= TARGET_RSS_RATIO else 'NOT met'})"
                )
            else:
                line += f" (target CPU <= 1.00x: {'met' if cpu <= 1.0 else 'NOT met'})"
            lines.append(line)
    return lines


def cmd_training(args: argparse.Namespace) -> int:
    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.models.zoo import MODEL_NAMES

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_NAMES]
    if bad or not models:
        print(
            f"orbitfl bench: error: unknown model(s) {bad}; choose from {', '.join(MODEL_NAMES)}",
            file=sys.stderr,
        )
        return 2
    if args.epochs < 2 or args.threads < 1:
        print("orbitfl bench: error: --epochs must be >= 2 and --threads >= 1", file=sys.stderr)
        return 2
    rows = run(models, args.epochs, args.threads, args.seed, max(1, args.repeats))
    if not args.no_agent:
        rows.append(agent_daemon_row(args.seed))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"digits, {args.epochs} epochs, batch 32, AdamW lr {LEARNING_RATE} eps {ADAM_EPS} wd "
        f"{WEIGHT_DECAY}, {args.threads} thread(s)"
    )
    print(
        f"{'model':<9} {'backend':<21} {'s/epoch':>9} {'CPU s/epoch':>12} {'peak RSS MiB':>13} "
        f"{'accuracy':>9} {'import s':>9}"
    )
    for r in rows:
        if r["backend"] == "agent-daemon":
            continue
        if r.get("sec_per_epoch") is None:
            print(f"{r['model']:<9} {r['backend']:<21} {r['skipped']}")
            continue
        print(
            f"{r['model']:<9} {r['backend']:<21} {r['sec_per_epoch']:>9.4f} {r['cpu_sec_per_epoch']:>12.4f} "
            f"{r['peak_rss_mib']:>13.1f} "
            f"{r['accuracy']:>9.4f} {r['import_sec']:>9.2f}"
        )
    for line in _summary(rows):
        print(line)
    return 0


# --- workers (each in its own process) ------------------------------------------------------------


def _peak_rss_mib() -> float:
    """Peak resident memory of this process image. Linux's ``ru_maxrss`` survives ``execve``, so a
    worker forked from a parent that had loaded onnx and scikit-learn would inherit the parent's
    peak; ``VmHWM`` belongs to the address space exec created, so it counts only the worker."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _result(
    times: list[float], cpu: list[float], accuracy: float, import_sec: float, epochs: int, threads: int
) -> dict[str, Any]:
    steady = times[1:] if len(times) > 1 else times  # the first epoch pays one-time allocation
    steady_cpu = cpu[1:] if len(cpu) > 1 else cpu
    return {
        "sec_per_epoch": statistics.median(steady),
        # The fastest epoch is the least disturbed by other processes on a shared machine.
        "min_sec_per_epoch": min(steady),
        "cpu_sec_per_epoch": statistics.median(steady_cpu),
        "min_cpu_sec_per_epoch": min(steady_cpu),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "accuracy": accuracy,
        "epochs": epochs,
        "threads": threads,
        "import_sec": round(import_sec, 3),
    }


def _worker_ort(
    art: Path, data: dict[str, np.ndarray], epochs: int, threads: int, seed: int, backend: str
) -> dict[str, Any]:
    t0 = time.perf_counter()
    # Deferred: this module is also the workers' entry point; each loads only what it measures.
    from orbitfl.agent.train_loop import StepTrainer

    trainer: StepTrainer
    if backend == "onnxruntime":
        # Deferred: this module is also the workers' entry point; each loads only what it measures.
        from orbitfl.agent.graph_trainer import GraphTrainer
        from orbitfl.ort_import import onnxruntime

        onnxruntime()
        import_sec = time.perf_counter() - t0
        trainer = GraphTrainer(art, learning_rate=LEARNING_RATE, threads=threads)
    else:
        # Deferred: this module is also the workers' entry point; each loads only what it measures.
        from orbitfl.agent.ort_trainer import OrtTrainer
        from orbitfl.ort_import import training_api

        training_api()
        import_sec = time.perf_counter() - t0
        trainer = OrtTrainer(art, learning_rate=LEARNING_RATE, threads=threads)
    with np.load(art / "init.npz") as z:
        trainer.set_weights({k: z[k] for k in z.files})
    x, y = data["x_train"], data["y_train"]
    times, cpu = [], []
    for epoch in range(epochs):
        t, c = time.perf_counter(), time.process_time()
        trainer.train(x, y, epochs=1, batch_size=32, seed=seed * 1000 + epoch)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    acc = trainer.evaluate(data["x_test"], data["y_test"]).accuracy
    for banned in ("torch", "onnx", "sklearn"):
        if banned in sys.modules:
            raise RuntimeError(f"the {backend} worker imported {banned}")
    return _result(times, cpu, float(acc or 0.0), import_sec, epochs, threads)


def _worker_torch(
    art: Path, data: dict[str, np.ndarray], epochs: int, threads: int, seed: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    # Imported by name so type checking does not depend on whether torch is installed.
    torch: Any = importlib.import_module("torch")
    import_sec = time.perf_counter() - t0
    torch.set_num_threads(threads)
    manifest = json.loads((art / "manifest.json").read_text())
    init = dict(np.load(art / "init.npz"))
    nn = torch.nn
    opts = manifest["options"]

    # nn.Sequential with named children, so state_dict keys are the zoo's names (fc1.weight, ...).
    parts: list[tuple[str, Any]] = []
    if manifest["model"] == "mlp":
        sizes = [int(np.prod(manifest["input_shape"])), *opts["hidden"], opts["classes"]]
        for i in range(len(sizes) - 1):
            parts.append((f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1])))
            if i < len(sizes) - 2:
                parts.append((f"relu{i + 1}", nn.ReLU()))
    elif manifest["model"] == "lenet-s":
        side = int(manifest["input_shape"][-1])
        c1, c2 = opts["channels"]
        k, p1, p2 = (5, 2, 0) if side >= 28 else (3, 1, 1)
        parts += [
            ("conv1", nn.Conv2d(1, c1, k, padding=p1)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, k, padding=p2)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
        ]
        fcs = sorted(n[: -len(".weight")] for n in init if n.startswith("fc") and n.endswith(".weight"))
        for i, name in enumerate(fcs):
            out_f, in_f = init[f"{name}.weight"].shape
            parts.append((name, nn.Linear(in_f, out_f)))
            if i < len(fcs) - 1:
                parts.append((f"relu_{name}", nn.ReLU()))
    else:
        raise ValueError(f"the PyTorch twin of {manifest['model']!r} is not written")
    net = nn.Sequential(OrderedDict(parts))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    shape = [-1, *manifest["input_shape"]]
    x = torch.from_numpy(np.ascontiguousarray(data["x_train"])).reshape(shape)
    y = torch.from_numpy(data["y_train"])
    opt = torch.optim.AdamW(
        net.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY
    )
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    times, cpu = [], []
    for epoch in range(epochs):
        t, c = time.perf_counter(), time.process_time()
        order = torch.from_numpy(np.random.default_rng([seed * 1000 + epoch, 0]).permutation(n))
        net.train()
        for s in range(0, n, 32):
            idx = order[s : s + 32]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(data["x_test"])).reshape(shape)
        acc = float((net(xt).argmax(1).numpy() == data["y_test"]).mean())
    return _result(times, cpu, acc, import_sec, epochs, threads)


def _worker_main(argv: list[str]) -> int:
    backend, art, data_path, epochs, threads, seed = argv
    with np.load(data_path) as z:
        data = {k: z[k] for k in z.files}
    if backend == "pytorch":
        result = _worker_torch(Path(art), data, int(epochs), int(threads), int(seed))
    else:
        result = _worker_ort(Path(art), data, int(epochs), int(threads), int(seed), backend)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    if len(sys.argv) == 5 and sys.argv[1] == "--prepare-ortt":
        _prepare_ortt(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    print("usage: orbitfl bench training [--json]", file=sys.stderr)
    sys.exit(2)
