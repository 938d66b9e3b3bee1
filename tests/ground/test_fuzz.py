"""Mutated frames never raise out of the ground machine; each gets an answer, and afterwards the
machine still accepts a good update."""

from __future__ import annotations

from typing import Any

import numpy as np

from orbitfl.codec import Pipeline
from orbitfl.transfer import Outbound
from orbitfl.wire import Ack, Nack
from orbitfl.wire.payload import encode_payload


def mutations(frame: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(frame)
        kind = rng.integers(4)
        if kind == 0:  # flip a few bytes
            for i in rng.integers(0, len(b), size=rng.integers(1, 8)):
                b[i] = int(rng.integers(256))
        elif kind == 1:  # truncate
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == 2:  # splice garbage in
            i = int(rng.integers(0, len(b)))
            b[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        else:  # overwrite a run
            i = int(rng.integers(0, len(b)))
            b[i : i + 16] = rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()
        out.append(bytes(b))
    return out


def test_mutated_frames_never_raise(kit: Any) -> None:
    rng = np.random.default_rng(11)
    recipe = "topk:0.5+ef | quant:4 | zstd"
    g = kit.ground(recipe=recipe)
    g.rx("a1", kit.hello("a1"))
    t = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in kit.MODEL.items()}
    seeds = [
        kit.update_frame("a1", 1, tensors=t),
        kit.update_frame("a1", 2, payload=encode_payload(recipe, t, Pipeline.parse(recipe).new_state())),
        kit.hello("a1", 3),
        Outbound("a1:9", b"z" * 3000, chunk_bytes=1000).next_chunks(lambda: "a1:b1.1")[0],
    ]
    answered = 0
    for seed in seeds:
        for f in mutations(seed, rng, 400):
            acts = g.rx("a1", f)  # must not raise
            answered += bool(kit.nacks(acts) or kit.acks(acts) or kit.sent(acts))
    assert answered > 0.9 * 4 * 400
    # still serving: a fresh, valid update from a fresh agent is accepted
    g.rx("a9", kit.hello("a9"))
    small = {k: np.full(v.shape, 0.1, np.float32) for k, v in kit.MODEL.items()}
    payload = encode_payload(recipe, small, Pipeline.parse(recipe).new_state())  # the task's recipe
    acts = g.rx("a9", kit.update_frame("a9", 1, payload=payload))
    assert any(isinstance(m, Ack) and m.ref == "a9:1" for m in kit.sent(acts))
    assert not any(isinstance(m, Nack) for m in kit.sent(acts))
