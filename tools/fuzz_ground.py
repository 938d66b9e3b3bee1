#!/usr/bin/env python3
"""Fuzz a real ``orbitfl ground serve`` over CurveZMQ, as an allow-listed client.

Frames: byte mutations of recorded valid frames (HELLO, UPDATE, CHUNKs of an UPDATE, HEARTBEAT,
BYE, ACK, NACK, CHUNK_ACK), structured ones (a field of a valid message replaced by a wrong type or
an extreme value, deleted, or a field added; nesting depth; huge declared lengths; chunk offsets,
overlaps and totals), multipart messages and empty frames. tests/fuzz/ runs it with hypothesis on
top; this command runs any number of frames:

    .venv/bin/python tools/fuzz_ground.py --frames 1000000            # prints the figures as JSON
    .venv/bin/python tools/fuzz_ground.py --frames 20000 --agent      # then a real agent's round

Pass: 0 daemon deaths, no traceback in the daemon's log, RSS flat after warm-up, the global model
finite and unchanged by refused frames (and, with --agent, a real agent completes a round).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth

from orbitfl.apps.demo import free_port
from orbitfl.ground.store import unpack_tensors
from orbitfl.runtime.keys import new_keypair
from orbitfl.runtime.observe import parse_text
from orbitfl.transfer import Outbound
from orbitfl.wire import Ack, Bye, ChunkAck, Heartbeat, Hello, Nack, Task, Update, decode, encode
from orbitfl.wire.compact import Layout, compact_payload
from orbitfl.wire.model_codec import decode_model
from orbitfl.wire.payload import encode_payload, new_codec_state

RECIPE = "topk:0.25+ef | quant:8 | zstd"  # a pipeline recipe: the codec's decode path is fuzzed too
AGENT = "fuzzer"
WARMUP_FRAMES = 3000

# Values a field should never hold: every wrong type, and the extremes of the right ones.
EXTREMES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.0,
    -0.0,
    1e308,
    -1e308,
    3e38,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "x",
    "fz",
    "fz:",
    f"{AGENT}:",
    f"{AGENT}:1",
    "\x00" * 16,
    "é" * 300,
    "y" * 5000,
    b"",
    b"\x00" * 32,
    b"\xff" * 4096,
    [],
    [0],
    [2**63] * 3,
    list(range(300)),
    {},
    {"a": 1},
    {"dtype": "float32", "shape": [2**40], "data": b""},
    {"dtype": "object", "shape": [1], "data": b"\x00" * 8},
    {"codec": "pipeline", "recipe": RECIPE, "body": {"v": 1, "chains": [], "tensors": 3.0}},
]


def _deep(depth: int, kind: str) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


EXTREMES += [_deep(8, "list"), _deep(8, "map"), _deep(120, "list"), _deep(120, "map")]

# msgpack headers that declare huge lengths with no bytes behind them.
HUGE_HEADERS = [
    b"\xdf\xff\xff\xff\xff",  # map32 of 2**32-1 pairs
    b"\xdd\xff\xff\xff\xff",  # array32
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc9\x7f\xff\xff\xff\x01",  # ext32
    b"\xc1",  # never used
]


# --- the daemon under test --------------------------------------------------------------------------


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Ground:
    """A real ground daemon in ``root`` with Curve keys; ``fuzzer`` is an allow-listed client."""

    root: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def state(self) -> Path:
        return self.root / "ground"

    @property
    def log(self) -> Path:
        return self.root / "ground.log"

    def start(self) -> None:
        allowed = self.root / "allowed"
        if not (self.keys / "ground.key").exists():
            new_keypair("ground", self.keys)
            for name in (AGENT, "agent"):
                new_keypair(name, self.keys, allow_dir=allowed)
        cfg = self.root / "ground.toml"
        cfg.write_text(
            _toml(
                {
                    "ground": {
                        "bind": self.endpoint,
                        "state_dir": str(self.state),
                        "secret_key": str(self.keys / "ground.key_secret"),
                        "allowed_keys": str(allowed),
                        "metrics": f"127.0.0.1:{self.metrics_port}",
                    },
                    # Two updates close a round: the fuzzer's (if one got through) and a real agent's
                    # at the end; no deadline falls inside a run.
                    "federation": {
                        "rounds": 2,
                        "min_updates": 2,
                        "round_deadline_s": 36000.0,
                        "codec": RECIPE,
                        "retransmit_s": 5.0,
                    },
                    "link": {
                        "heartbeat_s": 0.5,
                        "liveness": 6,
                        "max_msg_size": 4 << 20,
                        "chunk_bytes": 1 << 20,
                    },
                }
            )
        )
        out = open(self.log, "ab")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
        )
        out.close()
        end = time.monotonic() + 60
        while time.monotonic() < end and "serving on" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the ground exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}"
                )
            time.sleep(0.1)
        if "serving on" not in self.log_text():
            raise RuntimeError(f"the ground did not start serving within 60 s:\n{self.log_text()[-2000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {k: v for k, v in parse_text(text).items() if k.startswith("orbitfl_")}

    def model_files(self) -> dict[str, str]:
        """Model file name -> sha256 of its bytes."""
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((self.state / "models").glob("v*"))
        }

    def model_finite(self) -> bool:
        for p in (self.state / "models").glob("v*.msgpack"):
            tensors, _ = unpack_tensors(p.read_bytes())
            if not all(np.isfinite(t).all() for t in tensors.values()):
                return False
        return True

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# --- the client -------------------------------------------------------------------------------------


class Client:
    """A raw DEALER with the fuzzer's Curve key: sends anything, multipart included."""

    def __init__(self, ground: Ground, name: str = AGENT) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        pub, sec = zmq.auth.load_certificate(str(ground.keys / f"{name}.key_secret"))
        server, _ = zmq.auth.load_certificate(str(ground.keys / "ground.key"))
        self.sock.curve_secretkey = sec
        self.sock.curve_publickey = pub
        self.sock.curve_serverkey = server
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(ground.endpoint)
        self.replies = 0
        self.reasons: dict[str, int] = {}

    def send(self, frame: bytes | list[bytes]) -> None:
        if isinstance(frame, list):
            self.sock.send_multipart(frame)
        else:
            self.sock.send(frame)

    def drain(self, timeout_ms: int = 0) -> list[bytes]:
        got = []
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            got.append(b"".join(bytes(p) for p in self.sock.recv_multipart()))
            timeout_ms = 0
        for f in got:
            self.replies += 1
            if not f:
                continue
            try:
                m = decode(f)
            except ValueError:
                continue
            if isinstance(m, Nack):
                self.reasons[m.reason] = self.reasons.get(m.reason, 0) + 1
        return got

    def wait_for(self, want: type, timeout_s: float = 20.0) -> Any:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for f in self.drain(100):
                try:
                    m = decode(f)
                except ValueError:
                    continue
                if isinstance(m, want):
                    return m
        raise TimeoutError(f"no {want.__name__} within {timeout_s} s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --- frames -----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Valid frames recorded against the daemon's task, and their maps for structured mutation."""

    frames: list[bytes]
    maps: list[dict[str, Any]]
    update_id: str
    task: Task


def record(client: Client) -> Corpus:
    hello = Hello(f"{AGENT}:b1.1", AGENT, "fuzz/1", None, {"pending": 1})
    client.send(encode(hello))
    task = client.wait_for(Task)
    assert task.model is not None
    weights = decode_model(task.model)
    rng = np.random.default_rng(0)
    delta = {k: (1e-3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in weights.items()}
    payload = encode_payload(RECIPE, delta, new_codec_state(RECIPE))
    up = Update(f"{AGENT}:900000", task.task_id, task.round, task.model_version, 100, {"loss": 0.5}, payload)
    fp32 = Update(
        f"{AGENT}:900001",
        task.task_id,
        task.round,
        task.model_version,
        100,
        {},
        encode_payload("fp32", delta),
    )
    # The compact form of the same update, as an agent sends it when the task offers it.
    compact = compact_payload(payload, RECIPE, Layout.of_tensors(weights))
    assert compact is not None and task.compact is not None
    small = Update(
        f"{AGENT}:900002", task.task_id, task.round, task.model_version, 100, {"loss": 0.5}, compact
    )
    msgs = [
        hello,
        up,
        fp32,
        small,
        Heartbeat(f"{AGENT}:b1.2", task.model_version, 1),
        Bye(f"{AGENT}:b1.3", "fuzz"),
        Ack(f"{AGENT}:b1.4", "ground:b1.1"),
        Nack(f"{AGENT}:b1.5", "ground:task.r1/fuzzer.fromnone", "checksum", "x"),
        ChunkAck(f"{AGENT}:b1.6", "ground:task.r1/fuzzer.fromnone", 0),
    ]
    frames = [encode(m) for m in msgs]
    big = encode(up)
    ids = iter(range(10**9))
    chunks = Outbound(up.id, big, chunk_bytes=max(256, len(big) // 5), window=16).next_chunks(
        lambda: f"{AGENT}:b1.{100 + next(ids)}"
    )
    frames += chunks
    maps = [msgpack.unpackb(f, raw=False) for f in frames]
    return Corpus(frames, maps, up.id, task)


def mutate(frame: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(frame)
    kind = int(rng.integers(7))
    if not b:
        return bytes(rng.integers(0, 256, size=8, dtype=np.uint8).tobytes())
    i = int(rng.integers(0, len(b)))
    if kind == 0:  # flip a few bytes
        for j in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
            b[int(j)] = int(rng.integers(256))
    elif kind == 1:  # truncate
        b = b[:i]
    elif kind == 2:  # splice garbage in
        b[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
    elif kind == 3:  # overwrite a run
        b[i : i + 16] = rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()
    elif kind == 4:  # a header that declares a huge length
        b[i:i] = HUGE_HEADERS[int(rng.integers(len(HUGE_HEADERS)))]
    elif kind == 5:  # duplicate a region
        j = int(rng.integers(i, len(b) + 1))
        b[j:j] = b[i : min(j, i + 64)]
    else:  # flip one bit
        b[i] ^= 1 << int(rng.integers(8))
    return bytes(b)


def _paths(d: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Every key path into the nested maps and lists of a message (bin data is a leaf)."""
    if depth > 6:
        return
    if isinstance(d, dict):
        for k, v in d.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k), depth + 1)
    elif isinstance(d, list):
        for i, v in enumerate(d[:4]):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i), depth + 1)


def _copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_copy(v) for v in d]
    return d


def set_path(
    base: dict[str, Any], path: tuple[Any, ...], value: Any, *, delete: bool = False
) -> dict[str, Any]:
    d = _copy(base)
    cur: Any = d
    for k in path[:-1]:
        cur = cur[k]
    if delete and isinstance(cur, dict):
        cur.pop(path[-1], None)
    else:
        cur[path[-1]] = value
    return d


def pack(d: Any) -> bytes:
    try:
        return bytes(msgpack.packb(d, use_bin_type=True))
    except (ValueError, TypeError, OverflowError):  # 2**64 and beyond: msgpack cannot say it
        return bytes(msgpack.packb(repr(d)[:64], use_bin_type=True))


def structured(corpus: Corpus, rng: np.random.Generator) -> bytes | list[bytes]:
    """A valid message with one thing wrong, a chunk at a hostile offset, or a multipart/empty frame."""
    kind = int(rng.integers(20))
    if kind == 0:
        return b""
    if kind == 1:
        n = int(rng.integers(2, 5))
        return [corpus.frames[int(rng.integers(len(corpus.frames)))] for _ in range(n)]
    base = corpus.maps[int(rng.integers(len(corpus.maps)))]
    if kind <= 4 and base.get("type") == "CHUNK":  # offsets, overlaps, totals, digests
        c = _copy(base)
        c["id"] = f"{AGENT}:b2.{int(rng.integers(10**6))}"
        choice = int(rng.integers(5))
        if choice == 0:
            c["offset"] = int(rng.integers(0, c["total"] + 2))
        elif choice == 1:
            c["total"] = int(rng.choice([1, 2**31, 2**40, 2**62]))
        elif choice == 2:
            c["sha256"] = bytes(rng.integers(0, 256, size=32, dtype=np.uint8).tobytes())
        elif choice == 3:
            c["transfer"] = f"{AGENT}:{int(rng.integers(10**6))}"
        else:
            c["offset"] = max(0, c["offset"] - int(rng.integers(1, 300)))  # overlap what is held
        return pack(c)
    paths = list(_paths(base))
    path = paths[int(rng.integers(len(paths)))]
    r = int(rng.integers(10))
    if r == 0:
        return pack(set_path(base, path, None, delete=True))
    if r == 1:
        return pack({**base, f"extra{int(rng.integers(100))}": EXTREMES[int(rng.integers(len(EXTREMES)))]})
    return pack(set_path(base, path, EXTREMES[int(rng.integers(len(EXTREMES)))]))


def frames(corpus: Corpus, rng: np.random.Generator) -> Iterator[bytes | list[bytes]]:
    while True:
        if rng.random() < 0.5:
            yield mutate(corpus.frames[int(rng.integers(len(corpus.frames)))], rng)
        else:
            yield structured(corpus, rng)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Result:
    frames: int = 0
    seconds: float = 0.0
    deaths: int = 0
    rss_warm_mib: float = 0.0
    rss_end_mib: float = 0.0
    replies: int = 0
    nacks: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0
    model_unchanged: bool = True
    model_finite: bool = True
    corpus: Corpus | None = None

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "seconds": round(self.seconds, 1),
            "frames_per_s": round(self.frames_per_s),
            "deaths": self.deaths,
            "rss_warm_mib": round(self.rss_warm_mib, 1),
            "rss_end_mib": round(self.rss_end_mib, 1),
            "replies": self.replies,
            "nacks": dict(sorted(self.nacks.items())),
            "tracebacks": self.tracebacks,
            "model_unchanged": self.model_unchanged,
            "model_finite": self.model_finite,
        }


def send_all(
    ground: Ground,
    client: Client,
    source: Iterator[bytes | list[bytes]],
    n: int,
    *,
    batch: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Send ``n`` frames in batches, draining the replies so neither side's queue grows; returns
    (frames sent, RSS at warm-up). Stops early if the daemon dies."""
    sent = 0
    warm = 0.0
    while sent < n:
        for _ in range(min(batch, n - sent)):
            client.send(next(source))
            sent += 1
        # Let the daemon catch up (most frames get an answer) so neither queue grows without bound.
        end = time.monotonic() + 0.5
        target = client.replies + batch // 4
        while time.monotonic() < end:
            if not client.drain(20) and client.replies >= target:
                break
        if not ground.alive():
            break
        if not warm and sent >= WARMUP_FRAMES:
            warm = ground.rss_mib()
        if progress is not None and sent % (batch * 256) < batch:
            progress(sent)
    client.drain(200)
    return sent, warm


def fuzz(ground: Ground, n: int, seed: int = 0, progress: Callable[[int], None] | None = None) -> Result:
    """Fuzz a started ground with ``n`` frames from one client; the checks are in the result."""
    client = Client(ground)
    try:
        corpus = record(client)
        models_before = ground.model_files()
        t0 = time.monotonic()
        sent, warm = send_all(
            ground, client, frames(corpus, np.random.default_rng(seed)), n, progress=progress
        )
        res = Result(frames=sent, seconds=time.monotonic() - t0)
        res.deaths = 0 if ground.alive() else 1
        res.rss_warm_mib = warm or ground.rss_mib()
        res.rss_end_mib = ground.rss_mib() if ground.alive() else float("nan")
        res.replies = client.replies
        res.nacks = dict(client.reasons)
        res.tracebacks = ground.log_text().count("Traceback")
        res.model_unchanged = ground.model_files() == models_before
        res.model_finite = ground.model_finite()
        res.corpus = corpus
        return res
    finally:
        client.close()


def agent_round(ground: Ground, corpus: Corpus, timeout_s: float = 120.0) -> bool:
    """A real agent process joins; True once round 1 closed with its update (the fuzzer's own valid
    update makes the second, unless a mutated one of its got in already)."""
    client = Client(ground)
    try:
        client.send(corpus.frames[1])  # the recorded valid UPDATE: ACKed, or 'stale' if one got in
        client.drain(2000)
    finally:
        client.close()
    cfg = ground.root / "agent.toml"
    cfg.write_text(
        _toml(
            {
                "agent": {
                    "name": "agent",
                    "ground": ground.endpoint,
                    "state_dir": str(ground.root / "agent"),
                    "secret_key": str(ground.keys / "agent.key_secret"),
                    "ground_key": str(ground.keys / "ground.key"),
                    "retransmit_s": 2.0,
                },
                "data": {"partition": 0, "num_partitions": 4, "seed": 0},
                "train": {"max_batches": 4},
                "link": {"heartbeat_s": 0.5, "liveness": 6, "backoff_initial_s": 0.1, "backoff_max_s": 1.0},
            }
        )
    )
    log = open(ground.root / "agent.log", "ab")  # noqa: SIM115 - kept open by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitfl.cli", "agent", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
    )
    log.close()
    rounds = ground.state / "rounds.jsonl"
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if rounds.exists() and rounds.read_text().strip():
                row = json.loads(rounds.read_text().splitlines()[0])
                return bool(row["round"] == 1 and row["updates"] == 2)
            if proc.poll() is not None or not ground.alive():
                return False
            time.sleep(0.2)
        return False
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--agent", action="store_true", help="then a real agent completes a round")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.frames < 1:
        print("fuzz_ground: --frames must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="orbitfl-fuzz-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ground = Ground(root)
        ground.start()
        try:
            t0 = time.monotonic()

            def progress(sent: int) -> None:
                rate = sent / max(time.monotonic() - t0, 1e-9)
                print(
                    f"  {sent} frames, {rate:.0f}/s, RSS {ground.rss_mib():.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )

            res = fuzz(ground, args.frames, args.seed, progress)
            out = res.as_dict()
            if args.agent and ground.alive() and res.corpus is not None:
                out["agent_round"] = agent_round(ground, res.corpus)
        finally:
            code = ground.stop()
        out["ground_exit"] = code
        print(json.dumps(out, indent=1))
        ok = res.deaths == 0 and res.tracebacks == 0 and res.model_unchanged and res.model_finite
        return 0 if ok and out.get("agent_round", True) else 1


if __name__ == "__main__":
    sys.exit(main())
