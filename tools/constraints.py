#!/usr/bin/env python3
"""Read and refresh tools/constraints.txt, the pinned build inputs, against pyproject's ranges.

    python3 tools/constraints.py check     # every pin lies inside pyproject.toml's range (exit 1 if not)
    python3 tools/constraints.py refresh   # newest release in range for every pin not marked `hold`

`python3 tools/dev.py constraints` runs `refresh` under the project's venv. tests/test_constraints.py
imports this file for the same check.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "tools" / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: str
    hold: bool  # `# hold: why` keeps the pin when refreshing


def parse_line(line: str) -> Pin | None:
    body, _, comment = line.partition("#")
    body = body.strip()
    if not body:
        return None
    req = Requirement(body)
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==":
        raise ValueError(f"{CONSTRAINTS.name}: {line!r} is not an exact pin (name==version)")
    return Pin(
        canonicalize_name(req.name),
        specs[0].version,
        str(req.marker or ""),
        comment.strip().startswith("hold"),
    )


def read_pins(path: Path = CONSTRAINTS) -> list[Pin]:
    return [pin for line in path.read_text().splitlines() if (pin := parse_line(line)) is not None]


def pyproject_ranges(path: Path = PYPROJECT) -> dict[str, list[SpecifierSet]]:
    """Every range pyproject.toml states per package: build-system.requires, dependencies, extras."""
    data = tomllib.loads(path.read_text())
    reqs = list(data.get("build-system", {}).get("requires", []))
    project = data.get("project", {})
    reqs += project.get("dependencies", [])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    ranges: dict[str, list[SpecifierSet]] = {}
    for text in reqs:
        req = Requirement(text)
        ranges.setdefault(canonicalize_name(req.name), []).append(req.specifier)
    return ranges


def disagreements(pins: list[Pin], ranges: dict[str, list[SpecifierSet]]) -> list[str]:
    out = []
    for pin in pins:
        for spec in ranges.get(pin.name, []):
            if not spec.contains(pin.version, prereleases=True):
                out.append(f"{pin.name}=={pin.version} is outside pyproject.toml's {pin.name}{spec}")
    return out


def newest_in_range(index_output: str, specs: list[SpecifierSet] | None) -> str | None:
    """The newest version listed by `pip index versions` that every range admits."""
    match = re.search(r"Available versions:\s*(.+)", index_output)
    if not match:
        return None
    versions = []
    for text in match.group(1).split(","):
        try:
            v = Version(text.strip())
        except InvalidVersion:
            continue
        if not v.is_prerelease and all(s.contains(v) for s in specs or []):
            versions.append(v)
    return str(max(versions)) if versions else None


def refresh() -> int:
    ranges = pyproject_ranges()
    out, changed = [], []
    for line in CONSTRAINTS.read_text().splitlines():
        pin = parse_line(line)
        if pin is None or pin.hold:
            out.append(line)
            continue
        res = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", pin.name], capture_output=True, text=True
        )
        newest = newest_in_range(res.stdout, ranges.get(pin.name))
        if newest is None:
            print(f"{pin.name}: no release found in pyproject's range; kept {pin.version}")
        elif newest != pin.version:
            changed.append(f"{pin.name} {pin.version} -> {newest}")
            line = line.replace(f"=={pin.version}", f"=={newest}", 1)
        out.append(line)
    CONSTRAINTS.write_text("\n".join(out) + "\n")
    print("\n".join(changed) or "every pin is already the newest release in range")
    bad = disagreements(read_pins(), ranges)
    print("\n".join(bad))
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if argv == ["check"]:
        bad = disagreements(read_pins(), pyproject_ranges())
        print("\n".join(bad) or f"{CONSTRAINTS.name} agrees with {PYPROJECT.name}")
        return 1 if bad else 0
    if argv == ["refresh"]:
        return refresh()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
