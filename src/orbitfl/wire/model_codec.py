"""Global models on the downlink: whole, or as a lossless XOR delta against a version the agent holds.

Why XOR and not ``w_new - w_old``: float subtraction then addition does not give back the same bits,
so agents would drift from the ground's version while claiming to hold it. XOR of the raw bytes is
exact, and bytes that did not change (most high-order bytes of weights that moved little) become
zeros that zstd squeezes well. The digest covers names, dtypes, shapes and bytes, so an agent proves
it rebuilt exactly the version it reports in HELLO.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import ModelBlob
from orbitfl.wire.payload import decode_payload
from orbitfl.wire.tensors import DTYPES, TensorDict

ZSTD_LEVEL = 3
MAX_TENSOR_BYTES = 1 << 30  # a shape claiming more is refused before anything is allocated


def model_digest(tensors: Mapping[str, npt.NDArray[Any]]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.name}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.digest()


def _raw(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    le = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    return le.reshape(-1).view(np.uint8)


def encode_model(
    version: int,
    tensors: Mapping[str, npt.NDArray[Any]],
    base: Mapping[str, npt.NDArray[Any]] | None = None,
    base_version: int | None = None,
    compress: bool = True,
) -> ModelBlob:
    """Whole model when ``base`` is None, else an XOR delta against ``base``."""
    if (base is None) != (base_version is None):
        raise ValueError("give both base and base_version, or neither")
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if compress else None
    out: dict[str, Any] = {}
    for name, a in tensors.items():
        raw = _raw(np.asarray(a))
        if base is not None:
            b = base.get(name)
            if b is None or b.shape != a.shape or b.dtype != a.dtype:
                raise ValueError(
                    f"base tensor {name!r} missing or of another shape/dtype: send the whole model"
                )
            raw = np.bitwise_xor(raw, _raw(b))
        data = raw.tobytes() if cctx is None else cctx.compress(raw.tobytes())
        out[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}
    return ModelBlob(
        version,
        base_version,
        "full" if base is None else "xor",
        "zstd" if compress else "none",
        model_digest(tensors),
        out,
    )


def apply_step(base: Mapping[str, npt.NDArray[Any]], step: Mapping[str, Any]) -> TensorDict:
    """One codec downlink step: ``base + decoded delta`` in float32, exactly as the ground made it.
    Tensors the step does not carry are unchanged. Both sides run this same function."""
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    delta = decode_payload(step, shapes)
    out: TensorDict = dict(base)
    for name, d in delta.items():
        b = base[name]
        if b.dtype != np.float32 or d.shape != b.shape:
            raise WireError(
                Reason.BAD_PAYLOAD, f"codec step for {name!r}: needs a float32 tensor of shape {b.shape}"
            )
        out[name] = np.add(b, d.astype(np.float32, copy=False), dtype=np.float32)
    return out


def encode_codec_chain(
    version: int, tensors: Mapping[str, npt.NDArray[Any]], base_version: int, steps: list[dict[str, Any]]
) -> ModelBlob:
    """A blob that rebuilds ``tensors`` (global ``version``) from ``base_version`` by the ground's
    own codec steps (one per version in between)."""
    return ModelBlob(version, base_version, "codec", "none", model_digest(tensors), {}, list(steps))


def decode_model(blob: ModelBlob, base: Mapping[str, npt.NDArray[Any]] | None = None) -> TensorDict:
    """Rebuild the model a blob describes; verify its digest. Raises WireError on any mismatch."""
    if blob.encoding == "codec":
        if base is None:
            raise WireError(Reason.BAD_PAYLOAD, f"model v{blob.version} is a delta from v{blob.base_version}")
        w: TensorDict = dict(base)
        for step in blob.steps:
            w = apply_step(w, step)
        if model_digest(w) != blob.sha256:
            raise WireError(
                Reason.CHECKSUM, f"model v{blob.version}: rebuilt tensors do not match the digest"
            )
        return w
    if blob.encoding == "xor" and base is None:
        raise WireError(
            Reason.BAD_PAYLOAD, f"model v{blob.version} is a delta from v{blob.base_version}, not held here"
        )
    dctx = zstandard.ZstdDecompressor()
    out: TensorDict = {}
    for name, t in blob.tensors.items():
        where = f"MODEL.tensors[{name!r}]"
        if not isinstance(t, dict):
            raise WireError(Reason.SCHEMA, f"{where}: expected a map")
        dtype, shape, data = t.get("dtype"), t.get("shape"), t.get("data")
        if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(data, bytes):
            raise WireError(
                Reason.SCHEMA, f"{where}: needs dtype in {sorted(DTYPES)}, shape list and bin data"
            )
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise WireError(Reason.BAD_SHAPE, f"{where}: bad shape {shape!r}")
        dt = np.dtype(str(dtype)).newbyteorder("<")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise WireError(Reason.OVERSIZE, f"{where}: {nbytes} bytes exceeds {MAX_TENSOR_BYTES} per tensor")
        if blob.compression == "zstd":
            try:
                # max_output_size bounds what a hostile frame can make us allocate.
                data = dctx.decompress(data, max_output_size=nbytes)
            except zstandard.ZstdError as exc:
                raise WireError(Reason.BAD_PAYLOAD, f"{where}: zstd: {exc}") from None
        if len(data) != nbytes:
            raise WireError(Reason.BAD_SHAPE, f"{where}: {len(data)} bytes for shape {shape} {dtype}")
        raw = np.frombuffer(data, np.uint8)
        if blob.encoding == "xor":
            assert base is not None
            b = base.get(name)
            if b is None or list(b.shape) != shape or b.dtype.name != dtype:
                raise WireError(Reason.BAD_PAYLOAD, f"{where}: base tensor missing or of another shape/dtype")
            raw = np.bitwise_xor(raw, _raw(b))
        out[name] = raw.view(dt).reshape(shape)
    if model_digest(out) != blob.sha256:
        raise WireError(Reason.CHECKSUM, f"model v{blob.version}: rebuilt tensors do not match the digest")
    return out
