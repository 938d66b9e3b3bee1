"""Hypothesis over the message schema, in process: any map built from the protocol's own field
names with any values is answered by the ground machine without reaching its last-resort
``internal`` path (which would mean a check is missing); any payload decodes or is refused with a
WireError."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import Log, MessageReceived
from orbitfl.wire import MESSAGE_TYPES, Hello, WireError, encode
from orbitfl.wire.compact import Layout, recipe_id
from orbitfl.wire.payload import decode_payload

MODEL = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}
SHAPES = {k: v.shape for k, v in MODEL.items()}
LAYOUT = Layout.of_tensors(MODEL)
RECIPES = {recipe_id(r): r for r in ("quant:8 | zstd", "fp32", "topk:0.3+ef | sign")}
FIELDS = [
    "v", "type", "id", "agent_id", "software", "model_version", "capabilities", "task_id", "round",
    "base_version", "samples", "metrics", "payload", "ref", "duplicate", "reason", "text", "pending",
    "transfer", "offset", "total", "sha256", "data", "next_offset", "model", "recipe", "hints",
    "compact", "rid", "lid", "mask", "t", "f",
]  # fmt: skip

leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
    | st.sampled_from(
        ["a1:1", "a1:b1.2", "fz", "fz:", "r1/a1", "float32", "fp32", "pipeline", "zstd", "compact"]
    )
    | st.sampled_from([LAYOUT.id, *RECIPES])
)
value = st.recursive(
    leaf,
    lambda c: (
        st.lists(c, max_size=5)
        | st.dictionaries(st.sampled_from([*FIELDS, "codec", "body", "w"]), c, max_size=5)
    ),
    max_leaves=20,
)
frame_map = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, None]),
        "type": st.sampled_from([*MESSAGE_TYPES, "X"]),
        "id": value | st.just("a1:7"),
    },
    optional={f: value for f in FIELDS if f not in ("v", "type", "id")},
)
SETTINGS = settings(max_examples=120, suppress_health_check=list(HealthCheck), derandomize=True)


def packed(d: Any) -> bytes:
    return bytes(msgpack.packb(d, use_bin_type=True))


@settings(max_examples=40, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.dictionaries(st.sampled_from(["codec", "recipe", "body", "tensors"]), value, max_size=4), value)
def test_decode_payload_refuses_with_a_wire_error_or_decodes(d: dict[str, Any], body: Any) -> None:
    for p in (
        d,
        {"codec": "pipeline", "recipe": "quant:8 | zstd", "body": body},
        {"codec": "fp32", "tensors": body},
    ):
        with contextlib.suppress(WireError):
            decode_payload(p, SHAPES)
    for rid in RECIPES:
        for p in (
            {**d, "codec": "compact"},
            {"codec": "compact", "rid": rid, "lid": LAYOUT.id, "t": body},
            {"codec": "compact", "rid": rid, "lid": LAYOUT.id, "t": [body, body]},
            {"codec": "compact", "rid": rid, "lid": LAYOUT.id, "t": [[body, body], [body, body, body, body]]},
            {"codec": "compact", "rid": rid, "lid": LAYOUT.id, "t": [[body], [body]]},
            {"codec": "compact", "rid": rid, "lid": LAYOUT.id, "mask": body, "t": [[body]]},
            # form 2: one id, short entries (k and ib recomputed), one bin of arrays
            {"codec": "compact", "f": 2, "id": rid + LAYOUT.id, "t": body},
            {"codec": "compact", "f": 2, "id": rid + LAYOUT.id, "t": [[body, body], [body, [body]]]},
            {"codec": "compact", "f": 2, "id": rid + LAYOUT.id, "t": [[body], [body, body, body, body]]},
            {"codec": "compact", "f": 2, "id": rid + LAYOUT.id, "t": [[body, [body]], [body, body]]},
            {"codec": "compact", "f": body, "id": rid + LAYOUT.id, "rid": rid, "t": [[body], [body]]},
        ):
            with contextlib.suppress(WireError):
                decode_payload(p, SHAPES, layout=LAYOUT, recipes=RECIPES)


def test_the_machine_answers_every_schema_frame_without_an_internal_error(tmp_path: Path) -> None:
    m = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(min_updates=10**6), MODEL)
    m.handle(MessageReceived("a1", encode(Hello("a1:h1", "a1", "t", None, {}))), 0.0)

    @SETTINGS
    @given(frame_map)
    def one(d: dict[str, Any]) -> None:
        acts = m.handle(MessageReceived("a1", packed(d)), 0.0)
        internal = [a.text for a in acts if isinstance(a, Log) and "internal error" in a.text]
        assert not internal, internal

    one()
    assert m.version == 0
