"""docs/own-model.md, run as written: its scripts make an ONNX model and an .npz the project has
never seen, its configs start a real ground and two real agents, and the federated model must
reach the accuracy the same model and trainer reach centrally on all the data (same epoch budget)
minus 2 points. Then, as the doc says, more rounds continue the finished federation."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from orbitfl.apps.demo import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"
DAEMONS = ("orbitfl ground serve", "orbitfl agent run")
DOC_PORT, DOC_METRICS = "47110", "47111"


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, file name or "", body) of each fenced block with a language."""
    return [
        (m.group(1), m.group(2).strip(), m.group(3))
        for m in re.finditer(r"^```(\w+)([^\n]*)\n(.*?)^```", text, re.S | re.M)
    ]


def command(line: str) -> list[str]:
    words = line.split()
    exe = {"python": [sys.executable], "orbitfl": [sys.executable, "-m", "orbitfl.cli"]}
    return [*exe[words[0]], *words[1:]] if words[0] in exe else words


def test_walkthrough_federates_to_central_accuracy(tmp_path: Path) -> None:
    port, metrics = str(free_port()), str(free_port())
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    daemons: list[tuple[subprocess.Popen[bytes], Path]] = []
    outputs: list[str] = []
    try:
        for lang, name, body in blocks(DOC.read_text()):
            if name:  # a file the reader saves, e.g. make_model.py or ground.toml
                (tmp_path / name).write_text(body.replace(DOC_PORT, port).replace(DOC_METRICS, metrics))
                continue
            if lang != "sh":
                continue
            for line in body.strip().splitlines():
                if line.startswith(DAEMONS):
                    log = tmp_path / f"daemon-{len(daemons)}.log"
                    with open(log, "wb") as f:
                        p = subprocess.Popen(
                            command(line), cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=env
                        )
                    daemons.append((p, log))
                    continue
                if daemons:
                    wait_finished(tmp_path, daemons)
                r = subprocess.run(command(line), cwd=tmp_path, capture_output=True, text=True, env=env)
                assert r.returncode == 0, f"{line}: {r.stderr}"
                outputs.append(r.stdout)
        assert len(daemons) == 3
        ground_log = daemons[0][1].read_text()
        assert ground_log.count("federation finished: 15 rounds") == 1
        assert "model_mismatch" not in ground_log
        assert scrape(metrics).get("orbitfl_federation_finished") == 1.0

        # As the doc says: raise rounds and restart the ground; the agents carry on.
        ground, log = daemons[0]
        ground.send_signal(signal.SIGTERM)
        assert ground.wait(30) == 0
        cfg = tmp_path / "ground.toml"
        cfg.write_text(cfg.read_text().replace("rounds = 15", "rounds = 16"))
        with open(log, "ab") as f:
            again = subprocess.Popen(
                command("orbitfl ground serve --config ground.toml"),
                cwd=tmp_path,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
            )
        daemons[0] = (again, log)
        wait_finished(tmp_path, daemons, rounds=16)
        assert "continuing the federation after 15 rounds" in log.read_text()
        end = time.monotonic() + 10
        while scrape(metrics).get("orbitfl_federation_finished") != 1.0 and time.monotonic() < end:
            time.sleep(0.2)
        assert scrape(metrics).get("orbitfl_federation_finished") == 1.0
    finally:
        for p, _ in daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p, _ in daemons]
    assert codes == [0, 0, 0]
    last = json.loads(outputs[-1])  # the doc's `tail -n 1 .../rounds.jsonl`, after round 15
    assert last["round"] == 15
    assert (tmp_path / "state" / "board-0" / "model.onnx").is_file()

    central = central_accuracy(tmp_path, epochs=15 * 2)
    print(f"federated {last['accuracy']:.4f}, central {central:.4f}")
    assert last["accuracy"] >= central - 0.02


def scrape(port: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        k: float(v) for k, _, v in (x.rpartition(" ") for x in text.splitlines() if x.startswith("orbitfl_"))
    }


def wait_finished(root: Path, daemons: list[tuple[subprocess.Popen[bytes], Path]], rounds: int = 15) -> None:
    end = time.monotonic() + 120
    rows = root / "state" / "ground" / "rounds.jsonl"
    while time.monotonic() < end:
        if rows.exists() and len(rows.read_text().splitlines()) >= rounds:
            return
        for p, log in daemons:
            assert p.poll() is None, f"daemon exited with {p.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    logs = "\n".join(log.read_text()[-2000:] for _, log in daemons)
    raise AssertionError(f"the federation did not finish in 120 s:\n{logs}")


def central_accuracy(root: Path, epochs: int) -> float:
    """The same ONNX model, trainer and settings (adamw, lr, batch 32) on all the training data."""
    from orbitfl.agent.backends import open_trainer
    from orbitfl.agent.learner import Learner
    from orbitfl.data.user_data import load_source
    from orbitfl.ground.daemon import Evaluator
    from orbitfl.models import zoo
    from orbitfl.models.artifacts import build_artifacts

    spec = zoo.load_user_model(root / "rings.onnx")
    build_artifacts(spec, root / "central")
    data = load_source(str(root / "rings.npz"))
    learner = Learner(open_trainer(root / "central", learning_rate=0.01), data.x_train, data.y_train)
    init = zoo.get_weights(spec.model)
    done = learner.train(init, epochs=epochs, batch_size=32, seed=0)
    trained = {k: (init[k] + done.delta[k]).astype(np.float32) for k in init}
    return Evaluator(spec, str(root / "rings.npz"), 0).accuracy(trained)
