"""`orbitfl demo` end to end: real processes, Curve keys, the default codec, report and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orbitfl.apps.demo import free_port

pytestmark = pytest.mark.integration


def test_demo_writes_a_report_and_a_plot(tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orbitfl.cli",
            "demo",
            "--agents",
            "2",
            "--rounds",
            "3",
            # The command-line contract other checks rely on: a strategy and one of its options.
            "--strategy",
            "fedadam",
            "--strategy-option",
            "server_lr=0.05",
            "--workdir",
            str(tmp_path / "work"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "round  agents  accuracy" in r.stdout
    rep = json.loads(report.read_text())
    assert [x["round"] for x in rep["rounds"]] == [1, 2, 3]
    for row in rep["rounds"]:
        assert set(row) >= {"round", "accuracy", "uplink_bytes", "float32_bytes"}
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0 < row["uplink_bytes"] < row["float32_bytes"], "the default codec must compress"
    assert rep["final_accuracy"] == rep["rounds"][-1]["accuracy"]
    assert rep["strategy"] == "fedadam" and rep["strategy_options"] == {"server_lr": 0.05}
    assert 'strategy = "fedadam"' in (tmp_path / "work" / "ground.toml").read_text()
    assert rep["exit_codes"] == {"ground": 0, "sat-0": 0, "sat-1": 0}
    png = report.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_demo_on_three_stations_converges(tmp_path: Path) -> None:
    """`orbitfl demo --stations 3` (issue 14): an aggregator, three station daemons and four agents
    that move between them, CurveZMQ end to end; every round gets all four updates, the model
    learns, and every process exits cleanly."""
    report = tmp_path / "report.json"
    r = subprocess.run(
        [
            *(sys.executable, "-m", "orbitfl.cli", "demo", "--stations", "3", "--rounds", "20"),
            *("--workdir", str(tmp_path / "work"), "--report", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(report.read_text())
    assert rep["stations"] == 3
    assert [x["round"] for x in rep["rounds"]] == list(range(1, 21))
    assert all(x["updates"] == 4 for x in rep["rounds"]), rep["rounds"]
    assert rep["accuracy_mean_last5"] > 0.85, rep["rounds"]
    assert rep["exit_codes"] == {
        name: 0 for name in ("aggregator", "station-0", "station-1", "station-2")
    } | {f"sat-{i}": 0 for i in range(4)}
    assert 0 < rep["uplink_bytes"] < rep["uplink_total_bytes"] < rep["float32_bytes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "0"], "--agents must be >= 1"),
        (["--codec", "topk:0.1 | nosuchstage"], "nosuchstage"),
        (["--strategy", "fedmagic"], "invalid choice: 'fedmagic'"),
        (["--strategy", "fedadam", "--strategy-option", "beta1=1.5"], "beta1 must be in [0, 1), got 1.5"),
        (["--strategy-option", "beta1"], "must be KEY=VALUE"),
    ],
)
def test_demo_refuses_bad_arguments_before_starting_anything(args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "demo", *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert message in r.stderr


def test_demo_help_lists_every_strategy() -> None:
    from orbitfl.ground.strategies import STRATEGIES

    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    listed = text.split("aggregation strategy (default fedavg):", 1)[1].split("--strategy-option")[0]
    assert sorted(n.strip() for n in listed.split(",")) == sorted(STRATEGIES)


def test_demo_with_emsfl_runs_the_mixture_of_experts(tmp_path: Path) -> None:
    """EMS-FL needs experts: with no --model the demo picks the zoo's moe for it (the mlp would be
    refused by the ground at start, in one line naming federation.strategy)."""
    report = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "demo", "--strategy", "emsfl", "--rounds", "2", "--agents", "2",
         "--insecure", "--report", str(report), "--timeout", "240"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["strategy"] == "emsfl" and len(rep["rounds"]) == 2


def test_a_strategy_the_model_cannot_serve_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "ground.toml"
    cfg.write_text(
        f'[ground]\nbind = "tcp://127.0.0.1:{free_port()}"\nstate_dir = "{tmp_path / "g"}"\ninsecure = true\n'
        '[federation]\nmodel = "mlp"\nstrategy = "emsfl"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(cfg)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "federation.strategy" in lines[0] and "Traceback" not in r.stderr, lines
