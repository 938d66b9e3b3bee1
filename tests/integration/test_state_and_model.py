"""Real daemons on the user's own model and data, and on state that must agree with the config:
one-line refusals with exit code 2, a state directory that refuses another model until reset, and
a mismatched agent refused at HELLO (both logs say why). A finished federation that goes on with
more rounds is in test_own_model_doc.py (it reuses that test's running agents)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orbitfl.agent.daemon import Board, artifacts_dir
from orbitfl.ground.daemon import GroundDaemon
from orbitfl.models.manifest import read_manifest
from orbitfl.runtime.config import ConfigError, load_agent, load_ground

from .conftest import Cluster, _toml

pytestmark = pytest.mark.integration


def own_model(path: Path, features: int = 6, classes: int = 3, op: str = "Relu") -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (features, classes)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"], name="mm"),
        helper.make_node("Add", ["z", "b"], ["a"], name="add"),
        helper.make_node(op, ["a"], ["out"], name="act_0"),
    ]
    graph = helper.make_graph(
        nodes,
        "own",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def agent_toml(c: Cluster, name: str, **sections: dict[str, Any]) -> Path:
    p = c.root / f"{name}.toml"
    c.key(name)
    agent = {
        "name": name,
        "ground": c.endpoint,
        "state_dir": str(c.root / name),
        "secret_key": str(c.keys / f"{name}.key_secret"),
        "ground_key": str(c.keys / "ground.key"),
        "retransmit_s": 2.0,
    }
    p.write_text(_toml({"agent": agent, **sections}))
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("shape", ["x has shape (40, 5)", "expects samples of shape (6,)"]),
        ("labels", ["y has label 7", "3 outputs"]),
        ("op", ["unsupported op Elu in node 'act_0'"]),
    ],
)
def test_agent_refuses_what_it_cannot_train_in_one_line(
    cluster: Cluster, case: str, expect: list[str]
) -> None:
    c = cluster
    rng = np.random.default_rng(0)
    features = 5 if case == "shape" else 6
    y = rng.integers(0, 8 if case == "labels" else 3, 40)
    y[0] = 7 if case == "labels" else y[0]
    np.savez(c.root / "data.npz", x=rng.normal(size=(40, features)).astype(np.float32), y=y)
    own_model(c.root / "own.onnx", op="Elu" if case == "op" else "Relu")
    cfg = agent_toml(c, "b1", data={"dataset": "data.npz"}, train={"model": "own.onnx"})
    if case == "shape":  # the whole command once: exit 2 and one line
        r = run_cli("agent", "run", "--config", str(cfg))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        message = lines[0]
    else:  # the same refusal, without paying for another process start
        with pytest.raises(ConfigError) as err:
            Board(load_agent(cfg))
        message = str(err.value)
        assert "\n" not in message
    for e in expect:
        assert e in message


def test_changed_model_against_old_state_is_refused_until_reset(cluster: Cluster) -> None:
    c = cluster
    own_model(c.root / "own.onnx")
    c.key("b0")  # makes the allow-list folder the ground reads
    cfg = c.ground_config(model="mlp")
    GroundDaemon(load_ground(cfg)).close()  # a federation of the zoo's mlp in state_dir
    cfg.write_text(cfg.read_text().replace('model = "mlp"', f'model = "{c.root / "own.onnx"}"'))
    r = run_cli("ground", "serve", "--config", str(cfg))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and str(c.root / "ground") in line and "--reset-state" in line, line
    assert "with model" in line
    fresh = GroundDaemon(load_ground(cfg), reset=True)
    try:
        assert fresh.machine.version == 0 and fresh.machine.round == 1
        assert set(fresh.machine.global_model) == {"w", "b"}  # the new model's parameters
    finally:
        fresh.close()
    cfg.write_text(cfg.read_text().replace("[federation]", '[federation]\ncodec = "quant:8"'))
    with pytest.raises(ConfigError, match=r"with codec 'fp32', but the config says 'quant:8'"):
        GroundDaemon(load_ground(cfg))


def test_mismatched_agent_is_refused_with_one_line_on_both_sides(cluster: Cluster) -> None:
    c = cluster
    rng = np.random.default_rng(0)
    np.savez(c.root / "data.npz", x=rng.normal(size=(60, 6)).astype(np.float32), y=rng.integers(0, 3, 60))
    own_model(c.root / "own.onnx")
    own_model(c.root / "other.onnx", classes=4)
    c.ground_config(model=str(c.root / "own.onnx"))
    cfg = agent_toml(c, "b1", data={"dataset": "data.npz"}, train={"model": "other.onnx"})
    c.start_ground()
    c.start("b1", "agent", "run", "--config", str(cfg))
    c.wait("the agent to be refused", lambda: "model mismatch" in c.log("b1"), 60)
    c.wait("the ground to log it", lambda: "model_mismatch" in c.log("ground"), 10)
    ground = [x for x in c.log("ground").splitlines() if "model_mismatch" in x]
    agent = [x for x in c.log("b1").splitlines() if "model mismatch" in x]
    assert len(ground) == 1 and "'b1'" in ground[0] and "federation.model" in ground[0]
    assert len(agent) == 1 and "ERROR" in agent[0] and "not asking the ground again" in agent[0]
    assert "holding global model" not in c.log("b1")  # it never installed the wrong model
    m = c.metrics()
    assert m.get('orbitfl_updates_refused_total{reason="model_mismatch"}') == 1.0
    assert c.procs["b1"].poll() is None  # it keeps running (and keeps its outbox)


def test_ground_refuses_an_untrainable_model_and_data_that_does_not_fit(cluster: Cluster) -> None:
    c = cluster
    c.key("b0")
    own_model(c.root / "elu.onnx", op="Elu")
    cfg = c.ground_config(model=str(c.root / "elu.onnx"))
    with pytest.raises(ConfigError, match=r"federation.model: unsupported op Elu in node 'act_0'"):
        GroundDaemon(load_ground(cfg))
    own_model(c.root / "own.onnx")
    rng = np.random.default_rng(0)
    np.savez(c.root / "wide.npz", x=rng.normal(size=(20, 9)).astype(np.float32), y=rng.integers(0, 3, 20))
    cfg = c.ground_config(model=str(c.root / "own.onnx"), eval_dataset=str(c.root / "wide.npz"))
    with pytest.raises(ConfigError, match=r"federation.eval_dataset: .*wide.npz: x has shape \(20, 9\)"):
        GroundDaemon(load_ground(cfg))
    assert not (c.root / "ground").exists()  # refused before any state was made


def test_agent_rebuilds_when_the_model_file_changes_and_trains_only_what_it_is_told(cluster: Cluster) -> None:
    c = cluster
    rng = np.random.default_rng(0)
    np.savez(c.root / "data.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 3, 40))
    own_model(c.root / "own.onnx")
    cfg = agent_toml(c, "b1", data={"dataset": "data.npz"}, train={"model": "own.onnx"})
    first = Board(load_agent(cfg))
    own_model(c.root / "own.onnx", classes=4)  # same file name, another model
    second = Board(load_agent(cfg))
    assert first.fingerprint and second.fingerprint and first.fingerprint != second.fingerprint
    assert read_manifest(artifacts_dir(load_agent(cfg))).parameters["b"] == (4,)

    cfg = agent_toml(c, "b1", data={"dataset": "data.npz"}, train={"model": "own.onnx", "trainable": ["b"]})
    board = Board(load_agent(cfg))
    w = {"w": rng.normal(0, 0.5, (6, 4)).astype(np.float32), "b": np.full(4, 0.5, np.float32)}
    done = board.learner.train(w, epochs=1, batch_size=8, seed=0)
    assert not done.delta["w"].any() and done.delta["b"].any()  # the frozen weights stay put
