"""The old backend (OrtTrainer) in real processes: training survives SIGKILL mid-epoch; no path of
orbitfl imports torch. GraphTrainer's own process tests are in test_graph_trainer.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from orbitfl.ort_import import OrtUnavailableError, training_api

try:
    training_api()
except OrtUnavailableError as exc:  # e.g. aarch64: no onnxruntime-training wheel
    pytest.skip(str(exc), allow_module_level=True)

from orbitfl.agent.ort_trainer import CHECKPOINT_NAME, OrtTrainer
from orbitfl.agent.trainer import CheckpointError, read_checkpoint_file
from orbitfl.data import load_digits
from orbitfl.models import artifacts, zoo

EPOCHS, SEED = 4, 5

CHILD = (
    textwrap.dedent(
        """
    import json, sys, time
    import numpy as np
    from orbitfl.agent.ort_trainer import OrtTrainer
    from orbitfl.data import load_digits

    art, ck, out, slow = sys.argv[1:5]
    d = load_digits(seed=0)
    t = OrtTrainer(art)

    def on_batch(epoch, batch):
        if slow == "1":  # from the second epoch on, leave the parent a wide window to kill us in
            time.sleep(0.004 if epoch == 0 else 0.02)

    m = t.train(d.x_train, d.y_train, epochs=EPOCHS, seed=SEED, checkpoint_dir=ck, checkpoint_every=5,
                on_batch=on_batch)
    np.savez(out, **t.get_weights())
    print(json.dumps({"resumed_from": m.resumed_from, "batches": m.batches}))
    """
    )
    .replace("EPOCHS", str(EPOCHS))
    .replace("SEED", str(SEED))
)


def progress(path: Path) -> tuple[int, int] | None:
    try:
        meta, _ = read_checkpoint_file(path)
    except CheckpointError:
        return None
    p = meta["progress"]
    return int(p["epoch"]), int(p["batch"])


@pytest.mark.integration
def test_training_survives_kill_9_mid_epoch_and_resumes(tmp_path: Path) -> None:
    art = tmp_path / "art"
    artifacts.build_artifacts(zoo.build("lenet-s"), art, backend="onnxruntime-training")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ck = tmp_path / "ck"
    ckpt = ck / CHECKPOINT_NAME

    log = (tmp_path / "child.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, str(script), str(art), str(ck), str(tmp_path / "a.npz"), "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    # Wait until the child is inside its second epoch, past a mid-epoch checkpoint, then kill it.
    while time.monotonic() < deadline and child.poll() is None:
        p = progress(ckpt) if ckpt.exists() else None
        if p is not None and p[0] >= 1 and p[1] >= 10:
            break
        time.sleep(0.005)
    assert child.poll() is None, (
        f"child ended before it could be killed: {(tmp_path / 'child.log').read_text()}"
    )
    time.sleep(0.013)  # land between checkpoints
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    log.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = progress(ckpt)
    assert killed_at is not None and killed_at[0] < EPOCHS, killed_at
    assert not (tmp_path / "a.npz").exists()

    done = subprocess.run(
        [sys.executable, str(script), str(art), str(ck), str(tmp_path / "b.npz"), "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(report["resumed_from"]) == killed_at
    per_epoch = -(-len(load_digits(seed=0).x_train) // 32)
    assert report["batches"] == EPOCHS * per_epoch - (killed_at[0] * per_epoch + killed_at[1])
    assert not list(ck.glob("*.tmp"))

    # The resumed result equals a run that was never interrupted, bit for bit.
    d = load_digits(seed=0)
    ref = OrtTrainer(art)
    ref.train(d.x_train, d.y_train, epochs=EPOCHS, seed=SEED)
    with np.load(tmp_path / "b.npz") as resumed:
        for name, value in ref.get_weights().items():
            assert resumed[name].tobytes() == value.tobytes(), name


BLOCKER = textwrap.dedent(
    """
    import sys
    attempts = []

    class TorchBlocker:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, TorchBlocker())
    """
)

TORCH_FREE = BLOCKER + textwrap.dedent(
    """
    import json
    from orbitfl.cli import main
    from orbitfl.data import load_digits

    out = sys.argv[1]
    old = ["--backend", "onnxruntime-training"]
    assert main(["model", "build", "mlp", "--out", out + "/mlp", *old]) == 0
    assert main(["model", "build", "moe", "--out", out + "/moe", "--trainable", "expert.0", *old]) == 0
    from orbitfl.agent.ort_trainer import OrtTrainer
    d = load_digits()
    t = OrtTrainer(out + "/mlp")
    t.train(d.x_train, d.y_train, epochs=3)
    acc = t.evaluate(d.x_test, d.y_test).accuracy
    t.second_moments()
    t.save(out + "/t.ckpt")
    t.restore(out + "/t.ckpt")
    assert main(["model", "train", out + "/moe", "--epochs", "1"]) == 0
    print(json.dumps({"attempts": attempts, "torch_loaded": "torch" in sys.modules, "accuracy": acc}))
    """
)


@pytest.mark.integration
def test_build_train_evaluate_never_import_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [] and report["torch_loaded"] is False
    assert report["accuracy"] > 0.8


@pytest.mark.integration
def test_the_blocker_sees_the_trap_a_plain_import_falls_into() -> None:
    """Control: without orbitfl.ort_import, importing onnxruntime's training API reaches for torch
    (whether or not torch is installed), so the test above can fail."""
    code = (
        BLOCKER
        + "try:\n    import onnxruntime.training.api\nexcept ImportError:\n    pass\nprint(attempts)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "'torch'" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
