"""Every kernel test runs against both implementations: the C++ core and the NumPy reference."""

from __future__ import annotations

from types import ModuleType

import pytest

from orbitfl.kernels import BACKENDS, backend


@pytest.fixture(params=BACKENDS)
def kern(request: pytest.FixtureRequest) -> ModuleType:
    return backend(request.param)
