"""Untrusted payloads: every malformed, truncated, oversized or non-finite input is a ValueError."""

from __future__ import annotations

import copy
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitfl.codec import Payload, PayloadLimits, Pipeline
from orbitfl.kernels import BACKENDS

from .conftest import layers


def wire(recipe: str, backend: str = "cpp") -> dict[str, Any]:
    pipe = Pipeline.parse(recipe, backend)
    return msgpack.unpackb(pipe.encode(layers(), pipe.new_state()).to_bytes())  # type: ignore[no-any-return]


def refused(d: Any, says: str, **kw: Any) -> None:
    with pytest.raises(ValueError) as info:
        Payload.from_wire(d, **kw)
    assert says in str(info.value), str(info.value)


def test_wire_form_is_plain_msgpack_types() -> None:
    def plain(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return type(v) in (str, int, float, bytes, bool)

    pipe = Pipeline.parse("topk:0.2+ef|quant:4|zstd; *.bias=fp32", "cpp")
    d = pipe.encode(layers(), pipe.new_state()).to_wire()
    assert plain(d)
    assert d["tensors"]["fc.weight"]["shape"] == [64, 48] and d["tensors"]["fc.weight"]["dtype"] == "float32"
    assert d["chains"] == ["topk:0.2+ef|quant:4|zstd:3", "fp32"]


def test_a_valid_payload_passes_and_checks_shapes_against_the_model() -> None:
    d = wire("quant:4")
    shapes = {n: x.shape for n, x in layers().items()}
    assert Payload.from_wire(d, expect=shapes).names == list(shapes)
    refused(d, "no such tensor", expect={"fc.weight": (64, 48)})
    refused(d, "but the model has", expect={**shapes, "fc.bias": (65,)})


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda d: d.update(v=2), "payload.v"),
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d.update(chains="quant:4"), "payload.chains"),
        (lambda d: d["chains"].__setitem__(0, "nope:1"), "payload.chains[0]"),
        (
            lambda d: d["chains"].__setitem__(0, "quant:3"),
            "conv.weight'].quant.packed: 108 bytes, expected 81",
        ),
        (lambda d: d.update(tensors=[]), "payload.tensors must be a map"),
        (lambda d: d["tensors"]["fc.weight"].update(c=5), "fc.weight'].c"),
        (lambda d: d["tensors"]["fc.weight"].update(c=True), "fc.weight'].c"),
        (lambda d: d["tensors"]["fc.weight"].update(dtype="float64"), "dtype"),
        (
            lambda d: d["tensors"]["fc.weight"].update(shape=[64, 49]),
            "quant.packed: 1536 bytes, expected 1568",
        ),
        (lambda d: d["tensors"]["fc.weight"].update(shape=[-1]), "shape"),
        (lambda d: d["tensors"]["fc.weight"].update(shape="64x48"), "shape"),
        (lambda d: d["tensors"]["fc.weight"].update(shape=[1] * 9), "shape"),
        (lambda d: d["tensors"]["fc.weight"].update(meta=[{"k": 1}]), "unknown key 'k'"),
        (lambda d: d["tensors"]["fc.weight"].update(meta=[]), "meta has 0 entries"),
        (lambda d: d["tensors"]["fc.weight"]["data"].pop(), "data must be a list of 3"),
        (
            lambda d: d["tensors"]["fc.weight"]["data"].__setitem__(0, "text"),
            "data[0] (quant.packed) must be bytes",
        ),
        (lambda d: d["tensors"]["fc.weight"]["data"].__setitem__(0, b"\0" * 7), "quant.packed: 7 bytes"),
        (
            lambda d: d["tensors"]["fc.weight"]["data"].__setitem__(
                1, struct.pack("<6f", *[float("nan")] * 6)
            ),
            "quant.lo: NaN or Inf",
        ),
        (
            lambda d: d["tensors"]["fc.weight"]["data"].__setitem__(
                2, struct.pack("<6f", *[float("inf")] * 6)
            ),
            "quant.step: NaN or Inf",
        ),
        (
            lambda d: d["tensors"]["fc.weight"].update(z=b"x"),
            "compressed data for a chain without a byte stage",
        ),
        (lambda d: d["tensors"]["fc.weight"].update(bogus=1), "unknown keys"),
        (lambda d: d["tensors"].update({"": d["tensors"]["fc.bias"]}), "tensor name"),
    ],
)
def test_malformed_fields_are_refused_by_name(mutate: Any, says: str) -> None:
    d = wire("quant:4")
    mutate(d)
    refused(d, says)


def test_non_finite_metadata_and_bad_counts_are_refused() -> None:
    d = wire("sign")
    d["tensors"]["fc.weight"]["meta"][0]["scale"] = float("nan")
    refused(d, "scale must be a finite")
    d = wire("topk:0.1")
    d["tensors"]["fc.weight"]["meta"][0]["k"] = 10**6
    refused(d, "meta.k=1000000 is out of range")
    d = wire("topk:0.1")
    d["tensors"]["fc.weight"]["meta"][0]["k"] = 1.5
    refused(d, "k must be an int")
    d = wire("fp16")
    d["tensors"]["fc.bias"]["data"][0] = b"\x00\x7c" * 64  # +Inf in float16
    with pytest.raises(ValueError, match="NaN/Inf"):
        Pipeline.parse("fp16").decode(Payload.from_wire(d))


def test_corrupt_content_is_caught_at_decode(backend: str) -> None:
    pipe = Pipeline.parse("topk:0.1", backend)
    d = wire("topk:0.1", backend)
    rec = d["tensors"]["fc.weight"]
    rec["data"][0] = b"\xff" * (len(rec["data"][0]) - 1) + b"\x7f"  # gaps past the end of the tensor
    with pytest.raises(ValueError, match=r"fc\.weight"):
        pipe.decode(Payload.from_wire(d))


def test_zstd_bombs_and_broken_frames_are_refused() -> None:
    d = wire("quant:8|zstd")
    rec = d["tensors"]["fc.weight"]
    good = rec["z"]
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    assert len(bomb) < 64 << 10  # a few kB that would expand to 64 MiB
    for blob, says in [
        (bomb, "declares 67108864 bytes"),
        (zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 3100), "declares -1 bytes"),
        (good[:-4], "truncated"),
        (good + b"junk", "trailing"),
        (b"not zstd at all", "not a zstd frame"),
        (good[:8] + bytes(b ^ 0x55 for b in good[8:]), "fc.weight'].z"),
    ]:
        e = copy.deepcopy(d)
        e["tensors"]["fc.weight"]["z"] = blob
        refused(e, says)
    e = copy.deepcopy(d)
    e["tensors"]["fc.weight"]["z"] = "text"
    refused(e, "z must be bytes")


def test_limits_bound_sizes_before_any_work() -> None:
    pipe = Pipeline.parse("fp32|zstd", "cpp")
    big = pipe.encode({"zeros": np.zeros(1 << 20, np.float32)})
    data = big.to_bytes()
    assert len(data) < 1 << 12
    with pytest.raises(ValueError, match="decodes to more than"):
        Payload.from_bytes(data, limits=PayloadLimits(max_values=1 << 19))
    with pytest.raises(ValueError, match="decompresses to more than"):
        Payload.from_bytes(data, limits=PayloadLimits(max_bytes=1 << 16))
    with pytest.raises(ValueError, match="the limit is 100"):
        Payload.from_bytes(b"\0" * 101, limits=PayloadLimits(max_bytes=100))
    many = Pipeline.parse("fp32").encode({f"t{i}": np.ones(1, np.float32) for i in range(20)}).to_bytes()
    with pytest.raises(ValueError):
        Payload.from_bytes(many, limits=PayloadLimits(max_tensors=10))
    d = msgpack.unpackb(Pipeline.parse("fp32").encode({"x": np.ones(2, np.float32)}).to_bytes())
    d["tensors"]["x"]["shape"] = [1 << 20, 1 << 20]
    refused(d, "decodes to more than")


def test_truncated_and_non_msgpack_bytes_are_refused() -> None:
    data = Pipeline.parse("quant:4|zstd").encode(layers()).to_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            Payload.from_bytes(data[:cut])
    with pytest.raises(ValueError, match="msgpack"):
        Payload.from_bytes(data + b"\x00")
    with pytest.raises(TypeError):
        Payload.from_bytes("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("be", BACKENDS)
@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_random_corruption_never_escapes_as_anything_but_value_error(be: str, data: st.DataObject) -> None:
    recipe = data.draw(
        st.sampled_from(
            [
                "quant:4|zstd",
                "topk:0.2+ef|quant:8",
                "topk:0.2,idx=varint+ef|quant:8",
                "dgc:0.05,idx=rice|sign",
                "efsign",
                "fp16",
                "fp32|zstd",
            ]
        )
    )
    pipe = Pipeline.parse(recipe, be)
    raw = bytearray(pipe.encode(layers(), pipe.new_state()).to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = pipe.decode(Payload.from_bytes(bytes(raw)))
    except ValueError:
        return
    assert all(np.isfinite(v).all() for v in out.values())


def test_repr_is_short() -> None:
    payload = Pipeline.parse("fp32").encode({"x": np.zeros(100_000, np.float32)})
    assert repr(payload) == f"Payload(1 tensors, 100000 values, {payload.nbytes} B)"
    assert len(repr(payload.records["x"])) < 100


def test_tuples_from_use_list_false_are_accepted() -> None:
    data = Pipeline.parse("topk:0.2+ef|quant:4|zstd").encode(layers(), Pipeline.parse("efsign").new_state())
    d = msgpack.unpackb(data.to_bytes(), use_list=False)
    out = Pipeline.parse("fp32").decode(Payload.from_wire(d))
    assert out["fc.weight"].shape == (64, 48)
