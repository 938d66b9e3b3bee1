"""Events into and actions out of the federation state machines.

The machines (orbitfl.ground.machine, orbitfl.agent.machine) own no socket and read no clock:
``machine.handle(event, now) -> list[Action]``. The daemons turn ZeroMQ traffic and real time into
events and carry out the actions; the tests and the simulator do the same with a virtual clock.
Peers are named by the link's routing identity (a string); the agent's only peer is ``GROUND``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from orbitfl.wire.messages import Task

GROUND = "ground"


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReceived:
    """A frame arrived from ``peer`` (untrusted bytes: the machine decodes and checks them)."""

    peer: str
    frame: bytes


@dataclass(frozen=True)
class Tick:
    """Time passed. Machines use it for deadlines, heartbeats and retransmits."""


@dataclass(frozen=True)
class PeerSilent:
    """Ground: the link lost ``peer`` (heartbeat liveness ran out). Its pending work is kept."""

    peer: str


@dataclass(frozen=True)
class LinkUp:
    """Agent: a contact window opened (the link is connected).

    ``budget_bytes``: what this contact can carry up, when the platform knows it (a predicted pass
    times the radio's rate; the simulator knows it exactly). The agent then sends only what fits
    whole (chunks of an upload, a whole update) and keeps the rest for the next contact, so no frame
    is cut by the end of the window. None: unknown, send as the window and acks allow."""

    budget_bytes: int | None = None


@dataclass(frozen=True)
class LinkDown:
    """Agent: the contact window closed; in-flight transfers pause where they are."""


@dataclass(frozen=True)
class TrainingDone:
    """Agent: the trainer finished ``task_id``. ``delta`` is w_local - w_base per tensor.

    ``budget_bytes``: the most the encoded update may take (e.g. what the next contact window can
    carry); adaptive recipes (``alq``) size the update to it, others are refused over it.
    ``curvature``: name -> positive loss-curvature estimate of the same shape as ``delta[name]``
    (sqrt of Adam's second moment + eps), which loss-aware recipes (``laq``, ``alq``) need. The
    machine checks both before encoding (``check_encode_inputs``)."""

    task_id: str
    delta: dict[str, npt.NDArray[Any]]
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    budget_bytes: int | None = None
    curvature: Mapping[str, npt.NDArray[Any]] | None = None


@dataclass(frozen=True)
class TrainingFailed:
    """Agent: the trainer could not run ``task_id``; the machine drops the task and logs why."""

    task_id: str
    error: str


@dataclass(frozen=True)
class UpstreamUp:
    """Station: the link to the aggregator is connected."""


@dataclass(frozen=True)
class UpstreamDown:
    """Station: the link to the aggregator is lost; relays pause where they are."""


@dataclass(frozen=True)
class UpstreamReceived:
    """Station: a frame arrived from the aggregator (untrusted bytes, like any other)."""

    frame: bytes


Event = (
    MessageReceived
    | Tick
    | PeerSilent
    | LinkUp
    | LinkDown
    | TrainingDone
    | TrainingFailed
    | UpstreamUp
    | UpstreamDown
    | UpstreamReceived
)


# --- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``frame`` to ``peer`` (agent side: ``GROUND``)."""

    peer: str
    frame: bytes


@dataclass(frozen=True)
class Log:
    """A log line: ``level`` is a logging level name ("INFO", "WARNING", ...)."""

    level: str
    text: str
    # Lines with the same key are rate-limited by the daemon (e.g. one peer's refusals for one
    # reason), so a hostile or broken peer cannot fill the disk with them. None: always logged.
    key: str | None = None


@dataclass(frozen=True)
class Count:
    """Increment a counter, e.g. Count("updates_refused", (("reason", "non_finite"),))."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    n: int = 1


@dataclass(frozen=True)
class Gauge:
    """Set a gauge, e.g. Gauge("model_version", 3)."""

    name: str
    value: float


@dataclass(frozen=True)
class StartTraining:
    """Agent: train ``task`` starting from ``weights`` (the global model of ``task.model_version``);
    answer with TrainingDone / TrainingFailed carrying ``task.task_id``. The weights are the
    machine's own (often read-only views of received bytes): copy before changing them."""

    task: Task
    weights: dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class ApplyModel:
    """Agent: a new global model is held (already durable in the agent's store): install it for
    onboard inference (e.g. export .tflite). The weights are read-only; copy to change them."""

    version: int
    weights: dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class RoundClosed:
    """Ground: round ``round`` closed and produced global ``version`` (durable), for reports."""

    round: int
    version: int
    updates: int
    samples: int
    uplink_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SendUpstream:
    """Station: send ``frame`` to the aggregator (lost while the link is down; the machine resends)."""

    frame: bytes


@dataclass(frozen=True)
class AllowAgents:
    """Station: the federation's agent allow-list changed (durable in the station's store): install
    it in the link, so a revoked agent's handshakes are refused. ``keys``: agent name -> Z85 Curve
    public key; None: no keys (insecure federation), any name is admitted."""

    version: str
    keys: Mapping[str, str] | None


Action = Send | Log | Count | Gauge | StartTraining | ApplyModel | RoundClosed | SendUpstream | AllowAgents
