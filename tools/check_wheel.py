"""Build the wheel, install it into a scratch venv and check what an operator gets from it.

    python3 tools/check_wheel.py [--wheel-dir DIR] [--keep]

Too slow for the test suite (the build compiles the C++ core: minutes on two cores), so it is run
by hand or by the release job. It checks that the wheel carries the systemd units, the sysusers.d and
tmpfiles.d files and the docs as data, that they land under the venv's prefix, and that
``orbitfl systemd install --prefix`` from that venv (without a checkout beside it) writes each file
where systemd looks, with ``ExecStart=`` naming the venv's ``orbitfl``. Exit 0 when all hold.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    "share/orbitfl/systemd/orbitfl-ground.service",
    "share/orbitfl/systemd/orbitfl-agent.service",
    "share/orbitfl/systemd/sysusers.d/orbitfl.conf",
    "share/orbitfl/systemd/tmpfiles.d/orbitfl.conf",
    *(f"share/doc/orbitfl/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))),
]
STAGED = [
    "etc/systemd/system/orbitfl-ground.service",
    "etc/systemd/system/orbitfl-agent.service",
    "usr/lib/sysusers.d/orbitfl.conf",
    "usr/lib/tmpfiles.d/orbitfl.conf",
    "usr/share/doc/orbitfl/operations.md",
]


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--wheel-dir", type=Path, help="where to write the wheel (default: a scratch folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="orbitfl-wheel-"))
    problems: list[str] = []
    try:
        out = args.wheel_dir or scratch / "dist"
        pins = ["--build-constraint", str(ROOT / "tools" / "constraints.txt")]
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", *pins, "-w", str(out), str(ROOT)])
        wheel = max(out.glob("orbitfl-*.whl"), key=lambda p: p.stat().st_mtime)
        names = zipfile.ZipFile(wheel).namelist()
        data = next((n.split("/data/")[0] + "/data/" for n in names if ".data/data/" in n), "")
        problems += [f"{wheel.name} lacks {f}" for f in SHIPPED if data + f not in names]
        venv = scratch / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(wheel)])
        problems += [f"the venv lacks {f}" for f in SHIPPED if not (venv / f).is_file()]
        prefix = scratch / "root"
        run([str(venv / "bin" / "orbitfl"), "systemd", "install", "--prefix", str(prefix)])
        problems += [f"systemd install did not write {f}" for f in STAGED if not (prefix / f).is_file()]
        unit = (prefix / STAGED[0]).read_text() if (prefix / STAGED[0]).is_file() else ""
        if f"ExecStart={venv / 'bin' / 'orbitfl'} " not in unit:
            problems.append("the installed ground unit's ExecStart= does not name the venv's orbitfl")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    print("wheel OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
