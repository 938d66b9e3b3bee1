"""The link over real sockets: Curve admission, size limits, liveness, reconnects, backoff."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import zmq
import zmq.auth

from orbitfl.runtime.link import (
    AgentLink,
    Backoff,
    Down,
    GroundLink,
    KeyRefused,
    LinkError,
    Received,
    Up,
    load_public,
)

ANY_PORT = "tcp://127.0.0.1:*"


def test_curve_handshake_with_an_allowed_key_carries_frames_both_ways(keys: Any, pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        AgentLink(g.endpoint, "sat-1", keys=keys.client("sat-1"), heartbeat_s=0.2) as a,
    ):
        assert g.secure and a.secure
        _, ev = pump(g, [a], lambda got, ev: any(isinstance(e, Up) for e in ev))
        assert a.up, "the agent never heard the ground"
        assert a.send(b"\x81\xa1v\x01")
        got, _ = pump(g, [a], lambda got, ev: bool(got))
        assert got == [Received("sat-1", b"\x81\xa1v\x01")]
        assert g.send("sat-1", b"reply")
        _, ev = pump(g, [a], lambda got, ev: any(isinstance(e, Received) for e in ev))
        assert Received("ground", b"reply") in ev
        assert g.stats.bytes_in == 4 and g.stats.bytes_out == 5
        assert g.stats.auth_failures == 0


def test_ground_names_an_agent_by_its_key_not_by_the_name_it_claims(keys: Any, pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        AgentLink(g.endpoint, "sat-2", keys=keys.client("sat-1"), heartbeat_s=0.2) as a,
    ):
        pump(g, [a], lambda got, ev: a.up)
        assert a.send(b"hello")
        got, _ = pump(g, [a], lambda got, ev: bool(got))
        assert [r.peer for r in got] == ["sat-1"]


@pytest.mark.parametrize("client", ["stranger", "plaintext"])
def test_an_unknown_key_or_plaintext_never_reaches_the_application(keys: Any, client: str) -> None:
    with GroundLink(ANY_PORT, keys=keys.server()) as g, zmq.Context() as ctx:
        # A raw DEALER without IMMEDIATE queues its frames, so they would arrive if the handshake passed.
        intruder = ctx.socket(zmq.DEALER)
        intruder.linger = 0
        intruder.routing_id = b"sat-1\x00tag"
        if client == "stranger":
            public, secret = zmq.auth.load_certificate(str(keys.dir / "stranger.key_secret"))
            intruder.curve_publickey, intruder.curve_secretkey = public, secret
            intruder.curve_serverkey = zmq.auth.load_certificate(str(keys.dir / "ground.key"))[0]
        try:
            intruder.connect(g.endpoint)
            for _ in range(5):
                intruder.send(b"")  # a heartbeat, which the ground would answer
                intruder.send(b"let me in")
            got: list[Received] = []
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                got += g.poll(0.05)
            assert got == []
            assert intruder.poll(0) == 0, "the ground answered an unauthenticated peer"
            assert g.stats.frames_in == 0 and g.stats.heartbeats_in == 0
            assert g.stats.auth_failures >= 1
        finally:
            intruder.close()


def test_plaintext_needs_an_explicit_insecure_flag(keys: Any, pump: Any) -> None:
    with pytest.raises(LinkError, match="insecure"):
        GroundLink(ANY_PORT, keys=None)
    with pytest.raises(LinkError, match="insecure"):
        AgentLink("tcp://127.0.0.1:1", "sat-1", keys=None)


def test_insecure_link_names_the_agent_by_its_declared_name(pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=None, insecure=True) as g,
        AgentLink(g.endpoint, "dev-board", keys=None, insecure=True, heartbeat_s=0.2) as a,
    ):
        assert not g.secure
        pump(g, [a], lambda got, ev: a.up)
        assert a.send(b"x")
        got, _ = pump(g, [a], lambda got, ev: bool(got))
        assert got == [Received("dev-board", b"x")]


def test_missing_or_wrong_key_files_give_errors_naming_the_file(keys: Any) -> None:
    from orbitfl.runtime.link import CurveClientKeys, CurveServerKeys

    with pytest.raises(LinkError, match=r"nope\.key_secret"):
        GroundLink(ANY_PORT, keys=CurveServerKeys(keys.dir / "nope.key_secret", keys.allowed))
    with pytest.raises(LinkError, match="no secret key"):
        AgentLink(
            "tcp://127.0.0.1:1",
            "sat-1",
            keys=CurveClientKeys(keys.dir / "sat-1.key", keys.dir / "ground.key"),
        )
    with pytest.raises(LinkError, match="allow-list"):
        GroundLink(ANY_PORT, keys=CurveServerKeys(keys.dir / "ground.key_secret", keys.dir / "absent"))


def test_maxmsgsize_drops_an_oversize_frame_and_the_link_still_works(keys: Any, pump: Any) -> None:
    limit = 4096
    with (
        GroundLink(ANY_PORT, keys=keys.server(), max_msg_size=limit) as g,
        AgentLink(g.endpoint, "sat-1", keys=keys.client("sat-1"), heartbeat_s=0.2) as a,
    ):
        pump(g, [a], lambda got, ev: a.up)
        assert a.send(b"\x01" * (limit + 1))
        got: list[Received] = []
        end = time.monotonic() + 10.0
        while time.monotonic() < end and not any(r.frame == b"small" for r in got):
            got += g.poll(0.05)
            a.poll(0.05)
            if a.up:
                a.send(b"small")
        assert any(r.frame == b"small" for r in got), "the link did not recover after an oversize frame"
        assert all(len(r.frame) <= limit for r in got)
        assert g.stats.bytes_in == 5 * sum(1 for r in got)


def test_heartbeats_keep_an_idle_link_up(keys: Any, pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        # liveness of 1 s: a loaded CI machine may stall a poll for a few hundred ms
        AgentLink(g.endpoint, "sat-1", keys=keys.client("sat-1"), heartbeat_s=0.1, liveness=10) as a,
    ):
        pump(g, [a], lambda got, ev: a.up)
        # Three liveness windows (30 heartbeat intervals) without a single application frame.
        _, ev = pump(g, [a], lambda got, ev: False, timeout_s=3.0)
        assert not any(isinstance(e, Down) for e in ev)
        assert a.up
        assert g.stats.heartbeats_in >= 10 and a.stats.heartbeats_in >= 10
        assert g.last_seen["sat-1"] > time.monotonic() - 0.5


def test_a_silent_ground_is_declared_down_within_liveness(keys: Any, pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        AgentLink(g.endpoint, "sat-1", keys=keys.client("sat-1"), heartbeat_s=0.1, liveness=3) as a,
    ):
        pump(g, [a], lambda got, ev: a.up)
        # The ground's process hangs: TCP stays up (libzmq still answers ZMTP pings), no frames come.
        t0 = time.monotonic()
        _, ev = pump(None, [a], lambda got, ev: any(isinstance(e, Down) for e in ev), timeout_s=5.0)
        took = time.monotonic() - t0
        downs = [e for e in ev if isinstance(e, Down)]
        assert len(downs) == 1
        assert 0.3 - 0.15 <= took < 0.3 + 1.5
        assert downs[0].silent_s >= 0.3


def test_agent_reconnects_after_the_ground_restarts(keys: Any, pump: Any) -> None:
    g = GroundLink(ANY_PORT, keys=keys.server())
    endpoint = g.endpoint
    a = AgentLink(
        endpoint,
        "sat-1",
        keys=keys.client("sat-1"),
        heartbeat_s=0.1,
        liveness=3,
        backoff=Backoff(initial_s=0.05, cap_s=0.2),
    )
    try:
        pump(g, [a], lambda got, ev: a.up)
        g.close()
        pump(None, [a], lambda got, ev: not a.up, timeout_s=5.0)
        assert not a.up
        assert not a.send(b"lost?"), "a send while down must report failure so the caller keeps it"
        time.sleep(0.5)  # down for several backoff periods
        g = GroundLink(endpoint, keys=keys.server())
        _, ev = pump(g, [a], lambda got, ev: a.up, timeout_s=10.0)
        assert a.up and any(isinstance(e, Up) for e in ev)
        assert a.send(b"again")
        got, _ = pump(g, [a], lambda got, ev: bool(got))
        assert got == [Received("sat-1", b"again")]
        assert a.stats.reconnects >= 2
    finally:
        a.close()
        g.close()


def test_suspend_reports_down_and_dials_again_afterwards(keys: Any, pump: Any) -> None:
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        AgentLink(g.endpoint, "sat-1", keys=keys.client("sat-1"), heartbeat_s=0.1) as a,
    ):
        pump(g, [a], lambda got, ev: a.up)
        t0 = time.monotonic()
        a.suspend(0.6)
        assert not a.send(b"x")
        _, ev = pump(g, [a], lambda got, ev: a.up, timeout_s=10.0)
        assert isinstance(ev[0], Down)
        assert any(isinstance(e, Up) for e in ev)
        assert time.monotonic() - t0 >= 0.6


def test_ground_send_to_an_agent_it_never_heard_fails_without_raising(keys: Any) -> None:
    with GroundLink(ANY_PORT, keys=keys.server()) as g:
        assert not g.send("sat-9", b"x")
        assert g.stats.send_failures == 1
        with pytest.raises(ValueError, match="heartbeat"):
            g.send("sat-9", b"")


def test_bad_link_parameters_are_value_errors() -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        AgentLink("tcp://127.0.0.1:1", "a", keys=None, insecure=True, heartbeat_s=0)
    with pytest.raises(ValueError, match="liveness"):
        AgentLink("tcp://127.0.0.1:1", "a", keys=None, insecure=True, liveness=0)
    with pytest.raises(ValueError, match="agent name"):
        AgentLink("tcp://127.0.0.1:1", "", keys=None, insecure=True)
    with pytest.raises(ValueError, match="max_msg_size"):
        GroundLink(ANY_PORT, keys=None, insecure=True, max_msg_size=0)


def test_backoff_grows_exponentially_with_jitter_and_stays_capped() -> None:
    b = Backoff(initial_s=0.5, cap_s=8.0, factor=2.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(200)]
    for n, d in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2.0**n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 8.0
    assert len({round(d, 9) for d in delays[10:]}) > 100, "no jitter"
    b.reset()
    assert 0.25 <= b.next_delay() <= 0.5
    for kw in ({"initial_s": 0}, {"cap_s": 0.1, "initial_s": 1}, {"factor": 0.5}):
        with pytest.raises(ValueError):
            Backoff(**kw)  # type: ignore[arg-type]


def test_agent_waits_its_backoff_between_attempts_while_the_ground_is_absent() -> None:
    with zmq.Context() as ctx:
        probe = ctx.socket(zmq.ROUTER)
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close(linger=0)
    a = AgentLink(
        f"tcp://127.0.0.1:{port}",
        "sat-1",
        keys=None,
        insecure=True,
        heartbeat_s=0.05,
        liveness=2,
        backoff=Backoff(initial_s=0.1, cap_s=0.4, rng=random.Random(0)),
    )
    with a:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            a.poll(0.05)
        # Each attempt: 0.1 s of liveness, then a delay in [0.05, 0.1], [0.1, 0.2], then <= 0.4.
        assert 3 <= a.stats.reconnects <= 9
        assert not a.up


def test_a_ground_restart_faster_than_liveness_is_still_seen_as_down_then_up(keys: Any, pump: Any) -> None:
    g = GroundLink(ANY_PORT, keys=keys.server())
    endpoint = g.endpoint
    a = AgentLink(
        endpoint,
        "sat-1",
        keys=keys.client("sat-1"),
        heartbeat_s=1.0,
        liveness=10,
        backoff=Backoff(initial_s=0.1, cap_s=0.5),
    )
    try:
        pump(g, [a], lambda got, ev: a.up)
        g.close()
        g = GroundLink(endpoint, keys=keys.server())
        t0 = time.monotonic()
        _, ev = pump(g, [a], lambda got, ev: any(isinstance(e, Up) for e in ev), timeout_s=8.0)
        kinds = [type(e) for e in ev]
        assert Down in kinds and Up in kinds and kinds.index(Down) < kinds.index(Up)
        assert time.monotonic() - t0 < 5.0, "waited for liveness (10 s) instead of seeing the disconnect"
    finally:
        a.close()
        g.close()


def test_a_revoked_key_is_refused_on_its_open_connection_and_at_its_next_handshake(
    keys: Any, pump: Any, caplog: Any
) -> None:
    caplog.set_level("WARNING", logger="orbitfl.runtime.link")
    with (
        GroundLink(ANY_PORT, keys=keys.server()) as g,
        AgentLink(
            g.endpoint,
            "sat-1",
            keys=keys.client("sat-1"),
            heartbeat_s=0.1,
            liveness=3,
            backoff=Backoff(initial_s=0.05, cap_s=0.1),
            refused_backoff_s=30.0,
        ) as a,
        AgentLink(g.endpoint, "sat-2", keys=keys.client("sat-2"), heartbeat_s=0.1) as b,
    ):
        pump(g, [a, b], lambda got, ev: a.up and b.up)
        (keys.allowed / "sat-1.key").unlink()
        assert g.reload_keys() == ([], ["sat-1"])
        assert g.allowed_names() == ["sat-2"]
        assert a.send(b"update after revocation") and b.send(b"still welcome")
        got, ev = pump(g, [a, b], lambda got, ev: any(isinstance(e, KeyRefused) for e in ev), timeout_s=10)
        assert [r.peer for r in got] == ["sat-2"], "a revoked agent's frame reached the application"
        assert g.stats.refused_revoked >= 1
        refused = [e for e in ev if isinstance(e, KeyRefused)]
        assert refused == [KeyRefused(30.0)], "the revoked agent must be told, once"
        assert any(isinstance(e, Down) for e in ev) and not a.up
        key = load_public(keys.dir / "sat-1.key").decode()
        g.poll(0.1)  # the refusal's monitor event
        logged = [r.getMessage() for r in caplog.records]
        assert any(key in m and "sat-1" in m and "open connection" in m for m in logged), logged
        assert any(key in m and "handshake refused" in m and "revoked agent sat-1" in m for m in logged), (
            logged
        )
        # The long backoff holds: no redial within the next second, while sat-2 stays served.
        reconnects = a.stats.reconnects
        pump(g, [a, b], lambda got, ev: False, timeout_s=1.0)
        assert a.stats.reconnects == reconnects and b.up
        assert b.send(b"more")
        got, _ = pump(g, [b], lambda got, ev: bool(got))
        assert [r.peer for r in got] == ["sat-2"]


def test_a_key_added_to_the_allow_list_is_admitted_after_a_reload(keys: Any, pump: Any) -> None:
    import shutil

    with GroundLink(ANY_PORT, keys=keys.server()) as g:
        shutil.copyfile(keys.dir / "stranger.key", keys.allowed / "stranger.key")
        assert g.reload_keys() == (["stranger"], [])
        with AgentLink(g.endpoint, "stranger", keys=keys.client("stranger"), heartbeat_s=0.1) as a:
            pump(g, [a], lambda got, ev: a.up)
            assert a.send(b"hi")
            got, _ = pump(g, [a], lambda got, ev: bool(got))
            assert got == [Received("stranger", b"hi")]
