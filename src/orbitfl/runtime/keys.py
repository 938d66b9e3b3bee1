"""CurveZMQ key pairs: ``orbitfl keys new NAME --dir DIR`` (the command is in keys_cli).

A pair is two files in ZeroMQ's certificate format: ``NAME.key`` (public, goes into the ground's
allow-list folder or to the agents) and ``NAME.key_secret`` (stays on its machine, mode 0600).
The ground names an agent by the file name of its allowed public key, so NAME is the agent's id.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"key name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def new_keypair(name: str, directory: Path, *, allow_dir: Path | None = None) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``directory``; never overwrite an existing key."""
    import zmq.auth

    check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    public = directory / f"{name}.key"
    secret = directory / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a key")
    pub_s, sec_s = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(sec_s, 0o600)
    if allow_dir is not None:
        allow_dir.mkdir(parents=True, exist_ok=True)
        target = allow_dir / public.name
        if target.exists():
            raise FileExistsError(f"{target} already exists in the allow-list")
        shutil.copyfile(pub_s, target)
    return Path(pub_s), Path(sec_s)


def cmd_new(args: argparse.Namespace) -> int:
    try:
        public, secret = new_keypair(
            args.name, Path(args.dir), allow_dir=Path(args.allow) if args.allow else None
        )
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"orbitfl keys new: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}")
    print(f"secret key: {secret} (keep it on this machine only)")
    if args.allow:
        print(f"allowed:    {Path(args.allow) / public.name}")
    return 0
