#!/usr/bin/env python3
"""Write what a board that trains gets from the host, for tests/agent/test_board_trainer.py.

    python tools/cross/board_inputs.py OUT_DIR

OUT_DIR/mlp-adamw and OUT_DIR/mlp-sgd: the zoo's mlp as training artifacts for stock ONNX Runtime
(`orbitfl model build` does the same); OUT_DIR/train.npz and test.npz: the digits split as partition
files (orbitfl.data.partition_file). Runs on the host (it needs onnx and scikit-learn); the board
process reads the results with numpy and onnxruntime only. tools/cross/aarch64.py runs it before the
emulated pytest run and passes OUT_DIR as $ORBITFL_BOARD_INPUTS.
"""

from __future__ import annotations

import sys
from pathlib import Path

OPTIMIZERS = ("adamw", "sgd")


def write(out: Path) -> Path:
    from orbitfl.data import load_digits
    from orbitfl.data.partition_file import write_partition
    from orbitfl.models.artifacts import build_artifacts
    from orbitfl.models.zoo import build

    for optimizer in OPTIMIZERS:
        build_artifacts(build("mlp"), out / f"mlp-{optimizer}", optimizer=optimizer)
    digits = load_digits()
    write_partition(out / "train.npz", digits.x_train, digits.y_train)
    write_partition(out / "test.npz", digits.x_test, digits.y_test)
    (out / ".ready").touch()
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(write(Path(sys.argv[1])))
