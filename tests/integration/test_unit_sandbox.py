"""The shipped systemd units' syscall filter lets both daemons run a federation round.

`systemd-analyze verify` cannot see a SystemCallFilter= that kills the daemon (SIGSYS at
`import numpy`); only running under the filter can. The filter is the unit's own, built with
libseccomp by tests/integration/unit_sandbox.py (needs Debian's python3-seccomp, which
`tools/dev.py test` installs in CI), and applied to real ground and agent processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "tools" / "systemd"
LAUNCHER = Path(__file__).with_name("unit_sandbox.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _missing() -> str | None:
    if not shutil.which("systemd-analyze"):
        return "systemd-analyze is missing (apt-get install systemd)"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    if probe.returncode:
        return "Debian's python3-seccomp is missing (apt-get install python3-seccomp)"
    return None


_reason = _missing()
if _reason and os.environ.get("CI", "").lower() == "true":
    # CI installs both (tools/dev.py system_tools): a skip there would hide a killed daemon.
    pytest.fail(f"the unit sandbox test cannot run in CI: {_reason}", pytrace=False)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_reason is not None, reason=str(_reason))]


def sandboxed(unit: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, str(LAUNCHER), str(unit), "--", *command], capture_output=True, text=True, timeout=120
    )


def test_the_filter_of_the_old_units_kills_python_at_import_numpy(tmp_path: Path) -> None:
    # The control: the units as shipped before (deny @resources, no errno) die of SIGSYS. If this
    # passes no more, the launcher no longer applies the filter and the test below proves nothing.
    old = tmp_path / "old.service"
    old.write_text("[Service]\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\n")
    res = sandboxed(old, sys.executable, "-c", "import numpy")
    assert res.returncode == -31 or res.returncode == 159, (res.returncode, res.stderr)


@pytest.mark.parametrize("unit", ["orbitfl-ground.service", "orbitfl-agent.service"])
def test_the_units_filter_admits_what_the_daemons_import(unit: str) -> None:
    code = (
        "import numpy, zmq, onnxruntime, msgpack, zstandard, sqlite3, orbitfl._core;"
        "s = zmq.Context().socket(zmq.ROUTER); s.bind('tcp://127.0.0.1:*'); print('ok')"
    )
    res = sandboxed(UNITS / unit, sys.executable, "-c", code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


def test_ground_and_agents_federate_under_the_units_own_filter(cluster: Cluster) -> None:
    cluster.ground_config(rounds=1, min_updates=2)
    for i in range(2):
        cluster.agent_config(f"a{i}", i, 2)
    launcher = [SYSTEM_PYTHON, str(LAUNCHER)]
    cluster.prefix["ground"] = [*launcher, str(UNITS / "orbitfl-ground.service"), "--"]
    for i in range(2):
        cluster.prefix[f"a{i}"] = [*launcher, str(UNITS / "orbitfl-agent.service"), "--"]
    cluster.start_ground()
    cluster.start_agent("a0")
    cluster.start_agent("a1")
    cluster.wait("a round closed by sandboxed daemons", lambda: len(cluster.rounds()) >= 1, timeout_s=180)
    codes = cluster.stop()
    assert all(code in (0, -15) for code in codes.values()), codes
    assert "Bad system call" not in "".join(cluster.log(n) for n in ("ground", "a0", "a1"))
