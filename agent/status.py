"""``orbitfl agent status [--json]``: what a board holds and owes, for an operator.

The outbox database (opened read-only, safe while the daemon writes: WAL) gives the updates still
waiting for an ACK, the global model held and when the ground was last heard from (recorded at
each link change); the daemon's ``/metrics``, when configured and answering, says whether the link
is up now and refreshes the last contact.
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

import msgpack

from orbitfl.runtime.config import AgentSettings, ConfigError, load_agent
from orbitfl.runtime.observe import parse_text

LAST_CONTACT_KEY = "last_contact"  # outbox kv: Unix time the ground was last heard from


class StatusError(Exception):
    """The status cannot be read; the one line to print."""


def _scrape(host_port: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    host, _, port = host_port.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as r:
            return parse_text(r.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _held_version(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    # Only the version is wanted: the tensors stay msgpack bytes, never made into arrays.
    try:
        d = msgpack.unpackb(blob, raw=False, max_ext_len=0)
        return int(d["version"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None


def read_status(cfg: AgentSettings, *, live: bool = True) -> dict[str, Any]:
    db = cfg.agent.state_dir / "outbox.sqlite"
    if not db.is_file():
        raise StatusError(f"{db} does not exist: has the agent run with this state_dir?")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        try:
            kv = dict(con.execute("SELECT key, value FROM kv WHERE key IN ('model', ?)", (LAST_CONTACT_KEY,)))
            depth, oldest = con.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
            dropped = con.execute("SELECT COUNT(*) FROM dropped").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StatusError(f"cannot read {db}: {exc}") from None
    contact: float | None = None
    raw = kv.get(LAST_CONTACT_KEY)
    if raw is not None:
        try:
            contact = float(bytes(raw).decode())
        except ValueError:
            contact = None
    samples = _scrape(cfg.agent.metrics) if live and cfg.agent.metrics else None
    if samples is not None and "orbitfl_agent_last_contact_timestamp_seconds" in samples:
        contact = max(contact or 0.0, samples["orbitfl_agent_last_contact_timestamp_seconds"])
    return {
        "name": cfg.agent.name,
        "ground": cfg.agent.ground,
        "state_dir": str(cfg.agent.state_dir),
        "running": samples is not None if cfg.agent.metrics else None,
        "link_up": bool(samples["orbitfl_agent_link_up"])
        if samples and "orbitfl_agent_link_up" in samples
        else None,
        "outbox": depth,
        "oldest_waiting": oldest,
        "dropped": dropped,
        "model_version": _held_version(None if kv.get("model") is None else bytes(kv["model"])),
        "last_contact": contact,
        "key_refused": int(samples.get("orbitfl_agent_key_refused_total", 0)) if samples else None,
    }


def format_status(s: dict[str, Any], now: float) -> str:
    running = {True: "running", False: "not answering on its metrics endpoint", None: "no metrics endpoint"}
    link = {True: "link up", False: "link down", None: "link state unknown"}[s["link_up"]]
    held = "no model" if s["model_version"] is None else f"model v{s['model_version']}"
    contact = "never" if s["last_contact"] is None else f"{max(0.0, now - s['last_contact']):.0f} s ago"
    lines = [
        f"agent {s['name']} ({running[s['running']]}, {link}) -> {s['ground']}",
        f"holding {held}; last contact with the ground {contact}",
        f"outbox: {s['outbox']} update(s) waiting for an ACK; {s['dropped']} dropped as refused",
    ]
    if s["key_refused"]:
        lines.append(f"the ground refused this agent's key {s['key_refused']} time(s): revoked?")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        cfg = load_agent(Path(args.config))
        s = read_status(cfg, live=not args.offline)
    except (ConfigError, StatusError) as exc:
        print(f"orbitfl agent status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=2) if args.json else format_status(s, time.time()))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("status", help="outbox depth, model held, last contact (safe while it runs)")
    st.add_argument("--config", required=True, help="the agent's TOML config")
    st.add_argument("--json", action="store_true", help="as JSON")
    st.add_argument("--offline", action="store_true", help="read the state directory only, not /metrics")
    st.set_defaults(func=cmd_status)
