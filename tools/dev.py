#!/usr/bin/env python3
"""Set up a virtual environment in .venv and run the main job or every test.

    python3 tools/dev.py demo    # set up, then run the main job
    python3 tools/dev.py test    # set up, then run the C++ unit tests (ctest) and pytest
    python3 tools/dev.py ortt    # (re)create .venv-ortt: onnxruntime-training 1.19.2 + the package

Needs only python3 (with its venv module), a C++17 compiler and access to PyPI. Re-running is
cheap: the package is rebuilt incrementally in build/ and nothing is re-downloaded.
"""

from __future__ import annotations

import os
import platform
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
    "demo": "bench,data,train,litert,fed,sim",
    "test": "test,dev,bench,data,train,litert,fed,sim",
}


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def setup(job: str) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036  (this script runs under whatever python3 the system has)
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


TFLITE_VENV = ROOT / ".venv-tflite"


def tflite_runtime_env() -> None:
    """A second, small environment for the tflite-runtime tests: its last release (2.14) needs
    numpy<2, which the main environment cannot have. Created once; the tests skip without it."""
    py = TFLITE_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    if (TFLITE_VENV / ".ready").exists():
        return
    wheel_exists = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
    if sys.version_info >= (3, 12) or not wheel_exists:
        print("tflite-runtime 2.14 has wheels only for Linux x86-64/aarch64, Python <= 3.11: "
              "its tests will be skipped", flush=True)
        return
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TFLITE_VENV)
        run([str(py), "-m", "pip", "install", "--quiet", "numpy<2", "tflite-runtime==2.14.0"])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"could not set up {TFLITE_VENV} ({exc}): the tflite-runtime tests will be skipped", flush=True)
        return
    (TFLITE_VENV / ".ready").touch()


ORTT_VENV = ROOT / ".venv-ortt"
# What the onnxruntime-training comparison venv holds besides the package (installed without extras:
# its `train` extra is stock onnxruntime, and both wheels provide the `onnxruntime` module).
ORTT_PACKAGES = ["onnx==1.17.0", "onnxruntime-training==1.19.2", "flatbuffers>=24.3", "numpy<2.1",
                 "scikit-learn>=1.3", "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"]


def ort_training_env() -> None:
    """A second environment with onnxruntime-training 1.19.2 (and no stock onnxruntime): the old
    OrtTrainer backend, its tests, and the comparison GraphTrainer vs OrtTrainer run there (see
    tests/agent/test_graph_trainer.py). Its wheels exist only for x86-64, CPython <= 3.11.
    Created once (re-run to refresh the package after a change); the tests skip without it."""
    py = ORTT_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.version_info >= (3, 12):
        print("onnxruntime-training 1.19.2 has wheels only for x86-64, Python <= 3.11: the comparison "
              "with the old backend will be skipped", flush=True)
        return
    try:
        if not py.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(ORTT_VENV)
            run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
            run([str(py), "-m", "pip", "install", "--quiet", *ORTT_PACKAGES])
        run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", "."])
        run([str(py), "-m", "pip", "install", "--quiet", "msgpack>=1.0", "zstandard>=0.22"])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"could not set up {ORTT_VENV} ({exc}): the onnxruntime-training tests will be skipped",
              flush=True)
        return
    (ORTT_VENV / ".ready").touch()


def cpp_tests() -> None:
    build = ROOT / "build" / "cpp-tests"
    cmake = [str(BIN / "cmake")]
    run([*cmake, "-S", ".", "-B", str(build), "-DORBITFL_BUILD_TESTS=ON", "-DORBITFL_BUILD_PYTHON=OFF",
         "-DCMAKE_BUILD_TYPE=Release"])
    run([*cmake, "--build", str(build), "--parallel", "2"])
    run([str(BIN / "ctest"), "--test-dir", str(build), "--output-on-failure"])


def cross_setup() -> None:
    """Provision the aarch64 run (tests/cross, docs/aarch64.md) in CI or when ORBITFL_CROSS=1.

    tests/cross runs in the same two cases (and skips, saying why, otherwise): it adds minutes of
    emulation, which CI must pay but a developer's quick run need not. ORBITFL_CROSS=0 turns it off.
    """
    asked = os.environ.get("ORBITFL_CROSS", "")
    if asked == "0" or (asked != "1" and os.environ.get("CI", "").lower() != "true"):
        return
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "cross" / "aarch64.py"), "setup"], cwd=ROOT)
    if res.returncode and asked == "1":
        sys.exit(res.returncode)


def system_tools() -> None:
    """In CI (a root Debian/Ubuntu machine), install systemd so that the unit files are checked by
    `systemd-analyze verify`; elsewhere that test skips, saying what to install."""
    if os.environ.get("CI", "").lower() != "true" or shutil.which("systemd-analyze"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("systemd-analyze is missing and cannot be installed here (needs root and apt-get)", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"], env=env)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in (*EXTRAS, "ortt"):
        print(__doc__)
        return 2
    job = argv[0]
    if job == "ortt":
        ort_training_env()
        return 0 if (ORTT_VENV / ".ready").exists() else 1
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    setup(job)
    if job == "demo":
        # float32 FedAvg first, then the default codec, side by side: the ratio is the point.
        run([str(BIN / "orbitfl"), "demo", "--compare", "--report", "out/demo/report.json"])
        return 0
    tflite_runtime_env()
    ort_training_env()
    cpp_tests()
    system_tools()
    cross_setup()
    run([str(BIN / "pytest"), "-q"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)
