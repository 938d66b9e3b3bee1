"""What the ground admits: every semantic check on an agent's frame, and the poisoning guards.

The wire module checks structure (types, lengths, integer ranges, tensor encodings); this module
checks meaning, against what the ground knows: the id belongs to the sending agent and has a
numeric suffix, an update answers a task this agent was given (its round, its recipe), its
``samples`` stay within what the agent registered and the configured maximum, and its delta's
norm stays within a bound set by the model's scale and the recent accepted updates. It also
refuses an aggregate that would make the global model non-finite. No sockets, no clock: the ground
machine calls it, so the simulator runs the same checks.

The norm bound and streaming accumulation: strategies fold each update in as it arrives, so the
median of the *current* round is not known when an update must be admitted or refused. The bound
is therefore the smaller of ``norm_model_ratio × max(‖w‖, norm_floor_rms × √n)`` (the model's
scale; the floor keeps a zero-initialised model usable) and, once ``median_min`` norms are known,
``norm_median_ratio × median`` of the last ``median_window`` accepted update norms (across
rounds). Accepted updates only enter that window, so a poisoner cannot raise the bound by sending
refused updates, and each accepted one can raise it by at most the ratio. The window is kept in the
store's meta table when a round closes and rebuilt from the open round's log on recovery.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.codec.inputs import RAW_RECIPES
from orbitfl.wire.compact import COMPACT, ids_of, recipe_id
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import MAX_INT, Hello, Message, Update

# An UPDATE's id suffix is the outbox counter (the ground dedupes on it); other agent messages use
# "b<boot>.<n>", and any non-empty token is taken there (docs/protocol.md).
_UPDATE_SUFFIX = re.compile(r"[0-9]{1,19}")
_OTHER_SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
NORMS_META = "admission.norms"


@dataclass(frozen=True)
class Guards:
    """The poisoning guards (config section ``[admission]``; docs/protocol.md, "Admission")."""

    max_samples: int = 1_000_000  # no update weighs more than this many samples
    norm_model_ratio: float = 10.0  # ||delta|| <= ratio * max(||w||, norm_floor_rms * sqrt(n))
    norm_floor_rms: float = 1.0
    norm_median_ratio: float = 10.0  # ||delta|| <= ratio * median of recent accepted norms
    median_window: int = 64
    median_min: int = 8  # the median bound applies once this many norms are known
    refuse_non_finite_model: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_samples <= MAX_INT:
            raise ValueError(f"max_samples must be in [1, 2**63-1], got {self.max_samples}")
        for key in ("norm_model_ratio", "norm_floor_rms", "norm_median_ratio"):
            v = getattr(self, key)
            if not (v >= 0 and math.isfinite(v)):  # 0 turns the bound off
                raise ValueError(f"{key} must be a finite number >= 0 (0: off), got {v}")
        if self.median_window < 1 or self.median_min < 1:
            raise ValueError("median_window and median_min must be >= 1")


def delta_norm(tensors: Mapping[str, npt.NDArray[Any]]) -> float:
    """The L2 norm of an update over all its tensors. A float32 dot product needs no temporary and
    overflows to inf only for norms beyond 1e19, which every bound refuses anyway."""
    total = 0.0
    for a in tensors.values():
        flat = a.reshape(-1)
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)
        with np.errstate(over="ignore"):  # an overflow is an inf norm, refused by every bound
            total += float(np.dot(flat, flat))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def _check_suffix(mid: str, sender: str, pattern: re.Pattern[str], what: str) -> None:
    head, sep, suffix = mid.rpartition(":")
    if not sep or head != sender or pattern.fullmatch(suffix) is None:
        raise WireError(Reason.BAD_ID, f"{what} id {mid!r} is not '{sender}:<n>'", mid)


class Admission:
    """The ground's admission checks, one instance per machine."""

    def __init__(self, guards: Guards, model: Mapping[str, npt.NDArray[Any]]) -> None:
        self.guards = guards
        self.norms: deque[float] = deque(maxlen=guards.median_window)
        self.set_model(model)

    # --- ids and registration ---------------------------------------------------------------------

    def check_hello(self, msg: Hello, peer: str, bind_to_peer: bool) -> int | None:
        """Refuse a HELLO whose id or name is not the agent's; return the samples it registered."""
        _check_suffix(msg.id, msg.agent_id, _OTHER_SUFFIX, "HELLO")
        if bind_to_peer and msg.agent_id != peer:
            raise WireError(
                Reason.BAD_ID, f"HELLO agent_id {msg.agent_id!r} is not this peer's name {peer!r}", msg.id
            )
        cap = msg.capabilities.get("max_samples")
        if cap is None:
            return None
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise WireError(Reason.SCHEMA, "HELLO.capabilities.max_samples must be an int >= 1", msg.id)
        return min(cap, self.guards.max_samples)

    def check_id(self, msg: Message, agent: str) -> None:
        """Any agent message: its id is '<agent>:<suffix>' (UPDATE: a decimal counter)."""
        if isinstance(msg, Update):
            _check_suffix(msg.id, agent, _UPDATE_SUFFIX, "UPDATE")
        else:
            _check_suffix(msg.id, agent, _OTHER_SUFFIX, msg.TYPE)

    # --- updates ----------------------------------------------------------------------------------

    def check_update(
        self,
        msg: Update,
        agent: str,
        task: tuple[str, int, float | None] | None,
        recipe: str,
        registered_samples: int | None,
    ) -> None:
        """Before decoding: the task, round, recipe and samples. ``task`` is the store's
        (agent, round, expires_at) for ``msg.task_id``."""
        if task is None or task[0] != agent:
            raise WireError(
                Reason.UNKNOWN_TASK, f"task {msg.task_id!r} was not given to agent {agent!r}", msg.id
            )
        if msg.round != task[1]:
            raise WireError(
                Reason.SCHEMA, f"round {msg.round} is not task {msg.task_id!r}'s round {task[1]}", msg.id
            )
        codec = msg.payload.get("codec")
        sent = "fp32" if codec == "fp32" else msg.payload.get("recipe") if codec == "pipeline" else None
        if codec == COMPACT:
            rid = ids_of(msg.payload)
            sent = recipe if rid == recipe_id(recipe) else f"recipe id {_hex(rid)}"
        want_raw = recipe in RAW_RECIPES
        raw_ok = codec == "fp32" or (codec == COMPACT and sent == recipe)
        if (want_raw and not raw_ok) or (not want_raw and sent != recipe):
            raise WireError(
                Reason.BAD_PAYLOAD,
                f"payload encoded with {sent!r}, the task's recipe is {recipe!r}",
                msg.id,
            )
        cap = self.guards.max_samples if registered_samples is None else registered_samples
        if msg.samples > cap:
            why = "registered by the agent" if registered_samples is not None else "admission.max_samples"
            raise WireError(Reason.SCHEMA, f"samples {msg.samples} exceeds {cap} ({why})", msg.id)

    def norm_bound(self) -> float:
        g = self.guards
        bound = math.inf
        if g.norm_model_ratio > 0:
            bound = g.norm_model_ratio * max(self.model_norm, g.norm_floor_rms * math.sqrt(self.size))
        if g.norm_median_ratio > 0 and len(self.norms) >= g.median_min:
            bound = min(bound, g.norm_median_ratio * float(np.median(np.fromiter(self.norms, float))))
        return bound

    def check_delta(self, msg: Update, delta: Mapping[str, npt.NDArray[Any]]) -> float:
        """After decoding (values known finite): the norm bound. Returns the norm, for ``accepted``."""
        norm = delta_norm(delta)
        bound = self.norm_bound()
        if not norm <= bound:
            raise WireError(
                Reason.NORM_BOUND, f"update norm {norm:.4g} exceeds the admission bound {bound:.4g}", msg.id
            )
        return norm

    def accepted(self, norm: float) -> None:
        self.norms.append(norm)

    # --- the model --------------------------------------------------------------------------------

    def set_model(self, model: Mapping[str, npt.NDArray[Any]]) -> None:
        self.model_norm = delta_norm(model)
        self.size = sum(int(np.size(v)) for v in model.values())

    def aggregate_refusal(self, new: Mapping[str, npt.NDArray[Any]]) -> str | None:
        """Why a round's aggregate must not be installed (None: it may)."""
        if not self.guards.refuse_non_finite_model:
            return None
        for name, a in new.items():
            if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
                return f"tensor {name!r} of the aggregate holds NaN or Inf"
        return None

    # --- persistence of the norm window ------------------------------------------------------------

    def dump_norms(self) -> str:
        return json.dumps(list(self.norms))

    def load_norms(self, text: str | None, replayed: Iterable[float] = ()) -> None:
        self.norms.clear()
        try:
            saved = json.loads(text) if text else []
        except ValueError:
            saved = []
        for v in [*(saved if isinstance(saved, list) else []), *replayed]:
            if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0:
                self.norms.append(float(v))


def _hex(v: object) -> str:
    """A peer's id field for a refusal text: hex when it is bytes, else its (short) repr."""
    return v[:16].hex() if isinstance(v, bytes) else repr(v)[:40]
