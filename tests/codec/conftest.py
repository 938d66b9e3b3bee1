"""Every codec test runs against both kernel backends: the C++ core and the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from orbitfl.kernels import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def layers(seed: int = 0) -> dict[str, NDArray[np.float32]]:
    """A small model update: Gaussian and Laplacian weights, a bias, a scalar."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.02, (8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.laplace(0, 0.01, (64, 48)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.1, 64).astype(np.float32),
        "temp": np.array(0.7, np.float32),
    }


def encode_rounds(
    recipe: str, backend: str, rounds: list[dict[str, NDArray[np.float32]]]
) -> list[tuple[bytes, dict[str, bytes]]]:
    """Each round's payload bytes and the residuals it left, from one state: what a stage that
    writes a new residual must reproduce of the in-place stage it replaced."""
    from orbitfl.codec import Pipeline

    pipe = Pipeline.parse(recipe, backend)
    state = pipe.new_state()
    out = []
    for tensors in rounds:
        payload = pipe.encode(tensors, state).to_bytes()
        out.append((payload, {n: a.tobytes() for n, a in state.residuals.items()}))
    return out
