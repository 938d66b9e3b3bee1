"""``orbitfl codec bench``: size, error and speed of recipes on one tensor set, side by side.

Speeds are float32 input bytes per second, best of a few repeats, measured in this run next to
memcpy (``np.copyto`` of the same bytes), the physical limit for anything that reads the input
and writes a result. The NumPy backend runs the same recipe on the same input once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.arrays import F32
from orbitfl.codec.entropy import entropy_report
from orbitfl.codec.pipeline import Pipeline
from orbitfl.kernels import backend as kernel_backend

DEFAULT_RECIPES = (
    "fp32",
    "fp32|zstd",
    "fp16",
    "bf16",
    "quant:8",
    "quant:4|zstd",
    "qsgd:4",
    "topk:0.01+ef|quant:8|zstd",
    "efsign",
    "gcc:16",
    "coreset:16",
    "laq:2",
    "alq:0/1/2/4",
)
DEFAULT_SIZE = 4_000_000
KMEANS_VALUES = 1_000_000
REF_VALUES = 262_144
# scikit-learn's k-means++ seeding alone costs O(n k log k) distance evaluations: for k = 256 on 1M
# values that is most of a minute on a small machine, so by default that comparison runs on fewer
# values (both sides on the same ones) and the full one is opt-in (--sklearn-full).
SKLEARN_K256_VALUES = 100_000


def synthetic_update(size: int = DEFAULT_SIZE, seed: int = 0) -> dict[str, F32]:
    """A model update of about ``size`` float32 values shaped like a small CNN's layers: Gaussian
    conv kernels, heavy-tailed (Laplacian) dense layers, small biases and a head."""
    rng = np.random.default_rng(seed)
    c1 = max(1, round(0.6 * size / 1024))
    c2 = max(1, round(0.38 * size / 768))
    spec: list[tuple[str, tuple[int, ...], str, float]] = [
        ("conv1.weight", (32, 3, 3, 3), "normal", 3e-3),
        ("conv1.bias", (32,), "normal", 1e-3),
        ("conv2.weight", (64, 32, 3, 3), "normal", 1e-3),
        ("conv2.bias", (64,), "normal", 1e-3),
        ("fc1.weight", (1024, c1), "laplace", 5e-4),
        ("fc1.bias", (1024,), "normal", 1e-3),
        ("fc2.weight", (768, c2), "laplace", 7e-4),
        ("fc2.bias", (768,), "normal", 1e-3),
        ("head.weight", (10, 768), "normal", 2e-3),
        ("head.bias", (10,), "normal", 2e-3),
    ]
    out: dict[str, F32] = {}
    for name, shape, dist, scale in spec:
        draw = rng.laplace if dist == "laplace" else rng.normal
        out[name] = draw(0.0, scale, shape).astype(np.float32)
    return out


def synthetic_curvature(tensors: Mapping[str, F32], seed: int = 1) -> dict[str, F32]:
    """A stand-in for sqrt(Adam v) + eps: larger where updates are larger, with noise."""
    rng = np.random.default_rng(seed)
    out: dict[str, F32] = {}
    for name, x in tensors.items():
        noise = np.abs(rng.normal(0.0, 1.0, x.shape)).astype(np.float32)
        out[name] = (
            np.abs(x) * np.float32(0.5) + noise * np.float32(np.abs(x).mean() + 1e-8) + np.float32(1e-8)
        )
    return out


def load_npz(path: str | Path) -> dict[str, F32]:
    """Float arrays of a .npz file as float32 (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files if z[k].dtype.kind == "f"}
    if not out:
        raise ValueError(f"{path}: no floating-point arrays")
    return out


def _best(fn: Callable[[], object], repeats: int, first: float | None = None, budget_s: float = 1.5) -> float:
    """Best wall time of ``repeats`` calls (``first``: a time already measured); slow calls stop
    repeating once ``budget_s`` is spent, so the whole bench stays well under a minute."""
    best = math.inf if first is None else first
    spent = 0.0 if first is None else first
    for _ in range(max(1, repeats) - (first is not None)):
        if spent > budget_s:
            break
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return best


def memcpy_gbps(nbytes: int, repeats: int = 5) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return src.nbytes / _best(lambda: np.copyto(dst, src), repeats) / 1e9


@dataclass
class BenchConfig:
    recipes: Sequence[str] = DEFAULT_RECIPES
    repeats: int = 3
    budget_bits: float = 2.0  # alq's budget, in bits per parameter
    kmeans_values: int = KMEANS_VALUES
    sklearn: bool = True
    sklearn_full: bool = False


def bench_recipe(
    recipe: str,
    tensors: Mapping[str, F32],
    curvature: Mapping[str, F32],
    memcpy: float,
    cfg: BenchConfig,
) -> dict[str, Any]:
    n = sum(x.size for x in tensors.values())
    in_bytes = 4 * n
    budget = max(1, int(n * cfg.budget_bits / 8)) if "alq" in recipe else None
    kw: dict[str, Any] = {"budget_bytes": budget}
    pipe = Pipeline.parse(recipe, "cpp")
    if any(c.float_stages[0].needs_curvature for c in pipe.recipe.chains):
        kw["curvature"] = curvature
    t0 = time.perf_counter()
    payload = pipe.encode(tensors, pipe.new_state(), **kw)  # first round from a fresh state
    t_first = time.perf_counter() - t0
    decoded = pipe.decode(payload)
    err2 = sum(float(np.sum((x.astype(np.float64) - decoded.get(k, 0.0)) ** 2)) for k, x in tensors.items())
    ref2 = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in tensors.values())
    state = pipe.new_state()
    t_enc = _best(lambda: pipe.encode(tensors, state, **kw), cfg.repeats, t_first)
    t_dec = _best(lambda: pipe.decode(payload), cfg.repeats)
    # The NumPy reference runs once; when the C++ needs more than 50 ms it would take many seconds,
    # so it runs on the first REF_VALUES values as one tensor (the speed is per input byte).
    ref = Pipeline.parse(recipe, "numpy")
    sub = dict(tensors) if t_enc < 0.05 else _subset(tensors, REF_VALUES)
    sub_kw = dict(kw)
    if budget is not None:
        sub_kw["budget_bytes"] = max(1, int(sum(x.size for x in sub.values()) * cfg.budget_bits / 8))
    if "curvature" in kw:
        sub_kw["curvature"] = _subset(curvature, REF_VALUES) if "subset" in sub else curvature
    ref_n = sum(x.size for x in sub.values())
    t_ref = _best(lambda: ref.encode(sub, ref.new_state(), **sub_kw), 1)
    ent = entropy_report(payload)
    return {
        "recipe": pipe.text,
        "kind": "recipe",
        "values": n,
        "bytes": payload.nbytes,
        "ratio": in_bytes / payload.nbytes,
        "bits_per_param": 8 * payload.nbytes / n,
        "rel_error": math.sqrt(err2 / ref2) if ref2 > 0 else 0.0,
        "encode_gbps": in_bytes / t_enc / 1e9,
        "decode_gbps": in_bytes / t_dec / 1e9,
        "ref_encode_gbps": 4 * ref_n / t_ref / 1e9,
        "ref_values": ref_n,
        "memcpy_gbps": memcpy,
        "packed_bytes": ent.raw_bytes,
        "entropy_bytes": round(ent.entropy_bytes),
        "budget_bytes": budget,
    }


def _subset(tensors: Mapping[str, F32], values: int) -> dict[str, F32]:
    """The first ``values`` values of the set, as one flat tensor."""
    flat = np.concatenate([x.reshape(-1) for x in tensors.values()])[:values]
    return {"subset": flat}


def bench_kernel_quantize(x: F32, bits: int, memcpy: float, repeats: int) -> dict[str, Any]:
    """The bare kernel: quantize+pack of one contiguous tensor (the issue's 4M-element target)."""
    cpp, ref = kernel_backend("cpp"), kernel_backend("numpy")
    packed, lo, step = cpp.quantize(x, bits, 512)
    y = cpp.dequantize(packed, lo, step, x.size, bits, 512)
    out_bytes = packed.nbytes + lo.nbytes + step.nbytes
    t_enc = _best(lambda: cpp.quantize(x, bits, 512), repeats)
    t_dec = _best(lambda: cpp.dequantize(packed, lo, step, x.size, bits, 512), repeats)
    t_ref = _best(lambda: ref.quantize(x, bits, 512), 1)
    diff = x.astype(np.float64) - y
    return {
        "recipe": f"kernel quantize+pack {bits}-bit, {x.size} values",
        "kind": "kernel",
        "values": int(x.size),
        "bytes": out_bytes,
        "ratio": x.nbytes / out_bytes,
        "bits_per_param": 8 * out_bytes / x.size,
        "rel_error": float(np.linalg.norm(diff) / np.linalg.norm(x.astype(np.float64))),
        "encode_gbps": x.nbytes / t_enc / 1e9,
        "decode_gbps": x.nbytes / t_dec / 1e9,
        "ref_encode_gbps": x.nbytes / t_ref / 1e9,
        "memcpy_gbps": memcpy,
    }


def bench_kmeans(x: F32, k: int, use_sklearn: bool, why_not: str = "") -> dict[str, Any]:
    """Our 1-D k-means (default method) against scikit-learn's KMeans on the same values."""
    cpp = kernel_backend("cpp")
    t0 = time.perf_counter()
    _, _, sse = cpp.kmeans1d(x, k)
    t_ours = _best(lambda: cpp.kmeans1d(x, k), 2, time.perf_counter() - t0)
    row: dict[str, Any] = {
        "recipe": f"kmeans1d k={k}, {x.size} values",
        "kind": "kmeans",
        "k": k,
        "values": int(x.size),
        "time_s": t_ours,
        "sse": float(sse),
        "sklearn_time_s": None,
        "sklearn_sse": None,
        "speedup": None,
        "sklearn": why_not or "not installed (pip install 'orbitfl[bench]')",
    }
    if not use_sklearn:
        return row
    try:
        import sklearn
        from sklearn.cluster import KMeans
    except ImportError:
        return row
    km = KMeans(n_clusters=k, n_init=1, random_state=0)
    xs = x.reshape(-1, 1).astype(np.float64)
    t0 = time.perf_counter()
    km.fit(xs)
    t_sk = time.perf_counter() - t0
    # SSE of both in float64 over the same float32 values.
    sk_sse = float(((xs[:, 0] - km.cluster_centers_[km.labels_, 0]) ** 2).sum())
    row.update(
        sklearn_time_s=t_sk,
        sklearn_sse=sk_sse,
        speedup=t_sk / t_ours,
        sklearn=f"scikit-learn {sklearn.__version__} KMeans(n_init=1): k-means++, "
        f"{km.n_iter_} Lloyd iterations",
    )
    return row


def run(
    tensors: Mapping[str, F32], cfg: BenchConfig, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    n = sum(x.size for x in tensors.values())
    memcpy = memcpy_gbps(4 * n)
    curvature = synthetic_curvature(tensors)
    rows: list[dict[str, Any]] = []
    for recipe in cfg.recipes:
        rows.append(bench_recipe(recipe, tensors, curvature, memcpy, cfg))
        if log:
            log(format_row(rows[-1]))
    flat = np.concatenate([x.reshape(-1) for x in tensors.values()])
    for bits in (8, 4):
        rows.append(bench_kernel_quantize(flat, bits, memcpy, cfg.repeats))
        if log:
            log(format_row(rows[-1]))
    rng = np.random.default_rng(2)
    km_x = rng.laplace(0.0, 1e-3, cfg.kmeans_values).astype(np.float32)
    small = km_x[: min(km_x.size, SKLEARN_K256_VALUES)]
    runs = [(km_x, 16, cfg.sklearn, "")]
    if cfg.sklearn_full or small.size == km_x.size:
        runs.append((km_x, 256, cfg.sklearn, ""))
    else:
        runs += [
            (km_x, 256, False, "skipped on this many values (run with --sklearn-full)"),
            (small, 256, cfg.sklearn, ""),
        ]
    for values, k, use_sk, why in runs:
        rows.append(
            bench_kmeans(
                values, min(k, values.size), use_sk and cfg.sklearn, why if cfg.sklearn else "skipped"
            )
        )
        if log:
            log(format_row(rows[-1]))
    return rows


HEADER = (
    f"{'recipe':<40} {'ratio':>7} {'bits/p':>7} {'H0 b/p':>7} {'rel.err':>9} {'enc GB/s':>9} {'dec GB/s':>9} "
    f"{'numpy enc':>9} {'memcpy':>7}"
)
LEGEND = (
    "bits/p: payload bits per parameter; H0 b/p: the order-0 entropy of the symbols before zstd, per "
    "parameter; rel.err: ||x - x_hat|| / ||x||; numpy enc: the NumPy reference backend"
)


def format_row(r: Mapping[str, Any]) -> str:
    if r["kind"] == "kmeans":
        ours = f"ours {r['time_s'] * 1e3:8.1f} ms SSE {r['sse']:.6g}"
        if r["sklearn_time_s"] is None:
            return f"{r['recipe']:<40} {ours}; scikit-learn: {r['sklearn']}"
        return (
            f"{r['recipe']:<40} {ours}; scikit-learn {r['sklearn_time_s'] * 1e3:8.1f} ms "
            f"SSE {r['sklearn_sse']:.6g}; {r['speedup']:.1f}x faster, "
            f"SSE ratio {r['sse'] / r['sklearn_sse']:.4f}"
        )
    return (
        f"{r['recipe']:<40} {r['ratio']:7.2f} {r['bits_per_param']:7.3f} {_h0(r):>7} {r['rel_error']:9.2e} "
        f"{r['encode_gbps']:9.3f} {r['decode_gbps']:9.3f} {r['ref_encode_gbps']:9.3f} {r['memcpy_gbps']:7.2f}"
    )


def _h0(r: Mapping[str, Any]) -> str:
    return f"{8 * r['entropy_bytes'] / r['values']:7.3f}" if "entropy_bytes" in r else "-"
