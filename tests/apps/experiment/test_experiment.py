"""``orbitfl experiment`` and ``orbitfl simulate`` from the command line: the table, the plots,
and clear refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from orbitfl.apps.experiment.report import COLUMNS
from orbitfl.cli import main

REPO = Path(__file__).resolve().parents[3]
QUICK = REPO / "experiments" / "quick.toml"


def test_quick_config_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert main(["experiment", "--config", str(QUICK), "--report", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert set(COLUMNS) <= set(rows[0])
    for col in (
        "codec",
        "strategy",
        "dataset",
        "final_accuracy",
        "uplink_bytes",
        "downlink_bytes",
        "ratio_vs_float32",
        "sim_time_to_target",
    ):
        assert col in rows[0]
    by = {r["name"]: r for r in rows}
    assert set(by) == {"fp32-fedavg", "topk-ef-q4"}
    assert float(by["fp32-fedavg"]["ratio_vs_float32"]) == pytest.approx(1.0)
    assert float(by["topk-ef-q4"]["ratio_vs_float32"]) > 10
    assert float(by["fp32-fedavg"]["final_accuracy"]) > 0.5
    data = json.loads((out / "results.json").read_text())
    series = data["runs"][0]["series"]
    assert len(series) == int(rows[0]["rounds"]) >= 2
    ups = [s["uplink_update_bytes"] for s in series]
    assert ups == sorted(ups) and ups[0] > 0
    png = out / "accuracy_digits_dirichlet-0.5.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.csv").read_text().startswith("name,dataset,partition,seeds")
    assert "[2/2] topk-ef-q4" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_plans(config: Path) -> None:
    """A shipped config that no longer parses (a renamed key, a stage or strategy gone) fails here,
    not half an hour into someone's sweep."""
    from orbitfl.apps.experiment.sweep import plan
    from orbitfl.apps.sim.cli import load_toml

    p = plan(load_toml(str(config)), str(config))
    assert p.runs or p.skipped
    assert p.baseline is None or any(r.name == p.baseline for r in p.runs) or p.skipped


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_splits_differing_only_in_alpha_are_separate_experiments(tmp_path: Path) -> None:
    """Two Dirichlet splits of one data set (alpha 0.3 and 1.0) each get their own rows, plot and
    float32 baseline: a gap or ratio is never taken against the other split's run."""
    cfg = _write(
        tmp_path,
        """
[experiment]
seeds = [0]
baseline = "fp32"
[base]
sats = 3
planes = 1
orbits = 4
epochs = 1
seconds_per_epoch = 60.0
stations = ["svalbard:78.23:15.39:5"]
[[datasets]]
dataset = "digits"
partition = "dirichlet"
alpha = 0.3
[[datasets]]
dataset = "digits"
partition = "dirichlet"
alpha = 1.0
[[recipes]]
name = "fp32"
codec = "fp32"
[[recipes]]
name = "fp16"
codec = "fp16"
""",
    )
    out = tmp_path / "r"
    assert main(["experiment", "--config", str(cfg), "--report", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    by = {(r["name"], r["partition"]): r for r in rows}
    assert set(by) == {(n, p) for n in ("fp32", "fp16") for p in ("dirichlet-0.3", "dirichlet-1")}
    assert by[("fp32", "dirichlet-0.3")]["final_accuracy"] != by[("fp32", "dirichlet-1")]["final_accuracy"]
    for part in ("dirichlet-0.3", "dirichlet-1"):
        base, half = by[("fp32", part)], by[("fp16", part)]
        assert float(base["accuracy_gap_points"]) == 0.0
        want = float(base["uplink_bytes"]) / float(half["uplink_bytes"])
        assert float(half["x_vs_fp32_run"]) == pytest.approx(want, rel=1e-5)
        assert (out / f"accuracy_digits_{part}.png").is_file()
    summary = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert sorted((s["name"], s["partition"], s["seeds"]) for s in summary) == sorted(
        (n, p, "1") for n in ("fp32", "fp16") for p in ("dirichlet-0.3", "dirichlet-1")
    )
    # a rerun reuses every stored run and labels it the same way
    assert main(["experiment", "--config", str(cfg), "--report", str(out)]) == 0
    again = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [(r["name"], r["partition"]) for r in again] == [(r["name"], r["partition"]) for r in rows]


def test_unavailable_strategy_is_named_or_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORBITFL_DATA_DIR", str(tmp_path / "no-data"))  # MNIST not installed here
    cfg = _write(
        tmp_path,
        """
[experiment]
seeds = [0]
[base]
sats = 2
planes = 1
orbits = 3
stations = ["s:78:15:5"]
[[recipes]]
name = "async"
strategy = "fedbuff-not-here"
[[recipes]]
name = "mnist-less"
[[datasets]]
dataset = "mnist"
[[datasets]]
dataset = "digits"
partition = "iid"
""",
    )
    assert main(["experiment", "--config", str(cfg), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'fedbuff-not-here' is not available" in err and "fedavg" in err
    assert (
        main(["experiment", "--config", str(cfg), "--report", str(tmp_path / "r"), "--skip-unavailable"]) == 0
    )
    out = capsys.readouterr().out
    assert "MNIST is not installed" in out and "orbitfl data mnist" in out
    assert "skipped" in out
    rows = list(csv.DictReader((tmp_path / "r" / "results.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["mnist-less"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[experiment]\nseeds=[0]\n", "no [[recipes]]"),
        ("[exp]\n", "unknown section"),
        ("[experiment]\nbogus=1\n[[recipes]]\nname='a'\n", "unknown key"),
        ("[[recipes]]\nname='a'\nsatts=3\n", "unknown key"),
        ("[[recipes]]\nname='a'\n[[recipes]]\nname='a'\n", "unique"),
        ("[experiment]\nseeds='0'\n[[recipes]]\nname='a'\n", "seeds"),
        ("[experiment]\nbaseline='z'\n[[recipes]]\nname='a'\n", "baseline"),
        ("[[recipes]]\nname='a'\ncodec='nope:1'\n", "codec 'nope:1'"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_experiment_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    cfg = _write(tmp_path, text)
    assert main(["experiment", "--config", str(cfg), "--report", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_simulate_prints_rounds_and_writes_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "simulate",
            "--sats",
            "3",
            "--planes",
            "1",
            "--orbits",
            "6",
            "--stations",
            "sv:78.23:15.39:5",
            "--partition",
            "iid",
            "--report",
            str(tmp_path / "r"),
            "--windows-out",
            str(tmp_path / "w.csv"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "round    1" in out and "done:" in out
    assert (tmp_path / "r" / "results.csv").is_file()
    assert (tmp_path / "w.csv").read_text().startswith("satellite,station,start_s,end_s,rate_bps")
    assert main(["simulate", "--partition", "nope"]) == 2
    assert "partition" in capsys.readouterr().err
    assert main(["simulate", "--strategy", "nope", "--orbits", "1"]) == 2
    assert "available" in capsys.readouterr().err


def test_simulate_on_tles_with_sgp4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sgp4")
    tle = tmp_path / "sats.tle"
    tle.write_text(
        "ISS (ZARYA)\n"
        "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927\n"
        "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537\n"
    )
    rc = main(
        [
            "simulate",
            "--tle",
            str(tle),
            "--orbits",
            "32",
            "--rounds",
            "2",
            "--stations",
            "toulouse:43.6:1.44:10",
            "--partition",
            "iid",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 satellites" in out and "round    2" in out
    assert main(["simulate", "--tle", str(tmp_path / "missing.tle")]) == 2
    assert "cannot read TLE file" in capsys.readouterr().err
