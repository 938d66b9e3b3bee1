"""The user's own data in the three formats, and the one-line refusals of data a model cannot take."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from orbitfl.data.user_data import DataError, check_fits, load_source
from orbitfl.runtime.config import ConfigError, parse_agent, parse_ground


def _xy(n: int = 50, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


def test_npz_with_and_without_a_test_split(tmp_path: Path) -> None:
    x, y = _xy()
    xt, yt = _xy(10, seed=1)
    np.savez(tmp_path / "both.npz", x=x, y=y, x_test=xt, y_test=yt)
    d = load_source(str(tmp_path / "both.npz"))
    np.testing.assert_array_equal(d.x_test, xt)
    np.testing.assert_array_equal(d.y_train, y)
    assert d.sample_shape == (4,) and d.task == "classification" and d.num_classes == 3

    np.savez(tmp_path / "train.npz", x=x, y=y)
    a, b = load_source(str(tmp_path / "train.npz"), seed=3), load_source(str(tmp_path / "train.npz"), seed=3)
    assert len(a.x_test) == 10 and len(a.x_train) == 40  # a held-out 20 %, the same for a seed
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not {tuple(r) for r in a.x_test} & {tuple(r) for r in a.x_train}


def test_npy_folder_keeps_the_sample_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 255, (30, 2, 3, 3)).astype(np.uint8))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 30))
    d = load_source(str(tmp_path))
    assert d.sample_shape == (2, 3, 3) and d.x_train.shape[1] == 18 and d.x_train.dtype == np.float32
    check_fits(d, (2, 3, 3), 2)


def _idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_folder_in_the_mnist_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, n in (("train", 20), ("t10k", 5)):
        _idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 4)))
        _idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    d = load_source(str(tmp_path))
    assert len(d.x_train) == 20 and len(d.x_test) == 5 and d.sample_shape == (4, 4)
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0


@pytest.mark.parametrize(
    ("arrays", "expect"),
    [
        ({"x": np.zeros((5, 2), np.float32)}, "no array 'y'"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(4, np.int64)}, "y has 4 entries but x has 5 samples"),
        ({"x": np.zeros(5), "y": np.zeros(5, np.int64)}, "x must be [N, ...]"),
        ({"x": np.full((5, 2), np.nan), "y": np.zeros(5, np.int64)}, "x has NaN"),
        ({"x": np.zeros((5, 2)), "y": np.full(5, -1)}, "labels must be >= 0"),
        (
            {"x": np.zeros((5, 2)), "y": np.zeros(5, np.int64), "x_test": np.zeros((2, 2))},
            "x_test and y_test come together",
        ),
    ],
)
def test_bad_arrays_are_refused_naming_the_array(
    tmp_path: Path, arrays: dict[str, np.ndarray], expect: str
) -> None:
    np.savez(tmp_path / "d.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path / "d.npz"))
    assert expect in str(err.value) and "d.npz" in str(err.value) and "\n" not in str(err.value)


def test_missing_or_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        load_source(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_source(str(tmp_path / "junk.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"x\.npy and y\.npy"):
        load_source(str(tmp_path / "empty"))


def test_check_fits_names_the_array_its_shape_and_the_expected_one(tmp_path: Path) -> None:
    x, y = _xy(features=5, classes=4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_source(str(tmp_path / "d.npz"))
    with pytest.raises(
        DataError, match=r"x has shape \(50, 5\), but the model's input expects samples of shape \(6,\)"
    ):
        check_fits(d, (6,), 4)
    with pytest.raises(DataError, match=r"y has label 3, but the model has 3 outputs \(labels 0..2\)"):
        check_fits(d, (5,), 3)
    check_fits(d, (5,), 4)
    check_fits(d, (5,), 3, task="regression")  # labels are not classes there


def test_config_takes_paths_relative_to_its_file_and_trainable_patterns(tmp_path: Path) -> None:
    doc = {
        "agent": {"name": "b", "ground": "tcp://127.0.0.1:1", "state_dir": "s", "insecure": True},
        "data": {"dataset": "data/own.npz"},
        "train": {"model": "own.onnx", "trainable": ["head", "hidden.*"]},
    }
    a = parse_agent(doc, tmp_path)
    assert a.data.dataset == str(tmp_path / "data" / "own.npz")
    assert a.train.model == str(tmp_path / "own.onnx") and a.train.trainable == ("head", "hidden.*")
    assert parse_agent({**doc, "train": {"model": "mlp"}}, tmp_path).train.model == "mlp"
    with pytest.raises(ConfigError, match=r"train.trainable: must be a list of strings"):
        parse_agent({**doc, "train": {"trainable": "head"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"data.dataset: must be one of digits, mnist1d or a path"):
        parse_agent({**doc, "data": {"dataset": "cifar"}}, tmp_path)
    g = parse_ground(
        {
            "ground": {"bind": "tcp://127.0.0.1:1", "state_dir": "s", "insecure": True},
            "federation": {"model": "/abs/own.onnx", "eval_dataset": "./own.npz"},
        },
        tmp_path,
    )
    assert g.federation.model == "/abs/own.onnx" and g.federation.eval_dataset == str(tmp_path / "own.npz")
