#!/usr/bin/env python3
"""Ground ingest throughput and peak memory: N updates of a ~1M-parameter model.

Measurements per recipe, side by side:
- ``core``: what the ground does per update besides the disk: wire decode of the frame, payload
  decode (codec), checks against the model (names, dtype, shape, finite), FedAvg accumulation.
- ``durable``: the whole ``GroundMachine.handle`` on a real store in a temporary directory, i.e.
  plus the SQLite commit (fsync) that must precede each ACK and the periodic checkpoints, with
  group commit as the daemon does it: updates that arrive together (``--batch`` of them, what one
  link poll hands over) share one transaction and one fsync.
- ``durable1``: the same with one commit (fsync) per update, i.e. ``--batch 1``.
- ``nosync``: the same on a store without fsync (``GroundStore(durable=False)``, what the simulator
  uses), batched as ``durable``: the ceiling the disk's sync leaves.

Throughput is GB/s of float32-equivalent (updates × params × 4 bytes / seconds). Peak memory is
the tracemalloc peak of a second, traced run (NumPy reports its buffers to tracemalloc), counting
the strategy's float64 sums, shown also as a multiple of one float32 model; and the process's peak
RSS. The timed run is not traced.

    .venv/bin/python tools/bench_ingest.py                       # 1000 updates, fp32 + compressed
    .venv/bin/python tools/bench_ingest.py --updates 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import FedAvg
from orbitfl.runtime.events import MessageReceived
from orbitfl.wire import Hello, Update, decode, encode
from orbitfl.wire.payload import decode_payload, encode_payload, new_codec_state
from orbitfl.wire.tensors import check_against_model

SHAPES = {"fc1.weight": (1000, 960), "fc1.bias": (960,), "fc2.weight": (960, 40), "fc2.bias": (40,)}
POOL = 8  # distinct pre-encoded updates cycled through, so encoding is not what we time


def model() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


def pool(recipe: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    state = new_codec_state(recipe)
    out = []
    for _ in range(POOL):
        delta = {k: (0.01 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        out.append(encode_payload(recipe, delta, state))
    return out


def frame(i: int, payload: dict[str, Any]) -> bytes:
    agent = f"a{i}"
    return encode(Update(f"{agent}:1", f"r1/{agent}", 1, 0, 32 + i % 7, {"loss": 0.1}, payload))


def _core_run(n: int, frames: list[bytes], traced: bool) -> tuple[float, float, float]:
    if traced:
        tracemalloc.start()  # before the accumulator exists, so its O(model) sums are counted
    g = model()
    spec = {k: (tuple(v.shape), v.dtype.name) for k, v in g.items()}
    shapes = {k: s for k, (s, _) in spec.items()}
    strat = FedAvg()
    strat.reset(g)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        msg = decode(frames[i % POOL])
        assert isinstance(msg, Update)
        delta = decode_payload(msg.payload, shapes)
        check_against_model(delta, spec)
        strat.accumulate(delta, msg.samples)
    new = strat.finalize(g)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert strat.updates == n and np.isfinite(new["fc1.weight"]).all()
    peak = 0.0
    if traced:
        peak = float(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return dt, cpu, peak


def bench_core(recipe: str, n: int, payloads: list[dict[str, Any]]) -> dict[str, float]:
    """Timed without tracemalloc (it slows every allocation), then run again traced for memory."""
    frames = [frame(i, p) for i, p in enumerate(payloads)]
    dt, cpu, _ = _core_run(n, frames, traced=False)
    _, _, peak = _core_run(n, frames, traced=True)
    return {
        "seconds": dt,
        "cpu_seconds": cpu,
        "peak_bytes": peak,
        "frame_bytes": float(np.mean([len(f) for f in frames])),
    }


def _durable_run(
    recipe: str, n: int, payloads: list[dict[str, Any]], traced: bool, batch: int, sync: bool
) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        if traced:
            tracemalloc.start()
        store = GroundStore(Path(tmp), durable=sync)
        m = GroundMachine(store, GroundConfig(min_updates=10**9, recipe=recipe), model())
        for i in range(n):
            a = f"a{i}"
            m.handle(MessageReceived(a, encode(Hello(f"{a}:h", a, "bench", 0, {}))), 0.0)
        spent = cpu = 0.0
        for lo in range(0, n, batch):
            group = m.batch()
            t0, c0 = time.perf_counter(), time.process_time()
            group.__enter__()
            for i in range(lo, min(n, lo + batch)):
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
                f = frame(i, payloads[i % POOL])  # built outside the timed part, one at a time
                t0, c0 = time.perf_counter(), time.process_time()
                m.handle(MessageReceived(f"a{i}", f), 0.0)
                del f
            group.__exit__(None, None, None)  # the commit (one fsync) and the batch's checkpoint
            spent += time.perf_counter() - t0
            cpu += time.process_time() - c0
        peak = 0.0
        if traced:
            peak = float(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        assert m.accepted == n, (m.accepted, m.refused)
        disk = float(sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()))
        m.store.close()
    return spent, cpu, peak, disk


def bench_durable(
    recipe: str, n: int, payloads: list[dict[str, Any]], batch: int, sync: bool = True
) -> dict[str, float]:
    spent, cpu, _, disk = _durable_run(recipe, n, payloads, False, batch, sync)
    _, _, peak, _ = _durable_run(recipe, n, payloads, True, batch, sync)
    return {"seconds": spent, "cpu_seconds": cpu, "peak_bytes": peak, "disk_bytes": disk}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument(
        "--durable-updates",
        type=int,
        default=200,
        help="updates for the durable run (fp32 writes ~4 MB per update to disk)",
    )
    ap.add_argument(
        "--batch", type=int, default=32, help="updates per group commit in the durable and nosync runs"
    )
    ap.add_argument("--recipes", default="fp32,topk:0.01+ef | quant:8 | zstd,quant:8 | zstd")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.updates < 1 or args.durable_updates < 0 or args.batch < 1:
        ap.error("--updates and --batch must be >= 1 and --durable-updates >= 0")
    params = sum(int(np.prod(s)) for s in SHAPES.values())
    model_bytes = 4 * params
    rng = np.random.default_rng(0)
    results = []
    print(f"model: {params:,} parameters ({model_bytes / 2**20:.2f} MiB as float32)")
    print(
        f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Wall-clock figures suffer on a "
        "shared machine; GB/s/CPU divides by this process's CPU time instead."
    )
    print(
        f"{'recipe':32} {'mode':8} {'updates':>7} {'frame KiB':>9} {'wall s':>7} {'upd/s':>7} {'GB/s':>6} "
        f"{'GB/s/CPU':>8} {'peak MiB':>8} {'x model':>7}"
    )
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        payloads = pool(recipe, rng)
        core = bench_core(recipe, args.updates, payloads)
        runs = [("core", args.updates, core)]
        if args.durable_updates:
            modes = [("durable", args.batch, True), ("durable1", 1, True), ("nosync", args.batch, False)]
            for mode, batch, sync in modes:
                d = bench_durable(recipe, args.durable_updates, payloads, batch, sync)
                d["frame_bytes"] = core["frame_bytes"]
                runs.append((mode, args.durable_updates, d))
        for mode, n, r in runs:
            gbs = n * model_bytes / r["seconds"] / 1e9
            gbs_cpu = n * model_bytes / r["cpu_seconds"] / 1e9
            row = {
                "recipe": recipe,
                "mode": mode,
                "updates": n,
                "params": params,
                **r,
                "updates_per_s": n / r["seconds"],
                "gb_per_s_f32": gbs,
                "gb_per_cpu_s_f32": gbs_cpu,
                "peak_x_model": r["peak_bytes"] / model_bytes,
            }
            results.append(row)
            print(
                f"{recipe:32} {mode:8} {n:7d} {r['frame_bytes'] / 1024:9.1f} {r['seconds']:7.2f} "
                f"{n / r['seconds']:7.1f} {gbs:6.2f} {gbs_cpu:8.2f} {r['peak_bytes'] / 2**20:8.1f} "
                f"{r['peak_bytes'] / model_bytes:7.2f}"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole run: {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peak_rss_mib": rss}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
