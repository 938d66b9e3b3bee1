#!/usr/bin/env python3
"""Set up a virtual environment in .venv and run the main job or every test.

    python3 tools/dev.py demo    # set up, then run the main job
    python3 tools/dev.py test    # set up, then run the C++ unit tests (ctest) and pytest

Needs only python3 (with its venv module), a C++17 compiler and access to PyPI. Re-running is
cheap: the package is rebuilt incrementally in build/ and nothing is re-downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"

# What each job installs on top of the package itself.
EXTRAS = {
    "demo": "bench,data,train,litert,fed",
    "test": "test,dev,bench,data,train,litert,fed",
}


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def setup(job: str) -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"orbitfl needs Python >= 3.10; this is {sys.version.split()[0]}")
    if not shutil.which("c++") and not shutil.which("g++") and not shutil.which("clang++"):
        sys.exit("no C++ compiler found: install one with C++17 support (Debian/Ubuntu: apt-get install g++)")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except (subprocess.CalledProcessError, OSError) as exc:
            shutil.rmtree(VENV, ignore_errors=True)
            sys.exit(
                f"could not create a virtual environment ({exc}).\n"
                "On Debian/Ubuntu install the venv module first: apt-get install python3-venv"
            )
    run([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    # cmake and ninja come from PyPI with the build, so only a compiler is needed from the system.
    run([str(PY), "-m", "pip", "install", "--quiet", f".[{EXTRAS[job]}]"])


def cpp_tests() -> None:
    build = ROOT / "build" / "cpp-tests"
    cmake = [str(BIN / "cmake")]
    run([*cmake, "-S", ".", "-B", str(build), "-DORBITFL_BUILD_TESTS=ON", "-DORBITFL_BUILD_PYTHON=OFF",
         "-DCMAKE_BUILD_TYPE=Release"])
    run([*cmake, "--build", str(build), "--parallel", "2"])
    run([str(BIN / "ctest"), "--test-dir", str(build), "--output-on-failure"])


def cross_setup() -> None:
    """Provision the aarch64 run (tests/cross, docs/aarch64.md) in CI or when ORBITFL_CROSS=1.

    Elsewhere tests/cross runs only once a worktree was provisioned, and skips saying how.
    """
    asked = os.environ.get("ORBITFL_CROSS", "")
    if asked == "0" or (asked != "1" and os.environ.get("CI", "").lower() != "true"):
        return
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "cross" / "aarch64.py"), "setup"], cwd=ROOT)
    if res.returncode and asked == "1":
        sys.exit(res.returncode)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    job = argv[0]
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    setup(job)
    if job == "demo":
        run([str(BIN / "orbitfl"), "codec", "bench"])
        return 0
    cpp_tests()
    cross_setup()
    run([str(BIN / "pytest"), "-q"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)
