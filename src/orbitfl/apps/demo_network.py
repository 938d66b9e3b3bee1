"""The configs of ``orbitfl demo --stations N``: an aggregator, N ground stations, agents that move.

Each daemon gets its own Curve key pair: the aggregator admits the stations' keys (its
``station_keys`` folder) and distributes the agents' allow-list (its ``allowed_keys`` folder); each
station binds its own port and dials the aggregator; agent i starts at station i mod N and visits
the others in turn (``agent.stations``), moving on after each ACKed update and whenever its link is
lost, so consecutive rounds go through different stations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orbitfl.models.manifest import is_model_path
from orbitfl.runtime.keys import new_keypair


class NetworkDemo(Protocol):
    """What of the demo's settings the configs need (orbitfl.apps.demo.DemoSettings)."""

    @property
    def agents(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def stations(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def epochs(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def insecure(self) -> bool: ...
    @property
    def data(self) -> str: ...
    @property
    def strategy(self) -> str: ...
    @property
    def strategy_options(self) -> tuple[tuple[str, Any], ...]: ...

    @property
    def demo_model(self) -> str: ...


@dataclass(frozen=True)
class NetworkConfigs:
    aggregator: Path
    stations: list[Path]
    agents: list[Path]
    rounds_file: Path  # the aggregator's round log


def _q(p: Path | str) -> str:
    return json.dumps(str(p))  # a JSON string is a valid TOML basic string


def write_network_configs(
    work: Path, s: NetworkDemo, ports: list[int], link: str, retransmit_s: float, deadline_s: float
) -> NetworkConfigs:
    """Keys and TOML files in ``work``; ``ports``: aggregator, its metrics, then one per station."""
    keys, agents_allowed, stations_allowed = work / "keys", work / "allowed", work / "stations_allowed"
    if not s.insecure:
        new_keypair("aggregator", keys)
    agg = work / "aggregator.toml"
    security = (
        "insecure = true\n"
        if s.insecure
        else f"secret_key = {_q(keys / 'aggregator.key_secret')}\nallowed_keys = {_q(agents_allowed)}\n"
        f"station_keys = {_q(stations_allowed)}\n"
    )
    agg.write_text(
        f'[ground]\nrole = "aggregator"\nbind = "tcp://127.0.0.1:{ports[0]}"\n'
        f'state_dir = {_q(work / "aggregator")}\n{security}metrics = "127.0.0.1:{ports[1]}"\n\n'
        f"[federation]\nmodel = {_q(s.demo_model)}\nmodel_seed = {s.seed}\ncodec = {_q(s.codec)}\n"
        f"rounds = {s.rounds}\nmin_updates = {s.agents}\nround_deadline_s = {deadline_s}\n"
        f"max_staleness = 2\nretransmit_s = {retransmit_s}\neval_dataset = {_q(s.data)}\n"
        f'data_seed = {s.seed}\nstrategy = "{s.strategy}"\n\n{link}\n[strategy]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in s.strategy_options)
    )
    station_files, endpoints = [], []
    for i in range(s.stations):
        name = f"station-{i}"
        if not s.insecure:
            new_keypair(name, keys, allow_dir=stations_allowed)
        endpoints.append(f"tcp://127.0.0.1:{ports[2 + i]}")
        sec = (
            "insecure = true\n"
            if s.insecure
            else f"secret_key = {_q(keys / f'{name}.key_secret')}\n"
            f"upstream_key = {_q(keys / 'aggregator.key')}\n"
        )
        cfg = work / f"{name}.toml"
        cfg.write_text(
            f'[ground]\nrole = "station"\nname = "{name}"\nbind = "{endpoints[-1]}"\n'
            f'upstream = "tcp://127.0.0.1:{ports[0]}"\nstate_dir = {_q(work / name)}\n{sec}\n'
            f"[federation]\nretransmit_s = {retransmit_s}\n\n{link}"
        )
        station_files.append(cfg)
    agent_files = []
    for i in range(s.agents):
        name = f"sat-{i}"
        if not s.insecure:
            new_keypair(name, keys, allow_dir=agents_allowed)
        order = [(i + k) % s.stations for k in range(s.stations)]
        others = order[1:]
        sec = (
            "insecure = true\n"
            if s.insecure
            else f"secret_key = {_q(keys / f'{name}.key_secret')}\n"
            f"ground_key = {_q(keys / f'station-{order[0]}.key')}\n"
            f"station_keys = [{', '.join(_q(keys / f'station-{j}.key') for j in others)}]\n"
        )
        cfg = work / f"{name}.toml"
        cfg.write_text(
            f'[agent]\nname = "{name}"\nground = "{endpoints[order[0]]}"\n'
            f"stations = [{', '.join(_q(endpoints[j]) for j in others)}]\n"
            f"state_dir = {_q(work / name)}\n{sec}retransmit_s = {retransmit_s}\n\n"
            f'[data]\ndataset = {_q(s.data)}\nsplit = "dirichlet"\npartition = {i}\n'
            f"num_partitions = {s.agents}\nalpha = {s.alpha}\nseed = {s.seed}\n\n"
            f"[train]\nmodel = {_q(s.demo_model)}\nepochs = {s.epochs}\n\n"
            f"[inference]\nexport_tflite = {'false' if is_model_path(s.demo_model) else 'true'}\n\n{link}"
        )
        agent_files.append(cfg)
    return NetworkConfigs(agg, station_files, agent_files, work / "aggregator" / "rounds.jsonl")
