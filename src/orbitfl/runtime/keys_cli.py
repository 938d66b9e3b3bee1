"""``orbitfl keys new | list | revoke``: key pairs and the ground's allow-list, without restarts.

``revoke`` removes ``NAME.key`` from the allow-list folder (renamed aside first, so a reader sees
the key or no key, never half a file) and asks the running ground to reread the folder: SIGHUP
to the pid in its state directory's ``ground.pid`` (what ``systemctl reload`` sends too). The
ground then refuses the agent's handshakes and stops serving its open connection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from orbitfl.runtime.config import ConfigError, load_ground
from orbitfl.runtime.keys import check_name, cmd_new
from orbitfl.runtime.link import LinkError, load_public

PID_FILE = "ground.pid"  # written by the ground daemon into its state_dir


class KeysError(Exception):
    """A keys command that cannot do what was asked; the message is the one line to print."""


class NotRunning(KeysError):
    """No ground runs to reload: nothing is wrong, it reads the allow-list when it starts."""


@dataclass(frozen=True)
class Where:
    """The allow-list folder, and the ground's pid file when known (from its config)."""

    allowed: Path
    pid_file: Path | None


def where(args: argparse.Namespace) -> Where:
    if args.config:
        try:
            cfg = load_ground(Path(args.config))
        except ConfigError as exc:
            raise KeysError(str(exc)) from None
        if cfg.ground.allowed_keys is None:
            raise KeysError(
                f"{args.config}: ground.allowed_keys is not set (an insecure ground has no allow-list)"
            )
        return Where(cfg.ground.allowed_keys, cfg.ground.state_dir / PID_FILE)
    if args.allow:
        pidfile = getattr(args, "pidfile", None)
        return Where(Path(args.allow), Path(pidfile) if pidfile else None)
    raise KeysError("give --config GROUND_TOML or --allow DIR")


def list_keys(allowed: Path) -> list[tuple[str, str]]:
    """(name, z85 public key) of every key in the allow-list folder, by name."""
    if not allowed.is_dir():
        raise KeysError(f"allow-list folder {allowed} does not exist")
    out = []
    for cert in sorted(allowed.glob("*.key")):
        try:
            out.append((cert.stem, load_public(cert).decode("ascii")))
        except LinkError as exc:
            raise KeysError(str(exc)) from None
    return out


def revoke(allowed: Path, name: str) -> str:
    """Remove NAME.key from the allow-list; returns its z85 public key."""
    check_name(name)
    cert = allowed / f"{name}.key"
    if not cert.is_file():
        known = ", ".join(n for n, _ in list_keys(allowed)) or "none"
        raise KeysError(f"{cert}: no such key in the allow-list (allowed: {known})")
    try:
        key = load_public(cert).decode("ascii")
    except LinkError as exc:
        raise KeysError(str(exc)) from None
    # A rename is atomic: the folder holds the key or not; the ".revoked" file is not a *.key.
    aside = cert.with_name(f".{cert.name}.revoked")
    os.replace(cert, aside)
    aside.unlink()
    fd = os.open(allowed, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def signal_ground(pid_file: Path) -> int:
    """SIGHUP the ground named by ``pid_file``; returns its pid."""
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        raise NotRunning(
            f"no running ground ({pid_file} does not exist); it reads the allow-list when it starts"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeysError(f"cannot read the ground's pid from {pid_file}: {exc}") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NotRunning(
            f"no process {pid} (stale {pid_file}); it reads the allow-list when it starts"
        ) from None
    except PermissionError:
        raise KeysError(
            f"not allowed to signal the ground (pid {pid}); run as its user, or: "
            "systemctl reload orbitfl-ground"
        ) from None
    return pid


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        keys = list_keys(where(args).allowed)
    except KeysError as exc:
        print(f"orbitfl keys list: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"name": n, "public_key": k} for n, k in keys], indent=2))
    else:
        for n, k in keys:
            print(f"{n:24s} {k}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    try:
        w = where(args)
        key = revoke(w.allowed, args.name)
    except (KeysError, ValueError, OSError) as exc:
        print(f"orbitfl keys revoke: {exc}", file=sys.stderr)
        return 2
    print(f"revoked {args.name} ({key}) from {w.allowed}")
    if not args.reload:
        print("the running ground keeps the old list until reloaded: systemctl reload orbitfl-ground")
        return 0
    if w.pid_file is None:
        print("no ground to reload given (--config or --pidfile); reload it: systemctl reload orbitfl-ground")
        return 0
    try:
        pid = signal_ground(w.pid_file)
    except NotRunning as exc:
        print(exc)
        return 0
    except KeysError as exc:
        print(f"orbitfl keys revoke: {exc}", file=sys.stderr)
        return 1
    print(f"asked the ground (pid {pid}) to reload its allow-list")
    return 0


def _where_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the ground's TOML config (gives the allow-list and the running ground)")
    p.add_argument("--allow", metavar="DIR", help="the allow-list folder, when no --config")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keys", help="CurveZMQ key pairs for the ground and agents")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = sub.add_parser("new", help="create NAME.key (public) and NAME.key_secret in DIR")
    new.add_argument("name", help="the agent's id, or e.g. 'ground' for the station")
    new.add_argument("--dir", required=True, help="folder to write the key pair into")
    new.add_argument("--allow", metavar="DIR", help="also copy the public key into this allow-list folder")
    new.set_defaults(func=cmd_new)
    ls = sub.add_parser("list", help="the agents in the ground's allow-list, with their public keys")
    _where_args(ls)
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.set_defaults(func=_cmd_list)
    rv = sub.add_parser("revoke", help="remove an agent's key from the allow-list; the ground reloads it")
    rv.add_argument("name", help="the agent's name (its key file NAME.key)")
    _where_args(rv)
    rv.add_argument("--pidfile", help="with --allow: the running ground's pid file (STATE_DIR/ground.pid)")
    rv.add_argument(
        "--no-reload",
        dest="reload",
        action="store_false",
        help="only edit the folder; the running ground keeps the old list until reloaded",
    )
    rv.set_defaults(func=_cmd_revoke)
