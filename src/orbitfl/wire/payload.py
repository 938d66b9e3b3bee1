"""The encoded tensors inside an UPDATE: one adapter between the wire and the codec pipeline.

``{"codec": "fp32", "tensors": {...}}`` carries raw float32 tensors (the baseline, what Flower
sends), decoded as zero-copy views. ``{"codec": "pipeline", "recipe": "<recipe>", "body": ...}``
carries ``orbitfl.codec.Payload.to_wire()`` of the recipe's pipeline; the codec validates the body
(``Payload.from_wire`` with the model's shapes) before decoding it. Any refusal is a WireError.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.tensors import TensorDict, tensors_from_wire, tensors_to_wire

RAW_RECIPES = frozenset({"fp32", "float32", "raw"})
MAX_RECIPE_LEN = 512


@lru_cache(maxsize=32)
def pipeline(recipe: str) -> Any:
    """The codec pipeline of ``recipe`` (parsed once). ValueError for a recipe the codec refuses."""
    from orbitfl.codec import Pipeline  # the codec loads kernels; only recipes that need it pay

    return Pipeline.parse(recipe)


def new_codec_state(recipe: str) -> Any:
    """Fresh sender-side codec state for ``recipe`` (None when the recipe keeps none)."""
    if recipe in RAW_RECIPES:
        return None
    pipe = pipeline(recipe)
    return pipe.new_state() if pipe.uses_state else None


def codec_state_to_dict(state: Any) -> dict[str, Any] | None:
    return None if state is None else dict(state.to_dict())


def codec_state_from_dict(d: Any) -> Any:
    from orbitfl.codec import CodecState

    return CodecState.from_dict(d)


def recipe_needs(recipe: str, tensors: Mapping[str, npt.NDArray[Any]]) -> tuple[list[str], bool]:
    """What encoding ``tensors`` with ``recipe`` needs from the trainer: the names whose chain is
    loss-aware (``laq``/``alq``: they need curvature), and whether a chain adapts to a byte budget
    (``alq``: it needs one). ValueError for a recipe the codec refuses."""
    if recipe in RAW_RECIPES:
        return [], False
    pipe = pipeline(recipe)
    curv: list[str] = []
    budget = False
    for name, x in tensors.items():
        chain = pipe.chain_for(name, int(np.size(x)))
        if not chain.float_stages:
            continue
        first = chain.float_stages[0]
        if first.needs_curvature:
            curv.append(name)
        budget = budget or first.name == "alq"
    return curv, budget


def check_encode_inputs(
    recipe: str,
    tensors: Mapping[str, npt.NDArray[Any]],
    curvature: Mapping[str, npt.NDArray[Any]] | None,
    budget_bytes: int | None,
) -> dict[str, npt.NDArray[np.float32]] | None:
    """Check what the trainer hands the codec, before any encoding: TypeError for a wrong type,
    ValueError for a bad value, each naming the recipe or tensor. Returns the curvature as
    contiguous float32 arrays (or None)."""
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | np.integer):
            raise TypeError(f"budget_bytes must be an int, got {type(budget_bytes).__name__}")
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}")
    need_curv, need_budget = recipe_needs(recipe, tensors)
    if need_budget and budget_bytes is None:
        raise ValueError(
            f"recipe {recipe!r} sizes each update to a byte budget (alq), but no budget_bytes was given"
        )
    if curvature is None:
        if need_curv:
            raise ValueError(
                f"recipe {recipe!r} is loss-aware and needs the optimizer's curvature for "
                f"{need_curv[:3]}{'...' if len(need_curv) > 3 else ''}, but none was given"
            )
        return None
    if not isinstance(curvature, Mapping):
        raise TypeError(f"curvature must be a mapping of name -> array, got {type(curvature).__name__}")
    unknown = sorted(set(map(str, curvature)) - set(tensors))
    if unknown:
        raise ValueError(f"curvature names tensors not in the update: {unknown[:5]}")
    missing = [n for n in need_curv if n not in curvature]
    if missing:
        raise ValueError(f"recipe {recipe!r} needs curvature for {missing[:5]}, which is missing")
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, d in curvature.items():
        if not isinstance(d, np.ndarray) or not np.issubdtype(d.dtype, np.floating):
            got = d.dtype if isinstance(d, np.ndarray) else type(d).__name__
            raise TypeError(f"curvature[{name!r}] must be a float numpy array, got {got}")
        shape = np.shape(tensors[name])
        if d.shape != shape:
            raise ValueError(f"curvature[{name!r}] has shape {d.shape}, the update's tensor {shape}")
        f = np.ascontiguousarray(d, np.float32)
        if not (np.isfinite(f).all() and (f > 0).all()):
            raise ValueError(f"curvature[{name!r}] must be finite and > 0 everywhere")
        out[name] = f
    return out


def encode_payload(
    recipe: str,
    tensors: Mapping[str, npt.NDArray[Any]],
    state: Any = None,
    *,
    curvature: Mapping[str, npt.NDArray[Any]] | None = None,
    budget_bytes: int | None = None,
) -> dict[str, Any]:
    """Encode an update's tensors with ``recipe``. ``state`` (from ``new_codec_state``) is updated
    in place by recipes with error feedback. ``curvature`` feeds loss-aware recipes (laq/alq);
    ``budget_bytes`` bounds the encoded body: alq fits its bit widths to it, any other recipe
    (fp32 included) over it is refused. Inputs are checked first (``check_encode_inputs``);
    ValueError/TypeError from the checks or the codec pass through."""
    curv = check_encode_inputs(recipe, tensors, curvature, budget_bytes)
    budget = None if budget_bytes is None else int(budget_bytes)
    if recipe in RAW_RECIPES:
        f32 = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        raw = sum(v.nbytes for v in f32.values())
        if budget is not None and raw > budget:
            raise ValueError(f"recipe {recipe!r}: {raw} bytes of float32, over budget_bytes={budget}")
        return {"codec": "fp32", "tensors": tensors_to_wire(f32)}
    pipe = pipeline(recipe)
    f32 = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    body = pipe.encode(f32, state, curvature=curv, budget_bytes=budget).to_wire()
    return {"codec": "pipeline", "recipe": recipe, "body": body}


def decode_payload(d: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None) -> TensorDict:
    """Decode (and validate) an update payload to float tensors. ``shapes`` (name -> shape of the
    model) lets the codec refuse unknown names and wrong shapes before decoding. Raises WireError."""
    codec = d.get("codec")
    if codec == "fp32":
        return tensors_from_wire(d.get("tensors"), "UPDATE.payload.tensors")
    if codec != "pipeline":
        raise WireError(Reason.BAD_PAYLOAD, f"UPDATE.payload.codec {codec!r} is not 'fp32' or 'pipeline'")
    recipe, body = d.get("recipe"), d.get("body")
    if not isinstance(recipe, str) or len(recipe) > MAX_RECIPE_LEN or not isinstance(body, dict):
        raise WireError(
            Reason.SCHEMA, "UPDATE.payload: a pipeline payload needs 'recipe' (str) and 'body' (map)"
        )
    if shapes is not None:
        unknown = sorted(set(map(str, body.get("tensors") or {})) - set(shapes))
        if unknown:
            raise WireError(Reason.UNKNOWN_TENSOR, f"tensors not in the model: {unknown[:5]}")
    try:
        from orbitfl.codec import Payload

        pipe = pipeline(recipe)
        payload = Payload.from_wire(body, expect=shapes)
        out = pipe.decode(payload)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        reason = Reason.BAD_SHAPE if "shape" in str(exc) else Reason.BAD_PAYLOAD
        raise WireError(reason, f"UPDATE.payload ({recipe}): {exc}") from None
    except Exception as exc:  # hostile bytes must never take the ground down, whatever the codec does
        raise WireError(
            Reason.BAD_PAYLOAD, f"UPDATE.payload ({recipe}): {type(exc).__name__}: {exc}"
        ) from None
    return {str(k): np.asarray(v) for k, v in out.items()}
