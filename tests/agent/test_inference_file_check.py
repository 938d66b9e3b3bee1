"""The structural .tflite check OnboardModel runs before a runtime sees a file.

tflite-runtime does not verify flatbuffers and dies with SIGSEGV on a damaged file, so the check
must refuse every damaged file that would reach a wild offset, and accept every good one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

from orbitfl.agent.inference import OnboardModel
from orbitfl.agent.tflite_check import TFLiteFormatError, check_tflite
from orbitfl.models import zoo
from orbitfl.models.tflite import export_tflite


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("exports")
    out = {}
    for name in zoo.MODEL_NAMES:
        spec = zoo.build(name)
        calib = np.random.default_rng(0).random((50, *spec.input_shape), dtype=np.float32)
        out[f"{name}-float"] = export_tflite(spec.model, d / f"{name}.f.tflite").read_bytes()
        out[f"{name}-int8"] = export_tflite(
            spec.model, d / f"{name}.q.tflite", mode="int8", calibration=calib
        ).read_bytes()
    return out


def test_every_export_passes(exports: dict[str, bytes]) -> None:
    for raw in exports.values():
        check_tflite(raw)


def test_truncated_and_scrambled_files_are_refused(exports: dict[str, bytes]) -> None:
    rng = np.random.default_rng(9)
    for raw in exports.values():
        for cut in rng.integers(0, len(raw), 20):
            with pytest.raises(TFLiteFormatError):
                check_tflite(raw[:cut])
        for _ in range(5):
            with pytest.raises(TFLiteFormatError):
                check_tflite(raw[:8] + rng.integers(0, 256, len(raw) - 8, dtype=np.uint8).tobytes())
    with pytest.raises(TFLiteFormatError, match="no TFL3 file identifier"):
        check_tflite(b"\x10\x00\x00\x00TFL2" + bytes(64))


def test_flipped_bytes_either_refused_or_loadable(exports: dict[str, bytes], tmp_path: Path) -> None:
    """A flip inside weight data is undetectable (the format has no checksum) but harmless to the
    runtime; a flip in the structure must be refused, never reach the interpreter."""
    rng = np.random.default_rng(10)
    raw = exports["lenet-s-int8"]
    refused = loaded = 0
    for i in range(60):
        b = bytearray(raw)
        for pos in rng.integers(8, len(b), 4):
            b[pos] ^= int(rng.integers(1, 256))
        path = tmp_path / f"{i}.tflite"
        path.write_bytes(bytes(b))
        try:
            check_tflite(bytes(b))
        except TFLiteFormatError:
            refused += 1
            continue
        try:
            OnboardModel(path, runtime="litert")  # LiteRT verifies too: both must agree it is sound
        except ValueError as exc:  # a semantic problem the runtime reports cleanly (e.g. a bad shape)
            assert "not a valid TFLite model" in str(exc)
        loaded += 1
    assert refused > 0 and loaded > 0
