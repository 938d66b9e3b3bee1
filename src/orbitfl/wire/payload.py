"""The encoded tensors inside an UPDATE: one adapter between the wire and the codec pipeline.

``{"codec": "fp32", "tensors": {...}}`` carries raw tensors (the float32 baseline, what Flower sends).
``{"codec": "pipeline", "recipe": "<recipe>", "body": <Payload.to_wire()>}`` carries the output of
``orbitfl.codec.Pipeline`` (compressed); the codec validates its own body when decoding.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.tensors import TensorDict, tensors_from_wire, tensors_to_wire

RAW_RECIPES = frozenset({"fp32", "float32", "raw"})


def _pipeline(recipe: str) -> Any:
    try:
        codec = importlib.import_module("orbitfl.codec")
        return codec.Pipeline.parse(recipe)
    except AttributeError:
        raise WireError(
            Reason.BAD_PAYLOAD, f"recipe {recipe!r} needs the codec pipeline, which is not built"
        ) from None


def encode_payload(recipe: str, tensors: Mapping[str, npt.NDArray[Any]], state: Any = None) -> dict[str, Any]:
    """Encode an update's tensors with ``recipe``. ``state`` is the codec's per-agent state (e.g.
    error-feedback residuals), updated in place by the codec."""
    if recipe in RAW_RECIPES:
        return {
            "codec": "fp32",
            "tensors": tensors_to_wire({k: np.asarray(v, np.float32) for k, v in tensors.items()}),
        }
    pipe = _pipeline(recipe)
    body = pipe.encode(dict(tensors), state).to_wire()
    return {"codec": "pipeline", "recipe": recipe, "body": body}


def decode_payload(d: Mapping[str, Any]) -> TensorDict:
    """Decode (and validate) an update payload to float tensors. Raises WireError."""
    codec = d.get("codec")
    if codec == "fp32":
        return tensors_from_wire(d.get("tensors"), "UPDATE.payload.tensors")
    if codec == "pipeline":
        recipe = d.get("recipe")
        body = d.get("body")
        if not isinstance(recipe, str) or not isinstance(body, dict):
            raise WireError(
                Reason.SCHEMA, "UPDATE.payload: a pipeline payload needs 'recipe' (str) and 'body' (map)"
            )
        try:
            pipe = _pipeline(recipe)
            mod = importlib.import_module("orbitfl.codec")
            payload = mod.Payload.from_wire(body)
            out = pipe.decode(payload)
        except WireError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise WireError(Reason.BAD_PAYLOAD, f"UPDATE.payload ({recipe}): {exc}") from None
        return {str(k): np.asarray(v) for k, v in out.items()}
    raise WireError(Reason.BAD_PAYLOAD, f"UPDATE.payload.codec {codec!r} is not 'fp32' or 'pipeline'")
