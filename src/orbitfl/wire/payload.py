"""The encoded tensors inside an UPDATE: one adapter between the wire and the codec pipeline.

``{"codec": "fp32", "tensors": {...}}`` carries raw float32 tensors (the baseline, what Flower
sends), decoded as zero-copy views. ``{"codec": "pipeline", "recipe": "<recipe>", "body": ...}``
carries ``orbitfl.codec.Payload.to_wire()`` of the recipe's pipeline; the codec validates the body
(``Payload.from_wire`` with the model's shapes) before decoding it. ``{"codec": "compact", ...}``
is either of them with the recipe and the tensors' names and shapes by id (orbitfl.wire.compact),
expanded with the receiver's model and recipes first. Any refusal is a WireError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.codec import CodecState, Payload
from orbitfl.codec.inputs import RAW_RECIPES, check_encode_inputs, pipeline
from orbitfl.wire.compact import COMPACT, Layout, expand_payload
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.tensors import TensorDict, tensors_from_wire, tensors_to_wire

MAX_RECIPE_LEN = 512


def new_codec_state(recipe: str) -> Any:
    """Fresh sender-side codec state for ``recipe`` (None when the recipe keeps none)."""
    if recipe in RAW_RECIPES:
        return None
    pipe = pipeline(recipe)
    return pipe.new_state() if pipe.uses_state else None


def codec_state_to_dict(state: Any) -> dict[str, Any] | None:
    return None if state is None else dict(state.to_dict())


def codec_state_from_dict(d: Any) -> Any:
    return CodecState.from_dict(d)


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
    (fp32 included) over it is refused. Inputs are checked first, by the codec
    (``orbitfl.codec.inputs.check_encode_inputs``); ValueError/TypeError from it pass through."""
    curv = check_encode_inputs(recipe, tensors, curvature, budget_bytes)
    budget = None if budget_bytes is None else int(budget_bytes)
    if recipe in RAW_RECIPES:
        f32 = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        raw = sum(v.nbytes for v in f32.values())
        if budget is not None and raw > budget:
            raise ValueError(f"recipe {recipe!r}: {raw} bytes of float32, over budget_bytes={budget}")
        return {"codec": "fp32", "tensors": tensors_to_wire(f32)}
    pipe = pipeline(recipe)
    # ascontiguousarray alone makes a 0-d tensor 1-d, which the receiver's model shape refuses.
    f32 = {k: np.ascontiguousarray(v, np.float32).reshape(np.shape(v)) for k, v in tensors.items()}
    body = pipe.encode(f32, state, curvature=curv, budget_bytes=budget).to_wire()
    return {"codec": "pipeline", "recipe": recipe, "body": body}


def decode_payload(
    d: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    layout: Layout | None = None,
    recipes: Mapping[bytes, str] | None = None,
) -> TensorDict:
    """Decode (and validate) an update payload to float tensors. ``shapes`` (name -> shape of the
    model) lets the codec refuse unknown names and wrong shapes before decoding. A compact payload
    needs ``layout`` (the model) and ``recipes`` (recipe id -> text of the recipes this side accepts;
    orbitfl.wire.compact.recipe_id). Raises WireError."""
    codec = d.get("codec")
    if codec == COMPACT:
        d = expand_payload(d, layout, recipes or {})
        codec = d["codec"]
    if codec == "fp32":
        return tensors_from_wire(d.get("tensors"), "UPDATE.payload.tensors")
    if codec != "pipeline":
        raise WireError(
            Reason.BAD_PAYLOAD, f"UPDATE.payload.codec {codec!r} is not 'fp32', 'pipeline' or 'compact'"
        )
    recipe, body = d.get("recipe"), d.get("body")
    if not isinstance(recipe, str) or len(recipe) > MAX_RECIPE_LEN or not isinstance(body, dict):
        raise WireError(
            Reason.SCHEMA, "UPDATE.payload: a pipeline payload needs 'recipe' (str) and 'body' (map)"
        )
    names = body.get("tensors")
    if not isinstance(names, dict):
        raise WireError(Reason.BAD_PAYLOAD, "UPDATE.payload.body.tensors: expected a map of name -> tensor")
    if shapes is not None:
        unknown = sorted(set(map(str, names)) - set(shapes))
        if unknown:
            raise WireError(Reason.UNKNOWN_TENSOR, f"tensors not in the model: {unknown[:5]}")
    try:
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
