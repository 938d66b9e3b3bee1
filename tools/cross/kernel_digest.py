#!/usr/bin/env python3
"""Print a JSON map: case name -> sha256 of everything a deterministic kernel returned.

Run once on x86-64 and once under qemu-aarch64 (tools/cross/aarch64.py digest,
tests/cross/test_aarch64.py); equal maps mean bit-identical kernels on both architectures.

    python tools/cross/kernel_digest.py [--backend cpp|numpy]

The inputs are made from PCG64 integers with exact arithmetic only (no exp/log: the host's libm
could round those differently on the two machines, and then the inputs, not the kernels, would
differ); each input's own hash is part of the map so an input mismatch shows as such.
A kernel that raises records its exception type, so errors must match across machines too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
N = 20_000  # several quantization buckets and k-means histogram bins; seconds under qemu


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, (float, np.floating)):
            h.update(b"f" + struct.pack("<d", float(part)))
        elif isinstance(part, (int, np.integer)):
            h.update(b"i" + struct.pack("<q", int(part)))
        elif isinstance(part, (tuple, list)):
            h.update(b"(" + _hash(*part).encode() + b")")
        elif part is None:
            h.update(b"None")
        else:
            raise TypeError(f"cannot hash a {type(part).__name__}")
    return h.hexdigest()


def inputs() -> dict[str, F32]:
    rng = np.random.Generator(np.random.PCG64(20261121))

    def uniform(n: int) -> F32:
        # 24-bit integers scaled by a power of two: exactly representable, no rounding anywhere.
        return ((rng.integers(0, 1 << 24, n, dtype=np.int64) - (1 << 23)) * 2.0**-23).astype(np.float32)

    u, v = uniform(N), np.abs(uniform(N)) + np.float32(1e-3)
    heavy = (u / v).astype(np.float32)  # a ratio gives gradient-like heavy tails; / is exact-rounded
    special = np.array(
        [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.17e-38,
            6.1e-5,
            5.96e-8,
            65504.0,
            65520.0,
            1e5,
            3.4e38,
            -3.4e38,
            np.inf,
            -np.inf,
            np.nan,
            1.0 / 3.0,
        ],
        dtype=np.float32,
    )
    return {
        "uniform": u,
        "heavy": heavy,
        "small": (u * np.float32(1e-6)).astype(np.float32),
        "curvature": v,  # > 0, the LAQ weight
        "casts": np.concatenate([heavy * np.float32(1000.0), special]).astype(np.float32),
    }


def cases(k: ModuleType, x: dict[str, F32]) -> dict[str, Callable[[], Any]]:
    u, heavy = x["uniform"], x["heavy"]
    n = u.size
    out: dict[str, Callable[[], Any]] = {}

    for bits in (1, 3, 8):
        sym = (np.arange(n, dtype=np.int64) * 2654435761 % (1 << bits)).astype(np.uint8)

        def pack(sym: NDArray[np.uint8] = sym, b: int = bits) -> Any:
            packed = k.pack_bits(sym, b)
            return packed, k.unpack_bits(packed, sym.size, b)

        out[f"pack_bits/b{bits}"] = pack

    for name in ("uniform", "heavy", "small"):
        for bits, bucket in ((1, 512), (4, 512), (8, 64)):
            for stochastic in (False, True):

                def quant(a: F32 = x[name], b: int = bits, bk: int = bucket, st: bool = stochastic) -> Any:
                    packed, lo, step = k.quantize(a, b, bucket=bk, stochastic=st, seed=7)
                    return packed, lo, step, k.dequantize(packed, lo, step, a.size, b, bucket=bk)

                mode = "stochastic" if stochastic else "nearest"
                out[f"quantize/{name}/b{bits}/bucket{bucket}/{mode}"] = quant

    out["float16"] = lambda: ((h := k.to_float16(x["casts"])), k.from_float16(h))
    out["bfloat16"] = lambda: ((h := k.to_bfloat16(x["casts"])), k.from_bfloat16(h))

    def topk(frac: float, ef: bool) -> Callable[[], Any]:
        def run() -> Any:
            residual = (u * np.float32(0.5)).astype(np.float32) if ef else None
            idx, vals = k.topk(heavy, int(frac * n), residual)
            enc = k.delta_encode_indices(idx)
            return idx, vals, residual, enc, k.delta_decode_indices(enc, idx.size)

        return run

    for frac in (0.001, 0.01, 0.1):
        out[f"topk/{frac}"] = topk(frac, False)
        out[f"topk/{frac}/ef"] = topk(frac, True)

    def sign(ef: bool) -> Any:
        residual = (u * np.float32(0.25)).astype(np.float32) if ef else None
        packed, scale = k.sign_encode(heavy, residual)
        return packed, scale, residual, k.sign_decode(packed, n, scale)

    out["sign"] = lambda: sign(False)
    out["sign/ef"] = lambda: sign(True)

    for bits in (1, 2, 4):

        def laq(b: int = bits) -> Any:
            packed, alpha, err = k.laq_quantize(heavy, x["curvature"], b)
            return packed, alpha, err, k.laq_dequantize(packed, n, b, alpha)

        out[f"laq/b{bits}"] = laq

    # 2**16 values and more take the fit's coarse bucket phase first: four copies of the set,
    # the later ones scaled by exact powers of two so they are not repeats.
    big = np.concatenate([heavy * np.float32(2.0**-s) for s in range(4)]).astype(np.float32)
    big_d = np.concatenate([x["curvature"]] * 4).astype(np.float32)
    for bits in (2, 5, 8):

        def laq_big(b: int = bits) -> Any:
            packed, alpha, err = k.laq_quantize(big, big_d, b)
            return packed, alpha, err, k.laq_quantize(big, big_d, b, alpha=alpha)[0]

        out[f"laq/large/b{bits}"] = laq_big
    out["laq_errors/large"] = lambda: k.laq_errors(big, big_d, list(range(9)))

    for method in ("optimal", "hist", "lloyd"):
        for kk in (2, 16, 256):

            def km(m: str = method, c: int = kk) -> Any:
                a = heavy[:4000] if m == "optimal" else heavy  # the exact DP is O(k n^2)-ish
                cent, labels, sse = k.kmeans1d(a, c, method=m, seed=3)
                return cent, labels, sse, k.kmeans_assign(a, cent)

            out[f"kmeans1d/{method}/k{kk}"] = km

    for kk, rho in ((4, 0.5), (16, 0.9)):

        def gcc(c: int = kk, r: float = rho) -> Any:
            residual = (u * np.float32(0.1)).astype(np.float32)
            enc = k.gcc_encode(heavy, k=c, rho=r, residual=residual, seed=5)
            return enc, residual, k.gcc_decode(*enc, n)

        out[f"gcc/k{kk}/rho{rho}"] = gcc
    return out


def digests(backend: str) -> dict[str, str]:
    from orbitfl.kernels import backend as load

    k = load(backend)
    x = inputs()
    result = {f"input/{name}": _hash(a) for name, a in x.items()}
    for name, fn in cases(k, x).items():
        try:
            result[name] = _hash(fn())
        except AttributeError:
            result[name] = "absent"
        except Exception as exc:  # an error is an output too: it must be the same on both machines
            result[name] = f"raised {type(exc).__name__}"
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp", choices=("cpp", "numpy"))
    args = parser.parse_args(argv)
    json.dump(digests(args.backend), sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
