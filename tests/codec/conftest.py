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
