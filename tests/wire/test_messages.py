"""Every message survives a round trip; every malformed frame is refused with a named reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from orbitfl.wire import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Chunk,
    ChunkAck,
    Heartbeat,
    Hello,
    Limits,
    Message,
    Model,
    Nack,
    Reason,
    Task,
    Update,
    WireError,
    decode,
    decode_as,
    encode,
    id_sender,
    make_id,
)
from orbitfl.wire.model_codec import encode_model
from orbitfl.wire.payload import decode_payload, encode_payload
from orbitfl.wire.tensors import check_against_model, tensor_from_wire, tensor_to_wire, tensors_from_wire

RNG = np.random.default_rng(0)
MODEL = {"w": RNG.standard_normal((4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
SHA = bytes(range(32))


def all_messages() -> list[Message]:
    blob = encode_model(2, MODEL)
    payload = encode_payload("fp32", MODEL)
    return [
        Hello("a1:1", "a1", "orbitfl/0.1", 3, {"trainer": "ort", "pending": 2}),
        Hello("a1:2", "a1", "orbitfl/0.1", None, {}),
        Hello("a1:3", "a1", "orbitfl/0.1", 3, {"trainer": "ort", "pending": 2}, "0123abcd").short(),
        Hello("a1:4", "a1", "orbitfl/0.1", None, {}).short(),
        Task("ground:t1", "r1/a1", 1, 2, "fp32", {"experts": [0, 2]}, 120.5, blob),
        Task("ground:t2", "r1/a1", 1, 2, "topk", {}, None, None),
        Update("a1:7", "r1/a1", 1, 2, 64, {"loss": 0.25, "acc": 0.9}, payload),
        Ack("ground:b1.1", "a1:7", duplicate=True),
        Nack("ground:b1.2", "a1:7", Reason.NON_FINITE.value, "tensor 'w' holds NaN"),
        Nack("ground:b1.3", None, Reason.MALFORMED.value, "garbage"),
        Model("ground:m", encode_model(3, MODEL, MODEL, 2)),
        Heartbeat("a1:b1.9", 3, 1),
        Bye("a1:b1.10", "shutdown"),
        Chunk("a1:b1.11", "a1:7", 10, 100, SHA, b"x" * 20),
        Chunk("a1:b1.12", "a1:7", 30, 100, SHA, b"x" * 20, ack=False),
        ChunkAck("ground:b1.4", "a1:7", 30),
    ]


@pytest.mark.parametrize("msg", all_messages(), ids=lambda m: m.TYPE)
def test_every_message_round_trips(msg: Message) -> None:
    frame = encode(msg)
    back = decode(frame)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == frame
    raw = msgpack.unpackb(frame, raw=False)
    assert raw["v"] == PROTOCOL_VERSION and raw["type"] == msg.TYPE and raw["id"] == msg.id


def test_tensors_decode_as_views_of_the_received_bytes_without_copy() -> None:
    a = RNG.standard_normal((5, 7)).astype(np.float32)
    frame = msgpack.packb({"t": tensor_to_wire(a)}, use_bin_type=True)
    d = msgpack.unpackb(frame, raw=False)
    back = tensor_from_wire(d["t"])
    assert np.array_equal(back, a) and back.dtype == np.float32
    assert not back.flags.owndata and not back.flags.writeable  # a view over the bytes object
    assert back.base is not None


def test_update_payload_round_trip_fp32() -> None:
    u = Update("a1:1", "r1/a1", 1, 0, 10, {}, encode_payload("fp32", MODEL))
    back = decode_as(encode(u), Update)
    got = decode_payload(back.payload)
    for k in MODEL:
        assert np.array_equal(got[k], MODEL[k])


def test_ids() -> None:
    assert make_id("sat-7", 42) == "sat-7:42"
    assert id_sender("sat-7:42") == "sat-7"
    assert id_sender("ground:b3.9") == "ground"


def frame_of(d: dict[str, object]) -> bytes:
    out: bytes = msgpack.packb(d, use_bin_type=True)
    return out


def refused(frame: bytes, limits: Limits | None = None) -> WireError:
    with pytest.raises(WireError) as ei:
        decode(frame) if limits is None else decode(frame, limits)
    return ei.value


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1\xc1\xc1", Reason.MALFORMED),  # 0xc1 is never used in msgpack
        (b"\x92\x01", Reason.MALFORMED),  # truncated array
        (
            frame_of({"v": 1, "type": "ACK", "id": "g:1", "ref": "x"}) + b"\x00",
            Reason.MALFORMED,
        ),  # extra data
        (msgpack.packb([1, 2, 3]), Reason.MALFORMED),
        (frame_of({"v": 99, "type": "HELLO", "id": "a:1"}), Reason.BAD_VERSION),
        (frame_of({"type": "HELLO", "id": "a:1"}), Reason.BAD_VERSION),
        (frame_of({"v": 1, "type": "STEAL", "id": "a:1"}), Reason.UNKNOWN_TYPE),
        (frame_of({"v": 1, "type": "ACK", "ref": "x"}), Reason.SCHEMA),  # no id
        (frame_of({"v": 1, "type": "ACK", "id": "g:1"}), Reason.SCHEMA),  # no ref
        (frame_of({"v": 1, "type": "ACK", "id": "g:1", "ref": 5}), Reason.SCHEMA),
        (frame_of({"v": 1, "type": "HELLO", "id": "a:1", "agent_id": "a:b", "software": "x"}), Reason.SCHEMA),
        (
            frame_of(
                {
                    "v": 1,
                    "type": "UPDATE",
                    "id": "a:1",
                    "task_id": "t",
                    "round": 1,
                    "base_version": 0,
                    "samples": 0,
                    "payload": {},
                }
            ),
            Reason.SCHEMA,
        ),
        (
            frame_of(
                {
                    "v": 1,
                    "type": "UPDATE",
                    "id": "a:1",
                    "task_id": "t",
                    "round": 1,
                    "base_version": 0,
                    "samples": 3,
                    "metrics": {"loss": float("nan")},
                    "payload": {},
                }
            ),
            Reason.SCHEMA,
        ),
        (
            frame_of(
                {
                    "v": 1,
                    "type": "CHUNK",
                    "id": "a:1",
                    "transfer": "t",
                    "offset": 90,
                    "total": 100,
                    "sha256": SHA,
                    "data": b"x" * 20,
                }
            ),
            Reason.SCHEMA,
        ),
        (frame_of({"v": 1, "type": "HELLO", "id": "a:1", "digest": b"\x00" * 7}), Reason.SCHEMA),
        (frame_of({"v": 1, "type": "HELLO", "id": "a:1", "digest": "0" * 8}), Reason.SCHEMA),
        (frame_of({"v": 1, "type": "HELLO", "id": "a1", "digest": b"\x00" * 8}), Reason.BAD_ID),
        (
            frame_of({"v": 1, "type": "HELLO", "id": "a:1", "digest": b"\x00" * 8, "pending": -1}),
            Reason.SCHEMA,
        ),
        (
            frame_of(
                {
                    "v": 1,
                    "type": "CHUNK",
                    "id": "a:1",
                    "transfer": "t",
                    "offset": 0,
                    "total": 100,
                    "sha256": SHA,
                    "data": b"x" * 20,
                    "ack": 0,
                }
            ),
            Reason.SCHEMA,
        ),
        (frame_of({1: 2}), Reason.MALFORMED),  # non-string map key
    ],
)
def test_bad_frames_are_refused_with_a_reason(frame: bytes, reason: Reason) -> None:
    err = refused(frame)
    assert err.reason is reason, err
    assert str(err)  # names what was wrong


def test_bad_version_names_the_versions_and_keeps_the_id() -> None:
    err = refused(frame_of({"v": 7, "type": "HELLO", "id": "a:1"}))
    assert "7" in err.text and str(PROTOCOL_VERSION) in err.text
    assert err.ref == "a:1"


def test_oversize_frame_is_refused_before_unpacking() -> None:
    big = encode(Bye("a:1", "x" * 2000))
    err = refused(big, Limits(max_frame_bytes=1000))
    assert err.reason is Reason.OVERSIZE


def test_oversize_field_is_refused_by_unpack_limits() -> None:
    frame = encode(Chunk("a:1", "t", 0, 5000, SHA, b"y" * 5000))
    err = refused(frame, Limits(max_bin_len=1000))
    assert err.reason is Reason.OVERSIZE
    assert err.ref == "a:1"


def test_non_bytes_frame_is_refused() -> None:
    with pytest.raises(WireError) as ei:
        decode("text")  # type: ignore[arg-type]
    assert ei.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        ({"dtype": "object", "shape": [1], "data": b"\x00" * 8}, Reason.BAD_DTYPE),
        ({"dtype": "float32", "shape": [2, 2], "data": b"\x00" * 12}, Reason.BAD_SHAPE),
        ({"dtype": "float32", "shape": [-1], "data": b""}, Reason.BAD_SHAPE),
        ({"dtype": "float32", "shape": "4", "data": b"\x00" * 16}, Reason.BAD_SHAPE),
        ({"dtype": "float32", "shape": [4], "data": "text"}, Reason.SCHEMA),
        ([1, 2], Reason.SCHEMA),
    ],
)
def test_bad_tensors(tensor: object, reason: Reason) -> None:
    with pytest.raises(WireError) as ei:
        tensor_from_wire(tensor)
    assert ei.value.reason is reason


def test_tensors_checked_against_the_model() -> None:
    spec = {k: (tuple(v.shape), v.dtype.name) for k, v in MODEL.items()}
    check_against_model(MODEL, spec)
    cases: list[tuple[dict[str, np.ndarray], Reason]] = [
        ({**MODEL, "extra": np.zeros(1, np.float32)}, Reason.UNKNOWN_TENSOR),
        ({"w": MODEL["w"]}, Reason.MISSING_TENSOR),
        ({**MODEL, "w": MODEL["w"].astype(np.float64)}, Reason.BAD_DTYPE),
        ({**MODEL, "w": MODEL["w"].reshape(3, 4)}, Reason.BAD_SHAPE),
        ({**MODEL, "b": np.array([0, np.nan, 0], np.float32)}, Reason.NON_FINITE),
        ({**MODEL, "b": np.array([0, np.inf, 0], np.float32)}, Reason.NON_FINITE),
    ]
    for tensors, reason in cases:
        with pytest.raises(WireError) as ei:
            check_against_model(tensors, spec)
        assert ei.value.reason is reason
    check_against_model({"w": MODEL["w"]}, spec, require_all=False)


def test_tensor_names_must_be_strings() -> None:
    with pytest.raises(WireError):
        tensors_from_wire({"": tensor_to_wire(MODEL["b"])})


def test_unknown_payload_codec_is_refused() -> None:
    with pytest.raises(WireError) as ei:
        decode_payload({"codec": "pickle", "data": b""})
    assert ei.value.reason is Reason.BAD_PAYLOAD


def test_unsendable_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        tensor_to_wire(np.array(["a"], dtype=object))


def test_a_short_hello_names_its_agent_by_its_id_and_its_settings_by_a_digest() -> None:
    from orbitfl.wire.messages import hello_digest

    full = Hello("sat3:b1.7", "sat3", "orbitfl/0.1", 4, {"max_samples": 9, "pending": 2}, "0123abcd")
    short = decode_as(encode(full.short()), Hello)
    assert short.agent_id == "sat3" and short.model_version == 4
    assert short.capabilities == {"pending": 2} and short.software == ""
    assert set(msgpack.unpackb(encode(short))) == {"v", "type", "id", "model_version", "digest", "pending"}
    assert short.expanded("orbitfl/0.1", {"max_samples": 9, "pending": 0}, "0123abcd") == full
    # pending changes every pass and map order is not meaning: neither moves the digest
    assert short.digest == hello_digest("orbitfl/0.1", {"pending": 5, "max_samples": 9}, "0123abcd")
    for other in (
        ("orbitfl/0.2", {"max_samples": 9}, "0123abcd"),
        ("orbitfl/0.1", {"max_samples": 10}, "0123abcd"),
        ("orbitfl/0.1", {"max_samples": 9}, "0123abce"),
        ("orbitfl/0.1", {"max_samples": 9}, None),
    ):
        assert hello_digest(*other) != short.digest
