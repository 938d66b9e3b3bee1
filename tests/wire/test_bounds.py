"""Structural bounds in the wire decoder: integers fit the store, free-form maps stay plain, small
and shallow, but a real EMS-FL expert table for a large constellation still travels."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from orbitfl.wire import Hello, Task, WireError, decode, encode


def hello_with(**fields: Any) -> bytes:
    d = Hello("a1:b1.1", "a1", "t", None, {}).to_wire()
    d.update(fields)
    return bytes(msgpack.packb(d, use_bin_type=True))


@pytest.mark.parametrize("v", [2**63, 2**64 - 1, -1])
def test_integers_outside_signed_64_bit_are_schema(v: int) -> None:
    with pytest.raises(WireError, match="model_version") as e:
        decode(hello_with(model_version=v))
    assert e.value.reason.value == "schema"
    assert decode(hello_with(model_version=2**63 - 1)).model_version == 2**63 - 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "caps",
    [
        {"deep": [[[[[1]]]]]},
        {"many": list(range(5000))},
        {"nan": float("nan")},
        {"big": 2**64 - 1},
        {"m": {"k": {"k": {"k": {"k": 1}}}}},
    ],
)
def test_capabilities_must_be_plain_small_and_shallow(caps: dict[str, Any]) -> None:
    with pytest.raises(WireError, match="capabilities") as e:
        decode(hello_with(capabilities=caps))
    assert e.value.reason.value == "schema"


def test_plain_capabilities_and_a_large_expert_table_pass() -> None:
    caps = {"affinity": [0.1, 0.9, 0.0], "pending": 2, "board": "pi5", "max_samples": 1797}
    assert decode(hello_with(capabilities=caps)).capabilities == caps  # type: ignore[attr-defined]
    hints = {"experts": {f"sat{i}": [i % 4, (i + 1) % 4] for i in range(3000)}}
    task = decode(encode(Task("g:task.r1/sat1.fromnone", "r1/sat1", 1, 0, "fp32", hints, None, None)))
    assert task.hints == hints  # type: ignore[attr-defined]
