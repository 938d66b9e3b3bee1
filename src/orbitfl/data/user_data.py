"""The user's own data: a built-in data set by name, or a path to an ``.npz``, a folder of IDX files
or a folder of ``.npy`` files, loaded into the same :class:`Dataset` the zoo's data sets use.

- ``.npz``: arrays ``x`` and ``y``, optionally ``x_test`` and ``y_test`` (read with
  ``allow_pickle=False``);
- a folder of ``.npy`` files with the same four names (``x.npy``, ``y.npy``, ...);
- a folder of IDX files in the MNIST layout (``train-images-idx3-ubyte[.gz]`` and the other three).

Without a test split, a seeded 20 % of the samples becomes one, so the ground can score the model
on data no agent trains on. Integer labels make a classification task; float targets a regression.
Everything wrong is a :class:`DataError` whose one line names the file, the array and its shape.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from orbitfl.data.datasets import DATASETS, Dataset, _split, load, load_mnist

ARRAYS = ("x", "y", "x_test", "y_test")
TEST_FRACTION = 0.2


class DataError(ValueError):
    """Data that cannot be used; the message is one line naming the source and the problem."""


def is_data_path(source: str) -> bool:
    """Whether a ``dataset`` setting is a path (anything that is not a built-in data set's name)."""
    return source not in DATASETS


def load_source(source: str | Path, *, seed: int = 0) -> Dataset:
    """A built-in data set by name (seeded), or the user's data at a path."""
    if source == "mnist":  # a fixed train/test split, from the offline cache: nothing to seed
        return load_mnist()
    if isinstance(source, str) and not is_data_path(source):
        return load(source, seed=seed)
    p = Path(source).expanduser()
    if p.is_file():
        return _from_arrays(p, _read_npz(p), seed)
    if p.is_dir():
        if any(p.glob("*.npy")):
            return _from_arrays(p, _read_npy_folder(p), seed)
        if any(p.glob("*idx*")):
            try:
                return load_mnist(p)
            except ValueError as exc:
                raise DataError(str(exc)) from None
        raise DataError(f"{p}: a data folder must hold x.npy and y.npy, or the four MNIST IDX files")
    raise DataError(
        f"{source}: no such data file or folder (and not a built-in data set: {', '.join(DATASETS)})"
    )


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{p}: a single array; an .npz with arrays x and y is expected")
        with loaded as npz:
            return {k: np.asarray(npz[k]) for k in npz.files if k in ARRAYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz ({exc})") from None


def _read_npy_folder(p: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in ARRAYS:
        f = p / f"{key}.npy"
        if f.is_file():
            try:
                out[key] = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{f}: not a readable .npy ({exc})") from None
    return out


def _check_pair(where: Path, arrays: Mapping[str, np.ndarray], xk: str, yk: str) -> None:
    x, y = arrays[xk], arrays[yk]
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{where}: {xk} must be [N, ...] with N >= 1 samples, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: {xk} must be numbers, got dtype {x.dtype}")
    if len(y) != len(x):
        raise DataError(f"{where}: {yk} has {len(y)} entries but {xk} has {len(x)} samples")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{where}: {yk} must be integer labels or float targets, got dtype {y.dtype}")
    if not np.isfinite(x.astype(np.float64)).all():
        raise DataError(f"{where}: {xk} has NaN or infinite values")


def _from_arrays(where: Path, arrays: dict[str, np.ndarray], seed: int) -> Dataset:
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{where}: no array {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where}: x_test and y_test come together (found only one of them)")
    _check_pair(where, arrays, "x", "y")
    x, y = arrays["x"], arrays["y"]
    # What the user's arrays are, before any split: refusals name these, not a split's pieces.
    given = {
        k: (tuple(int(d) for d in a.shape), int(a.max()) if np.issubdtype(a.dtype, np.integer) else None)
        for k, a in arrays.items()
    }
    if "x_test" in arrays:
        _check_pair(where, arrays, "x_test", "y_test")
        xt, yt = arrays["x_test"], arrays["y_test"]
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: x_test samples have shape {xt.shape[1:]}, x samples {x.shape[1:]}")
    else:
        x, y, xt, yt = _split(x, y, TEST_FRACTION, seed)
    classify = np.issubdtype(y.dtype, np.integer)
    if classify:
        low = min(int(y.min()), int(yt.min()) if len(yt) else 0)
        if low < 0:
            raise DataError(f"{where}: labels must be >= 0, found {low}")
    sample = tuple(int(d) for d in x.shape[1:])

    def flat(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(len(a), -1), dtype=np.float32)

    def target(a: np.ndarray) -> np.ndarray:
        return a.astype(np.int64) if classify else np.ascontiguousarray(a, dtype=np.float32)

    n_cls = int(max(y.max(), yt.max() if len(yt) else 0)) + 1 if classify else 0
    return Dataset(
        where.name,
        flat(x),
        target(y),
        flat(xt),
        target(yt),
        sample_shape=sample,
        num_classes=n_cls,
        task="classification" if classify else "regression",
        info={"source": str(where), "arrays": given},
    )


def check_fits(
    data: Dataset, input_shape: Sequence[int], num_outputs: int, *, task: str = "classification"
) -> None:
    """Refuse data the model cannot take: samples whose size differs from the model's input
    (naming the array, its shape and the expected one) or labels beyond the model's outputs."""
    want = tuple(int(d) for d in input_shape)
    size = int(np.prod(want))
    src = data.info.get("source", data.name)
    given: dict[str, tuple[tuple[int, ...], int | None]] = data.info.get("arrays") or {
        "x": ((len(data.x_train), *data.sample_shape), None),
        "y": ((len(data.y_train),), _max_label(data.y_train)),
        "x_test": ((len(data.x_test), *data.sample_shape), None),
        "y_test": ((len(data.y_test),), _max_label(data.y_test)),
    }
    for key in ("x", "x_test"):
        shape = given.get(key, ((0,), None))[0]
        if shape[0] and int(np.prod(shape[1:])) != size:
            raise DataError(
                f"{src}: {key} has shape {shape}, but the model's input expects samples of shape "
                f"{want} ([N, {', '.join(map(str, want))}])"
            )
    if task != "classification" or num_outputs <= 0:
        return
    for key in ("y", "y_test"):
        top = given.get(key, ((0,), None))[1]
        if top is not None and top >= num_outputs:
            raise DataError(
                f"{src}: {key} has label {top}, but the model has {num_outputs} outputs "
                f"(labels 0..{num_outputs - 1})"
            )


def _max_label(y: np.ndarray) -> int | None:
    return int(y.max()) if len(y) and np.issubdtype(y.dtype, np.integer) else None
