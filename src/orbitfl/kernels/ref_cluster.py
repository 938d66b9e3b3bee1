"""NumPy reference: 1-D k-means, GCC centroid compression, loss-aware quantization.

Same names, arguments, results and errors as the C++ kernels in orbitfl._core (see _core.pyi).
Every float operation is written in the order csrc/kmeans1d.cpp, gcc.cpp and laq.cpp use, in
float64 with one rounding per operation, and every sum is sequential (``np.cumsum`` and
``np.bincount`` accumulate in index order; ``np.sum`` would not), so the results are bit for bit
those of the C++ on any IEEE-754 machine.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.kernels.ref_quant import _array, _out, pack_bits, rng_u64, unpack_bits

__all__ = [
    "gcc_decode",
    "gcc_encode",
    "gcc_encode_ef",
    "kmeans1d",
    "kmeans_assign",
    "kmeans_centroids",
    "kmeans_pack",
    "laq_dequantize",
    "laq_errors",
    "laq_quantize",
]

from orbitfl.arrays import F32

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]

MAX_K = 256
KMEANS_METHODS = ("optimal", "hist", "lloyd")
# Back-pointers of the exact DP take k * items int32 cells; beyond this "optimal" refuses and
# "hist" (when it has to fall back to sorted values) groups equal runs into chunks first.
DP_MAX_CELLS = 1 << 25
FLT32_MAX = float(np.finfo(np.float32).max)


# --- argument checks (the C++ bindings raise the same types with the same wording) ---------------
def _int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def _real(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


def _finite(name: str, a: F32) -> None:
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")


def _k(k: Any) -> int:
    kk = _int("k", k)
    if not 1 <= kk <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {kk}")
    return kk


def _iters(iters: Any) -> int:
    it = _int("iters", iters)
    if it < 0:
        raise ValueError(f"iters must be >= 0, got {it}")
    return it


def _seed(seed: Any) -> int:
    s = _int("seed", seed)
    if not 0 <= s < 1 << 64:
        raise ValueError(f"seed must be in 0..2**64-1, got {s}")
    return s


def _method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method not in KMEANS_METHODS:
        raise ValueError(f"method must be one of {', '.join(KMEANS_METHODS)}, got {method!r}")
    return method


def _seqsum(a: F64) -> float:
    """Sum in index order, the order of the C++ loops."""
    return float(np.cumsum(a)[-1]) if a.size else 0.0


def id_bits(k: int) -> int:
    """Bits of a centroid id: ceil(log2 k), at least 1."""
    return max(1, (k - 1).bit_length())


# --- 1-D k-means: exact dynamic programme ------------------------------------------------------------
def _dc_layer(prev: F64, m: int, pc: F64, p1: F64, p2: F64) -> tuple[F64, NDArray[np.int32]]:
    """cur[i] = min_j prev[j] + cost(j, i) for i in m..M, j in m-1..i-1, by divide and conquer.

    The leftmost argmin is monotone in i for the 1-D k-means cost, so the middle row of each open
    range is solved over the candidate columns its neighbours allow. All open ranges of one depth
    are solved together; the C++ recursion visits the same (row, columns) pairs.
    """
    big_m = pc.size - 1
    cur = np.full(big_m + 1, np.inf)
    arg = np.zeros(big_m + 1, np.int32)
    ilo = np.array([m], np.int64)
    ihi = np.array([big_m], np.int64)
    jlo = np.array([m - 1], np.int64)
    jhi = np.array([big_m - 1], np.int64)
    while ilo.size:
        mid = (ilo + ihi) // 2
        cnt = np.minimum(jhi, mid - 1) - jlo + 1
        off = np.concatenate(([0], np.cumsum(cnt)[:-1]))
        seg = np.repeat(np.arange(ilo.size), cnt)
        j = jlo[seg] + (np.arange(seg.size) - off[seg])
        i = mid[seg]
        s = p1[i] - p1[j]
        val = prev[j] + ((p2[i] - p2[j]) - s * s / (pc[i] - pc[j]))
        best_val = np.minimum.reduceat(val, off)
        hit = np.flatnonzero(val == best_val[seg])
        first = hit[np.concatenate(([True], seg[hit[1:]] != seg[hit[:-1]]))]
        best = j[first]
        cur[mid] = best_val
        arg[mid] = best
        left = mid > ilo
        right = mid < ihi
        ilo, ihi, jlo, jhi = (
            np.concatenate((ilo[left], mid[right] + 1)),
            np.concatenate((mid[left] - 1, ihi[right])),
            np.concatenate((jlo[left], best[right])),
            np.concatenate((best[left], jhi[right])),
        )
    return cur, arg


def _dp_centroids(cnt: F64, s1: F64, s2: F64, item_lo: F32, item_hi: F32, k: int, shift: float) -> F32:
    """Optimal k-segmentation of weighted items (count, sum, sum of squares, smallest and largest
    value; sorted by value)."""
    pc = np.concatenate(([0.0], np.cumsum(cnt)))
    p1 = np.concatenate(([0.0], np.cumsum(s1)))
    p2 = np.concatenate(([0.0], np.cumsum(s2)))
    big_m = cnt.size
    i = np.arange(1, big_m + 1)
    s = p1[i] - p1[0]
    prev = np.full(big_m + 1, np.inf)
    prev[1:] = (p2[i] - p2[0]) - s * s / (pc[i] - pc[0])
    args = np.zeros((k + 1, big_m + 1), np.int32)
    for m in range(2, k + 1):
        prev, args[m] = _dc_layer(prev, m, pc, p1, p2)
    bounds = [big_m]
    for m in range(k, 1, -1):
        bounds.append(int(args[m][bounds[-1]]))
    bounds.append(0)
    bounds.reverse()
    hi = np.array(bounds[1:])
    lo = np.array(bounds[:-1])
    mean: F64 = shift + (p1[hi] - p1[lo]) / (pc[hi] - pc[lo])
    # A difference of prefix sums cancels when far larger values came first (+-3.4e38 next to
    # 1e5), so the mean can leave its segment's range; clamped back, the centroids ascend, as
    # Lloyd's binary searches need. Then -0.0 -> +0.0 (a mean of tiny negatives rounds to -0.0):
    # no sort may see both zeros, whose order np.sort and std::sort differ on.
    m = np.minimum(np.maximum(mean.astype(np.float32), item_lo[lo]), item_hi[hi - 1])
    out: F32 = m + np.float32(0.0)
    return out


def _pad(values: F32, k: int) -> F32:
    """Fewer distinct values than clusters: each value is a centroid, the last one repeated."""
    c = np.empty(k, np.float32)
    c[: values.size] = values
    c[values.size :] = values[-1]
    return c


def _sorted_centroids(x: F32, k: int, exact: bool) -> F32:
    """k-means over the sorted values: exact DP over runs of equal values.

    With exact=False and too many runs for the DP's memory, consecutive runs are grouped into
    chunks of g runs each (at least DP_MAX_CELLS // (2k) > k chunks), which is near-optimal.
    """
    s = np.sort(x) + np.float32(0.0)  # -0.0 -> +0.0, whatever order the sort left them in
    n = s.size
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    values = s[starts]
    u = values.size
    if u <= k:
        return _pad(values, k)
    shift = float(s[n // 2])
    dv = values.astype(np.float64) - shift
    cnt = np.diff(np.append(starts, n)).astype(np.float64)
    s1 = cnt * dv
    s2 = cnt * (dv * dv)
    q = DP_MAX_CELLS // k
    if u > q:
        if exact:
            raise ValueError(
                f"method='optimal' needs k * distinct values <= {DP_MAX_CELLS}, got {k} * {u}; use 'hist'"
            )
        g = -(-u // q)
        chunk = np.arange(u) // g
        cnt = np.bincount(chunk, weights=cnt).astype(np.float64, copy=False)
        s1 = np.bincount(chunk, weights=s1).astype(np.float64, copy=False)
        s2 = np.bincount(chunk, weights=s2).astype(np.float64, copy=False)
        return _dp_centroids(
            cnt, s1, s2, values[::g], values[np.minimum(np.arange(g - 1, u + g - 1, g), u - 1)], k, shift
        )
    return _dp_centroids(cnt, s1, s2, values, values, k, shift)


# --- 1-D k-means: histogram, Lloyd ------------------------------------------------------------------
def hist_bins(k: int) -> int:
    """Bins of the fine histogram: enough that a cluster spans dozens of them."""
    return 2048 if k <= 32 else 8192


@dataclass
class _Bins:
    """Values binned on a uniform grid over [min, max], with per-bin count, sums and value range."""

    shift: float
    d: F64  # x - shift, per value
    cnt: I64
    s1: F64
    s2: F64
    vmin: F32
    vmax: F32
    order: I64  # value indices sorted by bin, index order within a bin
    start: I64  # order[start[b]:start[b+1]] are the values of bin b


def _bin(x: F32, lo: float, hi: float, nbins: int) -> _Bins:
    xd = x.astype(np.float64)
    shift = 0.5 * (lo + hi) + 0.0
    scale = nbins / (hi - lo)
    b = np.minimum(((xd - lo) * scale).astype(np.int64), nbins - 1)
    d = xd - shift
    cnt = np.bincount(b, minlength=nbins)
    vmin = np.full(nbins, np.inf, np.float32)
    vmax = np.full(nbins, -np.inf, np.float32)
    np.minimum.at(vmin, b, x)
    np.maximum.at(vmax, b, x)
    return _Bins(
        shift=shift,
        d=d,
        cnt=cnt,
        s1=np.bincount(b, weights=d, minlength=nbins).astype(np.float64, copy=False),
        s2=np.bincount(b, weights=d * d, minlength=nbins).astype(np.float64, copy=False),
        vmin=vmin,
        vmax=vmax,
        order=np.argsort(b, kind="stable"),
        start=np.concatenate(([0], np.cumsum(cnt))),
    )


def _labels(v: F64, c: F32) -> I64:
    """Nearest centroid, ties to the lower id: the number of midpoints strictly below v, moved to
    the first of equal centroids."""
    c64 = c.astype(np.float64)
    mids = 0.5 * (c64[:-1] + c64[1:])
    first = np.searchsorted(c, c, side="left")
    lab: I64 = first[np.searchsorted(mids, v, side="left")]
    return lab


def _lloyd(x: F32, bins: _Bins, c: F32, iters: int) -> F32:
    """Lloyd iterations on the raw values until no centroid moves.

    A bin whose smallest and largest value get the same label contributes its (count, sum) in
    one step; a bin straddling boundaries is cut at each midpoint inside it (a binary search over
    its sorted values) and each part contributes its count and its difference of running sums of
    x - shift in ascending order. The labels, hence the counts, are per-value Lloyd's; the sums
    run in bin order, and within a bin by parts in ascending order.
    """
    k = c.size
    nz = np.flatnonzero(bins.cnt)
    runs: dict[int, tuple[F64, F64]] = {}  # bin -> (sorted values, running sums of value - shift)
    for _ in range(iters):
        c64 = c.astype(np.float64)
        mids = 0.5 * (c64[:-1] + c64[1:])
        first = np.searchsorted(c, c, side="left")
        j_lo = np.searchsorted(mids, bins.vmin[nz].astype(np.float64), side="left")
        j_hi = np.searchsorted(mids, bins.vmax[nz].astype(np.float64), side="left")
        inner = first[j_lo] == first[j_hi]
        keys = [nz[inner]]
        labs = [first[j_lo[inner]]]
        w = [bins.s1[nz[inner]]]
        wc = [bins.cnt[nz[inner]].astype(np.float64)]
        for t, j0, j1 in zip(nz[~inner], j_lo[~inner], j_hi[~inner], strict=True):
            if t not in runs:
                v = np.sort(x[bins.order[bins.start[t] : bins.start[t + 1]]]).astype(np.float64)
                runs[t] = (v, np.concatenate(([0.0], np.cumsum(v - bins.shift))))
            v, head = runs[t]
            cuts = np.concatenate(([0], np.searchsorted(v, mids[j0:j1], side="right"), [v.size]))
            keys.append(np.full(j1 - j0 + 1, t))
            labs.append(first[j0 : j1 + 1])
            w.append(head[cuts[1:]] - head[cuts[:-1]])
            wc.append((cuts[1:] - cuts[:-1]).astype(np.float64))
        seq = np.argsort(np.concatenate(keys), kind="stable")
        lab = np.concatenate(labs)[seq]
        sums = np.bincount(lab, weights=np.concatenate(w)[seq], minlength=k)
        counts = np.bincount(lab, weights=np.concatenate(wc)[seq], minlength=k)
        new = c.copy()
        has = counts > 0
        new[has] = (bins.shift + sums[has] / counts[has]).astype(np.float32) + np.float32(0.0)  # -0.0 -> +0.0
        new = np.sort(new)
        if (new == c).all():
            break
        c = new
    return c


# --- 1-D k-means "hist": fixed-point grid (csrc/kmeans1d.cpp, make_grid / grid_dp / grid_lloyd) ---
def grid_bits(k: int) -> int:
    """log2 of the most fine bins of the grid: 2^12 counters stay in L1 in the C++."""
    return 12 if k <= 32 else 14


def _cshift(k: int) -> int:
    """log2 of the fine bins per coarse bin of the DP start."""
    return grid_bits(k) - (11 if hist_bins(k) == 2048 else 13)


@dataclass
class _Grid:
    """Fine bins (q - qlo) >> b of the lattice q = rint(x * 2^s), at most 2^grid_bits(k), with per-bin
    count and the exact integer sum of q; ok is False when the grid cannot resolve the data."""

    unscale: float
    lo: float
    hi: float
    cnt: I64  # per non-empty fine bin, ascending
    sq: I64
    fine: I64  # its fine index
    qshift: int
    ok: bool


def _grid(xf: F32, lo: float, hi: float, k: int) -> _Grid:
    e = math.frexp(max(abs(lo), abs(hi)))[1]
    s = 30 - e
    z = np.zeros(0, np.int64)
    if s > 127:  # max|x| < 2^-97: 2^s is no float and the lattice would be coarse
        return _Grid(1.0, lo, hi, z, z, z, 0, False)
    f = np.float32(2.0**s)
    q = np.rint(xf * f).astype(np.int64)
    qlo = int(np.rint(np.float32(lo) * f))
    qhi = int(np.rint(np.float32(hi) * f))
    span = qhi - qlo
    gb = grid_bits(k)
    b = max(0, span.bit_length() - gb)  # the least shift leaving at most 2^gb bins
    bins = (q - qlo) >> b
    nb = (span >> b) + 1
    cnt_all = np.bincount(bins, minlength=nb)
    sq_all = np.zeros(nb, np.int64)
    np.add.at(sq_all, bins, q)
    fine = np.flatnonzero(cnt_all)
    coarse = np.unique(fine >> _cshift(k)).size
    ok = (int(cnt_all.max()) << gb) <= 128 * xf.size and coarse >= k
    return _Grid(2.0**-s, lo, hi, cnt_all[fine], sq_all[fine], fine, (qlo + qhi) >> 1, ok)


def _grid_dp(g: _Grid, k: int) -> F32:
    """DP start over coarse bins of the fine ones; the sum of squares as if each fine bin's values
    sat at its mean."""
    c = g.cnt
    d = g.sq - c * g.qshift
    dd = d.astype(np.float64)
    sqv = dd * dd / c.astype(np.float64)
    mean = (g.sq.astype(np.float64) / c.astype(np.float64) * g.unscale).astype(np.float32)
    _, idx, counts = np.unique(g.fine >> _cshift(k), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    cnt: F64 = np.bincount(idx, weights=c.astype(np.float64)).astype(np.float64, copy=False)
    i1 = np.zeros(counts.size, np.int64)
    np.add.at(i1, idx, d)
    s1: F64 = i1.astype(np.float64) * g.unscale
    s2: F64 = np.bincount(idx, weights=sqv).astype(np.float64, copy=False) * g.unscale * g.unscale
    return _dp_centroids(cnt, s1, s2, mean[ends - counts], mean[ends - 1], k, float(g.qshift) * g.unscale)


def _grid_lloyd(g: _Grid, c: F32, iters: int) -> F32:
    """Lloyd on the fine bins as weighted points at their means: a bin whose mean is <= the
    midpoint of centroids j and j+1 lies below it (ties to the lower id), and each centroid becomes
    the mean of its bins' q times 2^-s. No value is read."""
    k = c.size
    pc = np.concatenate(([0], np.cumsum(g.cnt)))
    pq = np.concatenate(([0], np.cumsum(g.sq)))
    mean = g.sq.astype(np.float64) / g.cnt.astype(np.float64) * g.unscale
    for _ in range(iters):
        c64 = c.astype(np.float64)
        mids = 0.5 * (c64[:-1] + c64[1:])
        below = np.concatenate(([0], np.searchsorted(mean, mids, side="right"), [mean.size]))
        first = np.searchsorted(c, c, side="left")
        counts = np.zeros(k, np.int64)
        sums = np.zeros(k, np.int64)
        np.add.at(counts, first, np.diff(pc[below]))
        np.add.at(sums, first, np.diff(pq[below]))
        new = c.copy()
        has = counts > 0
        m = (sums[has].astype(np.float64) / counts[has].astype(np.float64) * g.unscale).astype(np.float32)
        # clamped to [lo, hi]: a mean of lattice points may round past the extreme values
        m = np.minimum(np.maximum(m, np.float32(g.lo)), np.float32(g.hi))
        new[has] = m + np.float32(0.0)  # -0.0 -> +0.0
        new = np.sort(new)
        if (new == c).all():
            break
        c = new
    return c


def _uniform(seed: int, t: int) -> float:
    """Draw t of stream `seed` as a double in [0, 1) with 53 random bits."""
    return float(int(rng_u64(seed, np.array([t], np.uint64))[0]) >> 11) * 2.0**-53


def _kmeanspp(x: F32, k: int, seed: int) -> F32:
    """k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn with probability ~ D^2."""
    xd = x.astype(np.float64)
    n = xd.size
    first = min(n - 1, int(_uniform(seed, 0) * n))
    chosen = [xd[first]]
    diff = xd - xd[first]
    d2 = diff * diff
    for t in range(1, k):
        cs = np.cumsum(d2)
        total = float(cs[-1])
        if total == 0.0:
            break  # fewer distinct values than k: the rest repeat the last centre
        r = _uniform(seed, t) * total
        i = int(np.searchsorted(cs, r, side="right"))
        if i >= n:
            i = int(np.flatnonzero(d2 > 0.0)[-1])
        chosen.append(xd[i])
        diff = xd - xd[i]
        d2 = np.minimum(d2, diff * diff)
    c = np.array(chosen, np.float32) + np.float32(0.0)  # -0.0 -> +0.0 before sorting
    return np.sort(np.concatenate((c, np.full(k - c.size, c[-1], np.float32))))


def _assign(x: F32, c: F32) -> tuple[U8, float]:
    xd = x.astype(np.float64)
    lab = _labels(xd, c)
    e = xd - c.astype(np.float64)[lab]
    return lab.astype(np.uint8), _seqsum(e * e)


def kmeans1d(x: F32, k: int, method: str = "hist", iters: int = 50, seed: int = 0) -> tuple[F32, U8, float]:
    """Cluster the values of x into k groups; (centroids ascending, labels, sse). See _core.pyi."""
    xf = _array("x", x, np.float32)
    kk = _k(k)
    meth = _method(method)
    it = _iters(iters)
    sd = _seed(seed)
    _finite("x", xf)
    n = xf.size
    if n == 0:
        return np.zeros(kk, np.float32), np.zeros(0, np.uint8), 0.0
    if kk > n:
        raise ValueError(f"k must be <= x.size ({n}), got {kk}")
    c = _centroids(xf, kk, meth, it, sd)
    labels, sse = _assign(xf, c)
    return c, labels, sse


def _centroids(xf: F32, kk: int, meth: str, it: int, sd: int) -> F32:
    """kmeans1d's centroids (x checked, 1 <= k <= n), for kmeans1d and GCC alike."""
    lo = float(xf.min())
    hi = float(xf.max())
    if lo == hi:
        c = np.full(kk, xf[0] + np.float32(0.0), np.float32)
    elif meth == "optimal":
        c = _sorted_centroids(xf, kk, exact=True)
    elif meth == "hist" and (g := _grid(xf, lo, hi, kk)).ok:
        c = _grid_lloyd(g, _grid_dp(g, kk), it)
    else:
        nb = hist_bins(kk)
        bins = _bin(xf, lo, hi, nb)
        if meth == "lloyd":
            c = _kmeanspp(xf, kk, sd)
        elif np.count_nonzero(bins.cnt) >= kk:
            nz = bins.cnt > 0
            c = _dp_centroids(
                bins.cnt[nz].astype(np.float64),
                bins.s1[nz],
                bins.s2[nz],
                bins.vmin[nz],
                bins.vmax[nz],
                kk,
                bins.shift,
            )
        else:
            c = _sorted_centroids(xf, kk, exact=False)
        c = _lloyd(xf, bins, c, it)
    return c


def kmeans_centroids(x: F32, k: int, method: str = "hist", iters: int = 50, seed: int = 0) -> F32:
    """kmeans1d(...)[0]; the C++ backend skips the labelling pass."""
    return kmeans1d(x, k, method, iters, seed)[0]


def kmeans_assign(x: F32, centroids: F32) -> tuple[U8, float]:
    """Label each value with its nearest centroid (ties to the lower id); (labels, sse)."""
    xf = _array("x", x, np.float32)
    c = _array("centroids", centroids, np.float32)
    if not 1 <= c.size <= MAX_K:
        raise ValueError(f"centroids must have 1..{MAX_K} entries, got {c.size}")
    _finite("centroids", c)
    if (c[1:] < c[:-1]).any():
        raise ValueError("centroids must be ascending")
    _finite("x", xf)
    return _assign(xf, c)


def kmeans_pack(x: F32, centroids: F32, bits: int) -> U8:
    """pack_bits(kmeans_assign(x, centroids)[0], bits); the C++ skips the SSE."""
    xf = _array("x", x, np.float32)
    c = _array("centroids", centroids, np.float32)
    if not 1 <= c.size <= MAX_K:
        raise ValueError(f"centroids must have 1..{MAX_K} entries, got {c.size}")
    b = _int("bits", bits)
    if not 1 <= b <= 8:
        raise ValueError(f"bits must be in 1..8, got {b}")
    _finite("centroids", c)
    if (c[1:] < c[:-1]).any():
        raise ValueError("centroids must be ascending")
    if (1 << b) < c.size:
        raise ValueError(f"bits must be in 1..8 with 2**bits >= {c.size} centroids, got {b}")
    _finite("x", xf)
    return pack_bits(_assign(xf, c)[0], b)


# --- loss-aware quantization -------------------------------------------------------------------------
def _levels(bits: int) -> F64:
    if bits == 1:
        return np.array([-1.0, 1.0])
    nlev = (1 << bits) - 1
    return -1.0 + 2.0 * np.arange(nlev, dtype=np.float64) / (nlev - 1)


def _nearest(xd: F64, alpha: float, bits: int) -> I64:
    if bits == 1:
        return (xd >= 0.0).astype(np.int64)
    nlev = (1 << bits) - 1
    half = float((nlev - 1) // 2)
    u = (xd / alpha + 1.0) * half
    return np.clip(np.rint(u), 0.0, float(nlev - 1)).astype(np.int64)


BUCKET_SHIFT = 16  # the fit groups values by the top 16 bits of their order key
COARSE_MIN = 1 << 16  # tensors with fewer values skip the fit's coarse phase


def _order_key(xf: F32) -> NDArray[np.uint32]:
    """Keys whose unsigned order is the float order; -0 gets +0's key."""
    u = xf.view(np.uint32).copy()
    u[(u & 0x7FFFFFFF) == 0] = 0
    neg = (u & 0x80000000) != 0
    out: NDArray[np.uint32] = np.where(neg, ~u, u | np.uint32(0x80000000)).astype(np.uint32)
    return out


def _key_value(k: NDArray[np.uint32]) -> F64:
    """order_key's inverse, as float64 (both zeros come back as +0)."""
    u = np.where((k & 0x80000000) != 0, k & np.uint32(0x7FFFFFFF), ~k).astype(np.uint32)
    out: F64 = u.view(np.float32).astype(np.float64)
    return out


@dataclass
class _LaqBuckets:
    """Values grouped by the top bits of their order key (csrc/laq.cpp, make_buckets)."""

    lo: F64  # per non-empty bucket, ascending: its smallest possible value (finite: Inf/NaN
    hi: F64  # patterns have buckets of their own), and its largest
    pdx: F64  # prefix sums over the buckets of their sums of d*x (index order within a bucket)
    pd: F64  # and of d
    start: I64  # xs[start[m]:start[m+1]] are bucket m's values, in index order
    xs: F64
    ds: F64


def _laq_buckets(xf: F32, dd: F64) -> _LaqBuckets:
    key = _order_key(xf)
    b = (key >> BUCKET_SHIFT).astype(np.int64)
    nb = 1 << (32 - BUCKET_SHIFT)
    cnt = np.bincount(b, minlength=nb)
    nz = np.flatnonzero(cnt)
    xd = xf.astype(np.float64)
    sdx = np.bincount(b, weights=dd * xd, minlength=nb)[nz]
    sd = np.bincount(b, weights=dd, minlength=nb)[nz]
    order = np.argsort(b, kind="stable")
    start = np.concatenate(([0], np.cumsum(cnt[nz])))
    first = (nz << BUCKET_SHIFT).astype(np.uint32)
    return _LaqBuckets(
        lo=_key_value(first),
        hi=_key_value(first | np.uint32((1 << BUCKET_SHIFT) - 1)),
        pdx=np.concatenate(([0.0], np.cumsum(sdx))),
        pd=np.concatenate(([0.0], np.cumsum(sd))),
        start=start,
        xs=xd[order],
        ds=dd[order],
    )


def _update(lev: F64, tdx: F64, td: F64, alpha: float, tol: float) -> tuple[float, bool] | None:
    """alpha = sum lev T_dx / sum lev^2 T_d (sums in level order) and whether it converged, or
    None when the alternation must stop (no weight, or a non-positive fit)."""
    num = _seqsum(lev * tdx)
    den = _seqsum((lev * lev) * td)
    if den == 0.0:
        return None
    new = num / den
    if not new > 0.0:
        return None  # only rounding of the sums could get here; keep alpha
    return new, abs(new - alpha) <= tol * new


def _fit_alpha(bk: _LaqBuckets, bits: int, lev: F64, alpha: float, max_iter: int, tol: float) -> float:
    """The alternation for bits >= 2 in two phases, max_iter steps in all (csrc/laq.cpp).

    Coarse (tensors of COARSE_MIN values or more): each bucket takes the code of its smallest
    possible value and adds its sums through prefix sums, until the update is within tol.
    Exact, from there: the code is monotone in x, so the buckets whose smallest and largest value
    share a code form one run per level and add their sums through prefix sums; only the buckets
    a code step passes through are read value by value (after the run, in bucket order, index
    order within a bucket). The codes of every exact step are exactly the nearest levels.
    """
    nlev = lev.size
    nb = bk.lo.size
    steps = np.arange(1, nlev)
    coarse = 0  # steps of the coarse phase: at most max_iter - 1, so max_iter bounds both
    # small tensors skip it: cheap anyway, and their coarse fixed point can be another one
    while bk.xs.size >= COARSE_MIN and coarse + 1 < max_iter:
        coarse += 1
        fl = np.concatenate(([0], np.searchsorted(_nearest(bk.lo, alpha, bits), steps), [nb]))
        got = _update(lev, bk.pdx[fl[1:]] - bk.pdx[fl[:-1]], bk.pd[fl[1:]] - bk.pd[fl[:-1]], alpha, tol)
        if got is None:
            break
        alpha, done = got
        if done:
            break
    for _ in range(max_iter - coarse):
        first_lo = np.concatenate(([0], np.searchsorted(_nearest(bk.lo, alpha, bits), steps), [nb]))
        first_hi = np.concatenate(([0], np.searchsorted(_nearest(bk.hi, alpha, bits), steps), [nb]))
        a, b = first_lo[:-1], first_hi[1:]
        whole = a < b
        tdx = np.where(whole, bk.pdx[b] - bk.pdx[np.minimum(a, b)], 0.0)
        td = np.where(whole, bk.pd[b] - bk.pd[np.minimum(a, b)], 0.0)
        # buckets with a step inside: [first_hi[j], first_lo[j]) for each step j, each once
        split = np.zeros(nb + 1, np.int64)
        np.add.at(split, first_hi[1:-1], 1)
        np.add.at(split, first_lo[1:-1], -1)
        m = np.flatnonzero(np.cumsum(split)[:nb] > 0)
        cnt = bk.start[m + 1] - bk.start[m]
        pos = np.repeat(bk.start[m] - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt) + np.arange(cnt.sum())
        xs, ds = bk.xs[pos], bk.ds[pos]
        keys = np.concatenate((np.arange(nlev), _nearest(xs, alpha, bits)))
        w_dx = np.concatenate((tdx, ds * xs))
        sdx = np.bincount(keys, weights=w_dx, minlength=nlev).astype(np.float64, copy=False)
        sd = np.bincount(keys, weights=np.concatenate((td, ds)), minlength=nlev).astype(
            np.float64, copy=False
        )
        got = _update(lev, sdx, sd, alpha, tol)
        if got is None:
            break
        alpha, done = got
        if done:
            break
    return alpha


def _laq_bits(bits: Any) -> int:
    b = _int("bits", bits)
    if not 1 <= b <= 8:
        raise ValueError(f"bits must be in 1..8, got {b}")
    return b


def _fit(xf: F32, dd: F64, b: int, lev: F64, mi: int, tl: float) -> float:
    """The fitted alpha, before its float32 rounding (xf not empty)."""
    xd = xf.astype(np.float64)
    alpha = float(np.abs(xd).max())
    if alpha > 0.0 and b == 1:
        # codes = sign(x) for every alpha > 0, so the alternation's fixed point is closed-form
        alpha = _seqsum(dd * np.abs(xd)) / _seqsum(dd)
    elif alpha > 0.0 and mi > 0:
        alpha = _fit_alpha(_laq_buckets(xf, dd), b, lev, alpha, mi, tl)
    # The least-squares alpha can exceed max|x| (a value rounded to a small level pulls it up, and
    # the sums round), so near the top of float32 it can pass FLT_MAX: clamped there, as in the C++.
    return alpha


def _fit_args(xf: F32, df: F32, max_iter: Any, tol: Any) -> tuple[int, float]:
    """The LAQ fit's shared arguments, checked as the C++ binding checks them."""
    mi = _int("max_iter", max_iter)
    if mi < 0:
        raise ValueError(f"max_iter must be >= 0, got {mi}")
    tl = _real("tol", tol)
    if tl < 0.0:
        raise ValueError(f"tol must be >= 0, got {tl}")
    if df.size != xf.size:
        raise ValueError(f"d must have the size of x ({xf.size}), got {df.size}")
    return mi, tl


def laq_quantize(
    x: F32, d: F32, bits: int, max_iter: int = 100, tol: float = 1e-6, alpha: float | None = None
) -> tuple[U8, float, float]:
    """Loss-aware quantization (Hou & Kwok): (packed codes, alpha, weighted error). See _core.pyi."""
    xf = _array("x", x, np.float32)
    df = _array("d", d, np.float32)
    b = _laq_bits(bits)
    mi, tl = _fit_args(xf, df, max_iter, tol)
    given = None if alpha is None else _real("alpha", alpha)
    if given is not None and given < 0.0:
        raise ValueError(f"alpha must be >= 0, got {given}")
    if given is not None and given > FLT32_MAX:
        raise ValueError("alpha must be finite, >= 0 and within the float32 range")
    _finite("x", xf)
    _finite("d", df)
    if df.size and not (df > 0).all():
        raise ValueError("d must be > 0 everywhere")
    n = xf.size
    lev = _levels(b)
    zero_code = 1 if b == 1 else ((1 << b) - 2) // 2
    if n == 0:
        return np.zeros(0, np.uint8), 0.0, 0.0
    xd = xf.astype(np.float64)
    dd = df.astype(np.float64)
    # a given alpha is where the fit ended (laq_errors' alpha): codes and error only
    alpha = given if given is not None else _fit(xf, dd, b, lev, mi, tl)
    alpha_f = float(np.float32(min(alpha, FLT32_MAX)))
    codes = _nearest(xd, alpha_f, b) if alpha_f > 0.0 else np.full(n, zero_code, np.int64)
    xhat = (alpha_f * lev[codes]).astype(np.float32).astype(np.float64)
    e = xd - xhat
    err = _seqsum(dd * (e * e))
    return pack_bits(codes.astype(np.uint8), b), alpha_f, err


def laq_errors(x: F32, d: F32, widths: Any, max_iter: int = 100, tol: float = 1e-6) -> tuple[F64, F64]:
    """(alphas, errors): what laq_quantize reports at each width (each in 0..8; 0 is alpha 0 and
    sum d * x**2). See _core.pyi."""
    xf = _array("x", x, np.float32)
    df = _array("d", d, np.float32)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, (list, tuple, range, np.ndarray)):
        raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
    ws = []
    for w in widths:
        b = _int("widths", w)
        if not 0 <= b <= 8:
            raise ValueError(f"widths must be in 0..8, got {b}")
        ws.append(b)
    mi, tl = _fit_args(xf, df, max_iter, tol)
    _finite("x", xf)
    _finite("d", df)
    if df.size and not (df > 0).all():
        raise ValueError("d must be > 0 everywhere")
    alphas = np.zeros(len(ws))
    errors = np.zeros(len(ws))
    xd = xf.astype(np.float64)
    for i, b in enumerate(ws):
        if b == 0:  # not sent: x_hat = 0
            errors[i] = _seqsum(df.astype(np.float64) * (xd * xd))
        else:
            _, alphas[i], errors[i] = laq_quantize(xf, df, b, mi, tl)
    return alphas, errors


def laq_dequantize(packed: U8, n: int, bits: int, alpha: float) -> F32:
    """x_hat = alpha * level[code], rounded once to float32."""
    p = _array("packed", packed, np.uint8)
    nn = _int("n", n)
    if nn < 0:
        raise ValueError(f"n must be >= 0, got {nn}")
    b = _laq_bits(bits)
    a = _real("alpha", alpha)
    if abs(a) > FLT32_MAX:  # alpha * level (|level| <= 1) must stay inside float32
        raise ValueError(f"alpha must be finite and within the float32 range, got {a}")
    codes = unpack_bits(p, nn, b)
    lev = _levels(b)
    if codes.size and int(codes.max()) >= lev.size:
        raise ValueError(f"packed holds code {int(codes.max())}, but {b}-bit LAQ has {lev.size} levels")
    out: F32 = (a * lev[codes]).astype(np.float32)
    return out


# --- GCC: gradient compression via centroid ----------------------------------------------------------
def gcc_encode(
    x: F32,
    k: int = 16,
    rho: float = 0.5,
    residual: F32 | None = None,
    iters: int = 20,
    seed: int = 0,
    method: str = "hist",
) -> tuple[F32, U8, U8, F32]:
    """(centroids, mask, ids, exact); residual updated in place to acc - decoded. See _core.pyi."""
    xf, kk, r, res, it, sd, meth = _gcc_args(x, k, rho, residual, iters, seed, method, in_place=True)
    c, mask, ids, exact, new = _gcc(xf, kk, r, res, it, sd, meth, res is not None)
    if res is not None and new is not None:
        res[...] = new
    return c, mask, ids, exact


def gcc_encode_ef(
    x: F32,
    k: int = 16,
    rho: float = 0.5,
    residual: F32 | None = None,
    iters: int = 20,
    seed: int = 0,
    method: str = "hist",
    *,
    residual_out: F32 | None = None,
) -> tuple[F32, U8, U8, F32, F32]:
    """gcc_encode with residual only read: (centroids, mask, ids, exact, acc - decoded). See _core.pyi."""
    xf, kk, r, res, it, sd, meth = _gcc_args(x, k, rho, residual, iters, seed, method, in_place=False)
    ro = _out("residual_out", residual_out, xf.size, (xf, res))
    c, mask, ids, exact, new = _gcc(xf, kk, r, res, it, sd, meth, True)
    assert new is not None
    if ro is None:
        return c, mask, ids, exact, new
    ro[...] = new
    assert residual_out is not None
    return c, mask, ids, exact, residual_out  # the caller's array itself, as the binding returns it


def _gcc_args(
    x: F32, k: int, rho: float, residual: F32 | None, iters: int, seed: int, method: str, *, in_place: bool
) -> tuple[F32, int, float, F32 | None, int, int, str]:
    xf = _array("x", x, np.float32)
    kk = _k(k)
    r = _real("rho", rho)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {r}")
    res: F32 | None = None
    if residual is not None:
        res = _array("residual", residual, np.float32)
        if res.size != xf.size:
            raise ValueError(f"residual must have the size of x ({xf.size}), got {res.size}")
        if in_place and not residual.flags.writeable:
            raise ValueError("residual must be writable (it is updated in place)")
    return xf, kk, r, res, _iters(iters), _seed(seed), _method(method)


def _gcc(
    xf: F32, kk: int, r: float, res: F32 | None, it: int, sd: int, meth: str, want_residual: bool
) -> tuple[F32, U8, U8, F32, F32 | None]:
    """The encoding of acc = xf (+ res) and, if wanted, its new residual acc - decoded (a new
    array). res is only read."""
    n = xf.size
    _finite("x", xf)
    if res is not None:
        _finite("residual", res)
        with np.errstate(over="ignore"):
            acc = xf + res
        _finite("x + residual", acc)
    else:
        acc = xf
    if n == 0:
        u = np.zeros(0, np.uint8)
        new0 = np.zeros(0, np.float32) if want_residual else None
        return np.zeros(0, np.float32), u, u.copy(), np.zeros(0, np.float32), new0
    ke = min(kk, n)
    c = _centroids(acc, ke, meth, it, sd)
    labels = _assign(acc, c)[0]
    dist = np.abs(acc.astype(np.float64) - c.astype(np.float64)[labels])
    nrep = min(n, math.floor(r * n))
    replaced = np.zeros(n, bool)
    replaced[np.argsort(dist, kind="stable")[:nrep]] = True
    mask = pack_bits(replaced.astype(np.uint8), 1)
    ids = pack_bits(labels[replaced], id_bits(ke))
    exact = acc[~replaced].copy()
    new: F32 | None = None
    if want_residual:
        new = np.zeros(n, np.float32)
        new[replaced] = acc[replaced] - c[labels[replaced]]
    return c, mask, ids, exact, new


def gcc_decode(centroids: F32, mask: U8, ids: U8, exact: F32, n: int) -> F32:
    """Inverse of gcc_encode: centroid values where mask is 1, exact values elsewhere."""
    c = _array("centroids", centroids, np.float32)
    m = _array("mask", mask, np.uint8)
    ib = _array("ids", ids, np.uint8)
    ex = _array("exact", exact, np.float32)
    nn = _int("n", n)
    if nn < 0:
        raise ValueError(f"n must be >= 0, got {nn}")
    if c.size > MAX_K:
        raise ValueError(f"centroids must have at most {MAX_K} entries, got {c.size}")
    if m.size < (nn + 7) // 8:
        raise ValueError(f"mask has {m.size} bytes, {(nn + 7) // 8} needed for n={nn}")
    rep = unpack_bits(m, nn, 1).astype(bool)
    nrep = int(np.count_nonzero(rep))
    if nrep and c.size == 0:
        raise ValueError("mask marks replaced values but centroids is empty")
    if ex.size != nn - nrep:
        raise ValueError(
            f"exact must have {nn - nrep} values (n minus the mask's {nrep} ones), got {ex.size}"
        )
    bits = id_bits(max(c.size, 1))
    need = (nrep * bits + 7) // 8
    if ib.size < need:
        raise ValueError(f"ids has {ib.size} bytes, {need} needed for {nrep} ids at {bits} bits")
    idv = unpack_bits(ib, nrep, bits)
    if nrep and int(idv.max()) >= c.size:
        raise ValueError(f"ids holds centroid id {int(idv.max())}, but there are {c.size} centroids")
    out = np.empty(nn, np.float32)
    out[rep] = c[idv]
    out[~rep] = ex
    return out
