"""Offline data sets: digits, mnist1d, MNIST IDX files (raw, gzip, corrupted), hyperspectral scene."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from orbitfl import data


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def test_digits_is_the_real_8x8_set_split_by_seed() -> None:
    pytest.importorskip("sklearn")
    d = data.load_digits()
    assert d.x_train.shape[1] == 64 and d.sample_shape == (8, 8) and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    assert set(np.unique(d.y_test)) == set(range(10))
    again, other = data.load_digits(), data.load_digits(seed=1)
    assert np.array_equal(d.x_test, again.x_test) and not np.array_equal(d.x_test, other.x_test)
    # train and test are disjoint rows of the one data set
    rows = {r.tobytes() for r in d.x_test}
    assert sum(r.tobytes() in rows for r in d.x_train) < 20  # only digits drawn identically twice
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)


def test_mnist1d_is_generated_offline_and_leaves_global_rng_alone() -> None:
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    d = data.load_mnist1d(num_samples=1000)
    assert np.random.random() == expected_next
    assert d.x_train.shape == (800, 40) and d.x_test.shape == (200, 40) and d.num_classes == 10
    assert set(np.unique(d.y_train)) == set(range(10))
    assert np.array_equal(d.x_train, data.load_mnist1d(num_samples=1000).x_train)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "i", imgs, gz=gz)), imgs)
    floats = rng.random((3, 4)).astype(">f4")
    got = data.read_idx(write_idx(tmp_path / "f", floats, gz=gz))
    assert got.dtype == np.float32 and np.array_equal(got, floats)


def test_load_mnist_from_a_folder_of_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), gz=True
    )
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 12, dtype=np.uint8), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 9, 3, 3], np.uint8))
    d = data.load_mnist(tmp_path)
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (4, 784) and d.sample_shape == (28, 28)
    assert d.y_test.tolist() == [0, 9, 3, 3] and d.x_train.max() <= 1.0
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="no t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)


def test_corrupted_idx_files_are_refused_clearly(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good", np.arange(100, dtype=np.uint8).reshape(10, 10))
    raw = good.read_bytes()
    cases = {
        "truncated": (raw[:-7], r"header says \(10, 10\) \(100 bytes of data\) but the file holds 93"),
        "badmagic": (b"\x08\x03" + raw[2:], "not an IDX file"),
        "badtype": (raw[:2] + b"\x42" + raw[3:], "unknown IDX element type 0x42"),
        "shortheader": (raw[:6], "truncated IDX header"),
        "empty": (b"", "not an IDX file"),
        "badgzip": (gzip.compress(raw)[:-12], "corrupted gzip"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=match) as info:
            data.read_idx(path)
        assert name in str(info.value)  # the error names the file
    with pytest.raises(ValueError, match="cannot read IDX file"):
        data.read_idx(tmp_path / "missing")


def test_hyperspectral_scene_follows_the_linear_mixing_model() -> None:
    s = data.make_hyperspectral_scene(
        height=40, width=50, bands=32, endmembers=3, targets=2, target_fraction=0.01, noise=0.0, seed=4
    )
    assert s.pixels.shape == (2000, 32) and s.shape == (40, 50) and s.endmembers.shape == (3, 32)
    bg = s.labels == 0
    np.testing.assert_allclose(s.pixels[bg], s.abundances[bg] @ s.endmembers, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.abundances.sum(1), 1.0, rtol=1e-5)
    assert (s.labels > 0).sum() == 20 and set(np.unique(s.labels)) == {0, 1, 2}
    # targets are not in the span of the background: least-squares unmixing leaves a residual
    coef, *_ = np.linalg.lstsq(s.endmembers.T, s.pixels[~bg].T, rcond=None)
    assert np.mean(np.abs(s.endmembers.T @ coef - s.pixels[~bg].T)) > 1e-3
    again = data.make_hyperspectral_scene(height=40, width=50, bands=32, endmembers=3, seed=4, noise=0.0)
    assert np.array_equal(again.endmembers, s.endmembers)
    ds = data.load_hyperspectral(height=16, width=16, bands=32)
    assert ds.task == "regression" and np.array_equal(ds.x_train, ds.y_train) and ds.num_classes == 0
    assert len(ds.info["labels_train"]) == len(ds.x_train)
    with pytest.raises(ValueError, match="bands must be positive"):
        data.make_hyperspectral_scene(bands=0)


def test_unknown_data_set_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'.*digits, mnist1d, mnist, hyperspectral"):
        data.load("cifar")
