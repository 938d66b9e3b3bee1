"""Operating a running federation as an operator would, with no restart: read its status, list
the allow-list and revoke a board's key. The revoked board's next update is refused and logged
with its key, it is told so and stops redialling, and the others keep federating. Along the way:
the log is the journal's format (priority prefixes, one line per event), STATUS= follows the
rounds, and /healthz answers health."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orbitfl.apps.demo import free_port
from orbitfl.ground.status import read_status
from orbitfl.runtime.config import load_ground
from orbitfl.runtime.link import load_public

pytestmark = pytest.mark.integration


def orbitfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", *args], capture_output=True, text=True, timeout=60
    )


def status(c: Any) -> dict[str, Any]:
    r = orbitfl("ground", "status", "--config", str(c.root / "ground.toml"), "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def quick(c: Any) -> dict[str, Any]:
    """What the status command reads, in this process (for waiting; the command is run to assert)."""
    return read_status(load_ground(c.root / "ground.toml"))


class Datagrams:
    """A NOTIFY_SOCKET drained by a thread, as systemd drains it (a full queue would block the
    daemon's sd_notify)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.got.append(self.sock.recv(4096))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def updates_of(s: dict[str, Any], name: str) -> int:
    return next((int(a["updates"]) for a in s["agents"]["list"] if a["name"] == name), 0)


def both_federating(s: dict[str, Any]) -> bool:
    return s["agents"]["online"] == 2 and all(updates_of(s, n) > 0 for n in ("sat-a", "sat-b"))


def with_agent_keys(path: Path, **keys: Any) -> None:
    text = path.read_text()
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    path.write_text(text.replace("[agent]\n", "[agent]\n" + extra, 1))


def test_status_and_revoke_against_a_running_ground_with_no_restart(cluster: Any, tmp_path: Path) -> None:
    c = cluster
    c.ground_config(rounds=0, min_updates=1, eval_dataset="digits")
    agent_ports = {}
    for i, name in enumerate(("sat-a", "sat-b")):
        cfg = c.agent_config(name, i, 2, pace_s=0.3)
        agent_ports[name] = free_port()
        with_agent_keys(cfg, metrics=f"127.0.0.1:{agent_ports[name]}", key_refused_retry_s=600.0)
    # stderr of the ground is its log file; JOURNAL_STREAM naming that file makes it "the journal".
    (c.root / "ground.log").touch()
    st = os.stat(c.root / "ground.log")
    notify = Datagrams(tmp_path / "notify.sock")
    env = dict(
        os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", NOTIFY_SOCKET=str(tmp_path / "notify.sock")
    )
    try:
        c.start("ground", "ground", "serve", "--config", str(c.root / "ground.toml"), env=env)
        c.start_agent("sat-a", verbose=False)
        c.start_agent("sat-b")
        c.wait(
            "both agents to contribute",
            lambda: len(c.rounds()) >= 3 and both_federating(quick(c)),
            90,
        )

        s = status(c)
        assert s["serving"] is True
        assert s["model_version"] >= 3 and s["rounds_closed"] >= 3
        # (online was 2 a moment ago; a board starved of CPU for a liveness interval may blink off)
        assert s["agents"]["registered"] == 2 and s["agents"]["online"] in (1, 2)
        assert {a["name"] for a in s["agents"]["list"]} == {"sat-a", "sat-b"}
        assert all(isinstance(a["online"], bool) for a in s["agents"]["list"])
        assert all(
            a["last_update"] is not None and a["model_version"] is not None for a in s["agents"]["list"]
        )
        assert s["bytes"]["up"] > 0 and s["bytes"]["down"] > 0 and s["bytes"]["accepted_updates"] > 0
        accs = [x["accuracy"] for x in s["accuracy"]]
        assert len(accs) >= 3 and all(0.0 <= a <= 1.0 for a in accs)
        assert isinstance(s["refusals"], dict)
        text = orbitfl("ground", "status", "--config", str(c.root / "ground.toml"))
        assert text.returncode == 0 and "2 registered" in text.stdout, text.stdout

        a = orbitfl("agent", "status", "--config", str(c.root / "sat-a.toml"), "--json")
        assert a.returncode == 0, a.stderr
        sa = json.loads(a.stdout)
        assert sa["running"] is True and sa["link_up"] is True
        assert sa["model_version"] is not None and time.time() - sa["last_contact"] < 30

        with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/healthz", timeout=5) as r:
            health = json.loads(r.read())
        assert r.status == 200 and health["serving"] is True and "orbitfl_" not in json.dumps(health)

        keys = orbitfl("keys", "list", "--config", str(c.root / "ground.toml"), "--json")
        assert keys.returncode == 0, keys.stderr
        b_key = load_public(c.keys / "sat-b.key").decode()
        assert {k["name"]: k["public_key"] for k in json.loads(keys.stdout)} == {
            "sat-a": load_public(c.keys / "sat-a.key").decode(),
            "sat-b": b_key,
        }

        rv = orbitfl("keys", "revoke", "sat-b", "--config", str(c.root / "ground.toml"))
        assert rv.returncode == 0, rv.stderr
        assert "asked the ground" in rv.stdout
        c.wait("the reload", lambda: "revoked sat-b" in c.log("ground"), 15)
        b_updates = updates_of(quick(c), "sat-b")
        closed = quick(c)["rounds_closed"]
        c.wait("sat-b told its key is refused", lambda: "refused this agent's key" in c.log("sat-b"), 30)
        c.wait("two more rounds from sat-a", lambda: quick(c)["rounds_closed"] >= closed + 2, 30)

        log = c.log("ground")
        assert re.search(rf"refused .*{re.escape(b_key)}.*sat-b", log), log[-3000:]
        s = status(c)
        assert updates_of(s, "sat-b") == b_updates, "a revoked agent's update was accepted"
        assert s["refusals"].get("unknown_key", 0) + s["refusals"].get("revoked_key", 0) >= 1
        assert b_key in c.log("sat-b")
        assert c.procs["ground"].poll() is None, "the ground restarted or died"
        assert c.log("sat-b").count("refused this agent's key") == 1, "the revoked agent kept redialling"

        # The journal's format: every line has a priority and no timestamp of its own; one line per
        # round; one join line per HELLO.
        lines = [x for x in log.splitlines() if x.strip()]
        assert all(re.match(r"<[2-7]>orbitfl", x) for x in lines), [x for x in lines if not x.startswith("<")]
        rounds = [int(m.group(1)) for m in re.finditer(r"round (\d+) -> v", log)]
        assert rounds and len(rounds) == len(set(rounds)), "a round was logged twice"
        assert "<6>orbitfl.ground: 'sat-a' joined" in log
        assert "<4>" in log  # the refusals are warnings
        # An agent's quiet default: one line per round, not every step of it.
        quiet = c.log("sat-a")
        trained = len(re.findall(r"INFO orbitfl.agent: round \d+: trained", quiet))
        assert trained >= 3 and "is in the outbox" not in quiet and "acknowledged" not in quiet
        info = [x.split(" INFO orbitfl.agent: ", 1)[-1] for x in quiet.splitlines() if " INFO " in x]
        other = [x for x in info if not re.match(r"round \d+: trained |link (up|down)|agent sat-a ", x)]
        assert other == [], "the quiet default logs more than a line per round"
    finally:
        notify.close()
    statuses = notify.got
    texts = {d for d in statuses if d.startswith(b"STATUS=round")}
    assert len(texts) >= 2, f"STATUS= was not kept current: {statuses[:5]}"
    assert all(b"agent(s) online" in t for t in texts)
