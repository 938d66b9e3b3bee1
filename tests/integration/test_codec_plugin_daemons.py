"""A codec plug-in in a real federation: the ground (which decodes the updates) and the agents load
docs/codecs.md's absmax stage through the entry-point group; a ground without it refuses to start,
naming the stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.codec.plugin_wheel import absmax_site

pytestmark = pytest.mark.integration

RECIPE = "absmax:4 | zstd"


def _env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


def test_a_round_closes_with_a_plugin_codec(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    c = cluster
    site = absmax_site(tmp_path_factory.mktemp("plugin"))
    c.ground_config(rounds=1, min_updates=2, codec=RECIPE)
    for i, name in enumerate(("sat-0", "sat-1")):
        c.agent_config(name, i, 2)
    c.start("ground", "ground", "serve", "--config", str(c.root / "ground.toml"), env=_env(site))
    for name in ("sat-0", "sat-1"):
        c.start_agent(name, env=_env(site))
    c.wait("a round with absmax updates", lambda: len(c.rounds()) >= 1, 120)
    assert c.rounds()[0]["updates"] >= 2, c.rounds()
    assert c.stop() == {"ground": 0, "sat-0": 0, "sat-1": 0}


def test_a_ground_without_the_plugin_refuses_to_start(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=1, codec=RECIPE)
    p = c.start("ground", "ground", "serve", "--config", str(c.root / "ground.toml"), env=_env(None))
    assert p.wait(60) == 2
    lines = [x for x in c.log("ground").splitlines() if x.strip()]
    assert len(lines) == 1 and "absmax" in lines[0] and "Traceback" not in lines[0], lines
