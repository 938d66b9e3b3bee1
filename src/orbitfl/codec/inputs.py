"""Which recipes are valid and what encoding with one needs: the one place both are decided.

Every caller (the ground's config, the demo, the simulator, the ground machine's downlink recipe,
the agent's trainer hand-off) asks here; nothing else parses a recipe to check it or names a stage
to decide whether an update needs curvature or a byte budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.codec.pipeline import Pipeline

RAW_RECIPES = frozenset({"fp32", "float32", "raw"})  # float32 as Flower sends it, no pipeline


@lru_cache(maxsize=32)
def pipeline(recipe: str) -> Pipeline:
    """The codec pipeline of ``recipe`` (parsed once). ValueError for a recipe the codec refuses."""
    return Pipeline.parse(recipe)


def check_recipe(recipe: str) -> None:
    """ValueError, with the codec's own reason, unless ``recipe`` is raw float32 or a recipe the
    codec can build. Callers check before anything trains or is sent."""
    if recipe in RAW_RECIPES:
        return
    try:
        pipeline(recipe)
    except ValueError as exc:
        raise ValueError(f"codec {recipe!r}: {exc}") from None


def recipe_needs(recipe: str, tensors: Mapping[str, npt.NDArray[Any]]) -> tuple[list[str], bool]:
    """What encoding ``tensors`` with ``recipe`` needs from the trainer: the names whose chain is
    loss-aware (they need curvature), and whether a chain adapts to a byte budget (it needs one).
    ValueError for a recipe the codec refuses."""
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
        budget = budget or first.needs_budget
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
