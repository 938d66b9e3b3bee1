"""Real daemons as child processes on 127.0.0.1, with Curve keys made in a temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orbitfl.apps.demo import free_port
from orbitfl.runtime.keys import new_keypair
from orbitfl.runtime.observe import parse_text

LINK = {"heartbeat_s": 0.3, "liveness": 3, "backoff_initial_s": 0.1, "backoff_max_s": 1.0}


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.allowed = root / "allowed"
        new_keypair("ground", self.keys)
        self.port = free_port()
        self.metrics_port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Any] = {}
        # Command prefix per process name ("ground", or an agent's name), e.g. a sandbox launcher.
        self.prefix: dict[str, list[str]] = {}

    def key(self, name: str, allow: bool = True) -> None:
        if not (self.keys / f"{name}.key").exists():
            new_keypair(name, self.keys, allow_dir=self.allowed if allow else None)

    def ground_config(self, link: dict[str, Any] | None = None, **federation: Any) -> Path:
        fed = {"rounds": 3, "min_updates": 2, "round_deadline_s": 600.0, "retransmit_s": 2.0, **federation}
        p = self.root / "ground.toml"
        p.write_text(
            _toml(
                {
                    "ground": {
                        "bind": self.endpoint,
                        "state_dir": str(self.root / "ground"),
                        "secret_key": str(self.keys / "ground.key_secret"),
                        "allowed_keys": str(self.allowed),
                        "metrics": f"127.0.0.1:{self.metrics_port}",
                    },
                    "federation": fed,
                    "link": {**LINK, **(link or {})},
                }
            )
        )
        return p

    def agent_config(
        self,
        name: str,
        partition: int,
        partitions: int,
        *,
        endpoint: str | None = None,
        pace_s: float = 0.0,
        link: dict[str, Any] | None = None,
        artifacts: Path | None = None,
        data_file: Path | None = None,
    ) -> Path:
        """``artifacts`` (built ahead) and ``data_file`` (a partition file) are what a board gets
        from the host instead of building or loading them itself."""
        self.key(name)
        p = self.root / f"{name}.toml"
        board_agent = {"artifacts": str(artifacts)} if artifacts else {}
        board_data = {"file": str(data_file)} if data_file else {}
        p.write_text(
            _toml(
                {
                    "agent": {
                        "name": name,
                        "ground": endpoint or self.endpoint,
                        "state_dir": str(self.root / name),
                        "secret_key": str(self.keys / f"{name}.key_secret"),
                        "ground_key": str(self.keys / "ground.key"),
                        "retransmit_s": 2.0,
                        **board_agent,
                    },
                    "data": {"partition": partition, "num_partitions": partitions, "seed": 0, **board_data},
                    "train": {"pace_s": pace_s},
                    "link": {**LINK, **(link or {})},
                }
            )
        )
        return p

    def start(
        self,
        name: str,
        *args: str,
        python: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``orbitfl ARGS`` as a child process; ``python`` replaces this interpreter (e.g. an
        emulated one), ``env`` the inherited environment."""
        old = self.procs.get(name)
        assert old is None or old.poll() is not None, f"{name} is still running"
        if name in self.logs:
            self.logs[name].close()
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed at teardown
        self.logs[name] = log
        p = subprocess.Popen(
            [*self.prefix.get(name, []), *(python or [sys.executable]), "-m", "orbitfl.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
        )
        self.procs[name] = p
        return p

    def start_ground(self) -> subprocess.Popen[bytes]:
        return self.start("ground", "ground", "serve", "--config", str(self.root / "ground.toml"))

    def start_agent(
        self,
        name: str,
        *,
        python: list[str] | None = None,
        env: dict[str, str] | None = None,
        verbose: bool = True,
    ) -> subprocess.Popen[bytes]:
        """``verbose``: -v, every step in the log (what most tests wait for); else the quiet default."""
        cfg = str(self.root / f"{name}.toml")
        args = ["agent", "run", "--config", cfg, *(["-v"] if verbose else [])]
        return self.start(name, *args, python=python, env=env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        p = self.procs[name]
        p.send_signal(sig)
        return p.wait(30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {k: v for k, v in parse_text(text).items() if k.startswith("orbitfl_")}

    def rounds(self) -> list[dict[str, Any]]:
        p = self.root / "ground" / "rounds.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def wait(self, what: str, cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if cond():
                return
            for name, p in self.procs.items():
                if p.poll() is not None and p.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                    pytest.fail(
                        f"{name} exited with {p.returncode} while waiting for {what}:\n"
                        + self.log(name)[-3000:]
                    )
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs)
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{logs}")

    def stop(self) -> dict[str, int]:
        codes = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        for f in self.logs.values():
            f.close()
        return codes


def board_inputs(
    root: Path, partitions: int, *, model: str = "mlp", seed: int = 0
) -> tuple[Path, list[Path]]:
    """What the host hands a board: training artifacts built ahead (onnx runs here, not there) and
    each agent's share of the digits as a partition file (scikit-learn runs here, not there) —
    the very shares the agents would otherwise compute from the same [data] settings."""
    from orbitfl.agent.daemon import load_partition
    from orbitfl.data.partition_file import write_partition
    from orbitfl.models.artifacts import build_artifacts
    from orbitfl.models.zoo import build
    from orbitfl.runtime.config import DataSection

    art = root / "prebuilt" / model
    build_artifacts(build(model), art)
    files = []
    for i in range(partitions):
        x, y = load_partition(DataSection(partition=i, num_partitions=partitions, seed=seed))
        files.append(write_partition(root / "prebuilt" / f"part-{i}.npz", x, y))
    return art, files


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
