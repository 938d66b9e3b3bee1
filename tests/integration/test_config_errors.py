"""Every config and environment error of both daemons: one line on stderr, exit 2, what is wrong named.

Table-driven. The per-key cases are generated from the settings dataclasses of
``orbitfl.runtime.config`` (a key added there is covered here without touching this file): for each
key of each section of both configs, a value of the wrong type; for each section, an unknown key.
The environment cases are those an operator meets at start: an unknown model, a state folder that
cannot be made, a port in use, a missing or unreadable key, bad TOML, a bad endpoint.

Every case runs as its own ``orbitfl ground serve`` / ``orbitfl agent run`` process, forked from a
driver that imported the package once (tests/integration/fork_cli.py); a few run as the real console
script too, to show the driver answers as the script does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orbitfl.runtime import config
from orbitfl.runtime.keys import new_keypair

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    daemon: str  # "ground" | "agent" | a whole command line after `orbitfl`, space-separated
    edit: dict[str, Any]  # "section.key" -> value (None: delete), or "__text__" -> the whole file
    named: tuple[str, ...]  # what stderr must name
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # set for this process only


def sections(settings: type) -> dict[str, type]:
    """Section name -> its dataclass, from a settings class (GroundSettings, AgentSettings)."""
    hints = typing.get_type_hints(settings, vars(config))
    return {
        f.name: hints[f.name] for f in dataclasses.fields(settings) if dataclasses.is_dataclass(hints[f.name])
    }


WRONG = {bool: "yes", int: "many", float: "fast", str: 7, Path: 7}


def key_cases(daemon: str, settings: type) -> Iterator[Case]:
    for name, cls in sections(settings).items():
        for f in dataclasses.fields(cls):
            wrong = WRONG.get(config._field_type(f), 7)  # a type added later: a number is wrong for it
            yield Case(
                f"{daemon}-{name}.{f.name}-type", daemon, {f"{name}.{f.name}": wrong}, (f"{name}.{f.name}",)
            )
        yield Case(
            f"{daemon}-{name}-unknown-key", daemon, {f"{name}.no_such_key": 1}, (f"{name}.no_such_key",)
        )


def port_in_use() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def no_permission_dir(root: Path) -> Path | None:
    """A folder this user may not create: under a 0500 folder, or (root bypasses modes) under /sys."""
    if os.geteuid() != 0:
        locked = root / "locked"
        locked.mkdir(mode=0o500, exist_ok=True)
        return locked / "state"
    probe = Path("/sys/orbitfl-test-state")
    try:
        probe.mkdir()
    except PermissionError:
        return probe
    except OSError:
        return None
    probe.rmdir()
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cfgerr")
    keys, allowed = root / "keys", root / "allowed"
    new_keypair("ground", keys)
    new_keypair("sat-1", keys, allow_dir=allowed)
    (root / "a-file").write_text("not a folder\n")
    held, busy = port_in_use()
    try:
        yield {"root": root, "keys": keys, "allowed": allowed, "busy": busy}
    finally:
        held.close()


def base(world: dict[str, Any], daemon: str) -> dict[str, dict[str, Any]]:
    root, keys = world["root"], world["keys"]
    if daemon == "ground":
        return {
            "ground": {
                "bind": "tcp://127.0.0.1:*",
                "state_dir": str(root / "ground-state"),
                "secret_key": str(keys / "ground.key_secret"),
                "allowed_keys": str(world["allowed"]),
            },
            "federation": {"model": "mlp"},
        }
    return {
        "agent": {
            "name": "sat-1",
            "ground": "tcp://127.0.0.1:9",
            "state_dir": str(root / "agent-state"),
            "secret_key": str(keys / "sat-1.key_secret"),
            "ground_key": str(keys / "ground.key"),
        },
        "data": {"partition": 0, "num_partitions": 4},
    }


def env_cases(world: dict[str, Any]) -> list[Case]:
    root, keys = world["root"], world["keys"]
    bad_toml = {"__text__": "[ground\nbind = 1\n"}
    cases = [
        Case("ground-bad-toml", "ground", bad_toml, ("not valid TOML", ".toml")),
        Case("agent-bad-toml", "agent", bad_toml, ("not valid TOML", ".toml")),
        Case("ground-unknown-section", "ground", {"grund.bind": "x"}, ("[grund]",)),
        Case("ground-missing-key", "ground", {"ground.bind": None}, ("ground.bind",)),
        Case("ground-unknown-model", "ground", {"federation.model": "no-such-model"}, ("federation.model",)),
        Case("agent-unknown-model", "agent", {"train.model": "no-such-model"}, ("train.model",)),
        Case(
            "ground-state-in-proc", "ground", {"ground.state_dir": "/proc/x"}, ("ground.state_dir", "/proc/x")
        ),
        Case("agent-state-in-proc", "agent", {"agent.state_dir": "/proc/x"}, ("agent.state_dir", "/proc/x")),
        Case(
            "ground-state-under-a-file",
            "ground",
            {"ground.state_dir": str(root / "a-file" / "state")},
            ("ground.state_dir", "a-file"),
        ),
        Case(
            "agent-state-under-a-file",
            "agent",
            {"agent.state_dir": str(root / "a-file" / "state")},
            ("agent.state_dir", "a-file"),
        ),
        Case(
            "ground-state-is-a-file",
            "ground",
            {"ground.state_dir": str(root / "a-file")},
            ("ground.state_dir",),
        ),
        Case(
            "ground-metrics-port-in-use",
            "ground",
            {"ground.metrics": f"127.0.0.1:{world['busy']}"},
            ("ground.metrics", str(world["busy"])),
        ),
        Case(
            "ground-bind-port-in-use",
            "ground",
            {"ground.bind": f"tcp://127.0.0.1:{world['busy']}"},
            ("ground.bind", f"tcp://127.0.0.1:{world['busy']}"),
        ),
        Case(
            "ground-bind-address-not-here",
            "ground",
            {"ground.bind": "tcp://192.0.2.1:7700"},  # TEST-NET-1: no interface has it
            ("ground.bind", "tcp://192.0.2.1:7700"),
        ),
        Case("ground-bad-endpoint", "ground", {"ground.bind": "tcp://127.0.0.1"}, ("ground.bind",)),
        Case("agent-bad-endpoint", "agent", {"agent.ground": "tcp://:7700"}, ("agent.ground",)),
        Case("agent-bad-endpoint-scheme", "agent", {"agent.ground": "udp://h:1"}, ("agent.ground",)),
        Case("ground-bad-metrics", "ground", {"ground.metrics": "localhost"}, ("ground.metrics",)),
        Case(
            "ground-missing-secret-key",
            "ground",
            {"ground.secret_key": str(keys / "gone.key_secret")},
            ("ground.secret_key", "gone.key_secret"),
        ),
        Case(
            "ground-secret-key-is-public",
            "ground",
            {"ground.secret_key": str(keys / "ground.key")},
            ("ground.secret_key", "ground.key"),
        ),
        Case(
            "ground-unreadable-secret-key",
            "ground",
            {"ground.secret_key": str(keys)},  # a folder: reading it fails (EISDIR), even as root
            ("ground.secret_key", str(keys)),
        ),
        Case(
            "ground-missing-allow-list",
            "ground",
            {"ground.allowed_keys": str(root / "no-allowed")},
            ("ground.allowed_keys", "no-allowed"),
        ),
        Case("ground-no-keys", "ground", {"ground.secret_key": None}, ("ground.secret_key",)),
        Case(
            "agent-missing-ground-key",
            "agent",
            {"agent.ground_key": str(keys / "gone.key")},
            ("agent.ground_key", "gone.key"),
        ),
        Case(
            "agent-missing-secret-key",
            "agent",
            {"agent.secret_key": str(keys / "gone.key_secret")},
            ("agent.secret_key", "gone.key_secret"),
        ),
        Case("agent-missing-data-file", "agent", {"data.file": str(root / "gone.npz")}, ("data.file",)),
        Case(
            "agent-missing-artifacts",
            "agent",
            {"agent.artifacts": str(root / "gone-art")},
            ("agent.artifacts",),
        ),
        Case("agent-partition-range", "agent", {"data.partition": 9}, ("data.partition",)),
        Case("ground-bad-value", "ground", {"federation.min_updates": 0}, ("federation.min_updates",)),
        Case("ground-bad-codec", "ground", {"federation.codec": "nonsense:3"}, ("federation.codec",)),
        Case(
            "export-model-no-state",
            "ground export-model --out {root}/out --config {config}",
            {"ground.state_dir": str(root / "never-made")},
            ("never-made",),
        ),
        Case("ground-bad-notify-socket", "ground", {}, ("NOTIFY_SOCKET",), {"NOTIFY_SOCKET": "relative"}),
        Case("agent-bad-watchdog", "agent", {}, ("WATCHDOG_USEC",), {"WATCHDOG_USEC": "soon"}),
        Case("model-build-out-in-proc", "model build mlp --out /proc/x/art", {}, ("/proc/x",)),
        Case(
            "model-build-out-under-a-file",
            "model build mlp --out {root}/a-file/art",
            {},
            ("a-file",),
        ),
    ]
    locked = no_permission_dir(root)
    if locked is not None:
        cases.append(
            Case(
                "ground-state-no-permission",
                "ground",
                {"ground.state_dir": str(locked)},
                ("ground.state_dir", str(locked)),
            )
        )
        cases.append(
            Case(
                "agent-state-no-permission",
                "agent",
                {"agent.state_dir": str(locked)},
                ("agent.state_dir", str(locked)),
            )
        )
    return cases


def toml(doc: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in doc.items():
        out.append(f"[{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def write_case(world: dict[str, Any], case: Case) -> list[str]:
    kind = "ground" if case.daemon.startswith("ground") else "agent"
    path = world["root"] / f"{case.id}.toml"
    if "__text__" in case.edit:
        path.write_text(case.edit["__text__"])
    else:
        doc = base(world, kind)
        for dotted, value in case.edit.items():
            section, _, key = dotted.partition(".")
            if value is None:
                doc.get(section, {}).pop(key, None)
            else:
                doc.setdefault(section, {})[key] = value
        path.write_text(toml(doc))
    if case.daemon == "ground":
        return ["ground", "serve", "--config", str(path)]
    if case.daemon == "agent":
        return ["agent", "run", "--config", str(path)]
    return case.daemon.format(root=world["root"], config=path).split()


ALL_CASES = [
    *key_cases("ground", config.GroundSettings),
    *key_cases("agent", config.AgentSettings),
]
ENV_IDS = [
    "ground-bad-toml",
    "agent-bad-toml",
    "ground-unknown-section",
    "ground-missing-key",
    "ground-unknown-model",
    "agent-unknown-model",
    "ground-state-in-proc",
    "agent-state-in-proc",
    "ground-state-under-a-file",
    "agent-state-under-a-file",
    "ground-state-is-a-file",
    "ground-metrics-port-in-use",
    "ground-bind-port-in-use",
    "ground-bind-address-not-here",
    "ground-bad-endpoint",
    "agent-bad-endpoint",
    "agent-bad-endpoint-scheme",
    "ground-bad-metrics",
    "ground-missing-secret-key",
    "ground-secret-key-is-public",
    "ground-unreadable-secret-key",
    "ground-missing-allow-list",
    "ground-no-keys",
    "agent-missing-ground-key",
    "agent-missing-secret-key",
    "agent-missing-data-file",
    "agent-missing-artifacts",
    "agent-partition-range",
    "ground-bad-value",
    "ground-bad-codec",
    "export-model-no-state",
    "model-build-out-in-proc",
    "model-build-out-under-a-file",
    "ground-bad-notify-socket",
    "agent-bad-watchdog",
    "ground-state-no-permission",
    "agent-state-no-permission",
]


@pytest.fixture(scope="module")
def results(world: dict[str, Any]) -> dict[str, tuple[Case, dict[str, Any]]]:
    cases = {c.id: c for c in [*ALL_CASES, *env_cases(world)]}
    runs = [{"argv": write_case(world, c), "env": c.env} for c in cases.values()]
    proc = subprocess.run(
        [sys.executable, str(HERE / "fork_cli.py")],
        input=json.dumps(runs),
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout)
    return {cid: (case, ans) for (cid, case), ans in zip(cases.items(), answers, strict=True)}


def check(case: Case, rc: int, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert rc == 2, f"exit {rc}, not 2:\n{stderr}"
    assert len(lines) == 1, f"{len(lines)} lines, not one:\n{stderr}"
    for what in case.named:
        assert what in lines[0], f"{what!r} not named in: {lines[0]}"


@pytest.mark.parametrize("case_id", [c.id for c in ALL_CASES])
def test_a_wrong_type_or_unknown_key_is_one_line_and_exit_2(results: Any, case_id: str) -> None:
    case, ans = results[case_id]
    check(case, ans["rc"], ans["stderr"])
    assert ".toml: " in ans["stderr"], "the config file is not named"


@pytest.mark.parametrize("case_id", ENV_IDS)
def test_an_environment_error_at_start_is_one_line_and_exit_2(results: Any, case_id: str) -> None:
    if case_id not in results:
        pytest.skip("this machine lets this user create any folder (no permission case to build)")
    case, ans = results[case_id]
    check(case, ans["rc"], ans["stderr"])


def test_the_generated_table_covers_every_key_of_both_configs() -> None:
    """A new key (another engineer's guards or strategy options) lands in the table by itself."""
    ids = {c.id for c in ALL_CASES}
    for daemon, settings in (("ground", config.GroundSettings), ("agent", config.AgentSettings)):
        for name, cls in sections(settings).items():
            for f in dataclasses.fields(cls):
                assert f"{daemon}-{name}.{f.name}-type" in ids


@pytest.mark.parametrize(
    "case_id", ["ground-metrics-port-in-use", "agent-state-under-a-file", "ground-unknown-model"]
)
def test_the_console_script_answers_as_the_forked_driver(
    world: dict[str, Any], results: Any, case_id: str
) -> None:
    case, ans = results[case_id]
    argv = write_case(world, case)
    script = Path(sys.executable).with_name("orbitfl")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "orbitfl.cli"]
    proc = subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    check(case, proc.returncode, proc.stderr)
    assert proc.stderr == ans["stderr"]


def test_a_missing_optional_package_is_one_line_and_exit_2(world: dict[str, Any], tmp_path: Path) -> None:
    """The ground without the `train` extra: `onnx` cannot be imported (shadowed here by a module
    that fails as a missing one does)."""
    (tmp_path / "onnx.py").write_text("raise ModuleNotFoundError(\"No module named 'onnx'\", name='onnx')\n")
    argv = write_case(world, Case("ground-no-onnx", "ground", {}, ()))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    check(Case("ground-no-onnx", "ground", {}, ("'onnx'", "extra")), proc.returncode, proc.stderr)
