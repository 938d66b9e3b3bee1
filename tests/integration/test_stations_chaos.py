"""A real ground network under chaos (tools/chaos_stations.py, short): an aggregator, three station
daemons and agents over CurveZMQ; a station SIGKILLed and restarted, a station<->aggregator link cut
mid-transfer by a proxy, the aggregator SIGKILLed and restarted. Then the stores are audited: every
update an agent got an ACK for is counted at the aggregator, and none twice."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

TOOL = Path(__file__).resolve().parents[2] / "tools" / "chaos_stations.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("orbitfl_tools_chaos_stations", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(150)
def test_chaos_on_stations_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    tool = load_tool()
    r = tool.run(9.0, tmp_path, agents=2, seed=1)
    assert r["acked"] > 0 and r["rounds_closed"] >= 2, r
    assert r["lost"] == 0, r
    assert r["counted_twice"] == 0 and not r["rounds_log_mismatched"], r
    assert r["in_station_backlog"] == 0 and r["proxy_cuts"] >= 1, r
    assert any("SIGKILL station" in e for e in r["events"]) and any(
        "SIGKILL aggregator" in e for e in r["events"]
    )
