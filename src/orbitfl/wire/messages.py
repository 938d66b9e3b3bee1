"""The messages both daemons exchange: typed dataclasses with paired to_wire / from_wire.

Every frame is one msgpack map: ``v`` (protocol version), ``type``, ``id`` (globally unique:
``"<sender>:<counter>"``) and the type's own fields. ``decode`` treats the frame as hostile: it checks
the size before unpacking, unpacks with msgpack's length limits, refuses an unknown version or type,
and checks every field's type. docs/protocol.md describes each message and field.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

from orbitfl.wire.errors import Reason, WireError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({PROTOCOL_VERSION})
MAX_ID_LEN = 256
MAX_TEXT_LEN = 4096
# Every integer must fit a signed 64-bit SQLite INTEGER (and numpy's int64), so a store write or an
# array index never overflows on a value a peer chose.
MAX_INT = (1 << 63) - 1
# Free-form maps (HELLO.capabilities, TASK.hints) stay small, shallow and of plain values: they are
# stored as JSON and handed to strategies, so nesting or size chosen by a peer must not cost us.
MAX_FREE_DEPTH = 4
MAX_FREE_ITEMS = 4096  # HELLO.capabilities: stored in the registry on every HELLO
MAX_HINT_ITEMS = 1 << 16  # TASK.hints: e.g. EMS-FL's expert table, one entry per agent


@dataclass(frozen=True)
class Limits:
    """Bounds checked before and while unpacking, so a hostile frame cannot make us allocate."""

    max_frame_bytes: int = 64 << 20
    max_bin_len: int = 64 << 20
    max_str_len: int = 1 << 20
    max_array_len: int = 1 << 16
    max_map_len: int = 1 << 16


DEFAULT_LIMITS = Limits()


# --- field checkers: each returns the value or raises WireError(SCHEMA) naming the field ---------


def _get(d: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in d:
        raise WireError(Reason.SCHEMA, f"{kind}: missing field {key!r}", _ref(d))
    return d[key]


def _ref(d: Mapping[str, Any]) -> str | None:
    i = d.get("id")
    return i if isinstance(i, str) and len(i) <= MAX_ID_LEN else None


def _str(
    d: Mapping[str, Any], key: str, kind: str, *, optional: bool = False, max_len: int = MAX_TEXT_LEN
) -> Any:
    if optional and d.get(key) is None:
        return None
    v = _get(d, key, kind)
    if not isinstance(v, str) or len(v) > max_len:
        raise WireError(Reason.SCHEMA, f"{kind}.{key}: expected a string of at most {max_len} chars", _ref(d))
    return v


def _int(d: Mapping[str, Any], key: str, kind: str, *, optional: bool = False, minimum: int = 0) -> Any:
    if optional and d.get(key) is None:
        return None
    v = _get(d, key, kind)
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= MAX_INT:
        raise WireError(
            Reason.SCHEMA,
            f"{kind}.{key}: expected an integer in [{minimum}, 2**63-1], got {_short(v)}",
            _ref(d),
        )
    return v


def _short(v: Any) -> str:
    """A peer's value for a log line: repr, cut so a huge field cannot flood the log."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _float(d: Mapping[str, Any], key: str, kind: str, *, optional: bool = False) -> Any:
    if optional and d.get(key) is None:
        return None
    v = _get(d, key, kind)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
        raise WireError(Reason.SCHEMA, f"{kind}.{key}: expected a finite number, got {v!r}", _ref(d))
    return float(v)


def _bool(d: Mapping[str, Any], key: str, kind: str, *, default: bool = False) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise WireError(Reason.SCHEMA, f"{kind}.{key}: expected a boolean", _ref(d))
    return v


FINGERPRINT_LEN = 64


def _fingerprint(d: Mapping[str, Any], kind: str) -> str | None:
    """The optional ``model_fingerprint``: lowercase hex, 8..64 chars (orbitfl.models.zoo.fingerprint)."""
    v = _str(d, "model_fingerprint", kind, optional=True, max_len=FINGERPRINT_LEN)
    if v is not None and (len(v) < 8 or any(c not in "0123456789abcdef" for c in v)):
        raise WireError(
            Reason.SCHEMA, f"{kind}.model_fingerprint: expected 8 to 64 lowercase hex digits", _ref(d)
        )
    return v  # type: ignore[no-any-return]


def _map(d: Mapping[str, Any], key: str, kind: str, *, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return {}
    v = _get(d, key, kind)
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise WireError(Reason.SCHEMA, f"{kind}.{key}: expected a map with string keys", _ref(d))
    return v


def _free(d: Mapping[str, Any], key: str, kind: str, max_items: int = MAX_FREE_ITEMS) -> dict[str, Any]:
    """A free-form map: string keys, values None/bool/int/finite float/str/bin or lists and maps of
    them, at most MAX_FREE_DEPTH deep and ``max_items`` values in all."""
    m: dict[str, Any] = _map(d, key, kind, optional=True)
    budget = [max_items]

    def ok(v: Any, depth: int) -> bool:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_FREE_DEPTH:
            return False
        if v is None or isinstance(v, (bool, str, bytes)):
            return not isinstance(v, (str, bytes)) or len(v) <= MAX_TEXT_LEN
        if isinstance(v, int):
            return -MAX_INT - 1 <= v <= MAX_INT
        if isinstance(v, float):
            return v == v and v not in (float("inf"), float("-inf"))
        if isinstance(v, list):
            return all(ok(x, depth + 1) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and ok(x, depth + 1) for k, x in v.items())
        return False

    if not all(ok(v, 1) for v in m.values()):
        raise WireError(
            Reason.SCHEMA,
            f"{kind}.{key}: values must be plain (nil, bool, 64-bit int, finite float, str, bin, lists"
            f" and maps), at most {MAX_FREE_DEPTH} deep and {max_items} in all",
            _ref(d),
        )
    return m


def _bytes(d: Mapping[str, Any], key: str, kind: str, *, size: int | None = None) -> bytes:
    v = _get(d, key, kind)
    if not isinstance(v, bytes) or (size is not None and len(v) != size):
        want = f"{size} bytes of bin" if size is not None else "bin"
        raise WireError(Reason.SCHEMA, f"{kind}.{key}: expected {want}", _ref(d))
    return v


def _metrics(d: Mapping[str, Any], key: str, kind: str) -> dict[str, float]:
    m = _map(d, key, kind, optional=True)
    out: dict[str, float] = {}
    for k in m:
        out[k] = _float(m, k, f"{kind}.{key}")
    return out


# --- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    id: str

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_wire(self, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
        return {"v": version, "type": self.TYPE, "id": self.id, **self.fields()}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Message:
        raise NotImplementedError


HELLO_DIGEST_BYTES = 8


def _canonical(v: Any) -> Any:
    """``v`` with every map's keys in sorted order, so equal maps pack to equal bytes."""
    if isinstance(v, Mapping):
        return {k: _canonical(v[k]) for k in sorted(v)}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    return v


def hello_digest(software: str, capabilities: Mapping[str, Any], fingerprint: str | None) -> bytes:
    """What a short HELLO stands for: the first 8 bytes of SHA-256 over the full HELLO's
    ``software``, ``capabilities`` (but ``pending``, which changes every pass) and
    ``model_fingerprint``, keys sorted. Equal on every node for the same agent settings."""
    caps = {k: v for k, v in capabilities.items() if k != "pending"}
    blob = msgpack.packb([software, _canonical(caps), fingerprint], use_bin_type=True)
    return hashlib.sha256(b"orbitfl-hello/1\n" + blob).digest()[:HELLO_DIGEST_BYTES]


@dataclass(frozen=True)
class Hello(Message):
    """Agent -> ground on every link up: who I am and which model version I hold.

    The short form (``digest`` set) stands for a full HELLO the ground already took: it carries
    only ``model_version``, ``pending`` and the digest of the rest (``hello_digest``); the agent
    name is the sender part of ``id``. An agent says HELLO on every pass, so the full form's
    software string, capabilities and fingerprint would otherwise ride on every contact."""

    TYPE: ClassVar[str] = "HELLO"
    agent_id: str = ""
    software: str = ""
    model_version: int | None = None  # None: holds no global model yet
    capabilities: dict[str, Any] = field(default_factory=dict)
    # The model the agent trains (None: not known, e.g. an older agent); see TASK.model_fingerprint.
    model_fingerprint: str | None = None
    digest: bytes | None = None  # set: the short form; the ground looks the rest up by it

    def fields(self) -> dict[str, Any]:
        if self.digest is not None:
            out: dict[str, Any] = {"model_version": self.model_version, "digest": self.digest}
            if "pending" in self.capabilities:
                out["pending"] = self.capabilities["pending"]
            return out
        out = {
            "agent_id": self.agent_id,
            "software": self.software,
            "model_version": self.model_version,
            "capabilities": self.capabilities,
        }
        if self.model_fingerprint is not None:
            out["model_fingerprint"] = self.model_fingerprint
        return out

    def short(self) -> Hello:
        """This HELLO in the short form."""
        digest = hello_digest(self.software, self.capabilities, self.model_fingerprint)
        pending = {"pending": self.capabilities["pending"]} if "pending" in self.capabilities else {}
        return Hello(self.id, self.agent_id, "", self.model_version, pending, None, digest)

    def expanded(self, software: str, capabilities: Mapping[str, Any], fingerprint: str | None) -> Hello:
        """The full HELLO a short one stands for, given what its full form said before."""
        caps = {k: v for k, v in capabilities.items() if k != "pending"}
        caps.update(self.capabilities)  # this pass's ``pending``
        return Hello(self.id, self.agent_id, software, self.model_version, caps, fingerprint)

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Hello:
        k = cls.TYPE
        if "digest" in d:
            agent = mid.rpartition(":")[0]
            if not agent or ":" in agent:
                raise WireError(Reason.BAD_ID, f"HELLO id {mid!r}: the sender part names no agent", mid)
            pending = _int(d, "pending", k, optional=True)
            return cls(
                mid,
                agent,
                "",
                _int(d, "model_version", k, optional=True),
                {} if pending is None else {"pending": pending},
                None,
                _bytes(d, "digest", k, size=HELLO_DIGEST_BYTES),
            )
        agent = _str(d, "agent_id", k, max_len=128)
        if not agent or ":" in agent:
            raise WireError(Reason.SCHEMA, "HELLO.agent_id: must be non-empty and contain no ':'", mid)
        return cls(
            mid,
            agent,
            _str(d, "software", k),
            _int(d, "model_version", k, optional=True),
            _free(d, "capabilities", k),
            _fingerprint(d, k),
        )


@dataclass(frozen=True)
class ModelBlob:
    """A global model version, whole or as a lossless delta against a version the receiver holds.

    ``encoding`` is "full" (the tensors), "xor" (bitwise XOR of the tensors' bytes with the base
    version's, so the receiver rebuilds the exact bits) or "codec" (``steps``: for each version
    after ``base_version`` the codec-compressed delta the ground itself applied to make it, so the
    receiver adds the same decoded deltas and lands on the same bits). ``compression`` is "zstd" or
    "none" per tensor. ``sha256`` is the digest of the rebuilt model (see orbitfl.wire.model_codec),
    checked before the model is used.
    """

    version: int
    base_version: int | None
    encoding: str
    compression: str
    sha256: bytes
    tensors: dict[str, Any]  # name -> {"dtype", "shape", "data"} with data possibly compressed
    steps: list[dict[str, Any]] = field(default_factory=list)  # "codec": update payloads, oldest first

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": self.version,
            "base_version": self.base_version,
            "encoding": self.encoding,
            "compression": self.compression,
            "sha256": self.sha256,
            "tensors": self.tensors,
        }
        if self.encoding == "codec":
            d["steps"] = self.steps
        return d

    @classmethod
    def from_wire(cls, d: Any, where: str) -> ModelBlob:
        if not isinstance(d, dict):
            raise WireError(Reason.SCHEMA, f"{where}: expected a map")
        enc = _str(d, "encoding", where, max_len=16)
        comp = _str(d, "compression", where, max_len=16)
        if enc not in ("full", "xor", "codec"):
            raise WireError(Reason.SCHEMA, f"{where}.encoding: {enc!r} is not 'full', 'xor' or 'codec'")
        if comp not in ("zstd", "none"):
            raise WireError(Reason.SCHEMA, f"{where}.compression: {comp!r} is not 'zstd' or 'none'")
        base = _int(d, "base_version", where, optional=True)
        if enc in ("xor", "codec") and base is None:
            raise WireError(Reason.SCHEMA, f"{where}: a {enc} delta needs base_version")
        steps = d.get("steps", []) if enc == "codec" else []
        if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps) or len(steps) > 4096:
            raise WireError(Reason.SCHEMA, f"{where}.steps: expected a list of maps")
        if enc == "codec" and len(steps) != _int(d, "version", where) - base:
            raise WireError(Reason.SCHEMA, f"{where}.steps: one step per version after base_version")
        return cls(
            _int(d, "version", where),
            base,
            enc,
            comp,
            _bytes(d, "sha256", where, size=32),
            _map(d, "tensors", where, optional=enc == "codec"),
            steps,
        )


COMPACT_ID_BYTES = 8  # the recipe and layout ids of orbitfl.wire.compact


@dataclass(frozen=True)
class CompactOffer:
    """TASK.compact: the ground reads this task's UPDATE in the compact form (orbitfl.wire.compact)
    for the recipe and model layout with these ids. Absent: send the full form. An agent that
    computes other ids for the task's recipe or the model it holds sends the full form."""

    recipe_id: bytes
    layout_id: bytes
    # The newest compact form the ground reads (orbitfl.wire.compact.FORM); absent on the wire
    # means 1, what grounds read before forms were numbered.
    form: int = 1

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rid": self.recipe_id, "lid": self.layout_id}
        if self.form != 1:
            out["f"] = self.form
        return out

    @classmethod
    def from_wire(cls, d: Any, where: str) -> CompactOffer:
        if not isinstance(d, dict):
            raise WireError(Reason.SCHEMA, f"{where}: expected a map")
        form = d.get("f", 1)
        # A newer ground may offer a form this agent does not know: it sends the newest it does.
        if type(form) is not int or not 1 <= form <= 1 << 16:
            raise WireError(Reason.SCHEMA, f"{where}.f: expected a form number >= 1, got {form!r}")
        return cls(
            _bytes(d, "rid", where, size=COMPACT_ID_BYTES),
            _bytes(d, "lid", where, size=COMPACT_ID_BYTES),
            form,
        )


@dataclass(frozen=True)
class Task(Message):
    """Ground -> agent: train round ``round`` on top of global ``model_version``.

    ``model`` carries that version (whole or as a delta against the version the agent said it
    holds) unless the agent holds it already. ``recipe`` names the codec pipeline for the update;
    ``hints`` are strategy-specific (e.g. expert assignment). ``deadline_in`` is seconds left in
    the round when the task was sent (relative, because the two clocks are not shared).
    """

    TYPE: ClassVar[str] = "TASK"
    task_id: str = ""
    round: int = 0
    model_version: int = 0
    recipe: str = "fp32"
    hints: dict[str, Any] = field(default_factory=dict)
    deadline_in: float | None = None
    model: ModelBlob | None = None
    # The federation's model (names, shapes, dtypes, graph; not weights): an agent training another
    # model refuses the task instead of failing on the weights. None: not stated.
    model_fingerprint: str | None = None
    compact: CompactOffer | None = None  # None: the ground reads the full payload form only

    def fields(self) -> dict[str, Any]:
        out = {
            "task_id": self.task_id,
            "round": self.round,
            "model_version": self.model_version,
            "recipe": self.recipe,
            "hints": self.hints,
            "deadline_in": self.deadline_in,
            "model": None if self.model is None else self.model.to_wire(),
        }
        if self.model_fingerprint is not None:
            out["model_fingerprint"] = self.model_fingerprint
        if self.compact is not None:
            out["compact"] = self.compact.to_wire()
        return out

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Task:
        k = cls.TYPE
        model = d.get("model")
        compact = d.get("compact")
        return cls(
            mid,
            _str(d, "task_id", k, max_len=MAX_ID_LEN),
            _int(d, "round", k),
            _int(d, "model_version", k),
            _str(d, "recipe", k),
            _free(d, "hints", k, MAX_HINT_ITEMS),
            _float(d, "deadline_in", k, optional=True),
            None if model is None else ModelBlob.from_wire(model, "TASK.model"),
            _fingerprint(d, k),
            None if compact is None else CompactOffer.from_wire(compact, "TASK.compact"),
        )


@dataclass(frozen=True)
class Update(Message):
    """Agent -> ground: the result of a task. The message id is the update id the ground dedupes
    on, so a resend (after a lost ACK, a reboot, a cut contact) carries the same id.

    ``payload`` is the encoded tensors (orbitfl.wire.payload), in the full form or, when the TASK
    offered it, the compact one (orbitfl.wire.compact): validated by the codec when decoded.
    """

    TYPE: ClassVar[str] = "UPDATE"
    task_id: str = ""
    round: int = 0
    base_version: int = 0
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)

    # Leave task_id out of the frame when it is the ground's default name for the task,
    # task_id_for(round, sender); only for a ground whose TASK offered compact form >= 2 (an older
    # one refuses an UPDATE without it). Decoding sets it when the frame had none.
    omit_task_id: bool = False

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not (self.omit_task_id and self.task_id == task_id_for(self.round, id_sender(self.id))):
            out["task_id"] = self.task_id
        out.update(
            round=self.round,
            base_version=self.base_version,
            samples=self.samples,
            metrics=self.metrics,
            payload=self.payload,
        )
        return out

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Update:
        k = cls.TYPE
        samples = _int(d, "samples", k, minimum=1)
        round_ = _int(d, "round", k)
        omitted = "task_id" not in d
        return cls(
            mid,
            task_id_for(round_, id_sender(mid)) if omitted else _str(d, "task_id", k, max_len=MAX_ID_LEN),
            round_,
            _int(d, "base_version", k),
            samples,
            _metrics(d, "metrics", k),
            _map(d, "payload", k),
            omitted,
        )


@dataclass(frozen=True)
class Ack(Message):
    """Receipt for ``ref``. For an UPDATE it means: its contribution is durable on the ground.
    ``duplicate`` is set when ``ref`` had been accepted before (counted once)."""

    TYPE: ClassVar[str] = "ACK"
    ref: str = ""
    duplicate: bool = False

    def fields(self) -> dict[str, Any]:
        return {"ref": self.ref, "duplicate": self.duplicate}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Ack:
        return cls(mid, _str(d, "ref", cls.TYPE, max_len=MAX_ID_LEN), _bool(d, "duplicate", cls.TYPE))


@dataclass(frozen=True)
class Nack(Message):
    """Refusal of ``ref`` (None when the frame was too broken to read an id) with a reason code
    (orbitfl.wire.errors.Reason) and a human-readable text."""

    TYPE: ClassVar[str] = "NACK"
    ref: str | None = None
    reason: str = ""
    text: str = ""

    def fields(self) -> dict[str, Any]:
        return {"ref": self.ref, "reason": self.reason, "text": self.text[:MAX_TEXT_LEN]}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Nack:
        k = cls.TYPE
        return cls(
            mid,
            _str(d, "ref", k, optional=True, max_len=MAX_ID_LEN),
            _str(d, "reason", k, max_len=64),
            _str(d, "text", k),
        )


@dataclass(frozen=True)
class Model(Message):
    """Ground -> agent: a global model version outside a task (e.g. the final model)."""

    TYPE: ClassVar[str] = "MODEL"
    model: ModelBlob | None = None

    def fields(self) -> dict[str, Any]:
        assert self.model is not None
        return {"model": self.model.to_wire()}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Model:
        return cls(mid, ModelBlob.from_wire(_get(d, "model", cls.TYPE), "MODEL.model"))


@dataclass(frozen=True)
class Heartbeat(Message):
    """Either side, while linked: I am alive. Carries the agent's state for the ground's metrics."""

    TYPE: ClassVar[str] = "HEARTBEAT"
    model_version: int | None = None
    pending: int = 0  # agent: updates waiting in the outbox

    def fields(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "pending": self.pending}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Heartbeat:
        k = cls.TYPE
        return cls(mid, _int(d, "model_version", k, optional=True), _int(d, "pending", k, optional=True) or 0)


@dataclass(frozen=True)
class Bye(Message):
    """Either side: I am leaving (shutdown, end of training). Pending work is kept."""

    TYPE: ClassVar[str] = "BYE"
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Bye:
        return cls(mid, _str(d, "reason", cls.TYPE))


@dataclass(frozen=True)
class Chunk(Message):
    """One piece of a large frame. ``transfer`` names the transfer (the id of the frame it carries,
    so a resend in a later contact continues the same transfer); ``total`` and ``sha256`` describe
    the whole frame and are the same in every chunk."""

    TYPE: ClassVar[str] = "CHUNK"
    transfer: str = ""
    offset: int = 0
    total: int = 0
    sha256: bytes = b""
    data: bytes = b""
    # False: the receiver need not answer this chunk when it takes it in order. The sender asks
    # (True, or the key absent, as older senders send it) on the last chunk of every burst, so the
    # ack clock keeps running at one CHUNK_ACK per burst instead of one per chunk.
    ack: bool = True

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transfer": self.transfer,
            "offset": self.offset,
            "total": self.total,
            "sha256": self.sha256,
            "data": self.data,
        }
        if not self.ack:
            out["ack"] = False
        return out

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Chunk:
        k = cls.TYPE
        c = cls(
            mid,
            _str(d, "transfer", k, max_len=MAX_ID_LEN),
            _int(d, "offset", k),
            _int(d, "total", k, minimum=1),
            _bytes(d, "sha256", k, size=32),
            _bytes(d, "data", k),
            _bool(d, "ack", k, default=True),
        )
        if c.offset + len(c.data) > c.total:
            raise WireError(
                Reason.SCHEMA, f"CHUNK: offset {c.offset} + {len(c.data)} bytes exceeds total {c.total}", mid
            )
        return c


@dataclass(frozen=True)
class ChunkAck(Message):
    """Receiver of a transfer -> sender: I hold every byte before ``next_offset``; send from there.
    Also the answer to a chunk that does not fit (gap, unknown transfer): where to restart."""

    TYPE: ClassVar[str] = "CHUNK_ACK"
    transfer: str = ""
    next_offset: int = 0

    def fields(self) -> dict[str, Any]:
        return {"transfer": self.transfer, "next_offset": self.next_offset}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> ChunkAck:
        k = cls.TYPE
        return cls(mid, _str(d, "transfer", k, max_len=MAX_ID_LEN), _int(d, "next_offset", k))


# --- the ground network: stations <-> aggregator (docs/protocol.md, "Stations") ---------------------


@dataclass(frozen=True)
class Relay(Message):
    """Station -> aggregator: an agent's UPDATE the station admitted, stored and ACKed.

    ``frame`` is the agent's UPDATE frame byte for byte (the aggregator decodes and dedupes it on
    its own id, so one update relayed by two stations counts once); ``agent_id`` is the name the
    station authenticated it as. The RELAY's own id is the station's outbox id (its ACK names it)."""

    TYPE: ClassVar[str] = "RELAY"
    agent_id: str = ""
    frame: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "frame": self.frame}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Relay:
        k = cls.TYPE
        agent = _str(d, "agent_id", k, max_len=128)
        if not agent or ":" in agent:
            raise WireError(Reason.SCHEMA, "RELAY.agent_id: must be non-empty and contain no ':'", mid)
        return cls(mid, agent, _bytes(d, "frame", k))


@dataclass(frozen=True)
class State(Message):
    """Aggregator -> station: what the station serves agents until the next STATE.

    The round open at the aggregator, its base ``model_version`` (``model`` carries it, whole or as
    a delta from the version the station said it holds, unless it holds it already), the round's
    ``recipe`` and task ``hints``, seconds left in the round (``deadline_in``), the staleness bound,
    the federation's model fingerprint, and ``done`` once the federation finished (then agents get
    the final model instead of tasks)."""

    TYPE: ClassVar[str] = "STATE"
    round: int = 0
    model_version: int = 0
    recipe: str = "fp32"
    hints: dict[str, Any] = field(default_factory=dict)
    deadline_in: float | None = None
    max_staleness: int = 1
    done: bool = False
    model: ModelBlob | None = None
    model_fingerprint: str | None = None

    def fields(self) -> dict[str, Any]:
        out = {
            "model": None if self.model is None else self.model.to_wire(),
            "round": self.round,
            "model_version": self.model_version,
            "recipe": self.recipe,
            "hints": self.hints,
            "deadline_in": self.deadline_in,
            "max_staleness": self.max_staleness,
            "done": self.done,
        }
        if self.model_fingerprint is not None:
            out["model_fingerprint"] = self.model_fingerprint
        return out

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> State:
        k = cls.TYPE
        model = d.get("model")
        return cls(
            mid,
            _int(d, "round", k),
            _int(d, "model_version", k),
            _str(d, "recipe", k),
            _free(d, "hints", k, MAX_HINT_ITEMS),
            _float(d, "deadline_in", k, optional=True),
            _int(d, "max_staleness", k),
            _bool(d, "done", k),
            None if model is None else ModelBlob.from_wire(model, "STATE.model"),
            _fingerprint(d, k),
        )


Z85_KEY_LEN = 40  # a CurveZMQ public key in Z85


@dataclass(frozen=True)
class Allow(Message):
    """Aggregator -> station: the federation's agent allow-list, whole. ``keys`` maps each agent
    name to its Z85 Curve public key; ``None`` means the federation runs without keys (insecure,
    development only) and admits any name. ``version`` names the list (a digest), so a station
    says in its HELLO which one it holds and gets a new one only when it changed."""

    TYPE: ClassVar[str] = "ALLOW"
    version: str = ""
    keys: dict[str, str] | None = None

    def fields(self) -> dict[str, Any]:
        return {"version": self.version, "keys": self.keys}

    @classmethod
    def from_fields(cls, mid: str, d: Mapping[str, Any]) -> Allow:
        k = cls.TYPE
        version = _str(d, "version", k, max_len=128)
        raw = d.get("keys")
        if raw is None:
            return cls(mid, version, None)
        keys = _map(d, "keys", k)
        for name, key in keys.items():
            if not name or len(name) > 128 or ":" in name:
                raise WireError(Reason.SCHEMA, f"ALLOW.keys: bad agent name {_short(name)}", mid)
            if not isinstance(key, str) or len(key) != Z85_KEY_LEN:
                raise WireError(Reason.SCHEMA, f"ALLOW.keys.{name}: expected a 40-char Z85 key", mid)
        return cls(mid, version, dict(keys))


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (Hello, Task, Update, Ack, Nack, Model, Heartbeat, Bye, Chunk, ChunkAck, Relay, State, Allow)
}

M = TypeVar("M", bound=Message)


def encode(msg: Message) -> bytes:
    if isinstance(msg, Update):
        return pack_f32(msg.to_wire())
    out: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    return out


_PK = msgpack.Packer(use_bin_type=True)
_PK32 = msgpack.Packer(use_bin_type=True, use_single_float=True)
_F32 = struct.Struct(">f")


def _is_f32(v: float) -> bool:
    if not math.isfinite(v):
        return False  # a float32 NaN could not carry a float64 NaN's payload bits
    try:
        return bool(_F32.unpack(_F32.pack(v))[0] == v)
    except OverflowError:
        return False


def pack_f32(obj: Any) -> bytes:
    """msgpack of ``obj`` as ``packb(obj, use_bin_type=True)`` gives it, except that each float that
    is exactly a float32 value goes as a msgpack float32 (5 bytes, not 9). Any msgpack reader reads
    the same values back, so this is no change of protocol: the UPDATE's codec metadata (the sign
    stage's scale, quantizer ranges: computed in float32) and metrics shrink by 4 bytes a value.
    Bins are not copied until the one final join."""
    out: list[bytes] = []
    _pack_into(obj, out)
    return b"".join(out)


def _pack_into(v: Any, out: list[bytes]) -> None:
    t = type(v)
    if t is float:
        out.append(_PK32.pack(v) if _is_f32(v) else _PK.pack(v))
    elif t is bytes:
        n = len(v)
        out.append(
            b"\xc4" + bytes((n,))
            if n < 0x100
            else struct.pack(">BH", 0xC5, n)
            if n < 0x10000
            else struct.pack(">BI", 0xC6, n)
        )
        out.append(v)
    elif isinstance(v, dict):
        out.append(_PK.pack_map_header(len(v)))
        for k, x in v.items():
            _pack_into(k, out)
            _pack_into(x, out)
    elif isinstance(v, (list, tuple)):
        out.append(_PK.pack_array_header(len(v)))
        for x in v:
            _pack_into(x, out)
    else:
        out.append(_PK.pack(v))


def encode_around(msg: Message, key: str, value: bytes) -> tuple[bytes, bytes]:
    """``msg`` encoded as (head, tail) with ``key``'s value left out, so ``head + value + tail``
    is a valid frame when ``value`` is that field already msgpack-encoded. Lets one encoded model
    go to many agents inside their own messages without a copy per agent. ``key`` comes first,
    so every message of one type shares the bytes up to the end of ``value``."""
    d = msg.to_wire()
    if key not in d:
        raise KeyError(key)
    d.pop(key)
    pk = msgpack.Packer(use_bin_type=True)
    head: bytes = pk.pack_map_header(len(d) + 1) + pk.pack(key)
    tail = b"".join(pk.pack(k) + pk.pack(v) for k, v in d.items())
    return head, tail


def peek_id(frame: bytes) -> str | None:
    """Best effort: the id of a frame that failed to decode, so its NACK can name it. Skips other
    fields without materialising them, so an oversize field does not hide the id."""
    try:
        u = msgpack.Unpacker(
            raw=False, max_bin_len=0, max_str_len=MAX_ID_LEN, max_array_len=0, max_map_len=0, max_ext_len=0
        )
        u.feed(frame)
        for _ in range(min(u.read_map_header(), 64)):
            key = u.unpack()
            if key == "id":
                value = u.unpack()
                return value if isinstance(value, str) else None
            u.skip()
    except Exception:  # garbage: no id to name
        return None
    return None


def decode(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one untrusted frame, or raise WireError with the reason to NACK it."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError(Reason.MALFORMED, f"frame must be bytes, got {type(frame).__name__}")
    if len(frame) > limits.max_frame_bytes:
        raise WireError(
            Reason.OVERSIZE, f"frame of {len(frame)} bytes exceeds the limit of {limits.max_frame_bytes}"
        )
    try:
        d = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_bin_len,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except ValueError as exc:
        # msgpack reports a field over its limit as ValueError too; name it as oversize when it is.
        text = str(exc)
        reason = Reason.OVERSIZE if "exceeds max" in text else Reason.MALFORMED
        raise WireError(reason, f"cannot unpack frame: {text}", peek_id(bytes(frame))) from None
    except Exception as exc:  # msgpack raises several unrelated types on garbage; none may escape
        raise WireError(Reason.MALFORMED, f"cannot unpack frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(d, dict):
        raise WireError(Reason.MALFORMED, f"a frame is a msgpack map, got {type(d).__name__}")
    mid = _ref(d)
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v not in SUPPORTED_VERSIONS:
        raise WireError(
            Reason.BAD_VERSION,
            f"protocol version {v!r} is not supported; this side speaks {sorted(SUPPORTED_VERSIONS)}",
            mid,
        )
    kind = d.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(Reason.UNKNOWN_TYPE, f"message type {kind!r} is unknown", mid)
    if mid is None:
        raise WireError(Reason.SCHEMA, f"{kind}: missing or bad 'id'")
    return cls.from_fields(mid, d)


def decode_as(frame: bytes, cls: type[M], limits: Limits = DEFAULT_LIMITS) -> M:
    msg = decode(frame, limits)
    if not isinstance(msg, cls):
        raise WireError(Reason.UNKNOWN_TYPE, f"expected {cls.TYPE}, got {msg.TYPE}", msg.id)
    return msg


def make_id(sender: str, counter: int) -> str:
    return f"{sender}:{counter}"


def task_id_for(round_: int, agent: str) -> str:
    """The id the ground gives agent ``agent``'s task for round ``round_``; an UPDATE for it may
    leave its task_id out (UPDATE, compact form 2)."""
    return f"r{round_}/{agent}"


def id_sender(mid: str) -> str:
    """The sender part of a message id ("agent-7:42" -> "agent-7")."""
    return mid.rsplit(":", 1)[0]
