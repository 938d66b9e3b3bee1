"""The trainer's direct pybind steps give exactly what ONNX Runtime's public Python API gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ort_import import OrtUnavailableError, training_api

try:
    training_api()
except OrtUnavailableError as exc:  # e.g. aarch64: no onnxruntime-training wheel
    pytest.skip(str(exc), allow_module_level=True)

from orbitfl.agent.ort_trainer import OrtTrainer, _Steps
from orbitfl.data import load_digits
from orbitfl.models import artifacts, zoo


class _PublicOnly:
    """Forwards the public attributes of an ORT wrapper and hides its private pybind object, so
    :class:`_Steps` has to take the public-API path."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __call__(self, *args: Any) -> Any:
        return self._wrapped(*args)


@pytest.mark.parametrize(("model", "optimizer"), [("mlp", "adamw"), ("lenet-s", "sgd")])
def test_direct_steps_match_the_public_api_bit_for_bit(tmp_path: Path, model: str, optimizer: str) -> None:
    artifacts.build_artifacts(
        zoo.build(model, seed=3), tmp_path, optimizer=optimizer, backend="onnxruntime-training"
    )
    ds = load_digits(seed=1)
    x, y = ds.x_train[:300], ds.y_train[:300]
    direct, public = OrtTrainer(tmp_path), OrtTrainer(tmp_path)
    assert direct._steps.optimizer_step == direct._optimizer._optimizer.optimizer_step  # fast path taken
    public._steps = _Steps(_PublicOnly(public._module), _PublicOnly(public._optimizer))
    assert public._steps.optimizer_step == public._optimizer.step  # fallback taken

    a = direct.train(x, y, epochs=2, batch_size=32, seed=5)
    b = public.train(x, y, epochs=2, batch_size=32, seed=5)
    assert (a.loss, a.accuracy, a.batches, a.history) == (b.loss, b.accuracy, b.batches, b.history)
    wa, wb = direct.get_weights(), public.get_weights()
    assert all(wa[n].tobytes() == wb[n].tobytes() for n in wa)
    ma, mb = direct.second_moments(), public.second_moments()
    assert all(ma[n].tobytes() == mb[n].tobytes() for n in ma) and any(np.any(v > 0) for v in ma.values())
    ea, eb = direct.evaluate(ds.x_test, ds.y_test), public.evaluate(ds.x_test, ds.y_test)
    assert ea == eb
    assert direct.predict(ds.x_test[:50]).tobytes() == public.predict(ds.x_test[:50]).tobytes()
    # Training moved the weights away from the initial ones (the comparison is not vacuous).
    init = zoo.get_weights(zoo.build(model, seed=3).model)
    assert any(not np.array_equal(init[n], wa[n]) for n in wa)
