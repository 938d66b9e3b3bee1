"""ALQ-style bit allocation across tensors under a byte budget, over LAQ (both backends)."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.kernels import BACKENDS
from orbitfl.kernels.alq import OVERHEAD_BYTES, allocate_bits, tensor_bytes, weighted_errors

ALL = (0, 1, 2, 3, 4, 5, 6, 7, 8)


def model(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A small 'update': tensors of different sizes, magnitudes and curvature."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1.w": (8, 1, 3, 3), "conv1.b": (8,), "fc1.w": (64, 32), "fc1.b": (64,), "fc2.w": (10, 64)}
    x, d = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        x[name] = (rng.standard_t(5, shape) * 10.0 ** -(i % 3)).astype(np.float32)
        d[name] = (np.sqrt(rng.gamma(2.0, 10.0 ** (i - 3), shape)) + 1e-8).astype(np.float32)
    return x, d


def used(x: dict[str, np.ndarray], bits: dict[str, int]) -> int:
    return sum(tensor_bytes(x[n].size, b) for n, b in bits.items())


def total_error(table: dict[str, dict[int, float]], bits: dict[str, int]) -> float:
    return sum(table[n][b] for n, b in bits.items())


def test_tensor_bytes() -> None:
    assert tensor_bytes(100, 0) == 0
    assert tensor_bytes(100, 3) == 38 + OVERHEAD_BYTES
    assert tensor_bytes(0, 8) == OVERHEAD_BYTES


@pytest.mark.parametrize("name", BACKENDS)
def test_budget_is_respected_and_more_budget_never_hurts(name: str) -> None:
    x, d = model(1)
    table = weighted_errors(x, d, ALL, backend=name)
    full = used(x, dict.fromkeys(x, 8))
    previous = np.inf
    for budget in np.linspace(0, full, 40).astype(int):
        bits = allocate_bits(x, d, int(budget), backend=name)
        assert set(bits) == set(x) and all(b in ALL for b in bits.values())
        assert used(x, bits) <= budget
        err = total_error(table, bits)
        assert err <= previous * (1 + 1e-12), budget
        previous = err
    assert allocate_bits(x, d, full, backend=name) == dict.fromkeys(x, 8)
    assert allocate_bits(x, d, 0, backend=name) == dict.fromkeys(x, 0)


def test_backends_agree() -> None:
    x, d = model(2)
    for budget in (0, 100, 1000, 3000, 10_000):
        assert allocate_bits(x, d, budget, backend="cpp") == allocate_bits(x, d, budget, backend="numpy")


def test_loss_important_tensors_keep_more_bits() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=4096).astype(np.float32)
    x = {"important": v, "unimportant": v.copy()}
    d = {"important": np.full(4096, 1.0, np.float32), "unimportant": np.full(4096, 1e-4, np.float32)}
    bits = allocate_bits(x, d, 4096, backend="cpp")  # one byte per value of the first at most
    assert bits["important"] > bits["unimportant"]
    assert used(x, bits) <= 4096


def test_greedy_beats_uniform_width_at_the_same_budget() -> None:
    x, d = model(4)
    table = weighted_errors(x, d, ALL)
    for width in (2, 3, 4):
        uniform = dict.fromkeys(x, width)
        bits = allocate_bits(x, d, used(x, uniform))
        assert total_error(table, bits) <= total_error(table, uniform)


def test_without_zero_a_too_small_budget_is_an_error() -> None:
    x, d = model(5)
    floor = used(x, dict.fromkeys(x, 2))
    assert allocate_bits(x, d, floor, choices=(2, 4, 8)) == dict.fromkeys(x, 2)
    with pytest.raises(ValueError, match="too small"):
        allocate_bits(x, d, floor - 1, choices=(2, 4, 8))
    bits = allocate_bits(x, d, floor + 200, choices=(8, 4, 2, 4))
    assert set(bits.values()) <= {2, 4, 8} and used(x, bits) <= floor + 200


def test_empty_tensors_and_zero_tensors() -> None:
    x = {"empty": np.zeros(0, np.float32), "zeros": np.zeros(100, np.float32), "w": np.ones(100, np.float32)}
    d = {k: np.ones(v.shape, np.float32) for k, v in x.items()}
    bits = allocate_bits(x, d, 200)
    # sending nothing loses nothing for the empty and all-zero tensors, so they are not sent
    assert bits["empty"] == 0 and bits["zeros"] == 0 and bits["w"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"budget_bytes": -1}, ValueError),
        ({"budget_bytes": 1.5}, TypeError),
        ({"budget_bytes": True}, TypeError),
        ({"budget_bytes": 100, "choices": ()}, ValueError),
        ({"budget_bytes": 100, "choices": (9,)}, ValueError),
        ({"budget_bytes": 100, "choices": (-1, 2)}, ValueError),
        ({"budget_bytes": 100, "choices": (2.0,)}, TypeError),
        ({"budget_bytes": 100, "choices": "248"}, TypeError),
        ({"budget_bytes": 100, "backend": "fortran"}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception]) -> None:
    x, d = model(6)
    with pytest.raises(exc):
        allocate_bits(x, d, **kwargs)  # type: ignore[arg-type]


def test_bad_tensors() -> None:
    x, d = model(7)
    with pytest.raises(ValueError, match="same tensors"):
        allocate_bits(x, {k: v for k, v in d.items() if k != "fc1.b"}, 100)
    with pytest.raises(ValueError, match="shape"):
        allocate_bits(x, {**d, "fc1.b": np.ones(3, np.float32)}, 100)
    with pytest.raises(TypeError, match="float32"):
        allocate_bits({**x, "fc1.b": x["fc1.b"].astype(np.float64)}, d, 100)
    with pytest.raises(TypeError):
        allocate_bits({**x, "fc1.b": [1.0] * 64}, d, 100)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="> 0"):
        allocate_bits(x, {**d, "fc1.b": np.zeros(64, np.float32)}, 100)
    with pytest.raises(ValueError, match="NaN"):
        allocate_bits({**x, "fc1.b": np.full(64, np.nan, np.float32)}, d, 100)
