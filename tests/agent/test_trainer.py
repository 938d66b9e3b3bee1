"""Both trainer backends on real data: accuracy, frozen experts, weights, curvature, checkpoints.

Every test runs once per backend (the ``backend`` fixture): "onnxruntime" (GraphTrainer, stock ORT)
wherever onnxruntime is installed, "onnxruntime-training" (OrtTrainer) only where the training
build is (.venv-ortt: x86-64, CPython <= 3.11); the other is skipped, saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.trainer import CheckpointError, Trainer
from orbitfl.data import Dataset, load_digits
from orbitfl.models import artifacts, zoo
from orbitfl.ort_import import OrtUnavailableError, onnxruntime, training_api


def _unavailable(backend: str) -> str | None:
    try:
        onnxruntime() if backend == "onnxruntime" else training_api()
    except OrtUnavailableError as exc:  # e.g. aarch64 or CPython 3.12+: no onnxruntime-training wheel
        return str(exc)
    return None


@pytest.fixture(params=["onnxruntime", "onnxruntime-training"])
def backend(request: pytest.FixtureRequest) -> str:
    why = _unavailable(request.param)
    if why:
        pytest.skip(why)
    return str(request.param)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def build(tmp: Path, name: str, backend: str, **kw: object) -> Path:
    options = {k: v for k, v in kw.items() if k not in ("trainable", "optimizer")}
    artifacts.build_artifacts(
        zoo.build(name, **options),
        tmp,
        trainable=kw.get("trainable"),  # type: ignore[arg-type]
        optimizer=str(kw.get("optimizer", "adamw")),
        backend=backend,
    )
    return tmp


def test_trainer_implements_the_interface(backend: str, tmp_path: Path) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend))
    assert isinstance(t, Trainer)
    assert type(t).__name__ == {"onnxruntime": "GraphTrainer", "onnxruntime-training": "OrtTrainer"}[backend]


@pytest.mark.parametrize(
    ("name", "schedule"),
    [("mlp", [(2e-3, 15), (5e-4, 5)]), ("lenet-s", [(3e-3, 10), (1e-3, 5), (3e-4, 5)])],
)
def test_centralised_digits_accuracy_at_least_97_percent(
    backend: str, tmp_path: Path, digits: Dataset, name: str, schedule: list[tuple[float, int]]
) -> None:
    t = open_trainer(build(tmp_path, name, backend))
    before = t.evaluate(digits.x_test, digits.y_test)
    for step, (lr, epochs) in enumerate(schedule):
        m = t.train(digits.x_train, digits.y_train, epochs=epochs, learning_rate=lr, seed=step)
        assert m.samples == epochs * len(digits.x_train) and len(m.history) == epochs
    after = t.evaluate(digits.x_test, digits.y_test)
    assert before.accuracy is not None and after.accuracy is not None
    assert after.accuracy >= 0.97, after
    assert after.loss < before.loss
    logits = t.predict(digits.x_test)
    assert logits.shape == (len(digits.x_test), 10)
    assert np.mean(np.argmax(logits, 1) == digits.y_test) == pytest.approx(after.accuracy)


def test_moe_trains_only_the_chosen_experts(backend: str, tmp_path: Path, digits: Dataset) -> None:
    spec = zoo.build("moe", experts=4)
    chosen = zoo.expert_parameters(spec, [1, 3])
    artifacts.build_artifacts(spec, tmp_path, trainable=chosen, backend=backend)
    t = open_trainer(tmp_path)
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


def test_weights_round_trip_and_bad_weights_are_refused(
    backend: str, tmp_path: Path, digits: Dataset
) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend))
    w = t.get_weights()
    assert list(w) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    new = {k: (v * 0.5).astype(np.float32) for k, v in w.items()}
    t.set_weights(new)
    got = t.get_weights()
    assert all(np.array_equal(got[k], new[k]) for k in w)
    got["fc1.bias"][:] = 7  # a copy: the trainer is unaffected
    assert not np.any(t.get_weights()["fc1.bias"] == 7)
    # a set_weights'd model predicts what the same weights predict in plain ONNX Runtime inference
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
    # all-or-nothing: a valid entry next to a bad one is not applied
    with pytest.raises(ValueError):
        t.set_weights({"fc1.bias": np.zeros(128, np.float32), "fc2.bias": np.zeros(3, np.float32)})
    assert np.array_equal(t.get_weights()["fc1.bias"], good["fc1.bias"])
    with pytest.raises(ValueError, match=r"unknown parameter 'nope'"):
        t.get_weights(["nope"])


def test_bad_training_data_is_refused(backend: str, tmp_path: Path, digits: Dataset) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend))
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
    with pytest.raises(ValueError, match=r"epochs"):
        t.train(x, y, epochs=0)


def test_adam_second_moments_are_the_optimizers_v(backend: str, tmp_path: Path, digits: Dataset) -> None:
    """After one AdamW step from zero state, v = (1 - beta2) g^2. For the last bias of an MLP under
    mean cross-entropy, g = mean(softmax(logits) - onehot), computable here without ORT's help."""
    t = open_trainer(build(tmp_path, "mlp", backend))
    assert all(not v.any() for v in t.second_moments().values())  # zero before any step
    x, y = digits.x_train[:32], digits.y_train[:32]
    logits = t.predict(x).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(10)[y]).mean(0)
    t.train(x, y, epochs=1, batch_size=32)
    v = t.second_moments()
    assert set(v) == set(t.trainable_names)
    np.testing.assert_allclose(v["fc2.bias"], 0.001 * g * g, rtol=1e-3, atol=1e-12)
    assert all(a.shape == t.parameter_shapes[k] and a.dtype == np.float32 for k, a in v.items())


def test_sgd_second_moments_substitute_tracks_squared_gradients(
    backend: str, tmp_path: Path, digits: Dataset
) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend, optimizer="sgd"), learning_rate=0.05)
    x, y = digits.x_train[:32], digits.y_train[:32]
    logits = t.predict(x).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(10)[y]).mean(0)
    t.train(x, y, epochs=1, batch_size=32)
    # one step, bias-corrected: exactly g^2
    np.testing.assert_allclose(t.second_moments()["fc2.bias"], g * g, rtol=1e-3, atol=1e-12)


def test_save_restore_and_corrupted_checkpoints(backend: str, tmp_path: Path, digits: Dataset) -> None:
    t = open_trainer(build(tmp_path / "art", "mlp", backend))
    t.train(digits.x_train, digits.y_train, epochs=2)
    ck = t.save(tmp_path / "a.ckpt")
    saved_w, saved_v = t.get_weights(), t.second_moments()
    t.train(digits.x_train, digits.y_train, epochs=1)
    assert not np.array_equal(t.get_weights()["fc1.weight"], saved_w["fc1.weight"])
    t.restore(ck)
    assert all(np.array_equal(t.get_weights()[k], saved_w[k]) for k in saved_w)
    assert all(np.array_equal(t.second_moments()[k], saved_v[k]) for k in saved_v)  # optimizer state too

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
    # a valid checkpoint of another model is refused too
    other = open_trainer(build(tmp_path / "art2", "mlp", backend, hidden=[16]))
    with pytest.raises(CheckpointError, match=r"different model"):
        other.restore(ck)


def test_corrupted_checkpoint_in_a_checkpoint_dir_is_refused_not_ignored(
    backend: str, tmp_path: Path, digits: Dataset
) -> None:
    art = build(tmp_path / "art", "mlp", backend)
    t = open_trainer(art)
    t.train(digits.x_train, digits.y_train, epochs=1, checkpoint_dir=tmp_path / "ck")
    path = tmp_path / "ck" / "train.ckpt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"corrupted"):
        open_trainer(art).train(digits.x_train, digits.y_train, epochs=1, checkpoint_dir=tmp_path / "ck")


def test_checkpoint_dir_resume_matches_an_uninterrupted_run(
    backend: str, tmp_path: Path, digits: Dataset
) -> None:
    """Stop mid-epoch (as a contact window would), resume in a new trainer: bit-identical result."""
    art = build(tmp_path / "art", "lenet-s", backend)
    x, y = digits.x_train, digits.y_train
    ref = open_trainer(art)
    ref.train(x, y, epochs=2, seed=3)

    first = open_trainer(art)
    m1 = first.train(
        x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck", on_batch=lambda e, b: e == 1 and b == 7
    )
    assert m1.batches == 45 + 7 and m1.resumed_from is None
    second = open_trainer(art)
    m2 = second.train(x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck")
    assert m2.resumed_from == (1, 7) and m2.batches == 45 - 7
    assert [h["epoch"] for h in m2.history] == [1.0, 2.0]
    for k, v in ref.get_weights().items():
        assert v.tobytes() == second.get_weights()[k].tobytes(), k
    # the finished run is not trained again
    assert open_trainer(art).train(x, y, epochs=2, seed=3, checkpoint_dir=tmp_path / "ck").batches == 0
    # a different run (other starting weights) does not pick up this checkpoint
    fresh = open_trainer(art)
    fresh.set_weights({"fc3.bias": np.ones(10, np.float32)})
    assert fresh.train(x, y, epochs=1, seed=3, checkpoint_dir=tmp_path / "ck").resumed_from is None


def test_reset_optimizer_forgets_moments(backend: str, tmp_path: Path, digits: Dataset) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend))
    t.train(digits.x_train[:64], digits.y_train[:64])
    w = t.get_weights()
    assert any(v.any() for v in t.second_moments().values())
    t.reset_optimizer()
    assert not any(v.any() for v in t.second_moments().values())
    assert all(np.array_equal(t.get_weights()[k], w[k]) for k in w)


def test_spectral_cnn_learns_the_background_and_flags_targets(backend: str, tmp_path: Path) -> None:
    from orbitfl.data import load_hyperspectral

    ds = load_hyperspectral(height=48, width=48, bands=64, target_fraction=0.02, seed=1)
    t = open_trainer(build(tmp_path, "spectral-cnn", backend), learning_rate=3e-3)
    before = t.evaluate(ds.x_test, ds.y_test).loss
    t.train(ds.x_train, ds.y_train, epochs=15, batch_size=64)
    after = t.evaluate(ds.x_test, ds.y_test)
    assert after.accuracy is None and after.loss < before / 5
    err = ((t.predict(ds.x_test) - ds.y_test) ** 2).mean(1)
    labels = ds.info["labels_test"]
    assert (labels > 0).any()
    # rare target spectra are reconstructed worse than the background the model learned
    assert np.median(err[labels > 0]) > 2 * np.median(err[labels == 0])


def test_frozen_parameters_can_be_set_and_are_used(backend: str, tmp_path: Path) -> None:
    t = open_trainer(build(tmp_path, "mlp", backend, trainable=["fc2"]))
    assert t.trainable_names == ["fc2.weight", "fc2.bias"]
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    t.set_weights({"fc1.weight": np.zeros((128, 64), np.float32), "fc1.bias": np.zeros(128, np.float32)})
    # hidden layer all zero: every logit is fc2's bias
    np.testing.assert_allclose(t.predict(x), np.tile(t.get_weights()["fc2.bias"], (4, 1)), rtol=1e-6)
    assert set(t.second_moments()) == {"fc2.weight", "fc2.bias"}


def test_cli_train_reports_accuracy_and_refuses_mismatched_data(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orbitfl.cli import main

    art = build(tmp_path / "art", "mlp", backend)
    assert (
        main(
            ["model", "train", str(art), "--epochs", "5", "--json", "--save-weights", str(tmp_path / "w.npz")]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "mlp" and report["test_accuracy"] > 0.9
    with np.load(tmp_path / "w.npz") as w:
        assert set(w.files) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert main(["model", "train", str(art), "--data", "hyperspectral", "--epochs", "1"]) == 2
    assert "integer class labels" in capsys.readouterr().err
    assert main(["model", "train", str(tmp_path / "nowhere")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_stop_on_the_last_batch_of_an_epoch_ends_the_call_there(
    backend: str, tmp_path: Path, digits: Dataset
) -> None:
    art = build(tmp_path / "art", "mlp", backend)
    per_epoch = -(-len(digits.x_train) // 32)
    first = open_trainer(art).train(
        digits.x_train,
        digits.y_train,
        epochs=3,
        checkpoint_dir=tmp_path / "ck",
        on_batch=lambda e, b: b == per_epoch,
    )
    assert first.batches == per_epoch and len(first.history) == 1
    rest = open_trainer(art).train(digits.x_train, digits.y_train, epochs=3, checkpoint_dir=tmp_path / "ck")
    assert rest.resumed_from == (1, 0) and rest.batches == 2 * per_epoch and len(rest.history) == 3
    capped = open_trainer(art).train(digits.x_train, digits.y_train, epochs=3, max_batches=per_epoch + 4)
    assert capped.batches == per_epoch + 4 and capped.epochs == pytest.approx(1 + 4 / per_epoch)
