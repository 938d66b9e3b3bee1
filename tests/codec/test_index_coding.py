"""How topk and dgc send their kept indices: Golomb-Rice (``idx=rice``, the default) or LEB128
varints (``idx=varint``), on both kernel backends; the metadata, not the recipe text, says which, so
payloads from before the choice existed still decode."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from numpy.typing import NDArray

from orbitfl.codec import Payload, Pipeline
from orbitfl.kernels import backend as kernels

from .conftest import layers


def _update(seed: int) -> dict[str, NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    out = layers(seed)
    out["big"] = (rng.standard_normal(61_706) * 1e-3).astype(np.float32)  # LeNet-S 28x28's size
    out["one"] = np.ones(1, np.float32)
    return out


def _wire(payload: Payload) -> dict[str, Any]:
    return msgpack.unpackb(payload.to_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("stage", "rest"), [("dgc:0.02", "sign"), ("dgc:0.02", "sign|zstd"), ("topk:0.05+ef", "quant:4")]
)
def test_rice_decodes_to_exactly_what_varint_decodes_to(backend: str, stage: str, rest: str) -> None:
    rice = Pipeline.parse(f"{stage} | {rest}", backend)
    head, _, mods = stage.partition("+")
    varint = Pipeline.parse(f"{head},idx=varint{'+' + mods if mods else ''} | {rest}", backend)
    sr, sv = rice.new_state(), varint.new_state()
    for r in range(6):
        x = _update(r)
        pr, pv = rice.encode(x, sr), varint.encode(x, sv)
        dr = rice.decode(Payload.from_bytes(pr.to_bytes()))
        dv = varint.decode(Payload.from_bytes(pv.to_bytes()))
        for name in x:
            np.testing.assert_array_equal(dr[name], dv[name])
            np.testing.assert_array_equal(sr.residuals[name], sv.residuals[name])
        assert all("rb" in rec.meta[0] for rec in pr.records.values())
        assert not any("rb" in rec.meta[0] for rec in pv.records.values())
        big_r, big_v = pr.records["big"], pv.records["big"]
        assert big_r.meta[0]["ib"] < big_v.meta[0]["ib"]  # the index field itself
        assert pr.nbytes < pv.nbytes


def test_rice_is_the_default_and_varint_spells_itself() -> None:
    assert Pipeline.parse("dgc:0.02 | sign | zstd").text == Pipeline.parse("dgc:0.02,idx=rice|sign|zstd").text
    assert "idx" not in Pipeline.parse("dgc:0.02 | sign").text
    text = Pipeline.parse("topk:0.1,idx=varint+ef | quant:4").text
    assert "idx=varint" in text and Pipeline.parse(text).text == text
    with pytest.raises(ValueError, match="idx"):
        Pipeline.parse("topk:0.1,idx=huffman")


def test_a_varint_payload_under_todays_recipe_text_still_decodes(backend: str) -> None:
    """What a sender from before ``idx`` sends for ``dgc:0.02 | sign``: varints, no rb."""
    old = Pipeline.parse("dgc:0.02,idx=varint | sign", backend)
    new = Pipeline.parse("dgc:0.02 | sign", backend)
    x = _update(7)
    payload = old.encode(x, old.new_state())
    d = _wire(payload)
    d["chains"] = [c.replace(",idx=varint", "") for c in d["chains"]]
    assert d["chains"] == ["dgc:0.02|sign"]
    got = new.decode(Payload.from_wire(d))
    want = old.decode(payload)
    for name in x:
        np.testing.assert_array_equal(got[name], want[name])


def _big_meta(d: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = d["tensors"]["big"]["meta"][0]
    return meta


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: m.__setitem__("rb", 32), "rb"),
        (lambda m: m.__setitem__("rb", -1), "rb"),
        (lambda m: m.__setitem__("rb", 1.5), "rb must be an int"),
        (lambda m: m.__setitem__("ib", m["ib"] * 2), "ib"),  # beyond what k codes can take
        (lambda m: m.__setitem__("ib", 1), "ib"),  # below k (b + 1) bits
    ],
)
def test_impossible_rice_metadata_is_refused_before_decoding(change: Any, says: str) -> None:
    pipe = Pipeline.parse("dgc:0.02 | sign")
    d = _wire(pipe.encode(_update(1), pipe.new_state()))
    change(_big_meta(d))
    with pytest.raises(ValueError) as info:
        Payload.from_wire(d)
    assert says in str(info.value) and "dgc" in str(info.value)


def test_broken_rice_streams_and_indices_past_the_tensor_are_refused(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.02 | sign", backend)
    d = _wire(pipe.encode(_update(2), pipe.new_state()))
    t = d["tensors"]["big"]
    index = bytearray(t["data"][0])
    index[-1] = 0  # the last codes lose their stop bits, or the padding turns into a code
    index[0] ^= 0xFF
    t["data"][0] = bytes(index)
    with pytest.raises(ValueError):
        pipe.decode(Payload.from_wire(d))
    # one index, exactly n: a well-formed stream that names a value the tensor does not have
    n = 61_706
    kern = kernels(backend)
    t["meta"][0].update(k=1, rb=31, ib=4)
    t["data"][0] = kern.rice_encode_indices(np.array([n], np.uint32), 31).tobytes()
    t["data"][1] = t["data"][1][:1]  # one sign
    with pytest.raises(ValueError, match="out of range"):
        pipe.decode(Payload.from_wire(d))
