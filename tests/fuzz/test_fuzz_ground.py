"""A real ``orbitfl ground serve`` fuzzed over CurveZMQ by an allow-listed client: byte mutations of
recorded valid frames, structured mutations over the message schema (hypothesis and a seeded
generator), multipart and empty frames. Pass: the daemon never dies, logs no traceback, keeps its
RSS flat after warm-up, its global model stays finite and unchanged by refused frames, and a real
agent completes a round afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

FRAMES = 20_000  # the seeded generator; hypothesis adds its own examples on top
HYPOTHESIS_EXAMPLES = 800
RSS_GROWTH_MIB = 25.0  # after warm-up; a leak per frame would be far beyond this over 20k frames

# Leaves of every msgpack type, with the extremes hypothesis shrinks towards.
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=64)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=24,
)


def test_a_fuzzed_ground_serves_on_and_a_real_agent_completes_a_round(fz: ModuleType, tmp_path: Path) -> None:
    ground = fz.Ground(tmp_path)
    ground.start()
    try:
        res = fz.fuzz(ground, FRAMES, seed=11)
        assert res.frames == FRAMES and res.deaths == 0, ground.log_text()[-3000:]
        corpus = res.corpus
        assert corpus is not None
        # hypothesis over the schema: one field of a recorded valid message gets any value
        client = fz.Client(ground)
        paths = [(i, p) for i, m in enumerate(corpus.maps) for p in fz._paths(m)]
        sent = [0]

        @settings(max_examples=HYPOTHESIS_EXAMPLES, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.sampled_from(paths), values, st.booleans())
        def one_field(where: tuple[int, tuple[Any, ...]], value: Any, extra: bool) -> None:
            i, path = where
            base = corpus.maps[i]
            d = {**base, "zz": value} if extra else fz.set_path(base, path, value)
            client.send(fz.pack(d))
            sent[0] += 1
            if sent[0] % 64 == 0:
                client.drain(50)
                assert ground.alive()

        try:
            one_field()
            client.drain(500)
            # multipart gets a NACK from the link; empty frames are heartbeats and get one back
            client.send([corpus.frames[0], corpus.frames[1]])
            end = time.monotonic() + 15
            nack = None
            while time.monotonic() < end and nack is None:  # answers to the frames before it come first
                m = client.wait_for(fz.Nack, 15)
                nack = m if m.ref is None and "part" in m.text else None
            assert nack is not None and nack.reason == "malformed"
        finally:
            client.close()
        assert ground.alive(), ground.log_text()[-3000:]
        log = ground.log_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
        assert res.rss_end_mib - res.rss_warm_mib < RSS_GROWTH_MIB, res.as_dict()
        assert ground.model_files() == {"v000000.msgpack": ground.model_files()["v000000.msgpack"]}
        assert res.model_unchanged and res.model_finite
        # every kind of refusal was exercised, and most frames were answered
        assert {"malformed", "schema", "bad_id", "bad_payload"} <= set(res.nacks), res.nacks
        assert res.replies > 0.5 * FRAMES
        assert fz.agent_round(ground, corpus), (tmp_path / "agent.log").read_text()[-3000:]
        assert ground.model_finite()
        assert "Traceback" not in ground.log_text()
    finally:
        code = ground.stop()
    assert code == 0
