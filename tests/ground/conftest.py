"""Helpers to drive a GroundMachine on a real store in tmp_path with hand-made agent frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import Action, MessageReceived, Send
from orbitfl.wire import Ack, Hello, Nack, Update, decode, encode
from orbitfl.wire.payload import encode_payload

MODEL = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}


def hello(agent: str, n: int = 1, version: int | None = None) -> bytes:
    return encode(Hello(f"{agent}:h{n}", agent, "test", version, {}))


def update_frame(
    agent: str,
    n: int,
    value: float = 1.0,
    samples: int = 10,
    base: int = 0,
    rnd: int = 1,
    tensors: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
) -> bytes:
    t = tensors if tensors is not None else {k: np.full(v.shape, value, np.float32) for k, v in MODEL.items()}
    p = payload if payload is not None else encode_payload("fp32", t)
    return encode(Update(f"{agent}:{n}", f"r{rnd}/{agent}", rnd, base, samples, {"loss": 1.0}, p))


def sent(actions: list[Action], peer: str | None = None) -> list[Any]:
    return [decode(a.frame) for a in actions if isinstance(a, Send) and (peer is None or a.peer == peer)]


def acks(actions: list[Action]) -> list[Ack]:
    return [m for m in sent(actions) if isinstance(m, Ack)]


def nacks(actions: list[Action]) -> list[Nack]:
    return [m for m in sent(actions) if isinstance(m, Nack)]


class Ground:
    """A ground machine over a store directory that can be 'crashed' and reopened."""

    def __init__(self, root: Path, **cfg: Any) -> None:
        self.root = root
        self.cfg = GroundConfig(**cfg)
        self.m = GroundMachine(GroundStore(root), self.cfg, MODEL)

    def reopen(self) -> GroundMachine:
        self.m.store.close()
        self.m = GroundMachine(GroundStore(self.root), self.cfg, MODEL)
        return self.m

    def rx(self, peer: str, frame: bytes, now: float = 0.0) -> list[Action]:
        return self.m.handle(MessageReceived(peer, frame), now)


class Kit:
    """What the tests use (pytest's importlib mode does not let test files import conftest)."""

    MODEL = MODEL
    hello = staticmethod(hello)
    update_frame = staticmethod(update_frame)
    sent = staticmethod(sent)
    acks = staticmethod(acks)
    nacks = staticmethod(nacks)

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def ground(self, **cfg: Any) -> Ground:
        cfg.setdefault("min_updates", 100)
        return Ground(self.tmp_path / "ground", **cfg)


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)
