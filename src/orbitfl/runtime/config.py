"""TOML configuration of both daemons, validated with errors that name the key and the problem.

Every section is a frozen dataclass; each field's type, default and check live beside it. Unknown
keys are errors too (a typo such as ``hearbeat_s`` must not silently fall back to a default).
Relative paths are taken relative to the config file's folder, so a config and its keys can move
together.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orbitfl.runtime.keys import check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config problem; the message starts with the file and the dotted key."""


Check = Callable[[Any], str | None]  # returns a problem, or None when the value is fine


def _positive(v: Any) -> str | None:
    return None if v > 0 and math.isfinite(v) else "must be a finite number > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 and math.isfinite(v) else "must be a finite number >= 0"


def _at_least(n: int) -> Check:
    return lambda v: None if v >= n else f"must be >= {n}"


def _endpoint(v: Any) -> str | None:
    # Checked here in full: libzmq refuses a malformed endpoint only when the socket binds or
    # dials, which for an agent is deep inside its loop.
    scheme, sep, rest = v.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        return "must be a ZeroMQ endpoint starting with tcp:// or ipc://"
    if scheme == "ipc":
        return None if rest else "must name a socket path after ipc://"
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
        return "must be tcp://HOST:PORT (port 1-65535, or * to bind any)"
    return None


def _host_port(v: Any) -> str | None:
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT (port 1-65535), or empty to disable"
    return None


def _all(check: Check, values: Any) -> str | None:
    for v in values:
        problem = check(v)
        if problem:
            return f"{v!r} {problem}"
    return None


def _name(v: Any) -> str | None:
    try:
        check_name(v)
    except ValueError as exc:
        return str(exc)
    return None


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _m(check: Check | None = None, path: bool = False, ref: bool = False) -> dict[str, Any]:
    """A field's metadata: its check, whether it is a path (relative to the config file), and
    whether it is a ``ref``: a built-in name or a path (then taken relative to the config file)."""
    return {"check": check, "path": path, "ref": ref}


DATASET_NAMES = ("digits", "mnist1d")
# A ref with one of these endings or a path separator names a file or folder, not a built-in.
_PATH_HINTS = (".onnx", ".npz", ".npy", ".gz")


def is_path_ref(v: str) -> bool:
    """Whether a ``model``/``dataset`` setting is a path rather than a built-in name."""
    return "/" in v or v.startswith("~") or v.endswith(_PATH_HINTS) or v in (".", "..")


def _dataset(*names: str) -> Check:
    def check(v: Any) -> str | None:
        if v in names or is_path_ref(v):
            return None
        shown = ", ".join(n if n else repr(n) for n in names)
        return f"must be one of {shown} or a path to your data"

    return check


def _patterns(v: Any) -> str | None:
    if not all(isinstance(p, str) and p.strip() for p in v):
        return "must be a list of non-empty parameter names or patterns"
    return None


@dataclass(frozen=True)
class LinkSettings:
    heartbeat_s: float = field(default=1.0, metadata=_m(_positive))
    liveness: int = field(default=3, metadata=_m(_at_least(1)))
    backoff_initial_s: float = field(default=0.5, metadata=_m(_positive))
    backoff_max_s: float = field(default=30.0, metadata=_m(_positive))
    max_msg_size: int = field(default=16 * 1024 * 1024, metadata=_m(_at_least(1024)))
    # Payloads larger than a chunk travel as resumable chunks, ``window`` of them in flight.
    chunk_bytes: int = field(default=256 * 1024, metadata=_m(_at_least(256)))
    window: int = field(default=8, metadata=_m(_at_least(1)))


ROLES = ("both", "station", "aggregator")


@dataclass(frozen=True)
class GroundSection:
    bind: str = field(metadata=_m(_endpoint))
    state_dir: Path = field(metadata=_m(path=True))
    insecure: bool = field(default=False, metadata=_m())
    secret_key: Path | None = field(default=None, metadata=_m(path=True))
    allowed_keys: Path | None = field(default=None, metadata=_m(path=True))
    metrics: str = field(default="", metadata=_m(_host_port))
    # A ground network (docs/operations.md, "A ground network"): "both" is one daemon serving
    # agents and aggregating; a "station" serves agents and relays to the aggregator at
    # ``upstream``; an "aggregator" serves stations only, admitting those in ``station_keys``.
    role: str = field(default="both", metadata=_m(_one_of(*ROLES)))
    name: str = field(default="", metadata=_m(lambda v: None if v == "" else _name(v)))
    upstream: str = field(default="", metadata=_m(lambda v: None if v == "" else _endpoint(v)))
    upstream_key: Path | None = field(default=None, metadata=_m(path=True))
    station_keys: Path | None = field(default=None, metadata=_m(path=True))


@dataclass(frozen=True)
class FederationSection:
    model: str = field(default="mlp", metadata=_m(ref=True))  # a zoo model name or an .onnx path
    model_seed: int = field(default=0, metadata=_m())  # seeds the initial global weights
    # A name of orbitfl.ground.strategies' catalog (checked by the ground daemon, which knows it);
    # its options go in the [strategy] section.
    strategy: str = field(default="fedavg", metadata=_m(lambda v: None if v else "must be non-empty"))
    codec: str = field(default="fp32", metadata=_m())  # the recipe agents encode updates with
    # The recipe new global models travel down with, as deltas ("": whole or lossless xor deltas).
    downlink_codec: str = field(default="", metadata=_m())
    # Offer agents the compact UPDATE payload (docs/protocol.md); the full form is always accepted.
    compact_updates: bool = field(default=True, metadata=_m())
    rounds: int = field(default=0, metadata=_m(_at_least(0)))  # 0: run until stopped
    min_updates: int = field(default=2, metadata=_m(_at_least(1)))
    round_deadline_s: float = field(default=600.0, metadata=_m(_positive))
    min_updates_at_deadline: int = field(default=1, metadata=_m(_at_least(1)))
    max_staleness: int = field(default=1, metadata=_m(_at_least(0)))
    task_ttl_s: float = field(default=0.0, metadata=_m(_non_negative))  # 0: tasks never expire
    retransmit_s: float = field(default=30.0, metadata=_m(_positive))
    # Held-out data the ground scores each new global model on ("" = no evaluation).
    # A built-in data set, or the user's data (.npz, IDX or .npy folder): its test split is used.
    eval_dataset: str = field(default="", metadata=_m(_dataset("", *DATASET_NAMES), ref=True))
    data_seed: int = field(default=0, metadata=_m())
    # Retention of global versions in state_dir/models: the newest keep_models plus every
    # keep_every-th (0: none), and any an open round or an agent's next download needs.
    keep_models: int = field(default=8, metadata=_m(_at_least(1)))
    keep_every: int = field(default=100, metadata=_m(_at_least(0)))


@dataclass(frozen=True)
class AdmissionSection:
    """The ground's poisoning guards (orbitfl.ground.admission; docs/protocol.md, "Admission").
    On by default; a ratio of 0 turns its bound off."""

    max_samples: int = field(default=1_000_000, metadata=_m(_at_least(1)))
    norm_model_ratio: float = field(default=10.0, metadata=_m(_non_negative))
    norm_floor_rms: float = field(default=1.0, metadata=_m(_non_negative))
    norm_median_ratio: float = field(default=10.0, metadata=_m(_non_negative))
    median_window: int = field(default=64, metadata=_m(_at_least(1)))
    median_min: int = field(default=8, metadata=_m(_at_least(1)))
    refuse_non_finite_model: bool = field(default=True, metadata=_m())


@dataclass(frozen=True)
class AgentSection:
    name: str = field(metadata=_m(_name))
    ground: str = field(metadata=_m(_endpoint))
    state_dir: Path = field(metadata=_m(path=True))
    insecure: bool = field(default=False, metadata=_m())
    secret_key: Path | None = field(default=None, metadata=_m(path=True))
    ground_key: Path | None = field(default=None, metadata=_m(path=True))
    # Resend the outbox head when the ground has not answered it for this long while linked.
    retransmit_s: float = field(default=30.0, metadata=_m(_positive))
    # Bytes one encoded update may take (what a contact window carries for FL): adaptive recipes
    # (alq) size each update to it, fixed ones over it are refused. Unset: no budget.
    uplink_budget_bytes: int | None = field(default=None, metadata=_m(_at_least(256)))
    # Training artifacts built ahead on the host (`orbitfl model build`): the agent opens these and
    # never builds any itself, so a board needs no onnx. Unset: built once into state_dir.
    artifacts: Path | None = field(default=None, metadata=_m(path=True))
    # Prometheus /metrics and /healthz on HOST:PORT ("" disables).
    metrics: str = field(default="", metadata=_m(_host_port))
    # After the ground refuses this agent's key (revoked), wait this long before dialling again.
    key_refused_retry_s: float = field(default=600.0, metadata=_m(_positive))
    # A ground network: more stations than ``ground`` to federate through (ZeroMQ endpoints) and
    # their public keys, in the same order. The agent moves on to the next station whenever its
    # link is lost and after each ACKed update (a pass is over), as a satellite sees one station
    # after another.
    stations: tuple[str, ...] = field(default=(), metadata=_m(lambda v: _all(_endpoint, v)))
    station_keys: tuple[str, ...] = field(default=(), metadata=_m())


@dataclass(frozen=True)
class DataSection:
    # A built-in data set, or the user's data: an .npz (x, y[, x_test, y_test]), a folder of
    # .npy files or of MNIST IDX files.
    dataset: str = field(default="digits", metadata=_m(_dataset(*DATASET_NAMES), ref=True))
    split: str = field(default="dirichlet", metadata=_m(_one_of("dirichlet", "iid", "shards")))
    partition: int = field(default=0, metadata=_m(_at_least(0)))
    num_partitions: int = field(default=1, metadata=_m(_at_least(1)))
    alpha: float = field(default=0.5, metadata=_m(_positive))  # Dirichlet concentration (non-IID)
    seed: int = field(default=0, metadata=_m())
    # This agent's partition as an .npz the host wrote (orbitfl.data.partition_file): when set,
    # the agent loads no data set (no scikit-learn on a board) and the keys above are not used.
    file: Path | None = field(default=None, metadata=_m(path=True))


@dataclass(frozen=True)
class TrainSection:
    model: str = field(default="mlp", metadata=_m(ref=True))  # must match the ground's federation.model
    # Parameters that train (names, globs, group prefixes as in `orbitfl model build --trainable`);
    # empty: all. The others stay at the global model's values.
    trainable: tuple[str, ...] = field(default=(), metadata=_m(_patterns))
    optimizer: str = field(default="adamw", metadata=_m(_one_of("adamw", "sgd")))
    epochs: int = field(default=1, metadata=_m(_at_least(1)))
    batch_size: int = field(default=32, metadata=_m(_at_least(1)))
    lr: float = field(default=0.01, metadata=_m(_positive))
    max_batches: int = field(default=0, metadata=_m(_at_least(0)))  # 0: whole epochs
    # Report a finished job no sooner than this after it started, as a slower board would
    # (demo and tests); the loop keeps serving the link meanwhile. 0: report at once.
    pace_s: float = field(default=0.0, metadata=_m(_non_negative))


@dataclass(frozen=True)
class InferenceSection:
    export_tflite: bool = field(default=False, metadata=_m())
    int8: bool = field(default=False, metadata=_m())


@dataclass(frozen=True)
class OutageSection:
    """Simulated contact windows (demo and tests): after about ``up_s`` of contact the link is cut
    for ``down_s``, again and again, with a random phase per agent."""

    up_s: float = field(default=0.0, metadata=_m(_non_negative))  # 0: no outages
    down_s: float = field(default=0.0, metadata=_m(_non_negative))
    seed: int = field(default=0, metadata=_m())


@dataclass(frozen=True)
class GroundSettings:
    """A ground TOML file; ``orbitfl.ground.daemon.machine_config`` makes the machine's config."""

    ground: GroundSection
    federation: FederationSection
    link: LinkSettings
    source: Path | None = None
    admission: AdmissionSection = field(default_factory=AdmissionSection)
    # [strategy]: options of federation.strategy (name -> a number, boolean or string), checked
    # against the strategy when the ground builds it
    strategy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSettings:
    """An agent TOML file; ``orbitfl.agent.daemon.machine_config`` makes the machine's config."""

    agent: AgentSection
    data: DataSection
    train: TrainSection
    inference: InferenceSection
    outages: OutageSection
    link: LinkSettings
    source: Path | None = None


T = TypeVar("T")

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path string",
    tuple: "a list of strings",
}


def _coerce(where: str, expected: type, value: Any) -> Any:
    # bool is an int in Python; TOML keeps them apart and so do we.
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # str and Path
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: must be {_TYPE_NAMES[expected]}, got {type(value).__name__} {value!r}")
    return value


def _section(cls: type[T], data: Any, name: str, base: Path, prefix: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}[{name}]: must be a table, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in known.values():
        where = f"{prefix}{name}.{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: required key is missing")
            values[f.name] = f.default
            continue
        raw = data[f.name]
        expected = _field_type(f)
        value = _coerce(where, expected, raw)
        if f.metadata.get("path"):
            if value == "":
                raise ConfigError(f"{where}: must be a non-empty path")
            p = Path(value).expanduser()
            value = p if p.is_absolute() else base / p
        if f.metadata.get("ref") and value and is_path_ref(value):
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else base / p)
        check: Check | None = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{where}: {problem}, got {raw!r}")
        values[f.name] = value
    return cls(**values)


def _field_type(f: dataclasses.Field[Any]) -> type:
    t = str(f.type)
    kinds = (("bool", bool), ("int", int), ("float", float), ("Path", Path), ("str", str), ("tuple", tuple))
    for name, typ in kinds:
        if t.startswith(name):
            return typ
    raise TypeError(f"config field {f.name} has an unsupported type {t}")  # pragma: no cover


def _read(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8")), f"{path}: "
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _check_sections(doc: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in doc:
        if key not in allowed:
            raise ConfigError(f"{prefix}[{key}]: unknown section (known: {', '.join(sorted(allowed))})")


def _check_link(link: LinkSettings, prefix: str) -> None:
    if link.chunk_bytes + 4096 > link.max_msg_size:
        raise ConfigError(
            f"{prefix}link.chunk_bytes: a chunk and its header must fit link.max_msg_size "
            f"({link.max_msg_size}), got {link.chunk_bytes}"
        )
    if link.backoff_max_s < link.backoff_initial_s:
        raise ConfigError(
            f"{prefix}link.backoff_max_s: must be >= link.backoff_initial_s ({link.backoff_initial_s}), "
            f"got {link.backoff_max_s}"
        )


def parse_ground(
    doc: Mapping[str, Any], base: Path, prefix: str = "", source: Path | None = None
) -> GroundSettings:
    _check_sections(doc, {"ground", "federation", "link", "admission", "strategy"}, prefix)
    if "ground" not in doc:
        raise ConfigError(f"{prefix}[ground]: required section is missing")
    ground = _section(GroundSection, doc.get("ground"), "ground", base, prefix)
    check_role(ground, prefix)
    link = _section(LinkSettings, doc.get("link"), "link", base, prefix)
    _check_link(link, prefix)
    fed = _section(FederationSection, doc.get("federation"), "federation", base, prefix)
    adm = _section(AdmissionSection, doc.get("admission"), "admission", base, prefix)
    return GroundSettings(
        ground=ground,
        federation=fed,
        link=link,
        source=source,
        admission=adm,
        strategy=_options(doc.get("strategy"), prefix),
    )


# Keys that only one role uses: set for another, they would be silently ignored, so they are refused.
_ROLE_KEYS = {
    "name": ("station",),
    "upstream": ("station",),
    "upstream_key": ("station",),
    "station_keys": ("aggregator",),
    "allowed_keys": ("both", "aggregator"),
}


def check_role(ground: GroundSection, prefix: str = "") -> None:
    """The [ground] keys the role needs are set, and none of another role's is."""
    role = ground.role
    for key, roles in _ROLE_KEYS.items():
        value = getattr(ground, key)
        if role not in roles and value not in (None, ""):
            why = {
                "allowed_keys": "a station gets the agents' allow-list from the aggregator; remove it",
            }.get(key, f"only role {' or '.join(roles)} uses it; remove it or set ground.role")
            raise ConfigError(f"{prefix}ground.{key}: set, but ground.role is {role!r}: {why}")
    need: list[str] = []
    if role == "station":
        need += ["name", "upstream"]
    if not ground.insecure:
        need += {
            "both": ["secret_key", "allowed_keys"],
            "aggregator": ["secret_key", "allowed_keys", "station_keys"],
            "station": ["secret_key", "upstream_key"],
        }[role]
    for key in need:
        if getattr(ground, key) in (None, ""):
            unless = "unless ground.insecure = true (Curve is the default)"
            if role == "both":  # the single daemon's message, as before there were roles
                raise ConfigError(f"{prefix}ground.{key}: required {unless}")
            if key in ("name", "upstream"):
                unless = "(the aggregator's endpoint and the station's name there)"
            raise ConfigError(f"{prefix}ground.{key}: required for ground.role = {role!r} {unless}")


def _options(data: Any, prefix: str) -> dict[str, Any]:
    """The [strategy] table: flat scalars only (their meaning is the strategy's to check)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}[strategy]: must be a table, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(value, bool | int | float | str):
            raise ConfigError(
                f"{prefix}[strategy] {key}: must be a number, boolean or string, got {type(value).__name__}"
            )
    return dict(data)


def parse_agent(
    doc: Mapping[str, Any], base: Path, prefix: str = "", source: Path | None = None
) -> AgentSettings:
    _check_sections(doc, {"agent", "data", "train", "inference", "link", "outages"}, prefix)
    if "agent" not in doc:
        raise ConfigError(f"{prefix}[agent]: required section is missing")
    agent = _section(AgentSection, doc.get("agent"), "agent", base, prefix)
    if not agent.insecure:
        for key in ("secret_key", "ground_key"):
            if getattr(agent, key) is None:
                raise ConfigError(
                    f"{prefix}agent.{key}: required unless agent.insecure = true (Curve is the default)"
                )
    if not agent.insecure and len(agent.station_keys) != len(agent.stations):
        raise ConfigError(
            f"{prefix}agent.station_keys: one public key per entry of agent.stations "
            f"({len(agent.stations)}), got {len(agent.station_keys)}"
        )
    if agent.station_keys:  # paths, relative to the config file like every other
        keys = tuple(
            str(Path(k).expanduser() if Path(k).expanduser().is_absolute() else base / k)
            for k in agent.station_keys
        )
        agent = dataclasses.replace(agent, station_keys=keys)
    data = _section(DataSection, doc.get("data"), "data", base, prefix)
    if data.partition >= data.num_partitions:
        raise ConfigError(
            f"{prefix}data.partition: must be < data.num_partitions ({data.num_partitions}), "
            f"got {data.partition}"
        )
    link = _section(LinkSettings, doc.get("link"), "link", base, prefix)
    _check_link(link, prefix)
    return AgentSettings(
        agent=agent,
        data=data,
        train=_section(TrainSection, doc.get("train"), "train", base, prefix),
        inference=_section(InferenceSection, doc.get("inference"), "inference", base, prefix),
        outages=_section(OutageSection, doc.get("outages"), "outages", base, prefix),
        link=link,
        source=source,
    )


def prepare_state_dir(path: Path, where: str) -> Path:
    """Create a daemon's ``state_dir`` (with parents) and check it is writable; ``where`` is the
    file and dotted key (``"ground.toml: ground.state_dir"``). Each failure is a ConfigError that
    says what is wrong with the path and what would fix it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{where}: {path} exists and is not a folder; name a folder") from None
    except NotADirectoryError:
        raise ConfigError(
            f"{where}: cannot create {path}: a parent is a regular file, not a folder; name another path"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{where}: no permission to create {path}; create it for this user "
            f"(uid {os.getuid()}) or name a writable path"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create {path}: {exc.strerror}; name a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{where}: {path} is not writable by this user (uid {os.getuid()}); "
            "chown it to the service's user or name another folder"
        )
    return path


def load_ground(path: Path) -> GroundSettings:
    doc, prefix = _read(path)
    return parse_ground(doc, path.resolve().parent, prefix, source=path)


def load_agent(path: Path) -> AgentSettings:
    doc, prefix = _read(path)
    return parse_agent(doc, path.resolve().parent, prefix, source=path)
