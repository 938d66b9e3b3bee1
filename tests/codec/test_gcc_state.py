"""The gcc stage writes its new residual through gcc_encode_ef (the state only read, not copied,
the new residual in a retired array when one is free): payloads and residuals equal those of the
in-place stage round after round, and a failed encode leaves the state as it was."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.codec import Pipeline
from orbitfl.codec.pipeline import CodecState
from orbitfl.codec.registry import EncodeContext, Encoded
from orbitfl.codec.stages import Fp32, Gcc

from .conftest import encode_rounds


def _old_encode(self: Gcc, x: np.ndarray, ctx: EncodeContext) -> Encoded:
    """The stage before gcc_encode_ef: gcc_encode updating the residual (a copy of the state's)
    in place, its exact values not marked finite."""
    k = min(self.args["k"], x.size)
    a = self.args
    cents, mask, ids, exact = ctx.kern.gcc_encode(
        x, k, a["rho"], ctx.residual, a["iters"], ctx.seed, method=a["method"]
    )
    return Encoded({"k": int(cents.size), "m": int(exact.size)}, [cents, mask, ids], exact)


def _rounds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(21)
    shapes = {"big": (300, 700), "mid": (5000,), "bias": (10,)}
    return [{k: rng.laplace(0, 1e-3, s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


@pytest.mark.parametrize(
    "recipe", ["gcc:16", "gcc:16,rho=0.3|zstd", "gcc:4|fp16", "gcc:16+noef", "gcc:8,rho=1"]
)
def test_payloads_and_residuals_match_the_in_place_stage(
    backend: str, recipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = _rounds(5)

    new = encode_rounds(recipe, backend, rounds)
    monkeypatch.setattr(Gcc, "encode", _old_encode)
    monkeypatch.setattr(Gcc, "replaces_state", False)
    assert new == encode_rounds(recipe, backend, rounds)


def _state_bytes(state: CodecState) -> tuple[dict[str, bytes], int]:
    return {n: a.tobytes() for n, a in state.residuals.items()}, state.round


@pytest.mark.parametrize("warm", [1, 3])  # from the third round the kernel writes into a lent array
def test_a_failed_encode_leaves_the_state_as_it_was(backend: str, warm: int) -> None:
    pipe = Pipeline.parse("gcc:16", backend)
    state = pipe.new_state()
    xs = [t["big"].reshape(-1) for t in _rounds(warm + 1)]
    for x in xs[:warm]:
        pipe.encode({"x": x}, state)
    before = _state_bytes(state)
    held = state.residuals["x"]
    bad = xs[warm].copy()
    bad[123] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        pipe.encode({"x": bad}, state)
    assert _state_bytes(state) == before and state.residuals["x"] is held
    # the kernel ran to the end here (the payload is refused afterwards, over its budget)
    with pytest.raises(ValueError, match="over budget_bytes"):
        pipe.encode({"x": xs[warm]}, state, budget_bytes=1)
    assert _state_bytes(state) == before and state.residuals["x"] is held
    fresh = CodecState.from_dict(state.to_dict())  # no spare arrays
    assert pipe.encode({"x": xs[warm]}, state).to_bytes() == pipe.encode({"x": xs[warm]}, fresh).to_bytes()
    assert _state_bytes(state) == _state_bytes(fresh)


def test_fp32_still_checks_values_no_kernel_checked(backend: str) -> None:
    pipe = Pipeline.parse("fp32", backend)
    x = np.ones(100, np.float32)
    x[7] = np.inf
    with pytest.raises(ValueError, match="values must be finite"):
        pipe.encode({"x": x})


def test_fp32_after_gcc_skips_only_a_check_the_kernel_made(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact values gcc passes on are acc, which its kernel refused unless finite: the fp32
    stage after it is told so (and only then)."""
    seen: list[bool] = []
    real = Fp32.encode

    def spy(self: Fp32, x: np.ndarray, ctx: EncodeContext) -> Encoded:
        seen.append(ctx.finite)
        return real(self, x, ctx)

    monkeypatch.setattr(Fp32, "encode", spy)
    x = np.random.default_rng(22).laplace(0, 1e-3, 5000).astype(np.float32)
    Pipeline.parse("gcc:16", backend).encode({"x": x}, Pipeline.parse("gcc:16", backend).new_state())
    Pipeline.parse("fp32", backend).encode({"x": x})
    assert seen == [True, False]
