"""Executors (issue 13): ``orbitfl simulate`` and ``orbitfl experiment`` give the same table under
``local``, ``processes`` and ``ray`` (a real Ray cluster of separate processes); an interrupted
sweep resumes with the runs already done; progress shows on a terminal and in a log."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbitfl.apps.executors import ExecutorSpec, parse_executor
from orbitfl.apps.progress import Progress
from orbitfl.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "experiments" / "quick.toml"
BIN = Path(sys.executable).parent
# Small enough to be quick, large enough for several rounds and jobs in flight at once.
SIM = ["--sats", "6", "--planes", "2", "--orbits", "8", "--stations", "svalbard:78.23:15.39:5"]
WALL = ("wall_seconds",)


def _orbitfl(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(env or os.environ, RAY_USAGE_STATS_ENABLED="0")
    res = subprocess.run(
        [str(BIN / "orbitfl"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def _table(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv without its wall-time column (the one column allowed to differ)."""
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert rows
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


def _same_report(a: Path, b: Path, seeds: set[str] | None = None) -> None:
    """``b``'s tables equal ``a``'s (its rows of ``seeds`` only, when given)."""
    want = [r for r in _table(a / "results.csv") if seeds is None or r["seed"] in seeds]
    assert want == _table(b / "results.csv")
    rounds = list(csv.DictReader((a / "rounds.csv").read_text().splitlines()))
    if seeds is not None:
        rounds = [r for r in rounds if r["seed"] in seeds]
    assert rounds == list(csv.DictReader((b / "rounds.csv").read_text().splitlines()))


@pytest.fixture(scope="module")
def local_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-local")
    res = _orbitfl("simulate", *SIM, "--report", str(out))
    assert "training on executor local" in res.stdout
    assert "progress: 1/1 runs" in res.stdout  # plain lines: stdout is a pipe here
    assert "\r" not in res.stdout
    rows = _table(out / "results.csv")
    assert int(rows[0]["rounds"]) >= 2
    return out


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep-local")
    _orbitfl("experiment", "--config", str(QUICK), "--seeds", "0,1", "--report", str(out))
    return out


def test_executor_spec_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_executor("local") == ExecutorSpec("local")
    assert parse_executor("processes") == ExecutorSpec("processes")
    assert parse_executor("processes:3") == ExecutorSpec("processes", workers=3)
    assert parse_executor("ray") == ExecutorSpec("ray")
    assert parse_executor("ray:auto") == ExecutorSpec("ray", address="auto")
    assert parse_executor("ray:10.0.0.2:6379") == ExecutorSpec("ray", address="10.0.0.2:6379")
    for bad, says in (
        ("threads", "executor must be"),
        ("processes:0", "worker count"),
        ("processes:two", "worker count"),
        ("local:2", "takes no argument"),
        ("ray:", "needs an address"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_executor(bad)
    assert main(["simulate", "--executor", "processes:x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "worker count" in err[0]
    assert main(["experiment", "--config", str(QUICK), "--report", "unused", "--executor", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "executor must be" in err[0]


def test_progress_bar_on_a_terminal_and_lines_in_a_log() -> None:
    tty = io.StringIO()
    p = Progress(4, stream=tty, tty=True, interval=0.0)
    p.update(done=1, sim_s=7200.0, rounds=3)
    p.line("run 1 done")
    p.close()
    out = tty.getvalue()
    assert "\r" in out and "[######" in out and "1/4 runs, 2.0 sim h, 3 rounds" in out and "ETA 0:" in out
    assert "run 1 done\n" in out
    log = io.StringIO()
    q = Progress(4, stream=log, tty=False, interval=3600.0)
    q.update(done=1, force=True)
    q.update(done=2)  # within the interval: no new line
    q.close()
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()


def test_simulation_on_local_processes_is_identical(local_sim: Path, tmp_path: Path) -> None:
    res = _orbitfl("simulate", *SIM, "--executor", "processes:2", "--report", str(tmp_path))
    assert "training on executor processes:2" in res.stdout
    _same_report(local_sim, tmp_path)


def test_sweep_on_processes_is_identical(local_sweep: Path, tmp_path: Path) -> None:
    _orbitfl(
        "experiment",
        "--config",
        str(QUICK),
        "--seeds",
        "0",
        "--executor",
        "processes:2",
        "--report",
        str(tmp_path),
    )
    _same_report(local_sweep, tmp_path, seeds={"0"})


def test_interrupted_sweep_resumes_with_the_runs_done(local_sweep: Path, tmp_path: Path) -> None:
    cmd = [
        str(BIN / "orbitfl"),
        "experiment",
        "--config",
        str(QUICK),
        "--seeds",
        "0,1",
        "--report",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    runs = tmp_path / "runs"
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    done = len(list(runs.glob("*.json")))
    assert 1 <= done < 4, "the sweep should have been stopped after its first run"
    assert not (tmp_path / "results.csv").exists()
    res = _orbitfl("experiment", "--config", str(QUICK), "--seeds", "0,1", "--report", str(tmp_path))
    assert f"resuming: {done} of 4 runs already in" in res.stdout
    assert res.stdout.count("] ") == 4 - done  # only the missing runs ran
    assert "progress: 4/4 runs" in res.stdout
    _same_report(local_sweep, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A real Ray head node of 2 CPUs on 127.0.0.1, as separate processes; always stopped."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip(
            f"Ray is not installed (no wheel of the pinned Ray for CPython {sys.version_info[0]}."
            f"{sys.version_info[1]} on {os.uname().machine}?): pip install 'orbitfl[ray]'"
        )
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ofray", dir="/tmp")  # short: Ray's socket paths live in it
    # Token authentication with a token of this test's own, given to the head and to the drivers:
    # a token another Ray left in ~/.ray must not decide whether they can talk.
    env = dict(
        os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)
    )
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: stopped below, with every Ray process in it
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert head.poll() is None, "ray start --head exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the Ray head did not start in 120 s")
        yield address, env
    finally:
        # --block: the head stops its node on SIGTERM; what is left of the group after a grace
        # period (raylet, GCS, workers) is killed, so no Ray process outlives the test.
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        subprocess.run(["rm", "-rf", temp], check=False)


def test_ray_cluster_gives_identical_results(
    ray_cluster: tuple[str, dict[str, str]], local_sim: Path, local_sweep: Path, tmp_path: Path
) -> None:
    address, env = ray_cluster
    sim = tmp_path / "sim"
    res = _orbitfl("simulate", *SIM, "--executor", f"ray:{address}", "--report", str(sim), env=env)
    assert f"training on executor ray:{address}" in res.stdout
    _same_report(local_sim, sim)
    sweep = tmp_path / "sweep"
    _orbitfl(
        "experiment",
        "--config",
        str(QUICK),
        "--seeds",
        "0",
        "--executor",
        f"ray:{address}",
        "--report",
        str(sweep),
        env=env,
    )
    _same_report(local_sweep, sweep, seeds={"0"})
