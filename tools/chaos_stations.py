#!/usr/bin/env python3
"""Chaos on a real ground network, then an audit of every store: 0 lost, 0 counted twice.

An aggregator, three station daemons and agent daemons (real processes, CurveZMQ on 127.0.0.1,
the configs of ``orbitfl demo --stations``), with small chunks so every update and every relay is a
multi-chunk transfer. Station 0 reaches the aggregator through a TCP proxy this script controls.
While the agents train, round after round, the script in turn: SIGKILLs a station and restarts it,
cuts the proxied station<->aggregator link (every open connection dropped mid-transfer, new ones
refused) and restores it, and SIGKILLs and restarts the aggregator. Then the agents stop, the
stations drain their backlog, everything stops, and the stores are read:

- ACKed: the updates each agent's outbox no longer holds and did not drop (ids ``<agent>:<n>``
  for n up to its committed counter);
- counted: the aggregator's ``seen`` table (and the RELAY tasks it recorded);
- lost = ACKed updates neither counted nor still in a station's outbox (must be 0);
- counted twice = update ids or agent tasks counted more than once (must be 0).

    .venv/bin/python tools/chaos_stations.py --seconds 120 --json chaos.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orbitfl.apps.demo import free_port
from orbitfl.apps.demo_network import write_network_configs

LINK = (
    "[link]\nheartbeat_s = 0.3\nliveness = 3\nbackoff_initial_s = 0.1\nbackoff_max_s = 1.0\n"
    "chunk_bytes = 2048\nwindow = 2\n"
)


@dataclass(frozen=True)
class Settings:
    agents: int = 3
    rounds: int = 0  # open-ended: every ACKed update must be folded in (docs/architecture.md, 12)
    stations: int = 3
    codec: str = "fp32"  # an mlp update of ~10 kB: five chunks of 2 kB
    epochs: int = 1
    alpha: float = 0.5
    seed: int = 0
    insecure: bool = False
    data: str = "digits"
    strategy: str = "fedavg"
    strategy_options: tuple[tuple[str, Any], ...] = ()

    @property
    def demo_model(self) -> str:
        return "mlp"


class Proxy:
    """A TCP proxy in front of the aggregator for one station; ``cut`` drops every connection in
    the middle of whatever it carries and refuses new ones until ``restore``."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.blocked = False
        self.cuts = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.blocked:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                s.close()

    def cut(self) -> None:
        self.blocked = True
        self.cuts += 1
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def restore(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self._stop = True
        self.cut()
        self.sock.close()


class Daemons:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.cfg: dict[str, list[str]] = {}

    def start(self, name: str, *args: str) -> None:
        self.cfg[name] = list(args)
        log = self.logs.get(name) or open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self.logs[name] = log
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "orbitfl.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait()

    def restart(self, name: str) -> None:
        self.start(name, *self.cfg[name])

    def stop(self, names: list[str], timeout_s: float = 15.0) -> dict[str, int]:
        for n in names:
            if self.procs[n].poll() is None:
                self.procs[n].send_signal(signal.SIGTERM)
        codes = {}
        for n in names:
            try:
                codes[n] = self.procs[n].wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.procs[n].kill()
                codes[n] = self.procs[n].wait()
        return codes

    def failed(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() not in (None, 0, -signal.SIGKILL)]

    def close(self) -> None:
        self.stop([n for n in self.procs if self.procs[n].poll() is None], 5.0)
        for f in self.logs.values():
            f.close()


@contextlib.contextmanager
def _ro(path: Path) -> Iterator[sqlite3.Connection]:
    # A connection's own context manager only commits; the audit runs hundreds of times per chaos
    # run, so each read closes its connection rather than leaving it to the garbage collector.
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        yield db
    finally:
        db.close()


def backlog(station_dir: Path) -> int:
    path = station_dir / "relay.sqlite"
    if not path.exists():
        return 0
    with _ro(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def rounds_closed(agg_dir: Path) -> int:
    path = agg_dir / "ground.db"
    if not path.exists():
        return 0
    try:
        with _ro(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM rounds WHERE closed_at IS NOT NULL").fetchone()[0])
    except sqlite3.Error:
        return 0


def audit(work: Path, agents: int, stations: int) -> dict[str, Any]:
    """Read every store; see the module docstring for what each figure means."""
    acked: set[str] = set()
    for i in range(agents):
        name = f"sat-{i}"
        with _ro(work / name / "outbox.sqlite") as db:
            row = db.execute("SELECT value FROM kv WHERE key='counter'").fetchone()
            counter = int(row[0]) if row else 0
            held = {r[0] for r in db.execute("SELECT update_id FROM outbox")}
            dropped = {r[0] for r in db.execute("SELECT update_id FROM dropped")}
        acked |= {f"{name}:{k}" for k in range(1, counter + 1)} - held - dropped
    in_backlog: set[str] = set()
    relays_dropped: dict[str, str] = {}
    for j in range(stations):
        path = work / f"station-{j}" / "relay.sqlite"
        if not path.exists():
            continue
        with _ro(path) as db:
            in_backlog |= {r[0] for r in db.execute("SELECT task_id FROM outbox")}  # the agent's update id
            relays_dropped.update({r[0]: r[1] for r in db.execute("SELECT task_id, reason FROM dropped")})
    with _ro(work / "aggregator" / "ground.db") as db:
        seen = Counter(r[0] for r in db.execute("SELECT update_id FROM seen"))
        tasks = Counter(r[0] for r in db.execute("SELECT task_id FROM tasks"))
        per_round = dict(db.execute("SELECT round, COUNT(*) FROM seen GROUP BY round").fetchall())
        closed = int(db.execute("SELECT COUNT(*) FROM rounds WHERE closed_at IS NOT NULL").fetchone()[0])
    rounds_log = [json.loads(x) for x in (work / "aggregator" / "rounds.jsonl").read_text().splitlines() if x]
    mismatched = [r["round"] for r in rounds_log if per_round.get(r["round"], 0) != r["updates"]]
    lost = sorted(acked - set(seen) - in_backlog)
    twice = sorted(u for u, n in seen.items() if n > 1) + sorted(t for t, n in tasks.items() if n > 1)
    return {
        "acked": len(acked),
        "counted": len(seen),
        "in_station_backlog": len(in_backlog),
        "relays_dropped": relays_dropped,
        "lost": len(lost),
        "lost_ids": lost[:20],
        "counted_twice": len(twice),
        "rounds_closed": closed,
        "rounds_log_mismatched": mismatched,
        "phantom": sorted(set(seen) - acked - {u for u in seen if u in in_backlog})[:20],
    }


def run(
    seconds: float, work: Path, agents: int = 3, seed: int = 0, log: IO[str] = sys.stdout
) -> dict[str, Any]:
    rng = random.Random(seed)
    s = Settings(agents=agents, seed=seed)
    ports = [free_port() for _ in range(2 + s.stations)]
    net = write_network_configs(work, s, ports, LINK, retransmit_s=2.0, deadline_s=3.0)
    proxy = Proxy(ports[0])
    st0 = net.stations[0]
    st0.write_text(st0.read_text().replace(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{proxy.port}"))
    d = Daemons(work)
    events: list[str] = []
    t0 = time.monotonic()

    def note(text: str) -> None:
        events.append(f"{time.monotonic() - t0:6.1f} s  {text}")
        print(events[-1], file=log, flush=True)

    try:
        d.start("aggregator", "ground", "serve", "--config", str(net.aggregator))
        for cfg in net.stations:
            d.start(cfg.stem, "ground", "serve", "--config", str(cfg))
        for cfg in net.agents:
            d.start(cfg.stem, "agent", "run", "--config", str(cfg))
        while rounds_closed(work / "aggregator") < 1:
            if time.monotonic() - t0 > 90:
                raise RuntimeError(f"no round closed in 90 s; logs in {work}")
            time.sleep(0.2)
        note("first round closed; chaos starts")
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            bad = d.failed()
            if bad:
                raise RuntimeError(f"{', '.join(bad)} stopped with an error; logs in {work}")
            kind = step % 3
            step += 1
            if kind == 0:
                victim = f"station-{rng.randrange(s.stations)}"
                d.kill(victim)
                note(f"SIGKILL {victim}")
                time.sleep(rng.uniform(1.0, 3.0))
                d.restart(victim)
                note(f"restarted {victim}")
            elif kind == 1:
                proxy.cut()
                note("cut station-0 <-> aggregator (proxy)")
                time.sleep(rng.uniform(1.0, 3.0))
                proxy.restore()
                note("restored station-0 <-> aggregator")
            else:
                d.kill("aggregator")
                note("SIGKILL aggregator")
                time.sleep(rng.uniform(0.5, 2.0))
                d.restart("aggregator")
                note("restarted aggregator")
            time.sleep(rng.uniform(1.0, 3.0))
        agent_names = [c.stem for c in net.agents]
        codes = d.stop(agent_names)
        note(f"agents stopped {codes}")
        drain_end = time.monotonic() + 60
        while any(backlog(work / c.stem) for c in net.stations):
            if time.monotonic() > drain_end:
                break
            time.sleep(0.3)
        note(f"stations drained: backlog {[backlog(work / c.stem) for c in net.stations]}")
        time.sleep(1.0)  # the last RELAY ACK's round may be closing
        codes.update(d.stop(["aggregator", *[c.stem for c in net.stations]]))
        note(f"all stopped {codes}")
    finally:
        d.close()
        proxy.close()
    report = audit(work, s.agents, s.stations)
    report.update(
        seconds=round(time.monotonic() - t0, 1), events=events, proxy_cuts=proxy.cuts, exit_codes=codes
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="how long the chaos lasts")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep logs and stores here (default: a temporary folder, removed)")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="orbitfl-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run(a.seconds, work, a.agents, a.seed)
    except RuntimeError as exc:
        print(f"chaos_stations: {exc}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in report.items() if k != "events"}
    print(json.dumps(shown, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    ok = report["lost"] == 0 and report["counted_twice"] == 0 and not report["rounds_log_mismatched"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
