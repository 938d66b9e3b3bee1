"""Config validation: every problem names the key and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitfl.runtime.config import ConfigError, load_agent, load_ground

GROUND = """
[ground]
bind = "tcp://127.0.0.1:7700"
state_dir = "state"
secret_key = "keys/ground.key_secret"
allowed_keys = "keys/allowed"
metrics = "127.0.0.1:9108"

[federation]
min_updates = 3
round_deadline_s = 30

[link]
heartbeat_s = 0.5
"""

AGENT = """
[agent]
name = "sat-1"
ground = "tcp://127.0.0.1:7700"
state_dir = "/var/lib/orbitfl-agent"
secret_key = "sat-1.key_secret"
ground_key = "ground.key"

[data]
partition = 1
num_partitions = 4

[train]
epochs = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_a_good_ground_config_loads_with_defaults_and_paths_next_to_the_file(tmp_path: Path) -> None:
    cfg = load_ground(write(tmp_path, GROUND))
    assert cfg.ground.state_dir == tmp_path / "state"
    assert cfg.ground.secret_key == tmp_path / "keys/ground.key_secret"
    assert cfg.federation.min_updates == 3
    assert cfg.federation.round_deadline_s == 30.0 and isinstance(cfg.federation.round_deadline_s, float)
    assert cfg.link.heartbeat_s == 0.5
    assert cfg.link.liveness == 3  # default


def test_a_good_agent_config_loads(tmp_path: Path) -> None:
    cfg = load_agent(write(tmp_path, AGENT))
    assert cfg.agent.name == "sat-1"
    assert cfg.agent.state_dir == Path("/var/lib/orbitfl-agent")
    assert cfg.data.partition == 1 and cfg.train.epochs == 2
    assert not cfg.agent.insecure
    assert cfg.agent.artifacts is None and cfg.data.file is None  # built on the spot, data set loaded


def test_prebuilt_artifacts_and_a_partition_file_are_paths_next_to_the_config(tmp_path: Path) -> None:
    text = AGENT.replace('ground_key = "ground.key"', 'ground_key = "ground.key"\nartifacts = "art/mlp"')
    cfg = load_agent(write(tmp_path, text.replace("[data]", '[data]\nfile = "data/part.npz"')))
    assert cfg.agent.artifacts == tmp_path / "art" / "mlp"
    assert cfg.data.file == tmp_path / "data" / "part.npz"
    with pytest.raises(ConfigError, match=r"data\.file: must be a non-empty path"):
        load_agent(write(tmp_path, AGENT.replace("[data]", '[data]\nfile = ""')))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'bind = "tcp://127.0.0.1:7700"',
            'bind = "127.0.0.1:7700"',
            r"ground\.bind: must be a ZeroMQ endpoint",
        ),
        ('bind = "tcp://127.0.0.1:7700"\n', "", r"ground\.bind: required key is missing"),
        (
            'secret_key = "keys/ground.key_secret"\n',
            "",
            r"ground\.secret_key: required unless ground\.insecure",
        ),
        ('metrics = "127.0.0.1:9108"', 'metrics = "127.0.0.1:99999"', r"ground\.metrics: must be HOST:PORT"),
        ("min_updates = 3", "min_updates = 0", r"federation\.min_updates: must be >= 1, got 0"),
        ("min_updates = 3", 'min_updates = "3"', r"federation\.min_updates: must be an integer, got str"),
        ("min_updates = 3", "min_updates = true", r"federation\.min_updates: must be an integer, got bool"),
        (
            "round_deadline_s = 30",
            "round_deadline_s = -1",
            r"federation\.round_deadline_s: must be a finite number > 0",
        ),
        (
            "round_deadline_s = 30",
            "round_deadline_s = nan",
            r"federation\.round_deadline_s: must be a finite",
        ),
        ("heartbeat_s = 0.5", "hearbeat_s = 0.5", r"link\.hearbeat_s: unknown key \(known: .*heartbeat_s"),
        (
            "heartbeat_s = 0.5",
            "heartbeat_s = 0.5\nbackoff_initial_s = 5\nbackoff_max_s = 1",
            r"link\.backoff_max_s: must be >= link\.backoff_initial_s",
        ),
        ("[link]", "[lnk]", r"\[lnk\]: unknown section"),
        (
            "heartbeat_s = 0.5",
            "max_msg_size = 8192\nchunk_bytes = 8000",
            r"link\.chunk_bytes: a chunk and its header",
        ),
        ('state_dir = "state"', 'state_dir = ""', r"ground\.state_dir: must be a non-empty path"),
        ("[federation]", "federation = 3\n[x]", r"\[federation\]: must be a table|\[x\]: unknown section"),
    ],
)
def test_each_ground_config_error_names_the_key_and_the_problem(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GROUND
    path = write(tmp_path, GROUND.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_ground(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "sat-1"', 'name = "sat 1/../x"', r"agent\.name: key name .* must be 1-64 characters"),
        ('ground_key = "ground.key"\n', "", r"agent\.ground_key: required unless agent\.insecure"),
        ("partition = 1", "partition = 4", r"data\.partition: must be < data\.num_partitions \(4\), got 4"),
        ("epochs = 2", "epochs = 0", r"train\.epochs: must be >= 1, got 0"),
        ("epochs = 2", "epochs = 2.5", r"train\.epochs: must be an integer, got float"),
        ("[data]", '[data]\ndataset = "cifar"', r"data\.dataset: must be one of digits, mnist1d"),
        ("[agent]", "[agent]\ninsecure = 1", r"agent\.insecure: must be a boolean, got int"),
        ("[agent]", "[agents]", r"\[agents\]: unknown section \(known: agent, data"),
    ],
)
def test_each_agent_config_error_names_the_key_and_the_problem(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in AGENT
    with pytest.raises(ConfigError, match=message):
        load_agent(write(tmp_path, AGENT.replace(old, new, 1)))


def test_a_missing_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[agent\]: required section is missing"):
        load_agent(write(tmp_path, "[data]\npartition = 0\n"))
    with pytest.raises(ConfigError, match=r"\[ground\]: required section is missing"):
        load_ground(write(tmp_path, "[link]\n"))


def test_insecure_configs_need_no_keys(tmp_path: Path) -> None:
    text = AGENT.replace('secret_key = "sat-1.key_secret"\n', "").replace('ground_key = "ground.key"\n', "")
    cfg = load_agent(write(tmp_path, text.replace("[agent]", "[agent]\ninsecure = true")))
    assert cfg.agent.insecure and cfg.agent.secret_key is None


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_ground(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_ground(write(tmp_path, "[ground\nbind = 1"))
    assert issubclass(ConfigError, ValueError)
