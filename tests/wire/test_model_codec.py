"""Downlink models: whole or as an exact XOR delta, verified by digest."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.wire import Model, Reason, WireError, decode_as, encode
from orbitfl.wire.model_codec import decode_model, encode_model, model_digest

RNG = np.random.default_rng(1)


def model(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": (RNG.standard_normal((64, 32)) * scale).astype(np.float32), "b": np.zeros(32, np.float32)}


def test_full_model_round_trips_exactly() -> None:
    m = model()
    blob = decode_as(encode(Model("g:1", encode_model(5, m))), Model).model
    assert blob is not None and blob.encoding == "full"
    back = decode_model(blob)
    assert all(np.array_equal(back[k], m[k]) for k in m)


def test_xor_delta_rebuilds_the_exact_bits_and_is_smaller() -> None:
    old = model()
    new = {k: (v + 1e-3 * RNG.standard_normal(v.shape)).astype(np.float32) for k, v in old.items()}
    full = encode(Model("g:1", encode_model(6, new)))
    delta_blob = encode_model(6, new, old, 5)
    delta = encode(Model("g:2", delta_blob))
    assert len(delta) < len(full)
    back = decode_model(decode_as(delta, Model).model or delta_blob, old)
    for k in new:
        assert back[k].tobytes() == new[k].tobytes()
    assert model_digest(back) == model_digest(new)


def test_delta_against_the_wrong_base_is_refused() -> None:
    old, other = model(), model()
    new = model()
    blob = encode_model(2, new, old, 1)
    with pytest.raises(WireError) as ei:
        decode_model(blob, other)
    assert ei.value.reason is Reason.CHECKSUM
    with pytest.raises(WireError):
        decode_model(blob, None)


def test_corrupt_compressed_data_is_refused() -> None:
    blob = encode_model(1, model())
    t = dict(blob.tensors)
    t["w"] = {**t["w"], "data": b"\x28\xb5\x2f\xfd" + b"\x00" * 20}
    bad = type(blob)(blob.version, None, "full", "zstd", blob.sha256, t)
    with pytest.raises(WireError):
        decode_model(bad)


def test_base_of_another_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        encode_model(2, model(), {"w": np.zeros(3, np.float32), "b": np.zeros(32, np.float32)}, 1)
