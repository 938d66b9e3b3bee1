"""The ground network's settings: each role's keys are required, and another role's are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitfl.runtime.config import ConfigError, load_agent, load_ground

STATION = """
[ground]
role = "station"
name = "svalbard"
bind = "tcp://*:7701"
upstream = "tcp://aggregator.example:7700"
upstream_key = "keys/aggregator.key"
state_dir = "state"
secret_key = "keys/svalbard.key_secret"
"""

AGGREGATOR = """
[ground]
role = "aggregator"
bind = "tcp://*:7700"
state_dir = "state"
secret_key = "keys/aggregator.key_secret"
allowed_keys = "keys/agents"
station_keys = "keys/stations"
"""


def load(tmp_path: Path, text: str) -> object:
    p = tmp_path / "g.toml"
    p.write_text(text)
    return load_ground(p)


def test_station_and_aggregator_configs_load(tmp_path: Path) -> None:
    st = load(tmp_path, STATION)
    assert st.ground.role == "station" and st.ground.upstream_key == tmp_path / "keys/aggregator.key"  # type: ignore[attr-defined]
    agg = load(tmp_path, AGGREGATOR)
    assert agg.ground.station_keys == tmp_path / "keys/stations"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "old", "new", "match"),
    [
        (
            STATION,
            'role = "station"',
            'role = "relay"',
            r"ground\.role: must be one of both, station, aggregator",
        ),
        (
            STATION,
            'upstream = "tcp://aggregator.example:7700"\n',
            "",
            r"ground\.upstream: required for ground\.role = 'station'",
        ),
        (
            STATION,
            'upstream = "tcp://aggregator.example:7700"',
            'upstream = "aggregator:7700"',
            r"ground\.upstream: must be a ZeroMQ",
        ),
        (STATION, 'name = "svalbard"\n', "", r"ground\.name: required for ground\.role = 'station'"),
        (
            STATION,
            'upstream_key = "keys/aggregator.key"\n',
            "",
            r"ground\.upstream_key: required .* unless ground\.insecure",
        ),
        (
            STATION,
            "[ground]\n",
            '[ground]\nallowed_keys = "a"\n',
            r"ground\.allowed_keys: set, but ground\.role is 'station': a station gets",
        ),
        (
            STATION,
            "[ground]\n",
            '[ground]\nstation_keys = "s"\n',
            r"ground\.station_keys: set, but .* only role aggregator uses it",
        ),
        (
            AGGREGATOR,
            'station_keys = "keys/stations"\n',
            "",
            r"ground\.station_keys: required for ground\.role = 'aggregator'",
        ),
        (
            AGGREGATOR,
            "[ground]\n",
            '[ground]\nupstream = "tcp://x:1"\n',
            r"ground\.upstream: set, but ground\.role is 'aggregator'",
        ),
    ],
)
def test_role_settings_are_refused_by_name(tmp_path: Path, text: str, old: str, new: str, match: str) -> None:
    assert old in text
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, text.replace(old, new, 1))


AGENT = """
[agent]
name = "sat-1"
ground = "tcp://127.0.0.1:7701"
stations = ["tcp://127.0.0.1:7702", "tcp://127.0.0.1:7703"]
station_keys = ["keys/s2.key", "/abs/s3.key"]
state_dir = "state"
secret_key = "sat-1.key_secret"
ground_key = "keys/s1.key"
"""


def test_agent_stations_need_one_key_each(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text(AGENT)
    a = load_agent(p).agent
    assert a.station_keys == (str(tmp_path / "keys/s2.key"), "/abs/s3.key")
    p.write_text(AGENT.replace(', "/abs/s3.key"', ""))
    with pytest.raises(
        ConfigError, match=r"agent\.station_keys: one public key per entry of agent\.stations \(2\), got 1"
    ):
        load_agent(p)
    p.write_text(AGENT.replace('"tcp://127.0.0.1:7703"', '"udp://x"'))
    with pytest.raises(ConfigError, match=r"agent\.stations: 'udp://x' must be a ZeroMQ endpoint"):
        load_agent(p)
