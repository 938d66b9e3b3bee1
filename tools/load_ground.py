#!/usr/bin/env python3
"""Load and burst tests of the real ground daemon (``orbitfl ground serve``, CurveZMQ on).

One load-generator process (``orbitfl.apps.loadgen``) plays N agents on the wire. Afterwards the
store is audited: every ACKed update is in it (lost), and every closed round's model is exactly
FedAvg of the updates the store accepted for it, each once (double-counted). The daemon's peak
RSS is its ``VmHWM`` from /proc.

    # issue 11 point 6: 200 agents for 3 minutes, 165,930-parameter model (chunked both ways)
    .venv/bin/python tools/load_ground.py --agents 200 --seconds 180
    # issue 11 point 4: one round of N updates of a 1M-parameter float32 model, peak RSS per N
    .venv/bin/python tools/load_ground.py --burst 10,50,100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from orbitfl.apps.demo import free_port
from orbitfl.apps.loadgen import Fleet, FleetStats, audit
from orbitfl.models import zoo
from orbitfl.runtime.keys import new_keypair

# ~1M parameters: the shapes tools/bench_ingest.py uses (fc1 1000x960, fc2 960x40).
BURST_MODEL = {"input": 1000, "hidden": [960], "classes": 40}
LOAD_MODEL = {"input": 64, "hidden": [1024, 96], "classes": 10}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Ground:
    root: Path
    endpoint: str
    proc: subprocess.Popen[bytes]
    shapes: dict[str, tuple[int, ...]]

    @property
    def state_dir(self) -> Path:
        return self.root / "ground"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def setup(
    root: Path, names: list[str], model: dict[str, Any], federation: dict[str, Any], *, secure: bool = True
) -> tuple[Path, dict[str, tuple[int, ...]], str]:
    """Keys, the model file and ground.toml in ``root``; returns (config, shapes, endpoint)."""
    keys, allowed = root / "keys", root / "allowed"
    if secure:
        new_keypair("ground", keys)
        for n in names:
            new_keypair(n, keys, allow_dir=allowed)
    spec = zoo.build("mlp", **model)
    onnx.save(spec.model, str(root / "model.onnx"))
    shapes = {k: tuple(v.shape) for k, v in zoo.get_weights(spec.model).items()}
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    fed = {"model": str(root / "model.onnx"), "round_deadline_s": 3600.0, "retransmit_s": 5.0, **federation}
    ground: dict[str, Any] = {"bind": endpoint, "state_dir": str(root / "ground")}
    if secure:
        ground |= {"secret_key": str(keys / "ground.key_secret"), "allowed_keys": str(allowed)}
    else:
        ground["insecure"] = True
    lines = []
    for section, values in (("ground", ground), ("federation", fed), ("link", {"heartbeat_s": 1.0})):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    cfg = root / "ground.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg, shapes, endpoint


def _starts(root: Path) -> int:
    p = root / "ground.log"
    return p.read_text(errors="replace").count("serving on") if p.exists() else 0


def start_ground(root: Path, cfg: Path, shapes: dict[str, tuple[int, ...]], endpoint: str) -> Ground:
    """Start (or restart, on the same state) the daemon and wait until it serves."""
    before = _starts(root)
    log = open(root / "ground.log", "ab")  # noqa: SIM115 - the child holds it until it exits
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
    )
    log.close()
    end = time.monotonic() + 60
    while _starts(root) <= before:
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the ground did not start:\n" + (root / "ground.log").read_text()[-2000:])
        time.sleep(0.1)
    return Ground(root, endpoint, proc, shapes)


def fleet_for(g: Ground, names: list[str], *, secure: bool = True, **kw: Any) -> Fleet:
    return Fleet(
        g.endpoint,
        names,
        g.shapes,
        keys_dir=g.root / "keys" if secure else None,
        spool_dir=g.root / "loadgen-spool",
        **kw,
    )


def burst(n: int, *, secure: bool = True, timeout_s: float = 600.0) -> dict[str, Any]:
    """One round of ``n`` 1M-parameter updates arriving together; the ground's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="orbitfl-burst-") as tmp:
        root = Path(tmp)
        names = [f"b-{i}" for i in range(n)]
        cfg, shapes, ep = setup(root, names, BURST_MODEL, {"rounds": 1, "min_updates": n}, secure=secure)
        g = start_ground(root, cfg, shapes, ep)
        idle = peak_rss_mib(g.proc.pid)
        fleet = fleet_for(g, names, secure=secure, rounds=1)
        t0 = time.monotonic()
        try:
            # Done when every update is ACKed and every agent holds the final model.
            st = fleet.run(lambda s: len(s.acked) >= n and s.models >= n, timeout_s)
        finally:
            fleet.close()
        wall = time.monotonic() - t0
        rss = peak_rss_mib(g.proc.pid)
        code = g.stop()
        shutil.copy(root / "ground.log", Path(tempfile.gettempdir()) / f"orbitfl-burst-{n}.log")
        a = audit(g.state_dir, st.acked)
        return {
            "updates": n,
            "acked": len(st.acked),
            "models_delivered": st.models,
            "idle_rss_mib": idle,
            "peak_rss_mib": rss,
            "seconds": wall,
            "lost": a.lost,
            "double_counted": a.double_counted,
            "rounds_checked": a.rounds_checked,
            "exit": code,
        }


def load(
    agents: int,
    seconds: float,
    *,
    min_updates: int,
    secure: bool = True,
    model: dict[str, Any] | None = None,
    think_s: float = 0.0,
) -> dict[str, Any]:
    """``agents`` agents training round after round for ``seconds``; rates, latencies, audit."""
    with tempfile.TemporaryDirectory(prefix="orbitfl-load-") as tmp:
        root = Path(tmp)
        names = [f"l-{i}" for i in range(agents)]
        cfg, shapes, ep = setup(
            root, names, model or LOAD_MODEL, {"rounds": 0, "min_updates": min_updates}, secure=secure
        )
        g = start_ground(root, cfg, shapes, ep)
        fleet = fleet_for(g, names, secure=secure, think_s=think_s)
        t0 = time.monotonic()
        try:
            st = fleet.run(lambda s: False, seconds)
        finally:
            fleet.close()
        wall = time.monotonic() - t0
        rss = peak_rss_mib(g.proc.pid)
        alive = g.alive()
        code = g.stop()
        a = audit(g.state_dir, st.acked)
        return summary(st, wall, rss, a.lost, a.double_counted, a.rounds_checked, alive, code, a.accepted)


def summary(
    st: FleetStats,
    wall: float,
    rss: float,
    lost: int,
    double: int,
    rounds: int,
    alive: bool,
    code: int,
    accepted: int,
) -> dict[str, Any]:
    return {
        "seconds": wall,
        "updates_acked": len(st.acked),
        "updates_accepted_in_store": accepted,
        "updates_per_s": len(st.acked) / wall,
        "ack_p50_ms": 1000 * st.percentile(st.latency_ack, 50),
        "ack_p99_ms": 1000 * st.percentile(st.latency_ack, 99),
        "upload_p50_ms": 1000 * st.percentile(st.latency_upload, 50),
        "upload_p99_ms": 1000 * st.percentile(st.latency_upload, 99),
        "rounds_closed": rounds,
        "resends": st.resends,
        "nacks": dict(st.nacks),
        "mb_up": st.bytes_up / 1e6,
        "mb_down": st.bytes_down / 1e6,
        "peak_rss_mib": rss,
        "lost": lost,
        "double_counted": double,
        "ground_alive_at_end": alive,
        "exit": code,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", help="comma-separated update counts: one burst run per count")
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--min-updates", type=int, default=0, help="updates per round (default: agents / 4)")
    ap.add_argument("--think-s", type=float, default=0.0, help="pause between a task and its update")
    ap.add_argument("--insecure", action="store_true", help="plaintext instead of CurveZMQ")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    secure = not args.insecure
    results: list[dict[str, Any]] = []
    if args.burst:
        try:
            counts = [int(x) for x in args.burst.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--burst: expected comma-separated integers, got {args.burst!r}")
        if not counts or min(counts) < 1:
            ap.error("--burst: counts must be >= 1")
        head = f"{'updates':>7} {'acked':>6} {'models':>6} {'idle MiB':>8} {'peak MiB':>8} {'s':>6}"
        print(head + " lost double")
        for n in counts:
            r = burst(n, secure=secure)
            results.append(r)
            print(
                f"{n:7d} {r['acked']:6d} {r['models_delivered']:6d} {r['idle_rss_mib']:8.0f} "
                f"{r['peak_rss_mib']:8.0f} {r['seconds']:6.1f} {r['lost']:4d} {r['double_counted']:6d}"
            )
    else:
        if args.agents < 1 or args.seconds <= 0:
            ap.error("--agents must be >= 1 and --seconds > 0")
        mu = args.min_updates or max(1, args.agents // 4)
        r = load(args.agents, args.seconds, min_updates=mu, secure=secure, think_s=args.think_s)
        results.append(r)
        print(f"{args.agents} agents, {mu} updates per round, {'CurveZMQ' if secure else 'plaintext'}")
        for k, v in r.items():
            print(f"  {k:26} {v:.1f}" if isinstance(v, float) else f"  {k:26} {v}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    bad = any(r["lost"] or r["double_counted"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
