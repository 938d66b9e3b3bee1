"""How topk and dgc send their kept indices: Golomb-Rice (``idx=rice``), LEB128 varints
(``idx=varint``) or the shorter per tensor (``idx=auto``, the default), on both kernel backends;
the metadata, not the recipe text, says which, so payloads from before the choice existed still
decode."""

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


def _with_idx(stage: str, idx: str) -> str:
    head, plus, mods = stage.partition("+")
    return f"{head},idx={idx}{plus}{mods}"


@pytest.mark.parametrize(
    ("stage", "rest"), [("dgc:0.02", "sign"), ("dgc:0.02", "sign|zstd"), ("topk:0.05+ef", "quant:4")]
)
@pytest.mark.parametrize("idx", ["rice", "auto"])
def test_rice_decodes_to_exactly_what_varint_decodes_to(
    backend: str, stage: str, rest: str, idx: str
) -> None:
    kern = kernels(backend)
    rice = Pipeline.parse(f"{_with_idx(stage, idx)} | {rest}", backend)
    varint = Pipeline.parse(f"{_with_idx(stage, 'varint')} | {rest}", backend)
    sr, sv = rice.new_state(), varint.new_state()
    for r in range(6):
        x = _update(r)
        pr, pv = rice.encode(x, sr), varint.encode(x, sv)
        dr = rice.decode(Payload.from_bytes(pr.to_bytes()))
        dv = varint.decode(Payload.from_bytes(pv.to_bytes()))
        for name in x:
            np.testing.assert_array_equal(dr[name], dv[name])
            np.testing.assert_array_equal(sr.residuals[name], sv.residuals[name])
            m_r, m_v = pr.records[name].meta[0], pv.records[name].meta[0]
            assert "rb" not in m_v
            if idx == "rice":
                assert "rb" in m_r
            else:  # the shorter of the two, Rice on a tie
                sent = dv[name].reshape(-1) != 0
                kept = np.flatnonzero(sent).astype(np.uint32)
                if kept.size == m_r["k"]:  # (no kept value that decodes to 0)
                    rice_size = kern.rice_encode_indices(kept, kern.rice_best_param(kept)).size
                    assert m_r["ib"] == min(rice_size, m_v["ib"])
                    assert ("rb" in m_r) == (rice_size <= m_v["ib"])
        big_r, big_v = pr.records["big"], pv.records["big"]
        assert "rb" in big_r.meta[0] and big_r.meta[0]["ib"] < big_v.meta[0]["ib"]
        assert pr.nbytes < pv.nbytes


def test_auto_sends_varints_where_rice_would_be_longer(backend: str) -> None:
    """Runs of neighbours far apart: one Rice parameter fits neither the 1-gaps nor the jumps."""
    rng = np.random.default_rng(5)
    n = 1 << 20
    x = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    starts = np.sort(rng.choice(n // 4096, 50, replace=False)) * 4096
    x[(starts[:, None] + np.arange(30)).ravel()] = 1.0
    sizes = {}
    for idx in ("auto", "rice", "varint"):
        pipe = Pipeline.parse(f"topk:{1500 / n!r},idx={idx} | fp16", backend)
        payload = pipe.encode({"w": x})
        sizes[idx] = payload.records["w"].meta[0]
        np.testing.assert_array_equal(pipe.decode(payload)["w"] != 0, x == 1.0)
    assert sizes["rice"]["ib"] > sizes["varint"]["ib"]
    assert sizes["auto"] == sizes["varint"]


def test_auto_is_the_default_and_the_others_spell_themselves() -> None:
    assert Pipeline.parse("dgc:0.02 | sign | zstd").text == Pipeline.parse("dgc:0.02,idx=auto|sign|zstd").text
    assert "idx" not in Pipeline.parse("dgc:0.02 | sign").text
    for idx in ("rice", "varint"):
        text = Pipeline.parse(f"topk:0.1,idx={idx}+ef | quant:4").text
        assert f"idx={idx}" in text and Pipeline.parse(text).text == text
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
    assert "rb" in _big_meta(d)
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
