"""The compact UPDATE payload: every codec stage round-trips through it bit for bit on both kernel
backends, it is smaller than the full form, and anything that disagrees with the receiver's model
or recipes is refused with a WireError naming why."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest

from orbitfl.codec import Payload, Pipeline
from orbitfl.codec.inputs import pipeline
from orbitfl.codec.registry import REGISTRY
from orbitfl.kernels import BACKENDS
from orbitfl.wire import CompactOffer, Reason, Task, Update, WireError, decode, encode
from orbitfl.wire.compact import FORM, Layout, compact_payload, expand_payload, recipe_id
from orbitfl.wire.messages import pack_f32
from orbitfl.wire.payload import decode_payload, encode_payload, new_codec_state

# One recipe per built-in stage (zstd: as the byte stage of two of them). A stage added to
# orbitfl.codec.stages without a line here fails test_every_built_in_stage_is_covered.
STAGE_RECIPES = {
    "fp32": "fp32; *.bias=fp16",  # plain "fp32" is raw float32, without the codec (tested below)
    "fp16": "fp16",
    "bf16": "bf16",
    "quant": "quant:4",
    "qsgd": "qsgd:4 | zstd",
    "sign": "sign",
    "efsign": "efsign",
    "topk": "topk:0.1+ef | quant:8 | zstd",
    "dgc": "dgc:0.1 | quant:8 | zstd",
    "gcc": "gcc:4",
    "coreset": "coreset:8,codebook=8",
    "kmeans": "kmeans:4",
    "laq": "laq:2",
    "alq": "alq:0/1/2/4",
    "zstd": "fp32 | zstd",
}


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.02, (8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.laplace(0, 0.01, (64, 48)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.1, 64).astype(np.float32),
        "temp": np.array(0.7, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


LAYOUT = Layout.of_tensors(model())
SHAPES = {k: v.shape for k, v in model().items()}


def recipes(*texts: str) -> dict[bytes, str]:
    return {recipe_id(t): t for t in texts}


def encode_with(recipe: str, backend: str, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The full-form UPDATE payload of ``tensors``, encoded on ``backend``."""
    pipe = Pipeline.parse(recipe, backend)
    first = pipe.recipe.default.float_stages[0]
    curvature = {k: np.full(v.shape, 2.0, np.float32) for k, v in tensors.items()}
    budget = sum(v.nbytes for v in tensors.values()) // 6 if first.needs_budget else None
    payload = pipe.encode(
        tensors,
        pipe.new_state(),
        curvature=curvature if first.needs_curvature else None,
        budget_bytes=budget,
    )
    return {"codec": "pipeline", "recipe": recipe, "body": payload.to_wire()}


def packed(d: Any) -> int:
    return len(msgpack.packb(d, use_bin_type=True))


def test_every_built_in_stage_is_covered() -> None:
    built_in = {n for n, cls in REGISTRY.items() if cls.__module__ == "orbitfl.codec.stages"}
    assert built_in <= set(STAGE_RECIPES), sorted(built_in - set(STAGE_RECIPES))


@pytest.mark.parametrize("form", [1, FORM])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stage", sorted(STAGE_RECIPES))
def test_every_stage_round_trips_through_the_compact_form_bit_for_bit(
    backend: str, stage: str, form: int
) -> None:
    recipe = STAGE_RECIPES[stage]
    full = encode_with(recipe, backend, model(1))
    compact = compact_payload(full, recipe, LAYOUT, form)
    assert compact is not None and compact["codec"] == "compact"
    assert packed(compact) < packed(full)
    if form > 1:
        older = compact_payload(full, recipe, LAYOUT)
        assert older is not None and len(pack_f32(compact)) <= len(pack_f32(older)) + 3  # + "f": 2
    # What travels: msgpack there and back, as in a frame (floats as the agent packs them).
    back = msgpack.unpackb(pack_f32(compact), raw=False)
    expanded = expand_payload(back, LAYOUT, recipes(recipe))
    pipe = Pipeline.parse(recipe, backend)
    want = pipe.decode(Payload.from_wire(full["body"], expect=SHAPES))
    got = pipe.decode(Payload.from_wire(expanded["body"], expect=SHAPES))
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.array_equal(got[name].view(np.uint32), want[name].view(np.uint32)), name
    # The wire module's own decode path takes it too (the C++ backend on the receiving side).
    decoded = decode_payload(back, SHAPES, layout=LAYOUT, recipes=recipes(recipe))
    assert set(decoded) == set(want)


def test_raw_float32_round_trips_and_sheds_names_shapes_dtypes() -> None:
    t = model(2)
    full = encode_payload("fp32", t)
    compact = compact_payload(full, "fp32", LAYOUT)
    assert compact is not None and "mask" not in compact
    assert all(isinstance(e, bytes) for e in compact["t"])
    out = decode_payload(compact, SHAPES, layout=LAYOUT, recipes=recipes("fp32"))
    for k, v in t.items():
        np.testing.assert_array_equal(out[k], v)
    saved = packed(full) - packed(compact)
    assert saved > sum(len(k) for k in t)  # at least every name, plus dtypes and shapes


def test_overrides_choose_the_same_chains_on_both_sides() -> None:
    recipe = "quant:4 | zstd; *.bias=fp32; <20=fp16"
    full = encode_payload(recipe, model(3), new_codec_state(recipe))
    assert len(full["body"]["chains"]) == 3
    compact = compact_payload(full, recipe, LAYOUT)
    assert compact is not None
    expanded = expand_payload(compact, LAYOUT, recipes(recipe))
    want = decode_payload(full, SHAPES)
    got = decode_payload(expanded, SHAPES)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_a_partial_update_carries_a_mask_of_the_tensors_it_sends() -> None:
    t = model(4)
    part = {k: t[k] for k in ("fc.bias", "temp")}
    recipe = "quant:8"
    compact = compact_payload(encode_payload(recipe, part), recipe, LAYOUT)
    assert compact is not None and len(compact["mask"]) == math.ceil(len(LAYOUT.names) / 8)
    out = decode_payload(compact, SHAPES, layout=LAYOUT, recipes=recipes(recipe))
    assert set(out) == set(part)


def test_alq_leaving_tensors_out_is_said_by_the_mask(backend: str = "cpp") -> None:
    recipe = "alq:0/1/2/4"
    t = model(5)
    pipe = Pipeline.parse(recipe, backend)
    budget = 80  # too small for every tensor: alq gives some 0 bits
    payload = pipe.encode(
        t,
        pipe.new_state(),
        curvature={k: np.ones(v.shape, np.float32) for k, v in t.items()},
        budget_bytes=budget,
    )
    full = {"codec": "pipeline", "recipe": recipe, "body": payload.to_wire()}
    sent = set(full["body"]["tensors"])
    assert sent < set(t)
    compact = compact_payload(full, recipe, LAYOUT)
    assert compact is not None and "mask" in compact
    assert set(decode_payload(compact, SHAPES, layout=LAYOUT, recipes=recipes(recipe))) == sent


def test_no_compact_form_for_tensors_the_layout_lacks_or_shapes_it_disagrees_with() -> None:
    t = model(6)
    assert (
        compact_payload(encode_payload("fp32", {**t, "extra": np.ones(3, np.float32)}), "fp32", LAYOUT)
        is None
    )
    bad = {**t, "fc.bias": np.ones(65, np.float32)}
    assert compact_payload(encode_payload("quant:8", bad), "quant:8", LAYOUT) is None
    # A payload of another recipe than the one named: the sender sends the full form.
    assert compact_payload(encode_payload("quant:8", t), "quant:4", LAYOUT) is None


def test_ids_are_content_hashes_that_mean_the_same_on_every_node() -> None:
    assert recipe_id("quant:8 | zstd") == recipe_id("quant:8 | zstd") != recipe_id("quant:8|zstd")
    assert len(recipe_id("fp32")) == 8
    again = Layout.of({k: (v.shape, "float32") for k, v in reversed(list(model(9).items()))})
    assert again.id == LAYOUT.id and again.names == LAYOUT.names  # order-free, weight-free
    assert (
        Layout.of({**{k: (v.shape, "float32") for k, v in model().items()}, "x": ((1,), "float32")}).id
        != LAYOUT.id
    )
    assert (
        Layout.of({k: ((9,) if k == "temp" else v.shape, "float32") for k, v in model().items()}).id
        != LAYOUT.id
    )


def _compact(recipe: str = "quant:8 | zstd") -> dict[str, Any]:
    c = compact_payload(encode_payload(recipe, model(7)), recipe, LAYOUT)
    assert c is not None
    return c


def _refusal(
    d: dict[str, Any], rec: dict[bytes, str] | None = None, layout: Layout | None = LAYOUT
) -> WireError:
    with pytest.raises(WireError) as info:
        decode_payload(d, SHAPES, layout=layout, recipes=recipes("quant:8 | zstd") if rec is None else rec)
    return info.value


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        (lambda d: d.update(lid=b"\x00" * 8), Reason.BAD_SHAPE, "laid out for model layout"),
        (lambda d: d.update(rid=recipe_id("quant:4")), Reason.BAD_PAYLOAD, "names no recipe"),
        (lambda d: d.update(rid=b"short"), Reason.SCHEMA, "'rid' and 'lid'"),
        (lambda d: d.pop("lid"), Reason.SCHEMA, "'rid' and 'lid'"),
        (lambda d: d.update(t=d["t"][:-1]), Reason.BAD_SHAPE, "holds 4 tensors"),
        (lambda d: d.update(t={}), Reason.SCHEMA, "list of tensors"),
        (lambda d: d.update(mask=b"\xff"), Reason.SCHEMA, "bits set past"),
        (lambda d: d.update(mask=b"\x01\x00"), Reason.SCHEMA, "expected 1 bytes"),
        (lambda d: d.update(mask=b"\x01"), Reason.BAD_SHAPE, "the mask and model say 1"),
        (lambda d: d["t"].__setitem__(0, "x"), Reason.SCHEMA, "expected 0 metadata values"),
        (lambda d: d["t"].__setitem__(0, [3, d["t"][0][-1]]), Reason.SCHEMA, "expected 0 metadata values"),
        (lambda d: d["t"].__setitem__(0, [7]), Reason.SCHEMA, "data must be bin"),
        # conv.weight's quant:8 arrays travel raw (incompressible), fc.weight's as a zstd frame.
        (lambda d: d["t"].__setitem__(0, [[b"\x00" * 3, b"", b""]]), Reason.BAD_PAYLOAD, "expected 216"),
        (lambda d: d["t"].__setitem__(3, [b"\x28\xb5\x2f\xfd garbage"]), Reason.BAD_PAYLOAD, "fc.weight"),
    ],
)
def test_a_compact_payload_that_disagrees_with_the_model_is_refused(
    change: Any, reason: Reason, text: str
) -> None:
    d = _compact()
    change(d)
    err = _refusal(d)
    assert err.reason == reason, err
    assert text in str(err)


@pytest.mark.parametrize(
    ("index", "value", "text"),
    [
        (0, "x", "k must be an int"),
        (0, 10**6, "k"),
        (3, float("nan"), "scale"),
        (3, None, "scale"),
        (1, -1, "ib"),
        (2, 32, "rb"),
    ],
)
def test_metadata_values_the_codec_refuses_are_refused(index: int, value: Any, text: str) -> None:
    recipe = "topk:0.1+ef | sign"
    d = compact_payload(encode_payload(recipe, model(8), new_codec_state(recipe)), recipe, LAYOUT)
    assert d is not None
    entry = d["t"][3]  # fc.weight: [k, ib, rb, scale, arrays]
    assert len(entry) == 5 and isinstance(entry[0], int) and isinstance(entry[3], float)
    entry[index] = value
    err = _refusal(d, recipes(recipe))
    assert err.reason == Reason.BAD_PAYLOAD and text in err.text, err


def test_sizes_that_disagree_with_the_model_are_refused_for_raw_float32() -> None:
    d = _compact("fp32")
    d["t"][0] = d["t"][0][:-4]
    err = _refusal(d, recipes("fp32"))
    assert err.reason == Reason.BAD_SHAPE and "needs" in err.text


def test_a_receiver_without_the_model_refuses_instead_of_guessing() -> None:
    err = _refusal(_compact(), layout=None)
    assert err.reason == Reason.BAD_PAYLOAD and "holds no model" in err.text


def test_task_carries_the_offer_and_refuses_a_bad_one() -> None:
    offer = CompactOffer(recipe_id("quant:8"), LAYOUT.id)
    t = Task("g:task.r1/a1.fromnone", "r1/a1", 1, 0, "quant:8", compact=offer)
    back = decode(encode(t))
    assert isinstance(back, Task) and back.compact == offer
    old = decode(encode(Task("g:t", "r1/a1", 1, 0, "quant:8")))
    assert isinstance(old, Task) and old.compact is None
    wire = t.to_wire()
    for bad in ({"rid": b"x", "lid": LAYOUT.id}, {"lid": LAYOUT.id}, "yes"):
        wire["compact"] = bad
        with pytest.raises(WireError) as info:
            decode(msgpack.packb(wire, use_bin_type=True))
        assert info.value.reason == Reason.SCHEMA and "TASK.compact" in info.value.text


# --- form 2 ----------------------------------------------------------------------------------------


def zmodel() -> dict[str, np.ndarray]:
    """A delta whose top-k indices and signs repeat, so the byte stage shrinks them (a frame)."""
    t = model(16)
    n = t["fc.weight"].size
    t["fc.weight"] = np.where(np.arange(n) % 4 == 0, 1.0, 1e-3).astype(np.float32).reshape(64, 48)
    return t


def _form2(recipe: str, tensors: dict[str, np.ndarray] | None = None, **kw: Any) -> dict[str, Any]:
    if tensors is None:
        tensors = zmodel() if "zstd" in recipe else model(11)
    full = encode_payload(recipe, tensors, new_codec_state(recipe), **kw)
    c = compact_payload(full, recipe, LAYOUT, FORM)
    assert c is not None and c["f"] == FORM
    back: dict[str, Any] = msgpack.unpackb(pack_f32(c), raw=False)
    return back


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k


@pytest.mark.parametrize(
    "recipe", ["topk:0.1+ef | sign", "dgc:0.05 | sign | zstd", "topk:0.2+ef | quant:8 | zstd", "dgc:0.3"]
)
def test_form_2_leaves_out_the_k_and_ib_the_receiver_recomputes(recipe: str) -> None:
    t = zmodel()
    full = encode_payload(recipe, t, new_codec_state(recipe))
    d = _form2(recipe, t)
    old = compact_payload(full, recipe, LAYOUT)
    assert old is not None
    kinds = set()
    chains = [
        pipeline(recipe).chain_for(n, math.prod(s)) for n, s in zip(LAYOUT.names, LAYOUT.shapes, strict=True)
    ]
    for e, e_old, chain in zip(d["t"], old["t"], chains, strict=True):
        if chain.float_stages[0].name in ("topk", "dgc"):  # an empty tensor's chain is plain fp32
            assert len(e) == len(e_old) - 2  # k and ib, every such tensor
            kinds.add(type(e[-1]))
    _same(decode_payload(d, SHAPES, layout=LAYOUT, recipes=recipes(recipe)), decode_payload(full, SHAPES))
    if "zstd" in recipe:
        assert bytes in kinds  # ib recomputed from the frame's declared size at least once


def test_form_2_keeps_a_k_the_receiver_cannot_recompute() -> None:
    recipe = "dgc:0.05,warmup=2 | sign"  # the first round sends 25 %, not 5 %
    t = model(13)
    full = encode_payload(recipe, t, new_codec_state(recipe))
    d = _form2(recipe, t)
    fc = d["t"][LAYOUT.names.index("fc.weight")]
    assert len(fc) == 5 and fc[0] == math.ceil(0.25 * t["fc.weight"].size)  # k, ib, rb, scale, data
    assert len(fc[-1]) == 1  # the index and sign arrays in one bin
    want = decode_payload(full, SHAPES)
    _same(decode_payload(d, SHAPES, layout=LAYOUT, recipes=recipes(recipe)), want)
    # The arrays as separate bins (as form 1 sends them) are read in form 2 too.
    i = LAYOUT.names.index("fc.weight")
    e = d["t"][i]
    sep = full["body"]["tensors"]["fc.weight"]["data"]
    d["t"][i] = [*e[:-1], sep]
    _same(decode_payload(d, SHAPES, layout=LAYOUT, recipes=recipes(recipe)), want)
    # One bin that the metadata does not add up to: refused before any kernel runs.
    d["t"][i] = [*e[:-1], [e[-1][0][:-1]]]
    err = _refusal(d, recipes(recipe))
    assert err.reason == Reason.BAD_PAYLOAD and "bytes of arrays, the metadata says" in err.text, err
    d["t"][i] = [e[0], e[1], e[2], "x", e[-1]]
    err = _refusal(d, recipes(recipe))
    assert err.reason == Reason.BAD_PAYLOAD and "fc.weight" in err.text, err


def test_floats_that_are_float32_travel_as_msgpack_float32_and_read_back_exactly() -> None:
    exact, inexact = float(np.float32(0.1)), 0.1
    for v in (exact, -0.0, 3.4028234663852886e38, float(np.float32(1e-45))):
        b = pack_f32(v)
        assert b[0] == 0xCA and len(b) == 5
        back = msgpack.unpackb(b)
        assert back == v and math.copysign(1, back) == math.copysign(1, v)
    for v in (inexact, 1e300, float("nan"), float("inf"), 1e-50):
        assert pack_f32(v) == msgpack.packb(v)  # float64: float32 would change it
    doc = {"a": [1, "x", None, True, b"\x00" * 300, b"\x01" * 70000, {"s": exact}], "b": (inexact,)}
    assert msgpack.unpackb(pack_f32(doc), raw=False) == msgpack.unpackb(msgpack.packb(doc), raw=False)
    assert len(pack_f32(doc)) == len(msgpack.packb(doc, use_bin_type=True)) - 4
    # The sign stage's scale is a float32 value: 4 bytes fewer per tensor, the values unchanged.
    recipe = "sign"
    c = compact_payload(encode_payload(recipe, model(14), new_codec_state(recipe)), recipe, LAYOUT)
    assert c is not None
    scales = [e[0] for e in c["t"] if len(e) == 2]  # the empty tensor's chain is fp32: no scale
    assert len(scales) == len(LAYOUT.names) - 1 and all(float(np.float32(v)) == v for v in scales)
    assert len(pack_f32(c)) == len(msgpack.packb(c, use_bin_type=True)) - 4 * len(scales)
    assert msgpack.unpackb(pack_f32(c), raw=False) == c


def _refusal2(d: dict[str, Any], recipe: str) -> WireError:
    return _refusal(d, recipes(recipe))


@pytest.mark.parametrize(
    ("recipe", "change", "reason", "text"),
    [
        ("topk:0.1+ef | sign", lambda d: d.update(f=3), Reason.SCHEMA, "compact form 3"),
        ("topk:0.1+ef | sign", lambda d: d.update(f="2"), Reason.SCHEMA, "compact form '2'"),
        ("topk:0.1+ef | sign", lambda d: d.update(f=True), Reason.SCHEMA, "compact form True"),
        ("topk:0.1+ef | sign", lambda d: d.update(id=d["id"][:8]), Reason.SCHEMA, "needs 'id', 16 bytes"),
        ("topk:0.1+ef | sign", lambda d: d.pop("id"), Reason.SCHEMA, "needs 'id', 16 bytes"),
        ("topk:0.1+ef | sign", lambda d: d.update(rid=d["id"][:8]), Reason.SCHEMA, "no 'rid' or 'lid'"),
        ("topk:0.1+ef | sign", lambda d: d.update(id=d["id"][:8] + bytes(8)), Reason.BAD_SHAPE, "laid out"),
        ("topk:0.1+ef | sign", lambda d: d.update(id=bytes(8) + LAYOUT.id), Reason.BAD_PAYLOAD, "no recipe"),
        # fc.weight, short ([rb, scale, data]): one value too many, or too few
        ("topk:0.1+ef | sign", lambda d: d["t"][3].insert(0, 5), Reason.SCHEMA, "or 2 with k and ib"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].pop(0), Reason.SCHEMA, "expected 4 metadata"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(2, []), Reason.BAD_PAYLOAD, "recomputed"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3][2].pop(), Reason.BAD_PAYLOAD, "is missing"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3][2].__setitem__(0, b"\x01"), Reason.BAD_PAYLOAD, "ib"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3][2].__setitem__(0, "x"), Reason.BAD_PAYLOAD, "recomputed"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(1, "x"), Reason.BAD_PAYLOAD, "recomputed"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(0, "x"), Reason.BAD_PAYLOAD, "recomputed"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(0, 99), Reason.BAD_PAYLOAD, "rb"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(1, float("nan")), Reason.BAD_PAYLOAD, "scale"),
        ("topk:0.1+ef | sign", lambda d: d["t"][3].__setitem__(-1, 7), Reason.SCHEMA, "data must be bin"),
        # a frame: not zstd, no content size, or a size that makes ib impossible
        ("dgc:0.05 | sign | zstd", lambda d: _set_z(d, b"\x00" * 9), Reason.BAD_PAYLOAD, "recomp"),
        ("dgc:0.05 | sign | zstd", lambda d: _set_z(d, _zstd(b"\0" * 4, 0)), Reason.BAD_PAYLOAD, "content"),
        ("dgc:0.05 | sign | zstd", lambda d: _set_z(d, _zstd(b"\x00" * 10**6)), Reason.BAD_PAYLOAD, "ib"),
        ("dgc:0.05 | sign | zstd", lambda d: _set_z(d, _zstd(b"")), Reason.BAD_PAYLOAD, "ib"),
    ],
)  # fmt: skip
def test_a_malformed_form_2_payload_is_refused_with_its_reason(
    recipe: str, change: Any, reason: Reason, text: str
) -> None:
    d = _form2(recipe)
    change(d)
    err = _refusal2(d, recipe)
    assert err.reason == reason, err
    assert text in str(err), err


def _zstd(raw: bytes, size: int = 1) -> bytes:
    import zstandard

    out: bytes = zstandard.ZstdCompressor(write_content_size=bool(size)).compress(raw)
    return out


def _set_z(d: dict[str, Any], blob: bytes) -> None:
    (i,) = [j for j, e in enumerate(d["t"]) if isinstance(e[-1], bytes)][:1]
    d["t"][i][-1] = blob


def test_form_1_and_the_full_form_are_still_read() -> None:
    recipe = "dgc:0.05 | sign | zstd"
    t = model(15)
    full = encode_payload(recipe, t, new_codec_state(recipe))
    old = compact_payload(full, recipe, LAYOUT)
    assert old is not None and "f" not in old
    want = decode_payload(full, SHAPES)
    _same(decode_payload(old, SHAPES, layout=LAYOUT, recipes=recipes(recipe)), want)
    _same(decode_payload({**old, "f": 1}, SHAPES, layout=LAYOUT, recipes=recipes(recipe)), want)


def test_the_offer_names_its_form_and_absent_means_1() -> None:
    offer = CompactOffer(recipe_id("quant:8"), LAYOUT.id, FORM)
    t = Task("g:t", "r1/a1", 1, 0, "quant:8", compact=offer)
    back = decode(encode(t))
    assert isinstance(back, Task) and back.compact == offer
    assert CompactOffer(recipe_id("quant:8"), LAYOUT.id).to_wire().keys() == {"rid", "lid"}
    newer = decode(msgpack.packb({**t.to_wire(), "compact": {**offer.to_wire(), "f": 9}}, use_bin_type=True))
    assert isinstance(newer, Task) and newer.compact is not None and newer.compact.form == 9
    for bad in (0, "2", 2.0, None):
        with pytest.raises(WireError) as info:
            decode(
                msgpack.packb({**t.to_wire(), "compact": {**offer.to_wire(), "f": bad}}, use_bin_type=True)
            )
        assert info.value.reason == Reason.SCHEMA and "TASK.compact.f" in info.value.text


def test_an_update_leaves_out_a_task_id_the_ground_derives_and_only_when_asked() -> None:
    payload = {"codec": "fp32", "tensors": {}}
    u = Update("sat-7:42", "r12/sat-7", 12, 11, 480, {"loss": 0.5}, payload, omit_task_id=True)
    wire = msgpack.unpackb(encode(u), raw=False)
    assert "task_id" not in wire
    back = decode(encode(u))
    assert back == u and isinstance(back, Update) and back.task_id == "r12/sat-7"
    assert encode(back) == encode(u)  # a station re-encoding it forwards the same bytes
    # Not asked (an older ground): the task_id travels. A name the ground would not derive: too.
    for kept in (
        dataclasses.replace(u, omit_task_id=False),
        dataclasses.replace(u, task_id="r12/sat-8"),
        dataclasses.replace(u, task_id="custom"),
    ):
        assert msgpack.unpackb(encode(kept), raw=False)["task_id"] == kept.task_id
        assert decode(encode(kept)) == dataclasses.replace(kept, omit_task_id=False)


def test_an_older_agents_form_1_without_the_index_coding_still_reads() -> None:
    """Agents from before the Rice index coding list [k, ib, scale, data] for a top-k | sign tensor
    (varints); the receiver reads that form 1 under the same recipe text."""
    recipe, old = "topk:0.1+ef | sign", "topk:0.1,idx=varint+ef | sign"
    t = model(15)
    full = encode_payload(old, t, new_codec_state(old))
    c = compact_payload(full, old, LAYOUT)
    assert c is not None
    for e in c["t"]:
        if len(e) == 5:  # k, ib, rb (nil: varints), scale, data
            assert e[2] is None
            del e[2]
    c["rid"] = recipe_id(recipe)
    got = decode_payload(c, SHAPES, layout=LAYOUT, recipes=recipes(recipe))
    _same(got, decode_payload(full, SHAPES))
