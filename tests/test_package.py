import importlib.util

import orbitfl


def test_core_is_the_compiled_module_and_no_generic_names_are_installed() -> None:
    from orbitfl import _core

    assert _core.__file__.endswith((".so", ".pyd"))
    assert _core.simd in {"neon", "sse2", "scalar"}
    assert orbitfl.__version__ != ""
    for generic in ("agent", "ground", "models", "_core"):
        assert importlib.util.find_spec(generic) is None, f"generic top-level module {generic!r} installed"
