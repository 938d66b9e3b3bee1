"""Run a command under the seccomp filter a systemd unit's SystemCallFilter= lines describe.

    /usr/bin/python3 unit_sandbox.py UNIT_FILE -- COMMAND [ARGS...]

systemd builds the filter with libseccomp; so does this, from the same sets expanded by
`systemd-analyze syscall-filter`, with the same semantics: an allow-list line starts from "kill
everything" (or SystemCallErrorNumber='s errno), a `~` line removes its calls from the allow-list,
later lines win. The filter is loaded with NO_NEW_PRIVS and survives execve, so COMMAND (the daemon)
runs exactly as confined as under systemd. UMask= is applied too. Needs Debian's python3-seccomp,
hence /usr/bin/python3 rather than the project's interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path


def unit_settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def expand(names: list[str], cache: dict[str, set[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
            continue
        if name not in cache:
            text = subprocess.run(
                ["systemd-analyze", "syscall-filter", name], check=True, capture_output=True, text=True
            ).stdout
            members = [w.strip() for w in text.splitlines()[1:]]
            cache[name] = set()
            cache[name] = expand([m for m in members if m and not m.startswith("#")], cache)
        calls |= cache[name]
    return calls


def allowed_calls(settings: dict[str, list[str]]) -> set[str]:
    cache: dict[str, set[str]] = {}
    allowed: set[str] | None = None
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        if deny:
            if allowed is None:
                raise SystemExit("a deny-list-only SystemCallFilter= is not supported here")
            allowed -= expand(names, cache)
        else:
            allowed = (allowed or set()) | expand(names, cache)
    if allowed is None:
        raise SystemExit("the unit has no SystemCallFilter=")
    # systemd keeps what it needs to start the service (execve & co.) in every allow-list.
    return allowed | expand(["@default"], cache) | {"execve", "execveat"}


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import seccomp  # Debian's python3-seccomp

    settings = unit_settings(Path(argv[0]))
    command = argv[2:]
    errnos = settings.get("SystemCallErrorNumber", [])
    default = seccomp.ERRNO(getattr(errno, errnos[-1])) if errnos else seccomp.KILL_PROCESS
    f = seccomp.SyscallFilter(default)
    for name in sorted(allowed_calls(settings)):
        # A name this kernel or architecture does not have is skipped, as systemd skips it.
        with contextlib.suppress(RuntimeError, ValueError):
            f.add_rule(seccomp.ALLOW, name)
    if "UMask" in settings:
        os.umask(int(settings["UMask"][-1], 8))
    f.load()
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
