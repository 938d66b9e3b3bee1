"""``orbitfl ground status [--json]``: how the federation is going, for an operator.

Read from two places, both safe while the daemon runs: the state directory (SQLite opened
read-only; WAL lets it read while the daemon writes; and ``rounds.jsonl``) for what is durable —
round, model version, agents and their last update, accuracy per round, privacy spent — and the
daemon's ``/metrics`` endpoint, when configured and answering, for what only the live process
knows: agents online and last seen, bytes up and down, refusals by reason.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orbitfl.runtime.config import ConfigError, GroundSettings, load_ground
from orbitfl.runtime.observe import parse_text

ROUNDS_FILE = "rounds.jsonl"
DP_EPSILON_KEY = "dp_epsilon"  # the store meta key a DP strategy keeps its spent epsilon under


class StatusError(Exception):
    """The status cannot be read (no state yet, unreadable database); the one line to print."""


def open_readonly(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise StatusError(f"{db} does not exist: has the ground run with this state_dir?")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        con.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise StatusError(f"cannot read {db}: {exc}") from None
    return con


def scrape(host_port: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """The samples of the daemon's /metrics, or None when it does not answer."""
    host, _, port = host_port.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as r:
            return parse_text(r.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _labelled(samples: dict[str, float], name: str, label: str) -> dict[str, float]:
    prefix = f'{name}{{{label}="'
    return {k[len(prefix) : -2]: v for k, v in samples.items() if k.startswith(prefix) and k.endswith('"}')}


def read_status(cfg: GroundSettings, *, live: bool = True, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    state = cfg.ground.state_dir
    con = open_readonly(state / "ground.db")
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        version = con.execute("SELECT MAX(version) FROM models").fetchone()[0]
        current = con.execute(
            "SELECT round, opened_at FROM rounds WHERE closed_at IS NULL ORDER BY round DESC LIMIT 1"
        ).fetchone()
        closed, last_closed = con.execute(
            "SELECT COUNT(*), MAX(closed_at) FROM rounds WHERE closed_at IS NOT NULL"
        ).fetchone()
        last_round = con.execute("SELECT MAX(round) FROM rounds").fetchone()[0]
        agents = con.execute(
            "SELECT a.agent_id, a.software, a.model_version, a.first_seen, a.last_seen, "
            "(SELECT MAX(accepted_at) FROM seen s WHERE s.agent_id = a.agent_id), "
            "(SELECT COUNT(*) FROM seen s WHERE s.agent_id = a.agent_id) FROM agents a ORDER BY a.agent_id"
        ).fetchall()
        accepted = con.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM seen").fetchone()
    except sqlite3.Error as exc:
        raise StatusError(f"cannot read {state / 'ground.db'}: {exc}") from None
    finally:
        con.close()
    history = []
    rounds_file = state / ROUNDS_FILE
    if rounds_file.is_file():
        for line in rounds_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
            history.append(
                {k: row.get(k) for k in ("round", "version", "updates", "uplink_bytes", "accuracy", "time")}
            )
    samples = scrape(cfg.ground.metrics) if live and cfg.ground.metrics else None
    live_seen = _labelled(samples, "orbitfl_agent_last_seen_timestamp_seconds", "agent") if samples else {}
    live_online = _labelled(samples, "orbitfl_agent_online", "agent") if samples else {}
    live_model = _labelled(samples, "orbitfl_agent_model_version", "agent") if samples else {}
    agent_rows = []
    for aid, software, held, first, hello_seen, last_update, updates in agents:
        seen = max(x for x in (hello_seen, last_update, live_seen.get(aid)) if x is not None)
        agent_rows.append(
            {
                "name": aid,
                "software": software,
                # What it said at its last HELLO, or since (heartbeats) when the daemon answers.
                "model_version": int(live_model[aid]) if aid in live_model else held,
                "first_seen": first,
                "last_seen": seen,
                "last_seen_ago_s": round(max(0.0, now - seen), 1),
                # Live only: an agent this ground has not heard from since it started is offline.
                "online": bool(live_online.get(aid, 0.0)) if samples is not None else None,
                "last_update": last_update,
                "updates": updates,
            }
        )
    eps_raw = meta.get(DP_EPSILON_KEY)
    try:
        eps = None if eps_raw is None else float(eps_raw)
    except ValueError:
        eps = None
    if samples is not None and eps is None and "orbitfl_dp_epsilon" in samples:
        eps = samples["orbitfl_dp_epsilon"]
    return {
        "state_dir": str(state),
        "serving": samples is not None if cfg.ground.metrics else None,
        "round": current[0] if current is not None else last_round,
        "round_open_since": current[1] if current is not None else None,
        "training_over": current is None and last_round is not None,
        "model_version": version,
        "rounds_closed": closed,
        "last_round_time": last_closed,
        "updates_accepted": accepted[0],
        "agents": {
            "registered": len(agent_rows),
            "online": int(samples["orbitfl_agents_online"])
            if samples and "orbitfl_agents_online" in samples
            else None,
            "list": agent_rows,
        },
        "bytes": {
            # Uplink from the store (every accepted update's size) survives restarts; the live
            # counters cover every frame since the daemon started.
            "accepted_updates": accepted[1],
            "up": samples.get("orbitfl_received_bytes_total") if samples else None,
            "down": samples.get("orbitfl_sent_bytes_total") if samples else None,
        },
        "accuracy": [
            {"round": h["round"], "version": h["version"], "accuracy": h["accuracy"]} for h in history
        ],
        "refusals": _labelled(samples, "orbitfl_updates_refused_total", "reason") if samples else None,
        "dp_epsilon": eps,
    }


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{max(0.0, now - t):.0f} s ago"


def format_status(s: dict[str, Any], now: float) -> str:
    lines = []
    serving = {True: "serving", False: "not answering on its metrics endpoint", None: "no metrics endpoint"}[
        s["serving"]
    ]
    phase = "training over" if s["training_over"] else f"round {s['round']}"
    lines.append(
        f"ground ({serving}): {phase}, model v{s['model_version']}, {s['rounds_closed']} round(s) closed"
    )
    lines.append(
        f"last round closed: {_ago(s['last_round_time'], now)}; updates accepted: {s['updates_accepted']}"
    )
    a = s["agents"]
    online = "?" if a["online"] is None else a["online"]
    lines.append(f"agents: {a['registered']} registered, {online} online")
    for r in a["list"]:
        state = {True: "online", False: "offline", None: "-"}[r["online"]]
        held = "-" if r["model_version"] is None else f"v{r['model_version']}"
        lines.append(
            f"  {r['name']:20s} {state:7s} holds {held:6s} last seen {_ago(r['last_seen'], now)}, "
            f"last update {_ago(r['last_update'], now)} ({r['updates']} in all)"
        )
    b = s["bytes"]
    if b["up"] is not None:
        lines.append(f"bytes: {int(b['up'])} up, {int(b['down'] or 0)} down since start")
    lines.append(f"bytes in accepted updates: {b['accepted_updates']}")
    accs = [x for x in s["accuracy"] if x["accuracy"] is not None]
    if accs:
        tail = ", ".join(f"r{x['round']} {x['accuracy']:.4f}" for x in accs[-5:])
        lines.append(f"accuracy (last {min(5, len(accs))} rounds): {tail}")
    if s["refusals"]:
        lines.append("refused: " + ", ".join(f"{k} {int(v)}" for k, v in sorted(s["refusals"].items())))
    if s["dp_epsilon"] is not None:
        lines.append(f"privacy spent: epsilon {s['dp_epsilon']:.4g}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        cfg = load_ground(Path(args.config))
        s = read_status(cfg, live=not args.offline)
    except (ConfigError, StatusError) as exc:
        print(f"orbitfl ground status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=2) if args.json else format_status(s, time.time()))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("status", help="round, model, agents, bytes, accuracy, refusals (safe while it runs)")
    st.add_argument("--config", required=True, help="the ground's TOML config")
    st.add_argument("--json", action="store_true", help="as JSON")
    st.add_argument("--offline", action="store_true", help="read the state directory only, not /metrics")
    st.set_defaults(func=cmd_status)
