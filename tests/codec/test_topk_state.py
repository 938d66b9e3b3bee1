"""The topk stage with error feedback writes its new residual through topk_ef (the state only
read, not copied): payloads and residuals equal those of the in-place stage, round after round."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orbitfl.codec import Pipeline
from orbitfl.codec.registry import EncodeContext, Encoded
from orbitfl.codec.stages import TopK

from .conftest import encode_rounds


def _old_encode(self: TopK, x: np.ndarray, ctx: EncodeContext) -> Encoded:
    """The stage before topk_ef: topk updating the residual (a copy of the state's) in place."""
    k = min(x.size, max(1, math.ceil(self.args["frac"] * x.size)))
    idx, vals = ctx.kern.topk(x, k, ctx.residual)
    return self._indices(ctx.kern, idx, vals)


@pytest.mark.parametrize(
    "recipe", ["topk:0.01+ef|quant:8|zstd", "topk:0.02+ef", "topk:0.05+ef|sign", "topk:0.01"]
)
def test_payloads_and_residuals_match_the_in_place_stage(
    backend: str, recipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(11)
    shapes = {"big": (300, 700), "mid": (5000,), "bias": (10,)}
    rounds = [{n: rng.laplace(0, 1e-3, s).astype(np.float32) for n, s in shapes.items()} for _ in range(5)]

    new = encode_rounds(recipe, backend, rounds)
    monkeypatch.setattr(TopK, "encode", _old_encode)
    monkeypatch.setattr(TopK, "replaces_state", False)
    assert new == encode_rounds(recipe, backend, rounds)


def test_a_failed_encode_leaves_the_residual_as_it_was(backend: str) -> None:
    pipe = Pipeline.parse("topk:0.01+ef|quant:8", backend)
    state = pipe.new_state()
    x = np.random.default_rng(12).laplace(0, 1e-3, 70_000).astype(np.float32)
    pipe.encode({"x": x}, state)
    before = state.residuals["x"].tobytes()
    bad = x.copy()
    bad[-1] = np.inf
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        pipe.encode({"x": bad}, state)
    assert state.residuals["x"].tobytes() == before and state.round == 1
