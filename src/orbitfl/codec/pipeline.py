"""The codec pipeline: a parsed recipe bound to a kernel backend, encoding and decoding tensor sets.

Error feedback: a chain marked ``+ef`` keeps, per tensor, the residual e = acc - decoded, where
acc = x + e_prev, and adds it to the next round's input (EF-SGD, Karimireddy et al. 2019). When the
first stage's kernel can keep the residual itself and every later stage is lossless, the kernel
updates it in place; otherwise the pipeline decodes what it just encoded and takes the difference,
so the residual always covers the whole chain's error (e.g. top-k *and* the quantization of the
kept values). State changes only when encode succeeds.

A first stage that keeps a momentum (``dgc``) also finds its per-tensor velocity in the state.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.arrays import F32
from orbitfl.codec import stages as _stages  # noqa: F401  (registers the built-in stages)
from orbitfl.codec.payload import DEFAULT_LIMITS, Payload, TensorRecord
from orbitfl.codec.recipe import Chain, Recipe, parse_chain, parse_recipe
from orbitfl.codec.registry import EncodeContext, Encoded
from orbitfl.kernels import backend as kernel_backend
from orbitfl.kernels.alq import OVERHEAD_BYTES, allocate_bits

STATE_VERSION = 1
_EMPTY = parse_chain("fp32")


@dataclass
class CodecState:
    """Per-tensor codec state kept by the sender between rounds: error-feedback residuals, DGC's
    momenta, and the round counter that keys stochastic rounding. ``to_dict``/``from_dict`` give a
    plain dict (str/int/bytes/list/dict) to persist across reboots."""

    residuals: dict[str, F32] = field(default_factory=dict)
    round: int = 0
    seed: int = 0
    momenta: dict[str, F32] = field(default_factory=dict)
    # Not state: the arrays the last encode replaced, keyed ("r" | "m", tensor), for a stage that
    # writes its new state into fresh arrays (dgc, topk+ef) to reuse next round when nothing else
    # holds them. Fresh 16 MB arrays cost their pages' zero-filling, more than dgc's pass itself.
    spare: dict[tuple[str, str], F32] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": STATE_VERSION,
            "round": self.round,
            "seed": self.seed,
            "residuals": _arrays_to_dict(self.residuals),
        }
        if self.momenta:  # absent for recipes without momentum: their states read as before
            d["momenta"] = _arrays_to_dict(self.momenta)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CodecState:
        if not isinstance(d, dict) or d.get("v") != STATE_VERSION:
            raise ValueError(f"codec state must be a map with v={STATE_VERSION}")
        rnd, seed, res = d.get("round"), d.get("seed"), d.get("residuals")
        if type(rnd) is not int or rnd < 0:
            raise ValueError(f"codec state round must be an int >= 0, got {rnd!r}")
        if type(seed) is not int or not 0 <= seed < 2**63:
            raise ValueError(f"codec state seed must be an int in 0..2**63-1, got {seed!r}")
        residuals = _arrays_from_dict("residuals", res)
        momenta = _arrays_from_dict("momenta", d.get("momenta", {}))
        return cls(residuals, rnd, seed, momenta)


def _arrays_to_dict(arrays: Mapping[str, F32]) -> dict[str, Any]:
    return {name: {"dtype": "float32", "shape": [r.size], "data": r.tobytes()} for name, r in arrays.items()}


def _arrays_from_dict(key: str, d: Any) -> dict[str, F32]:
    if not isinstance(d, dict):
        raise ValueError(f"codec state {key} must be a map")
    out: dict[str, F32] = {}
    for name, r in d.items():
        if not isinstance(r, dict) or r.get("dtype") != "float32" or not isinstance(r.get("data"), bytes):
            raise ValueError(f"codec state {key}[{name!r}] must be a float32 array map")
        shape = r.get("shape")
        if not isinstance(shape, list) or len(shape) != 1 or type(shape[0]) is not int:
            raise ValueError(f"codec state {key}[{name!r}].shape must be [size]")
        if len(r["data"]) != 4 * shape[0]:
            raise ValueError(f"codec state {key}[{name!r}].data does not hold {shape[0]} float32")
        a = np.frombuffer(r["data"], np.float32).copy()
        if not np.isfinite(a).all():
            raise ValueError(f"codec state {key}[{name!r}] has NaN or Inf values")
        out[name] = a
    return out


class Pipeline:
    """A recipe bound to a kernel backend. Build with :meth:`parse`."""

    def __init__(self, recipe: Recipe, kern: ModuleType, backend: str) -> None:
        self.recipe = recipe
        self.kern = kern
        self.backend = backend

    @classmethod
    def parse(cls, recipe: str, backend: str = "cpp") -> Pipeline:
        return cls(parse_recipe(recipe), kernel_backend(backend), backend)

    @property
    def text(self) -> str:
        """The canonical recipe (parses back to the same pipeline)."""
        return self.recipe.text

    @property
    def uses_state(self) -> bool:
        return any(c.ef for c in self.recipe.chains)

    def new_state(self, seed: int = 0) -> CodecState:
        return CodecState(seed=seed)

    def chain_for(self, name: str, size: int) -> Chain:
        return _EMPTY if size == 0 else self.recipe.chain_for(name, size)

    # --- encode ---------------------------------------------------------------------------------------
    def encode(
        self,
        tensors: Mapping[str, NDArray[np.float32]],
        state: CodecState | None = None,
        *,
        curvature: Mapping[str, NDArray[Any]] | None = None,
        budget_bytes: int | None = None,
    ) -> Payload:
        """Encode name -> float32 array. ``state`` is required when a chain uses error feedback and
        is updated only if encoding succeeds. ``curvature`` (name -> array of the tensor's size,
        all > 0) feeds laq/alq. ``budget_bytes`` bounds ``payload.nbytes``: alq fits its bit widths
        to it; for other recipes a payload over budget is a ValueError."""
        if not isinstance(tensors, Mapping):
            raise TypeError(
                f"tensors must be a mapping of name -> float32 array, got {type(tensors).__name__}"
            )
        if state is None:
            if self.uses_state:
                raise ValueError("this recipe uses error feedback: pass the state from pipe.new_state()")
            state = CodecState()
        if budget_bytes is not None and (type(budget_bytes) is not int or budget_bytes <= 0):
            raise ValueError(f"budget_bytes must be a positive int, got {budget_bytes!r}")
        flat: dict[str, F32] = {}
        chains: dict[str, Chain] = {}
        for name, x in tensors.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"tensor names must be non-empty strings, got {name!r}")
            if len(name) > DEFAULT_LIMITS.max_name_chars:  # receivers would refuse the payload
                raise ValueError(
                    f"tensor name {name[:40]!r}... is over {DEFAULT_LIMITS.max_name_chars} chars"
                )
            if not isinstance(x, np.ndarray | np.float32) or x.dtype != np.float32:
                got = x.dtype if isinstance(x, np.ndarray | np.generic) else type(x).__name__
                raise TypeError(f"tensor {name!r} must be a float32 numpy array, got {got}")
            flat[name] = np.ascontiguousarray(x).reshape(-1)
            chains[name] = self.chain_for(name, x.size)
        curv = self._curvature(flat, chains, curvature)
        alq = [n for n, c in chains.items() if c.float_stages[0].needs_budget]
        if alq and budget_bytes is None:
            raise ValueError("recipe uses alq: pass budget_bytes to encode")
        shapes = {name: tuple(int(s) for s in x.shape) for name, x in tensors.items()}

        new_res: dict[str, F32] = {}
        new_mom: dict[str, F32] = {}
        records: dict[str, TensorRecord] = {}
        for name in flat:
            if name not in alq:
                records[name] = self._encode_tensor(
                    name,
                    flat[name],
                    shapes[name],
                    chains[name],
                    state,
                    curv.get(name),
                    None,
                    new_res,
                    new_mom,
                )
        if alq:
            assert budget_bytes is not None
            records = self._encode_alq(alq, flat, shapes, chains, curv, state, records, new_res, budget_bytes)
        payload = Payload({name: records[name] for name in flat if name in records})
        if budget_bytes is not None and payload.nbytes > budget_bytes:
            raise ValueError(
                f"payload is {payload.nbytes} bytes, over budget_bytes={budget_bytes} "
                "(only alq adapts to a budget)"
            )
        for kind, held, new in (("r", state.residuals, new_res), ("m", state.momenta, new_mom)):
            for name, arr in new.items():
                old = held.get(name)
                if old is not None and old is not arr and chains[name].float_stages[0].replaces_state:
                    state.spare[kind, name] = old
        state.residuals.update(new_res)
        state.momenta.update(new_mom)
        state.round += 1
        return payload

    @staticmethod
    def _spare(state: CodecState, kind: str, name: str, size: int) -> F32 | None:
        """A retired state array of ``size`` values the stage may overwrite, or None. Only one
        that nothing else references (the caller kept the old state, a view of it, ...) and that
        owns its memory: whoever holds it must never see it change."""
        a = state.spare.pop((kind, name), None)
        if a is None or a.size != size or a.base is not None or not a.flags.writeable:
            return None
        if not a.flags.c_contiguous or a.dtype != np.float32:
            return None
        # No reference but the name `a`: as many as an array just made and bound to one name has
        # (measured, not assumed: interpreters count the call's own reference differently).
        probe = np.empty(0, np.float32)
        return a if sys.getrefcount(a) <= sys.getrefcount(probe) else None

    def _curvature(
        self,
        flat: Mapping[str, F32],
        chains: Mapping[str, Chain],
        curvature: Mapping[str, NDArray[Any]] | None,
    ) -> dict[str, F32]:
        out: dict[str, F32] = {}
        for name, chain in chains.items():
            if not chain.float_stages[0].needs_curvature:
                continue
            d = None if curvature is None else curvature.get(name)
            if d is None:
                raise ValueError(f"tensor {name!r}: {chain.float_stages[0].name} needs curvature[{name!r}]")
            if not isinstance(d, np.ndarray | np.float32) or d.dtype != np.float32:
                raise TypeError(f"curvature[{name!r}] must be a float32 numpy array")
            if d.size != flat[name].size:
                raise ValueError(f"curvature[{name!r}] has {d.size} values, the tensor {flat[name].size}")
            out[name] = np.ascontiguousarray(d).reshape(-1)
        return out

    def _seed(self, state: CodecState, name: str) -> int:
        h = hashlib.blake2b(f"{state.seed}:{state.round}:{name}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") >> 1

    def _encode_tensor(
        self,
        name: str,
        x: F32,
        shape: tuple[int, ...],
        chain: Chain,
        state: CodecState,
        curvature: F32 | None,
        bits: int | None,
        new_res: dict[str, F32],
        new_mom: dict[str, F32] | None = None,
        alpha: float | None = None,
    ) -> TensorRecord:
        try:
            residual: F32 | None = None
            acc = x
            # A sparsifier first (top-k) whose kept values go through lossy stages: its kernel keeps
            # the residual of the n - k dropped values in place, and only the k kept ones need the
            # later stages' error added (the same floats as x + r - decode, without decoding n).
            first = chain.float_stages[0]
            fused = chain.ef and not chain.kernel_ef and first.kernel_ef and first.reports_kept
            if chain.ef:
                old = state.residuals.get(name)
                if old is not None and old.size != x.size:
                    raise ValueError(
                        f"the codec state holds a residual of {old.size} values for {x.size}; "
                        "the model changed: start from a new state"
                    )
                if old is None:
                    residual = np.zeros(x.size, np.float32)
                elif first.replaces_state:  # only read: the stage writes a new residual
                    residual = np.ascontiguousarray(old)
                else:
                    residual = old.copy()
                if not chain.kernel_ef and not fused:
                    acc = x + residual
            ctx = EncodeContext(
                self.kern,
                self._seed(state, name),
                curvature=curvature,
                bits=bits,
                alpha=alpha,
                round=state.round,
            )
            if chain.ef and (chain.kernel_ef or fused):
                ctx.residual = residual
                if first.replaces_state:
                    ctx.spare_residual = self._spare(state, "r", name, x.size)
            if first.keeps_momentum:
                ctx.momentum = self._momentum(state, name, x.size, copy=not first.replaces_state)
                if first.replaces_state:
                    ctx.spare_momentum = self._spare(state, "m", name, x.size)
            rec, first_out, first_res = self._encode_flat(acc, shape, chain, ctx)
            if chain.ef and (chain.kernel_ef or fused) and first_res is not None:
                residual = first_res  # the same array, or the new one a stage that replaces_state left
            if residual is not None:
                if fused:
                    self._fold_kept_error(rec, first_out, residual)
                elif not chain.kernel_ef:
                    residual = acc - self._decode_flat(rec)
                new_res[name] = residual
            if ctx.momentum is not None:
                if new_mom is None:
                    raise ValueError(f"{first.name} keeps a momentum and cannot be sized by alq")
                new_mom[name] = ctx.momentum
        except ValueError as exc:
            raise ValueError(f"tensor {name!r} ({chain.text}): {exc}") from None
        return rec

    @staticmethod
    def _momentum(state: CodecState, name: str, size: int, copy: bool = True) -> F32:
        """The tensor's momentum (zeros the first time): a copy for the stage to update, or with
        ``copy=False`` the state's own array for a stage that only reads it."""
        old = state.momenta.get(name)
        if old is None:
            return np.zeros(size, np.float32)
        if old.size != size:
            raise ValueError(
                f"the codec state holds a momentum of {old.size} values for {size}; "
                "the model changed: start from a new state"
            )
        return old.copy() if copy else np.ascontiguousarray(old)

    def _fold_kept_error(self, rec: TensorRecord, first: Encoded, residual: F32) -> None:
        """residual[kept] = sent - decoded for the values the first (sparsifying) stage kept; its
        kernel already left the dropped values in ``residual`` and zeros at the kept places."""
        if first.kept is None or first.leftover is None:
            raise ValueError(f"stage {rec.chain.float_stages[0].name!r} did not say which values it kept")
        layout = rec.layout()
        arrays = rec.arrays()
        v: F32 | None = None
        for stage, meta, (_, n), arr in reversed(
            list(zip(rec.chain.float_stages, rec.meta, layout, arrays, strict=True))[1:]
        ):
            v = stage.decode(meta, arr, n, v, self.kern)
        assert v is not None
        if not np.isfinite(v).all():
            raise ValueError("decoded values are not finite")
        if v.dtype == np.float32 and v.flags.c_contiguous and first.leftover.flags.c_contiguous:
            # The kernel requests the lines a few kept places ahead while it writes one: they are
            # scattered over an array the first stage wrote long ago, a cache miss each.
            self.kern.scatter_sub(residual, first.kept, first.leftover, v)
        else:
            residual[first.kept] = first.leftover - v

    def _encode_flat(
        self, x: F32, shape: tuple[int, ...], chain: Chain, ctx: EncodeContext
    ) -> tuple[TensorRecord, Encoded, F32 | None]:
        """The record, the first stage's output and the residual the first stage left in ctx."""
        metas = []
        raw: list[bytes] = []
        v: F32 | None = x
        first: Encoded | None = None
        first_res: F32 | None = None
        for i, stage in enumerate(chain.float_stages):
            assert v is not None
            if i > 0:
                ctx.residual = ctx.curvature = None
            enc = stage.encode(v, ctx)
            ctx.finite = enc.leftover_finite
            if i == 0:
                first_res = ctx.residual
            first = first or enc
            metas.append(enc.meta)
            raw.extend(np.ascontiguousarray(a).tobytes() for a in enc.arrays)
            v = enc.leftover
        rec = TensorRecord(chain, shape, metas, raw)
        byte_stage = chain.byte_stage
        if byte_stage is not None:
            joined = b"".join(raw)
            blob = byte_stage.compress(joined)
            # Incompressible bytes (e.g. a tiny tensor) travel as they are.
            if len(blob) < len(joined):
                rec.zdata = blob
        assert first is not None
        return rec, first, first_res

    def _encode_alq(
        self,
        names: list[str],
        flat: Mapping[str, F32],
        shapes: Mapping[str, tuple[int, ...]],
        chains: Mapping[str, Chain],
        curv: Mapping[str, F32],
        state: CodecState,
        records: dict[str, TensorRecord],
        new_res: dict[str, F32],
        budget_bytes: int,
    ) -> dict[str, TensorRecord]:
        fixed = Payload(dict(records)).nbytes
        if fixed > budget_bytes:
            raise ValueError(
                f"budget_bytes={budget_bytes} is smaller than the tensors not under alq ({fixed} B)"
            )
        # allocate_bits counts codes plus OVERHEAD_BYTES per tensor; a record also carries its
        # name, shape and msgpack framing. Measure that with empty records (largest metadata, and
        # 3 bytes for the widest bin header) so one allocation normally fits; if not, shrink the
        # kernel's budget by the overshoot and allocate again.
        dummy = dict(records)
        for n in names:
            dummy[n] = TensorRecord(chains[n], shapes[n], [{"alpha": 0.1, "bits": 8}], [b""])
        framing = Payload(dummy).nbytes + 3 * len(names) - OVERHEAD_BYTES * len(names)
        kernel_budget = budget_bytes - framing
        # With error feedback the bits go where x + residual (what will be sent) needs them.
        alloc_x: dict[str, F32] = {}
        for n in names:
            old = state.residuals.get(n) if chains[n].ef else None
            alloc_x[n] = flat[n] + old if old is not None and old.size == flat[n].size else flat[n]
        # The encode below sees exactly alloc_x (x + residual is the same float add in
        # _encode_tensor; a zero residual only turns -0 into +0, which LAQ treats alike), so the
        # scales the allocation fitted are the ones laq_quantize would fit again.
        alphas: dict[str, dict[int, float]] = {}
        for _ in range(4):
            choices = chains[names[0]].float_stages[0].choices  # type: ignore[attr-defined]
            bits = allocate_bits(
                alloc_x,
                {n: curv[n] for n in names},
                max(0, kernel_budget),
                backend=self.backend,
                alphas=alphas,
                **({} if choices is None else {"choices": choices}),
            )
            trial_res: dict[str, F32] = {}
            out = dict(records)
            for n in names:
                b = int(bits.get(n, 0))
                if b > 0:
                    out[n] = self._encode_tensor(
                        n, flat[n], shapes[n], chains[n], state, curv[n], b, trial_res, alpha=alphas[n][b]
                    )
                elif chains[n].ef:  # not sent: the whole input waits in the residual
                    trial_res[n] = alloc_x[n].copy()
            size = Payload(out).nbytes
            if size <= budget_bytes:
                new_res.update(trial_res)
                return out
            kernel_budget -= size - budget_bytes
        raise ValueError(f"alq could not fit the payload into budget_bytes={budget_bytes}")

    # --- decode ---------------------------------------------------------------------------------------
    def decode(self, payload: Payload) -> dict[str, NDArray[np.float32]]:
        """Decode every tensor in the payload to float32 with its original shape. Each record names
        its own chain, so a payload decodes without knowing the sender's recipe. Tensors the sender
        left out (alq with 0 bits) are absent from the result."""
        if not isinstance(payload, Payload):
            raise TypeError(f"decode takes a Payload, got {type(payload).__name__}")
        out: dict[str, NDArray[np.float32]] = {}
        for name, rec in payload.records.items():
            try:
                x = self._decode_flat(rec)
            except ValueError as exc:
                raise ValueError(f"tensor {name!r} ({rec.chain.text}): {exc}") from None
            out[name] = x.reshape(rec.shape)
        return out

    def _decode_flat(self, rec: TensorRecord) -> F32:
        layout = rec.layout()
        arrays = rec.arrays()
        v: F32 | None = None
        for stage, meta, (_, n), arr in reversed(
            list(zip(rec.chain.float_stages, rec.meta, layout, arrays, strict=True))
        ):
            v = stage.decode(meta, arr, n, v, self.kern)
        assert v is not None
        if not v.flags.writeable or v.dtype != np.float32:
            v = np.array(v, dtype=np.float32)
        if not np.isfinite(v).all():
            raise ValueError("decoded values are not finite")
        return v


def rel_error(x: NDArray[np.float32], y: NDArray[np.float32]) -> float:
    """Relative L2 error ||x - y|| / ||x|| (0 for two zero tensors)."""
    num = float(np.linalg.norm((x.astype(np.float64) - y.astype(np.float64)).ravel()))
    den = float(np.linalg.norm(x.astype(np.float64).ravel()))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)
