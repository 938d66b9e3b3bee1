"""GraphTrainer: portable training graphs on stock ONNX Runtime, optimizer in NumPy on the host."""

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

from orbitfl.agent.backends import BACKENDS, open_trainer
from orbitfl.agent.graph_trainer import CHECKPOINT_NAME, GraphTrainer
from orbitfl.agent.trainer import CheckpointError, Trainer, read_checkpoint_file
from orbitfl.data import Dataset, load_digits
from orbitfl.models import zoo

from .graph_artifacts import build, build_mlp_by_hand

ROOT = Path(__file__).resolve().parents[2]
ORTT_PY = ROOT / ".venv-ortt" / "bin" / "python"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def softmax_grad_last_bias(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d mean-CE / d last bias = mean(softmax(logits) - onehot), computed without ORT."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.asarray((p - np.eye(z.shape[1])[y]).mean(0))


def test_open_trainer_picks_the_graph_backend(tmp_path: Path) -> None:
    art = build(tmp_path, "mlp")
    assert json.loads((art / "manifest.json").read_text())["backend"] == "onnxruntime"
    t = open_trainer(art)
    assert isinstance(t, GraphTrainer) and isinstance(t, Trainer)
    assert BACKENDS == ("onnxruntime", "onnxruntime-training")
    assert t.parameter_names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_the_hand_written_mlp_graph_matches_the_builder_contract(tmp_path: Path, digits: Dataset) -> None:
    """The stand-in artifacts give the gradients NumPy computes (so tests built on them mean something)."""
    t = GraphTrainer(build_mlp_by_hand(zoo.build("mlp"), tmp_path))
    w = t.get_weights()
    x, y = digits.x_train[:32], digits.y_train[:32]
    outs = t._train_sess.run(None, {"input": x, "target": y.astype(np.int64), **w})
    h = x @ w["fc1.weight"].T + w["fc1.bias"]
    a = np.maximum(h, 0)
    z = a @ w["fc2.weight"].T + w["fc2.bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    dz = (p / p.sum(1, keepdims=True) - np.eye(10)[y]) / 32
    np.testing.assert_allclose(outs[1], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[4], dz.T @ a, atol=1e-6)
    np.testing.assert_allclose(outs[2], ((dz @ w["fc2.weight"]) * (h > 0)).T @ x, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "schedule"),
    [("mlp", [(2e-3, 15), (5e-4, 5)]), ("lenet-s", [(3e-3, 10), (1e-3, 5), (3e-4, 5)])],
)
def test_digits_accuracy_at_least_97_percent(
    tmp_path: Path, digits: Dataset, name: str, schedule: list[tuple[float, int]]
) -> None:
    t = GraphTrainer(build(tmp_path, name))
    before = t.evaluate(digits.x_test, digits.y_test)
    for step, (lr, epochs) in enumerate(schedule):
        m = t.train(digits.x_train, digits.y_train, epochs=epochs, learning_rate=lr, seed=step)
        assert m.samples == epochs * len(digits.x_train) and len(m.history) == epochs
    after = t.evaluate(digits.x_test, digits.y_test)
    assert after.accuracy is not None and after.accuracy >= 0.97, after
    assert after.loss < before.loss
    logits = t.predict(digits.x_test)
    assert logits.shape == (len(digits.x_test), 10)
    assert np.mean(np.argmax(logits, 1) == digits.y_test) == pytest.approx(after.accuracy)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_frozen_parameters_stay_bit_identical(tmp_path: Path, digits: Dataset, optimizer: str) -> None:
    t = GraphTrainer(build(tmp_path, "mlp", trainable=["fc2"], optimizer=optimizer))
    assert t.trainable_names == ["fc2.weight", "fc2.bias"]
    before = t.get_weights()
    m = t.train(digits.x_train, digits.y_train, epochs=2)
    after = t.get_weights()
    assert m.history[-1]["accuracy"] > m.history[0]["accuracy"]
    for n in ("fc1.weight", "fc1.bias"):
        assert before[n].tobytes() == after[n].tobytes(), n
    for n in t.trainable_names:
        assert not np.array_equal(before[n], after[n]), n
    assert set(t.second_moments()) == {"fc2.weight", "fc2.bias"}
    # a frozen parameter can still be set, and is used
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    t.set_weights({"fc1.weight": np.zeros((128, 64), np.float32), "fc1.bias": np.zeros(128, np.float32)})
    np.testing.assert_allclose(t.predict(x), np.tile(t.get_weights()["fc2.bias"], (4, 1)), rtol=1e-6)


def test_moe_trains_only_the_chosen_experts(tmp_path: Path, digits: Dataset) -> None:
    spec = zoo.build("moe", experts=4)
    chosen = zoo.expert_parameters(spec, [1, 3])
    t = GraphTrainer(build(tmp_path, "moe", spec=spec, trainable=chosen))
    assert t.trainable_names == chosen
    before = t.get_weights()
    m = t.train(digits.x_train, digits.y_train, epochs=3, learning_rate=3e-3)
    after = t.get_weights()
    for name in t.parameter_names:
        if name in chosen:
            assert not np.array_equal(before[name], after[name]), f"{name} did not train"
        else:
            assert before[name].tobytes() == after[name].tobytes(), f"{name} changed"
    assert m.accuracy is not None and m.accuracy > 0.5
    assert set(t.second_moments()) == set(chosen)


def test_adam_second_moments_are_v_after_one_step(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path, "mlp"))
    assert all(not v.any() for v in t.second_moments().values())
    x, y = digits.x_train[:32], digits.y_train[:32]
    g = softmax_grad_last_bias(t.predict(x), y)
    t.train(x, y, epochs=1, batch_size=32)
    v = t.second_moments()
    assert set(v) == set(t.trainable_names)
    np.testing.assert_allclose(v["fc2.bias"], 0.001 * g * g, rtol=1e-4, atol=1e-14)
    assert all(a.shape == t.parameter_shapes[k] and a.dtype == np.float32 for k, a in v.items())
    v["fc2.bias"][:] = 5  # a copy
    assert not np.any(t.second_moments()["fc2.bias"] == 5)


def test_sgd_substitute_tracks_squared_gradients(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path, "mlp", optimizer="sgd"), learning_rate=0.05)
    x, y = digits.x_train[:32], digits.y_train[:32]
    g = softmax_grad_last_bias(t.predict(x), y)
    b0 = t.get_weights()["fc2.bias"]
    t.train(x, y, epochs=1, batch_size=32)
    np.testing.assert_allclose(t.second_moments()["fc2.bias"], g * g, rtol=1e-4, atol=1e-14)
    np.testing.assert_allclose(t.get_weights()["fc2.bias"], b0 - 0.05 * g, rtol=1e-5, atol=1e-7)


def test_weights_round_trip_and_bad_weights_are_refused(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path, "mlp"))
    w = t.get_weights()
    new = {k: (v * 0.5).astype(np.float32) for k, v in w.items()}
    t.set_weights(new)
    got = t.get_weights()
    assert all(np.array_equal(got[k], new[k]) for k in w)
    got["fc1.bias"][:] = 7
    assert not np.any(t.get_weights()["fc1.bias"] == 7)
    from orbitfl.ort_import import onnxruntime

    inf = zoo.with_weights(zoo.build("mlp").model, new)
    sess = onnxruntime().InferenceSession(inf.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        t.predict(digits.x_test[:9]), sess.run(None, {"input": digits.x_test[:9]})[0], rtol=1e-5, atol=1e-6
    )
    good = t.get_weights()
    with pytest.raises(ValueError, match=r"unknown parameter 'fc3.weight'"):
        t.set_weights({"fc3.weight": good["fc2.weight"]})
    with pytest.raises(TypeError, match=r"'fc1.weight'.*float32.*float64"):
        t.set_weights({"fc1.weight": good["fc1.weight"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"'fc2.bias'.*\(10,\).*\(11,\)"):
        t.set_weights({"fc2.bias": np.zeros(11, np.float32)})
    with pytest.raises(TypeError, match=r"'fc2.bias'.*numpy.ndarray.*list"):
        t.set_weights({"fc2.bias": [0.0] * 10})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"'fc2.bias'.*NaN"):
        t.set_weights({"fc2.bias": np.full(10, np.nan, np.float32)})
    with pytest.raises(ValueError):
        t.set_weights({"fc1.bias": np.zeros(128, np.float32), "fc2.bias": np.zeros(3, np.float32)})
    assert np.array_equal(t.get_weights()["fc1.bias"], good["fc1.bias"])
    with pytest.raises(ValueError, match=r"unknown parameter 'nope'"):
        t.get_weights(["nope"])


def test_bad_inputs_are_refused_naming_what_was_wrong(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path, "mlp"))
    x, y = digits.x_train[:40], digits.y_train[:40]
    with pytest.raises(TypeError, match=r"integer class labels"):
        t.train(x, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"labels in 0..9"):
        t.train(x, y + 10)
    with pytest.raises(ValueError, match=r"shape \[N, 64\]"):
        t.train(x[:, :50], y)
    with pytest.raises(ValueError, match=r"40 samples but y has 39"):
        t.train(x, y[:39])
    with pytest.raises(TypeError, match=r"floating-point"):
        t.train(x.astype(np.int32), y)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        t.train(x.tolist(), y)  # type: ignore[arg-type]
    bad = x.copy()
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or infinity"):
        t.train(bad, y)
    with pytest.raises(ValueError, match=r"epochs"):
        t.train(x, y, epochs=0)
    with pytest.raises(ValueError, match=r"batch_size"):
        t.train(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"max_batches"):
        t.train(x, y, max_batches=0)
    with pytest.raises(ValueError, match=r"learning rate"):
        t.train(x, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"threads"):
        GraphTrainer(tmp_path, threads=0)
    with pytest.raises(ValueError, match=r"no manifest.json"):
        GraphTrainer(tmp_path / "nowhere")
    (tmp_path / "eval_step.onnx").unlink()
    with pytest.raises(ValueError, match=r"missing eval_step.onnx"):
        GraphTrainer(tmp_path)


def test_save_restore_and_corrupted_checkpoints(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path / "art", "mlp"))
    t.train(digits.x_train, digits.y_train, epochs=2)
    ck = t.save(tmp_path / "a.ckpt")
    saved_w, saved_v = t.get_weights(), t.second_moments()
    t.train(digits.x_train, digits.y_train, epochs=1)
    t.restore(ck)
    assert all(np.array_equal(t.get_weights()[k], saved_w[k]) for k in saved_w)
    assert all(np.array_equal(t.second_moments()[k], saved_v[k]) for k in saved_v)
    # restored optimizer state continues exactly like the original would have
    t.train(digits.x_train, digits.y_train, epochs=1, seed=9)
    other = GraphTrainer(tmp_path / "art")
    other.restore(ck)
    other.train(digits.x_train, digits.y_train, epochs=1, seed=9)
    assert all(other.get_weights()[k].tobytes() == v.tobytes() for k, v in t.get_weights().items())

    raw = bytearray(ck.read_bytes())
    current = t.get_weights()
    for label, damaged in [
        ("flipped", raw[:-100] + bytes([raw[-100] ^ 0x01]) + raw[-99:]),
        ("truncated", raw[: len(raw) // 2]),
        ("empty", bytearray()),
    ]:
        bad = tmp_path / f"{label}.ckpt"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=r"corrupted|truncated|not an orbitfl checkpoint"):
            t.restore(bad)
        assert all(np.array_equal(t.get_weights()[k], current[k]) for k in current), label
    with pytest.raises(CheckpointError, match=r"cannot read"):
        t.restore(tmp_path / "missing.ckpt")
    small = GraphTrainer(build(tmp_path / "art2", "mlp", hidden=[16]))
    with pytest.raises(CheckpointError, match=r"different model"):
        small.restore(ck)
    sgd = GraphTrainer(build(tmp_path / "art3", "mlp", optimizer="sgd"))
    with pytest.raises(CheckpointError, match=r"optimizer 'adamw'"):
        sgd.restore(ck)


def test_corrupted_checkpoint_in_a_checkpoint_dir_is_refused(tmp_path: Path, digits: Dataset) -> None:
    art = build(tmp_path / "art", "mlp")
    GraphTrainer(art).train(digits.x_train, digits.y_train, epochs=1, checkpoint_dir=tmp_path / "ck")
    path = tmp_path / "ck" / CHECKPOINT_NAME
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"corrupted"):
        GraphTrainer(art).train(digits.x_train, digits.y_train, epochs=1, checkpoint_dir=tmp_path / "ck")


def test_on_batch_stop_and_resume_match_an_uninterrupted_run(tmp_path: Path, digits: Dataset) -> None:
    art = build(tmp_path / "art", "mlp")
    x, y = digits.x_train, digits.y_train
    per_epoch = -(-len(x) // 32)
    ref = GraphTrainer(art)
    ref.train(x, y, epochs=2, seed=3)
    m1 = GraphTrainer(art).train(
        x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck", on_batch=lambda e, b: e == 1 and b == 7
    )
    assert m1.batches == per_epoch + 7 and m1.resumed_from is None
    second = GraphTrainer(art)
    m2 = second.train(x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck")
    assert m2.resumed_from == (1, 7) and m2.batches == per_epoch - 7
    assert [h["epoch"] for h in m2.history] == [1.0, 2.0]
    for k, v in ref.get_weights().items():
        assert v.tobytes() == second.get_weights()[k].tobytes(), k
    assert GraphTrainer(art).train(x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck").batches == 0
    fresh = GraphTrainer(art)
    fresh.set_weights({"fc2.bias": np.ones(10, np.float32)})
    assert fresh.train(x, y, epochs=1, seed=3, checkpoint_dir=tmp_path / "ck").resumed_from is None
    # a stop on the last batch of an epoch ends the call there; max_batches caps a call
    first = GraphTrainer(art).train(
        x, y, epochs=3, checkpoint_dir=tmp_path / "ck2", on_batch=lambda e, b: b == per_epoch
    )
    assert first.batches == per_epoch and len(first.history) == 1
    rest = GraphTrainer(art).train(x, y, epochs=3, checkpoint_dir=tmp_path / "ck2")
    assert rest.resumed_from == (1, 0) and rest.batches == 2 * per_epoch and len(rest.history) == 3
    capped = GraphTrainer(art).train(x, y, epochs=3, max_batches=per_epoch + 4)
    assert capped.batches == per_epoch + 4 and capped.epochs == pytest.approx(1 + 4 / per_epoch)


def test_reset_optimizer_forgets_moments(tmp_path: Path, digits: Dataset) -> None:
    t = GraphTrainer(build(tmp_path, "mlp"))
    t.train(digits.x_train[:64], digits.y_train[:64])
    w = t.get_weights()
    assert any(v.any() for v in t.second_moments().values())
    t.reset_optimizer()
    assert not any(v.any() for v in t.second_moments().values())
    assert all(np.array_equal(t.get_weights()[k], w[k]) for k in w)
    # after a reset the next step is a first step again: same as a fresh trainer's
    fresh = GraphTrainer(tmp_path)
    fresh.set_weights(w)
    t.train(digits.x_train[:32], digits.y_train[:32])
    fresh.train(digits.x_train[:32], digits.y_train[:32])
    assert all(fresh.get_weights()[k].tobytes() == v.tobytes() for k, v in t.get_weights().items())


def test_mse_regression_trains(tmp_path: Path) -> None:
    spec = zoo.build("mlp", hidden=[32], classes=4)
    t = GraphTrainer(build_mlp_by_hand(spec, tmp_path, loss="mse"), learning_rate=1e-2)
    rng = np.random.default_rng(0)
    x = rng.random((256, 64), dtype=np.float32)
    y = (x[:, :4] * 2 - 1).astype(np.float32)
    before = t.evaluate(x, y)
    t.train(x, y, epochs=30)
    after = t.evaluate(x, y)
    assert before.accuracy is None and after.loss < before.loss / 5
    with pytest.raises(TypeError, match=r"floating-point targets"):
        t.train(x, np.zeros(256, np.int64))


THREADS_CHILD = textwrap.dedent(
    """
    import os, sys, json
    from orbitfl.agent.graph_trainer import GraphTrainer
    def tasks(): return len(os.listdir("/proc/self/task"))
    before = tasks()
    t = GraphTrainer(sys.argv[1], threads=int(sys.argv[2]))
    print(json.dumps({"threads": t.threads, "extra": tasks() - before}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_thread_count_is_respected(tmp_path: Path) -> None:
    art = build(tmp_path, "mlp")
    got = {}
    for n in (1, 3):
        proc = subprocess.run(
            [sys.executable, "-c", THREADS_CHILD, str(art), str(n)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        got[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got[1]["threads"] == 1 and got[3]["threads"] == 3
    # intra-op pools of n threads add n - 1 workers per session (train and eval)
    assert got[3]["extra"] - got[1]["extra"] >= 2, got


# --- real processes: SIGKILL and resume; what a board imports ------------------------------------

EPOCHS, SEED = 4, 5
KILL_CHILD = textwrap.dedent(
    f"""
    import json, sys, time
    import numpy as np
    from orbitfl.agent.backends import open_trainer
    art, ck, out, data, slow = sys.argv[1:6]
    with np.load(data) as d:
        x, y = d["x"], d["y"]
    t = open_trainer(art)

    def on_batch(epoch, batch):
        if slow == "1":
            time.sleep(0.004 if epoch == 0 else 0.02)

    m = t.train(x, y, epochs={EPOCHS}, seed={SEED}, checkpoint_dir=ck, checkpoint_every=5,
                on_batch=on_batch)
    np.savez(out, **t.get_weights())
    print(json.dumps({{"resumed_from": m.resumed_from, "batches": m.batches, "kind": type(t).__name__}}))
    """
)


def _progress(path: Path) -> tuple[int, int] | None:
    try:
        meta, _ = read_checkpoint_file(path)
    except CheckpointError:
        return None
    p = meta["progress"]
    return int(p["epoch"]), int(p["batch"])


@pytest.mark.integration
def test_training_survives_kill_9_mid_epoch_and_resumes_bit_identical(
    tmp_path: Path, digits: Dataset
) -> None:
    art = build(tmp_path / "art", "mlp")
    data = tmp_path / "d.npz"
    np.savez(data, x=digits.x_train, y=digits.y_train)
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    ck = tmp_path / "ck"
    ckpt = ck / CHECKPOINT_NAME
    log = (tmp_path / "child.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, str(script), str(art), str(ck), str(tmp_path / "a.npz"), str(data), "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        p = _progress(ckpt) if ckpt.exists() else None
        if p is not None and p[0] >= 1 and p[1] >= 10:
            break
        time.sleep(0.005)
    assert child.poll() is None, (
        f"child ended before it could be killed: {(tmp_path / 'child.log').read_text()}"
    )
    time.sleep(0.013)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    log.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = _progress(ckpt)
    assert killed_at is not None and killed_at[0] < EPOCHS
    done = subprocess.run(
        [sys.executable, str(script), str(art), str(ck), str(tmp_path / "b.npz"), str(data), "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kind"] == "GraphTrainer" and tuple(report["resumed_from"]) == killed_at
    per_epoch = -(-len(digits.x_train) // 32)
    assert report["batches"] == EPOCHS * per_epoch - (killed_at[0] * per_epoch + killed_at[1])
    assert not list(ck.glob("*.tmp"))
    ref = GraphTrainer(art)
    ref.train(digits.x_train, digits.y_train, epochs=EPOCHS, seed=SEED)
    with np.load(tmp_path / "b.npz") as resumed:
        for name, value in ref.get_weights().items():
            assert resumed[name].tobytes() == value.tobytes(), name


BOARD = textwrap.dedent(
    """
    import sys
    REFUSED = ("onnx", "sklearn", "torch", "scipy")
    attempts = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in REFUSED:
                attempts.append(name)
                raise ImportError(f"a board process must not import {name}")
            return None

    sys.meta_path.insert(0, Refuse())
    import json
    import numpy as np
    from orbitfl.agent.backends import open_trainer

    art, data, out = sys.argv[1:4]
    with np.load(data) as d:
        x, y, xt, yt = d["x"], d["y"], d["xt"], d["yt"]
    t = open_trainer(art)
    t.train(x, y, epochs=3, checkpoint_dir=out + "/ck", checkpoint_every=10)
    acc = t.evaluate(xt, yt).accuracy
    t.predict(xt[:5])
    t.second_moments()
    t.save(out + "/t.ckpt")
    t.restore(out + "/t.ckpt")
    tops = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"attempts": attempts, "kind": type(t).__name__, "accuracy": acc, "modules": tops,
                      "loaded": [m for m in REFUSED if m in sys.modules]}))
    """
)


@pytest.mark.integration
def test_a_board_process_imports_numpy_onnxruntime_and_orbitfl_only(tmp_path: Path, digits: Dataset) -> None:
    art = build(tmp_path / "art", "mlp")  # the parent may import onnx; the child may not
    data = tmp_path / "d.npz"
    np.savez(data, x=digits.x_train, y=digits.y_train, xt=digits.x_test, yt=digits.y_test)
    proc = subprocess.run(
        [sys.executable, "-c", BOARD, str(art), str(data), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kind"] == "GraphTrainer" and report["accuracy"] > 0.8
    assert report["attempts"] == [] and report["loaded"] == []
    allowed = {"orbitfl", "numpy", "onnxruntime", "cython_runtime"}  # the last: numpy.random's Cython
    others = set(report["modules"]) - set(sys.stdlib_module_names) - allowed
    assert not {m for m in others if not m.startswith("_")}, others


# --- the old backend, side by side (needs .venv-ortt: onnxruntime-training, x86-64, Python <= 3.11) ----

COMPARE = textwrap.dedent(
    """
    import inspect, json, sys
    import numpy as np
    from orbitfl.agent.graph_trainer import GraphTrainer
    from orbitfl.agent.ort_trainer import OrtTrainer
    from orbitfl.models import artifacts, zoo

    graph_art, ort_art, data, name = sys.argv[1:5]
    spec = zoo.build(name)
    new_builder = "backend" in inspect.signature(artifacts.build_artifacts).parameters
    kw = {"backend": "onnxruntime-training"} if new_builder else {}
    artifacts.build_artifacts(spec, ort_art, **kw)
    with np.load(data) as d:
        x, y = d["x"], d["y"]
    losses = {}
    for label, cls, art in (("graph", GraphTrainer, graph_art), ("ort", OrtTrainer, ort_art)):
        t = cls(art)
        t.set_weights(zoo.get_weights(spec.model))
        # per-batch losses: one call per batch, in the order one seeded epoch would take them
        order = np.random.default_rng([1, 0]).permutation(len(x))
        losses[label] = [
            t.train(x[order[s:s + 32]], y[order[s:s + 32]], epochs=1, batch_size=32).loss
            for s in range(0, len(x), 32)
        ]
    print(json.dumps(losses))
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mlp", "lenet-s"])
def test_per_batch_losses_match_onnxruntime_training(tmp_path: Path, digits: Dataset, name: str) -> None:
    if not ORTT_PY.exists():
        pytest.skip(f"{ORTT_PY.parent.parent} is absent (create it: python3 tools/dev.py ortt)")
    art = build(tmp_path / "graph", name)
    data = tmp_path / "d.npz"
    np.savez(data, x=digits.x_train, y=digits.y_train)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(ORTT_PY), "-c", COMPARE, str(art), str(tmp_path / "ort"), str(data), name],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    graph, ort = np.array(got["graph"]), np.array(got["ort"])
    assert len(graph) == len(ort) == -(-len(digits.x_train) // 32)
    np.testing.assert_allclose(graph, ort, rtol=0, atol=1e-5)
