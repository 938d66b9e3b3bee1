"""``orbitfl systemd install [--prefix /] [--vendor] [--dry-run]``: put the units where systemd looks.

Copies what the wheel ships under ``<env>/share/orbitfl`` (or, from a checkout, ``tools/systemd`` and
``docs``) to the system:

- ``orbitfl-ground.service``, ``orbitfl-agent.service`` -> ``/etc/systemd/system`` (an admin's
  units), or ``/usr/lib/systemd/system`` with ``--vendor`` (a distribution's);
- ``sysusers.d/orbitfl.conf`` -> ``/usr/lib/sysusers.d/orbitfl.conf`` (the ``orbitfl`` user);
- ``tmpfiles.d/orbitfl.conf`` -> ``/usr/lib/tmpfiles.d/orbitfl.conf`` (its folders and modes);
- ``docs/*.md`` -> ``/usr/share/doc/orbitfl/`` (the units' ``Documentation=``).

The units name ``/opt/orbitfl/bin/orbitfl``; installed from another environment they are rewritten
to name this environment's ``orbitfl``. ``--prefix`` stages everything under another root (a
package build, an image, a test) while the units still name the paths of the running system.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from orbitfl.runtime.config import ConfigError

UNITS = ("orbitfl-ground.service", "orbitfl-agent.service")
UNIT_EXEC = "/opt/orbitfl/bin/orbitfl"
UNIT_DOC = "file:///opt/orbitfl/share/doc/orbitfl/operations.md"
DOC_DIR = "usr/share/doc/orbitfl"
CHECKOUT = Path(__file__).resolve().parents[3]  # src/orbitfl/apps/ -> the checkout, if it is one


@dataclass(frozen=True)
class Placed:
    source: Path
    dest: Path  # under the prefix
    text: str


def _first_dir(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def sources() -> tuple[Path, Path]:
    """(folder holding the units, folder holding the docs): the checkout's when this orbitfl runs
    from one (an editable install's copies under the prefix go stale as the checkout changes), else
    the installed wheel's."""
    share = Path(sys.prefix) / "share"
    units = _first_dir(CHECKOUT / "tools" / "systemd", share / "orbitfl" / "systemd")
    docs = _first_dir(CHECKOUT / "docs", share / "doc" / "orbitfl")
    if units is None or docs is None or not all((units / u).is_file() for u in UNITS):
        raise ConfigError(
            f"the unit files are not installed with this orbitfl ({share / 'orbitfl' / 'systemd'} is "
            "missing); install orbitfl from a wheel or a checkout (docs/operations.md, section 1)"
        )
    return units, docs


def plan(prefix: Path, *, vendor: bool = False, executable: Path | None = None) -> list[Placed]:
    """What ``install`` writes: each file's source, destination under ``prefix`` and content."""
    units, docs = sources()
    exe = executable if executable is not None else Path(sys.prefix) / "bin" / "orbitfl"
    unit_dir = prefix / ("usr/lib/systemd/system" if vendor else "etc/systemd/system")
    out: list[Placed] = []
    for name in UNITS:
        text = (units / name).read_text(encoding="utf-8")
        if exe.is_file():
            text = text.replace(UNIT_EXEC, str(exe))
        text = text.replace(UNIT_DOC, f"file:///{DOC_DIR}/operations.md")
        out.append(Placed(units / name, unit_dir / name, text))
    for kind in ("sysusers.d", "tmpfiles.d"):
        src = units / kind / "orbitfl.conf"
        out.append(Placed(src, prefix / "usr/lib" / kind / "orbitfl.conf", src.read_text(encoding="utf-8")))
    for doc in sorted(docs.glob("*.md")):
        out.append(Placed(doc, prefix / DOC_DIR / doc.name, doc.read_text(encoding="utf-8")))
    return out


def install(placed: list[Placed]) -> list[Path]:
    """Write each file (mode 0644, replaced atomically); returns those that changed."""
    changed: list[Path] = []
    for p in placed:
        try:
            if p.dest.is_file() and p.dest.read_text(encoding="utf-8") == p.text:
                continue
            p.dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.dest.with_name(f".{p.dest.name}.tmp")
            tmp.write_text(p.text, encoding="utf-8")
            os.chmod(tmp, 0o644)
            os.replace(tmp, p.dest)
        except OSError as exc:
            raise ConfigError(
                f"--prefix: cannot write {p.dest}: {exc.strerror}; run as root or stage with --prefix DIR"
            ) from None
        changed.append(p.dest)
    return changed


def cmd_install(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix)
    if not prefix.is_absolute():
        raise ConfigError(f"--prefix: must be an absolute path, got {args.prefix!r}")
    placed = plan(prefix, vendor=args.vendor)
    if args.dry_run:
        for p in placed:
            print(f"would write {p.dest} (from {p.source})")
        return 0
    changed = install(placed)
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} of {len(placed)} files written ({len(placed) - len(changed)} already current)")
    if prefix == Path("/"):
        print(
            "next: systemd-sysusers orbitfl.conf && systemd-tmpfiles --create orbitfl.conf && "
            "systemctl daemon-reload",
            file=sys.stderr,
        )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("systemd", help="install the systemd units, sysusers/tmpfiles files and docs")
    sub = p.add_subparsers(dest="systemd_command", metavar="ACTION", required=True)
    i = sub.add_parser("install", help="write the units, sysusers.d, tmpfiles.d and docs under --prefix")
    i.add_argument("--prefix", default="/", help="root to install under (default /; a folder to stage)")
    i.add_argument(
        "--vendor",
        action="store_true",
        help="units into usr/lib/systemd/system (a package's) instead of etc/systemd/system (an admin's)",
    )
    i.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")
    i.set_defaults(func=cmd_install)
