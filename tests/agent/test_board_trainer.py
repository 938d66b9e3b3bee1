"""The trainer as a board runs it: artifacts and data made by the host, nothing here but numpy,
onnxruntime and orbitfl.

The same tests run natively and under emulated aarch64 (tools/cross/aarch64.py passes the inputs
it had the host write as $ORBITFL_BOARD_INPUTS; the board's Python has no onnx or scikit-learn at
all). Natively, without that variable, the module has the host write them first
(tools/cross/board_inputs.py, in a child process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orbitfl.agent.backends import open_trainer
from orbitfl.data.partition_file import read_partition

ROOT = Path(__file__).resolve().parents[2]
ON_BOARD = bool(os.environ.get("ORBITFL_BOARD_INPUTS"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ORBITFL_BOARD_INPUTS")
    if given:
        path = Path(given)
        assert (path / ".ready").exists(), f"$ORBITFL_BOARD_INPUTS={given} was not written completely"
        return path
    out = tmp_path_factory.mktemp("board-inputs")
    script = ROOT / "tools" / "cross" / "board_inputs.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_mlp_learns_the_digits_from_host_made_inputs(inputs: Path, optimizer: str) -> None:
    x, y = read_partition(inputs / "train.npz")
    xt, yt = read_partition(inputs / "test.npz")
    t = open_trainer(inputs / f"mlp-{optimizer}", learning_rate=0.01 if optimizer == "adamw" else 0.1)
    before = t.evaluate(xt, yt)
    m = t.train(x, y, epochs=5, batch_size=32, seed=0)
    after = t.evaluate(xt, yt)
    assert m.samples == 5 * len(x) and np.isfinite(m.loss)
    assert after.loss < before.loss and after.accuracy is not None and after.accuracy >= 0.9, (before, after)


def test_a_checkpoint_resumes_bit_identical(inputs: Path, tmp_path: Path) -> None:
    x, y = read_partition(inputs / "train.npz")
    art = inputs / "mlp-adamw"
    a = open_trainer(art, learning_rate=0.01)
    a.train(x, y, epochs=1, seed=1)
    ck = a.save(tmp_path / "a.ckpt")
    a.train(x, y, epochs=1, seed=2)
    b = open_trainer(art, learning_rate=0.01)
    b.restore(ck)
    b.train(x, y, epochs=1, seed=2)
    wa, wb = a.get_weights(), b.get_weights()
    assert wa.keys() == wb.keys() and all(wa[k].tobytes() == wb[k].tobytes() for k in wa)
    va, vb = a.second_moments(), b.second_moments()
    assert va and all(va[k].tobytes() == vb[k].tobytes() for k in va)


@pytest.mark.skipif(not ON_BOARD, reason="only telling in a board process ($ORBITFL_BOARD_INPUTS)")
def test_a_board_process_has_loaded_no_onnx_scikit_learn_or_torch(inputs: Path) -> None:
    t = open_trainer(inputs / "mlp-sgd")
    x, y = read_partition(inputs / "test.npz")
    t.train(x, y, epochs=1)
    assert not {"onnx", "sklearn", "torch", "scipy"} & set(sys.modules)
    assert "onnxruntime" in sys.modules
