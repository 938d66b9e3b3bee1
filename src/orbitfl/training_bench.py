"""``orbitfl bench training``: ONNX Runtime on-device training against PyTorch CPU, side by side.

For each model (``mlp``, ``lenet-s``) on scikit-learn's digits, each backend trains in its own
fresh subprocess so that its peak RSS (``ru_maxrss``) counts only its own imports and work. Both
start from the same initial weights, see the same batches in the same order (AdamW, same learning
rate, weight decay 0.01, batch 32) and use the same number of CPU threads. The data and the ORT
artifacts are prepared by the parent and handed over as files, so neither worker loads scikit-learn
or onnx, as on a board. The PyTorch worker is the only code in orbitfl that imports torch; it runs
only here, only when torch is installed, and never in the runtime.

Rows (``--json``): model, backend, sec_per_epoch (median over epochs after the first),
min_sec_per_epoch (the fastest, least disturbed by other load), peak_rss_mib,
accuracy (digits test set after the last epoch), epochs, threads, import_sec.
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
BACKENDS = ("onnxruntime", "pytorch")
TARGET_SPEEDUP = 5.0
TARGET_RSS_RATIO = 0.5
LEARNING_RATE = 1e-3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    p = sub.add_parser("training", help="ONNX Runtime vs PyTorch CPU training: s/epoch, peak RSS, accuracy")
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
    p.set_defaults(func=cmd_training)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


# --- parent ---------------------------------------------------------------------------------------


def _prepare(workdir: Path, model: str, seed: int) -> Path:
    from orbitfl.models import artifacts, zoo

    spec = zoo.build(model, seed=seed)
    art = workdir / model
    artifacts.build_artifacts(spec, art, optimizer="adamw")
    np.savez(art / "init.npz", **zoo.get_weights(spec.model))  # type: ignore[arg-type]
    return art


def _run_worker(backend: str, art: Path, data: Path, epochs: int, threads: int, seed: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "orbitfl.training_bench",
        "--worker",
        backend,
        str(art),
        str(data),
        str(epochs),
        str(threads),
        str(seed),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(models: list[str], epochs: int, threads: int, seed: int, repeats: int = 1) -> list[dict[str, Any]]:
    """One row per (model, backend). With ``repeats`` > 1 the backends' processes alternate
    (ORT, PyTorch, ORT, ...) so both meet the same background load; the row keeps the median of the
    runs' per-epoch medians, the fastest epoch seen and the highest peak RSS."""
    from orbitfl.data import load_digits

    rows: list[dict[str, Any]] = []
    have_torch = torch_available()
    with tempfile.TemporaryDirectory(prefix="orbitfl-bench-") as tmp:
        work = Path(tmp)
        ds = load_digits(seed=seed)
        data = work / "digits.npz"
        np.savez(data, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        for model in models:
            art = _prepare(work, model, seed)
            runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
            for _ in range(repeats):
                for backend in BACKENDS:
                    if backend != "pytorch" or have_torch:
                        runs[backend].append(_run_worker(backend, art, data, epochs, threads, seed))
            for backend in BACKENDS:
                if not runs[backend]:
                    rows.append(
                        {
                            "model": model,
                            "backend": backend,
                            "sec_per_epoch": None,
                            "peak_rss_mib": None,
                            "accuracy": None,
                            "skipped": "torch is not installed (pip install torch)",
                        }
                    )
                    continue
                got = runs[backend]
                row = dict(got[0])
                row["sec_per_epoch"] = statistics.median(r["sec_per_epoch"] for r in got)
                row["min_sec_per_epoch"] = min(r["min_sec_per_epoch"] for r in got)
                row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in got)
                row["repeats"] = len(got)
                rows.append({"model": model, "backend": backend, **row})
    return rows


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    by = {(r["model"], r["backend"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        o, t = by.get((model, "onnxruntime")), by.get((model, "pytorch"))
        if not o or not t or t.get("sec_per_epoch") is None:
            lines.append(f"{model}: no PyTorch figures to compare (torch is not installed)")
            continue
        speed = t["sec_per_epoch"] / o["sec_per_epoch"]
        best = t["min_sec_per_epoch"] / o["min_sec_per_epoch"]
        rss = o["peak_rss_mib"] / t["peak_rss_mib"]
        lines.append(
            f"{model}: ORT {speed:.1f}x faster per epoch (fastest epochs {best:.1f}x; "
            f"target >= {TARGET_SPEEDUP:.0f}x: "
            f"{'met' if speed >= TARGET_SPEEDUP else 'NOT met'}), peak RSS {rss:.2f} of PyTorch "
            f"(target <= {TARGET_RSS_RATIO}: {'met' if rss <= TARGET_RSS_RATIO else 'NOT met'})"
        )
    return lines


def cmd_training(args: argparse.Namespace) -> int:
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
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"digits, {args.epochs} epochs, batch 32, AdamW lr {LEARNING_RATE}, {args.threads} thread(s)")
    print(f"{'model':<9} {'backend':<12} {'s/epoch':>9} {'peak RSS MiB':>13} {'accuracy':>9} {'import s':>9}")
    for r in rows:
        if r.get("sec_per_epoch") is None:
            print(f"{r['model']:<9} {r['backend']:<12} {r['skipped']}")
            continue
        print(
            f"{r['model']:<9} {r['backend']:<12} {r['sec_per_epoch']:>9.4f} {r['peak_rss_mib']:>13.1f} "
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
    times: list[float], accuracy: float, import_sec: float, epochs: int, threads: int
) -> dict[str, Any]:
    steady = times[1:] if len(times) > 1 else times  # the first epoch pays one-time allocation
    return {
        "sec_per_epoch": statistics.median(steady),
        # The fastest epoch is the least disturbed by other processes on a shared machine.
        "min_sec_per_epoch": min(steady),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "accuracy": accuracy,
        "epochs": epochs,
        "threads": threads,
        "import_sec": round(import_sec, 3),
    }


def _worker_ort(
    art: Path, data: dict[str, np.ndarray], epochs: int, threads: int, seed: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    from orbitfl.agent.ort_trainer import OrtTrainer
    from orbitfl.ort_import import training_api

    training_api()
    import_sec = time.perf_counter() - t0
    trainer = OrtTrainer(art, learning_rate=LEARNING_RATE, threads=threads)
    times = []
    for epoch in range(epochs):
        m = trainer.train(data["x_train"], data["y_train"], epochs=1, batch_size=32, seed=seed * 1000 + epoch)
        times.append(m.seconds)
    acc = trainer.evaluate(data["x_test"], data["y_test"]).accuracy
    if "torch" in sys.modules:
        raise RuntimeError("the ONNX Runtime worker imported torch")
    return _result(times, float(acc or 0.0), import_sec, epochs, threads)


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
    opt = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    times = []
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed * 1000 + epoch, 0]).permutation(n))
        t = time.perf_counter()
        net.train()
        for s in range(0, n, 32):
            idx = order[s : s + 32]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(data["x_test"])).reshape(shape)
        acc = float((net(xt).argmax(1).numpy() == data["y_test"]).mean())
    return _result(times, acc, import_sec, epochs, threads)


def _worker_main(argv: list[str]) -> int:
    backend, art, data_path, epochs, threads, seed = argv
    with np.load(data_path) as z:
        data = {k: z[k] for k in z.files}
    fn = _worker_ort if backend == "onnxruntime" else _worker_torch
    print(json.dumps(fn(Path(art), data, int(epochs), int(threads), int(seed))))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    print("usage: orbitfl bench training [--json]", file=sys.stderr)
    sys.exit(2)
