"""A ground network in-process (no sockets): agents, stations and an aggregator as real machines on
real SQLite stores, wired by a router whose links can be cut. Each ACKed update counts once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.ground.aggregator import AggregatorMachine
from orbitfl.ground.machine import GroundConfig
from orbitfl.ground.station import StationConfig, StationMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import (
    Action,
    AllowAgents,
    LinkDown,
    LinkUp,
    MessageReceived,
    PeerSilent,
    Send,
    SendUpstream,
    StartTraining,
    Tick,
    TrainingDone,
    UpstreamDown,
    UpstreamReceived,
    UpstreamUp,
)
from orbitfl.runtime.outbox import Outbox
from orbitfl.wire import Nack, Reason, decode

MODEL = {"w": np.zeros((200, 100), np.float32), "b": np.zeros(100, np.float32)}  # ~80 kB as fp32
CHUNK = 16 << 10


def agent_ids_acked(outbox: Outbox) -> set[str]:
    """The updates an agent's outbox no longer holds and did not drop: the ones it got ACKs for."""
    counter = int(outbox.get("counter") or b"0")
    held = {i.update_id for i in outbox.items()}
    dropped = {r[0] for r in outbox.db.execute("SELECT update_id FROM dropped")}
    name = outbox.get("name")
    assert name is not None
    return {f"{name.decode()}:{k}" for k in range(1, counter + 1)} - held - dropped


class Net:
    """An aggregator, stations and agents. ``at[agent]`` is the station the agent sees (or None);
    ``up[station]`` whether its terrestrial link is up. Frames in flight are lost when a link is cut."""

    def __init__(self, tmp: Path, stations: list[str], agents: list[str], **fed: Any) -> None:
        self.tmp = tmp
        fed.setdefault("min_updates", len(agents))
        fed.setdefault("chunk_bytes", CHUNK)
        self.fed = fed
        self.allow = {a: "k" * 40 for a in agents}
        self.agg = AggregatorMachine(GroundStore(tmp / "agg"), GroundConfig(**fed), MODEL, allow=self.allow)
        self.st: dict[str, StationMachine] = {s: self._station(s) for s in stations}
        self.ag: dict[str, AgentMachine] = {}
        for a in agents:
            ob = Outbox(tmp / f"{a}.db")
            ob.set("name", a.encode())
            self.ag[a] = AgentMachine(ob, AgentConfig(a, chunk_bytes=CHUNK, window=2))
        self.at: dict[str, str | None] = dict.fromkeys(agents)
        self.up: dict[str, bool] = dict.fromkeys(stations, False)
        self.q: list[tuple[str, str, bytes]] = []  # (kind, target, frame)
        self.trainings: dict[str, list[StartTraining]] = {a: [] for a in agents}
        self.allow_actions: list[AllowAgents] = []
        self.now = 1000.0

    def _station(self, name: str) -> StationMachine:
        cfg = StationConfig(name, GroundConfig(chunk_bytes=CHUNK, window=2))
        return StationMachine(GroundStore(self.tmp / name), Outbox(self.tmp / f"{name}.outbox"), cfg)

    def restart_station(self, name: str) -> None:
        old = self.st[name]
        old.store.close()
        old.outbox.close()
        self.q = [x for x in self.q if x[1] != name and not (x[0] == "agent" and self.at[x[1]] == name)]
        self.st[name] = self._station(name)
        if self.up[name]:
            self.up[name] = False
            self.link(name, True)

    # --- links ------------------------------------------------------------------------------------

    def link(self, station: str, up: bool) -> None:
        if self.up[station] == up:
            return
        self.up[station] = up
        if up:
            self._from_station(station, self.st[station].handle(UpstreamUp(), self.now))
        else:
            self.q = [x for x in self.q if not (x[0] in ("agg", "up") and x[1] == station)]
            self._from_station(station, self.st[station].handle(UpstreamDown(), self.now))
            self._from_agg(self.agg.handle(PeerSilent(station), self.now))

    def move(self, agent: str, station: str | None) -> None:
        old = self.at[agent]
        if old == station:
            return
        if old is not None:
            self.q = [x for x in self.q if x[1] != agent]
            self._from_agent(agent, self.ag[agent].handle(LinkDown(), self.now))
            self._from_station(old, self.st[old].handle(PeerSilent(agent), self.now))
        self.at[agent] = station
        if station is not None:
            self._from_agent(agent, self.ag[agent].handle(LinkUp(), self.now))

    # --- delivery ---------------------------------------------------------------------------------

    def _from_agent(self, agent: str, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, Send) and self.at[agent] is not None:
                self.q.append(("station", f"{self.at[agent]}|{agent}", x.frame))
            elif isinstance(x, StartTraining):
                self.trainings[agent].append(x)

    def _from_station(self, station: str, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, SendUpstream) and self.up[station]:
                self.q.append(("agg", station, x.frame))
            elif isinstance(x, Send) and self.at.get(x.peer) == station:
                self.q.append(("agent", x.peer, x.frame))
            elif isinstance(x, AllowAgents):
                self.allow_actions.append(x)

    def _from_agg(self, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, Send) and self.up.get(x.peer):
                self.q.append(("up", x.peer, x.frame))

    def pump(self, max_frames: int | None = None) -> int:
        n = 0
        while self.q and (max_frames is None or n < max_frames):
            kind, target, frame = self.q.pop(0)
            n += 1
            if kind == "station":
                station, agent = target.split("|")
                if self.at[agent] != station:
                    continue  # the agent moved on; the frame is lost
                st = self.st[station]
                with st.batch():
                    acts = st.handle(MessageReceived(agent, frame), self.now)
                self._from_station(station, acts)
            elif kind == "agent":
                self._from_agent(target, self.ag[target].handle(MessageReceived("ground", frame), self.now))
            elif kind == "agg":
                if self.up[target]:
                    with self.agg.batch():
                        acts = self.agg.handle(MessageReceived(target, frame), self.now)
                    self._from_agg(acts)
            elif kind == "up" and self.up[target]:
                self._from_station(target, self.st[target].handle(UpstreamReceived(frame), self.now))
        return n

    def train_all(self, scale: float = 0.01) -> None:
        for a, ts in self.trainings.items():
            while ts:
                t = ts.pop(0)
                delta = {k: np.full(v.shape, scale, np.float32) for k, v in t.weights.items()}
                self._from_agent(a, self.ag[a].handle(TrainingDone(t.task.task_id, delta, 10), self.now))

    def tick(self, dt: float = 1.0) -> None:
        self.now += dt
        self._from_agg(self.agg.handle(Tick(), self.now))
        for s, st in self.st.items():
            self._from_station(s, st.handle(Tick(), self.now))
        for a, ag in self.ag.items():
            self._from_agent(a, ag.handle(Tick(), self.now))

    def settle(self) -> None:
        """Deliver until nothing is in flight (training jobs wait for ``step``)."""
        self.pump()

    def step(self) -> None:
        """Every agent finishes the job it holds; then deliver."""
        self.train_all()
        self.pump()

    def counted(self) -> dict[str, int]:
        rows = self.agg.store.db.execute("SELECT update_id, COUNT(*) FROM seen GROUP BY update_id")
        return {str(r[0]): int(r[1]) for r in rows}

    def audit(self) -> None:
        """Every update an agent got an ACK for is counted at the aggregator, once."""
        counted = self.counted()
        acked = set().union(*(agent_ids_acked(a.outbox) for a in self.ag.values()))
        backlog = sum(s.backlog() for s in self.st.values())
        assert backlog == 0
        assert acked <= set(counted), f"lost: {sorted(acked - set(counted))}"
        assert all(n == 1 for n in counted.values())


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path, ["s1", "s2"], ["a1", "a2"])


def test_rounds_close_through_two_stations(net: Net) -> None:
    net.link("s1", True)
    net.link("s2", True)
    net.pump()
    assert net.st["s1"].synced and net.st["s1"].allowed == net.allow
    net.move("a1", "s1")
    net.move("a2", "s2")
    net.settle()
    net.step()
    assert net.agg.version == 1 and net.agg.store.rounds_closed() == 1
    assert net.st["s1"].version == 1 and net.st["s2"].version == 1
    assert net.ag["a1"].version == 1 and net.ag["a2"].version == 1  # round 2's tasks came with v1
    # round 2: trained on tasks from one station, uploaded through the other
    net.move("a1", "s2")
    net.move("a2", "s1")
    net.step()
    assert net.agg.version == 2
    net.audit()
    assert set(net.counted()) == {"a1:1", "a1:2", "a2:1", "a2:2"}


def test_unsynced_station_refuses_agents_without_dropping_their_work(net: Net) -> None:
    net.move("a1", "s1")  # s1 never reached the aggregator
    net.pump()
    assert not net.st["s1"].synced
    assert net.ag["a1"].refused == {} and net.ag["a1"].version is None
    net.link("s1", True)
    net.pump()
    net.tick(3.0)  # the agent says HELLO again a while after the refusal
    net.pump()
    assert net.trainings["a1"], "after the sync the station hands out tasks"


def test_outage_of_the_terrestrial_link_loses_nothing(net: Net) -> None:
    net.link("s1", True)
    net.pump()
    net.move("a1", "s1")
    net.move("a2", "s1")
    net.settle()
    net.link("s1", False)  # agents still ACKed by the station, relays wait in its outbox
    net.step()
    assert net.st["s1"].backlog() == 2 and net.agg.store.rounds_closed() == 0
    assert not net.ag["a1"].outbox.items() and not net.ag["a2"].outbox.items()  # ACKed by s1
    net.restart_station("s1")  # the backlog is durable
    assert net.st["s1"].backlog() == 2
    net.link("s1", True)
    net.settle()
    assert net.st["s1"].backlog() == 0 and net.agg.store.rounds_closed() == 1
    net.audit()


def test_chunked_update_begun_at_one_station_finished_at_another(tmp_path: Path) -> None:
    net = Net(tmp_path, ["s1", "s2"], ["a1"], min_updates=1)
    net.link("s1", True)
    net.link("s2", True)
    net.pump()
    net.move("a1", "s1")
    net.pump()
    net.train_all()
    net.pump(max_frames=3)  # part of the ~80 kB update reaches s1
    net.move("a1", "s2")  # the pass ends; the next one is over s2
    net.settle()
    assert net.agg.store.rounds_closed() == 1 and net.agg.store.is_seen("a1:1")
    assert net.st["s1"].backlog() == 0 and net.st["s2"].backlog() == 0
    net.audit()
    assert len(net.counted()) == 1


def test_same_update_through_two_stations_counts_once(tmp_path: Path) -> None:
    net = Net(tmp_path, ["s1", "s2"], ["a1", "a2"])
    net.link("s1", True)
    net.link("s2", True)
    net.pump()
    net.move("a1", "s1")
    net.pump()
    net.train_all()
    # deliver a1's whole upload to s1, but lose s1's ACK: the agent moves on without it
    while net.q:
        kind, target, frame = net.q[0]
        if kind == "agent" and decode(frame).TYPE == "ACK" and target == "a1":
            net.q.pop(0)
            break
        net.pump(max_frames=1)
    assert net.ag["a1"].outbox.pending() == 1  # no ACK: the agent still holds it
    assert net.st["s1"].backlog() + net.agg.relayed >= 1  # but s1 does, and relays it
    net.move("a1", "s2")  # the same update again, through s2
    net.settle()
    assert net.ag["a1"].outbox.pending() == 0
    assert net.agg.duplicates == 1 and net.counted() == {"a1:1": 1}
    net.move("a2", "s2")
    net.settle()
    net.step()
    net.audit()


def test_revocation_reaches_every_station(net: Net) -> None:
    net.link("s1", True)
    net.link("s2", True)
    net.pump()
    keep = {"a1": net.allow["a1"]}
    net._from_agg(net.agg.set_allow_list(keep, net.now))
    net.pump()
    assert net.st["s1"].allowed == keep and net.st["s2"].allowed == keep
    assert net.allow_actions[-1].keys == keep
    for s in ("s1", "s2"):
        net.move("a2", s)
        acts = net.st[s].handle(MessageReceived("a2", b"\x80"), net.now)
        nacks = [decode(x.frame) for x in acts if isinstance(x, Send)]
        assert [n.reason for n in nacks if isinstance(n, Nack)] == [Reason.NOT_ALLOWED.value]
    # a station that was down at the revocation gets the new list at its next HELLO
    net.link("s1", False)
    net._from_agg(net.agg.set_allow_list({}, net.now))
    net.link("s1", True)
    net.pump()
    assert net.st["s1"].allowed == {}


def test_agent_does_not_answer_a_task_again_at_a_station_that_offers_it_late(tmp_path: Path) -> None:
    net = Net(tmp_path, ["s1", "s2"], ["a1", "a2"])
    net.link("s1", True)
    net.pump()
    net.move("a1", "s1")
    net.pump()
    net.step()  # a1's r1 update ACKed by s1 (the round waits for a2)
    net.link("s2", True)
    net.pump()
    net.move("a1", "s2")  # s2 offers r1 again: the agent knows it answered it
    net.pump()
    assert net.trainings["a1"] == [] and net.ag["a1"].outbox.has_task("r1/a1")


def test_compact_updates_in_the_aggregators_recipe_pass_stations(tmp_path: Path) -> None:
    """The recipe is the aggregator's, not the station's config (fp32): a station resolves the
    compact update's recipe id from the STATE it got, and the aggregator decodes the relay."""
    net = Net(tmp_path, ["s1", "s2"], ["a1", "a2"], recipe="topk:0.1+ef | quant:8 | zstd")
    net.link("s1", True)
    net.link("s2", True)
    net.pump()
    net.move("a1", "s1")
    net.move("a2", "s2")
    net.settle()
    net.step()
    assert net.agg.version == 1 and net.agg.store.rounds_closed() == 1
    assert all(s.agents is not None and s.agents.refused == {} for s in net.st.values())
    net.audit()
    assert set(net.counted()) == {"a1:1", "a2:1"}
