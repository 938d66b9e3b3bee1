"""orbitfl.data.partition_file: the host writes an agent's share, the board reads it back."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from orbitfl.data.partition_file import PartitionFileError, read_partition, write_partition


def test_a_written_partition_reads_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(17, 8, 8)).astype(np.float64)  # converted to float32 on the way
    y = rng.integers(0, 10, size=17).astype(np.int32)
    path = write_partition(tmp_path / "sub" / "part.npz", x, y)
    xr, yr = read_partition(path)
    assert xr.dtype == np.float32 and xr.flags.c_contiguous and yr.dtype == np.int64
    assert np.array_equal(xr, x.astype(np.float32)) and np.array_equal(yr, y)
    assert [p.name for p in path.parent.iterdir()] == ["part.npz"]  # no temporary left behind


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 4), np.float32)}, r"exactly the arrays x and y, found \['x'\]"),
        (
            {"x": np.zeros((3, 4), np.float32), "y": np.zeros(3, np.int64), "z": np.zeros(1)},
            "exactly the arrays x and y",
        ),
        ({"x": np.zeros(3, np.float32), "y": np.zeros(3, np.int64)}, r"x must be \[N, \.\.\.\]"),
        ({"x": np.zeros((0, 4), np.float32), "y": np.zeros(0, np.int64)}, "N >= 1"),
        ({"x": np.zeros((3, 4), np.int64), "y": np.zeros(3, np.int64)}, "x must be floating point"),
        ({"x": np.zeros((3, 4), np.float32), "y": np.zeros(4, np.int64)}, r"y must be \[N\] = \[3\]"),
        ({"x": np.zeros((3, 4), np.float32), "y": np.zeros(3, np.float32)}, "integer class labels"),
        ({"x": np.zeros((3, 4), np.float32), "y": np.array([0, -1, 2])}, "negative label"),
        ({"x": np.array([[0.0, np.nan]], np.float32), "y": np.zeros(1, np.int64)}, "1 non-finite"),
    ],
)
def test_a_bad_partition_file_is_refused_naming_the_problem(
    tmp_path: Path, arrays: dict[str, object], message: str
) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PartitionFileError, match=message) as info:
        read_partition(path)
    assert str(path) in str(info.value)


def test_pickles_and_non_npz_files_are_refused_without_unpickling(tmp_path: Path) -> None:
    obj = np.empty(1, dtype=object)
    obj[0] = {"not": "data"}
    with pytest.raises(PartitionFileError, match=r"not a readable \.npz"):
        read_partition(_npz(tmp_path / "obj.npz", x=obj, y=np.zeros(1, np.int64)))
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(PartitionFileError, match=r"not a readable \.npz"):
        read_partition(raw)
    with pytest.raises(PartitionFileError, match="no such file"):
        read_partition(tmp_path / "missing.npz")


def test_writing_refuses_what_reading_would(tmp_path: Path) -> None:
    with pytest.raises(PartitionFileError, match="y must be"):
        write_partition(tmp_path / "p.npz", np.zeros((2, 3), np.float32), np.zeros(3, np.int64))
    assert not list(tmp_path.iterdir())
