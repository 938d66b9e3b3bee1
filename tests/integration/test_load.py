"""The real ground under load from one process playing many agents over CurveZMQ: the load test's
smoke run, and SIGKILLs at random points while updates are in flight. Afterwards the store is
audited: no ACKed update missing, every closed round's model FedAvg of its updates each once."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from orbitfl.apps.loadgen import audit

pytestmark = pytest.mark.integration

TOOL = Path(__file__).resolve().parents[2] / "tools" / "load_ground.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("orbitfl_tools_load_ground", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(120)
def test_load_smoke_twenty_agents_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    res = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--agents",
            "20",
            "--seconds",
            "12",
            "--min-updates",
            "5",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (r,) = json.loads(out.read_text())
    assert r["lost"] == 0 and r["double_counted"] == 0
    assert r["ground_alive_at_end"] and r["exit"] == 0
    assert r["rounds_closed"] >= 2 and r["updates_acked"] >= 10
    assert r["updates_accepted_in_store"] >= r["updates_acked"]
    assert r["ack_p99_ms"] > 0 and r["peak_rss_mib"] > 0
    assert "updates_per_s" in res.stdout


@pytest.mark.timeout(150)
def test_sigkill_during_ingest_loses_no_acked_update_and_counts_none_twice(tmp_path: Path) -> None:
    lg = load_tool()
    seed = int(os.environ.get("ORBITFL_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    names = [f"k-{i}" for i in range(24)]
    cfg, shapes, ep = lg.setup(
        tmp_path, names, lg.LOAD_MODEL, {"rounds": 0, "min_updates": 8, "retransmit_s": 1.0}
    )
    g = lg.start_ground(tmp_path, cfg, shapes, ep)
    fleet = lg.fleet_for(g, names, retransmit_s=1.0)
    acked_at_kill = []
    try:
        for _ in range(4):
            fleet.run(lambda s: False, rng.uniform(1.0, 4.0))
            acked_at_kill.append(len(fleet.stats.acked))
            g.proc.send_signal(signal.SIGKILL)
            assert g.proc.wait(30) == -signal.SIGKILL
            g = lg.start_ground(tmp_path, cfg, shapes, ep)
        fleet.run(lambda s: False, 8.0)
    finally:
        fleet.close()
    assert g.stop() == 0
    st = fleet.stats
    a = audit(g.state_dir, st.acked)
    note = f"seed {seed}, acked at each kill {acked_at_kill}, total {len(st.acked)}, nacks {st.nacks}"
    assert a.lost == 0, note
    assert a.double_counted == 0, f"{note}, worst error {a.max_error}"
    assert a.rounds_checked >= 3 and len(st.acked) > acked_at_kill[-1], note
    log = (tmp_path / "ground.log").read_text()
    assert "Traceback" not in log
