#!/usr/bin/env python3
"""Cross-build orbitfl for aarch64 and run its tests under qemu-user, without an ARM board.

    python3 tools/cross/aarch64.py            # = all: every step below, in order
    python3 tools/cross/aarch64.py setup      # Debian packages, an aarch64 Debian root, aarch64 wheels
    python3 tools/cross/aarch64.py ctest      # cross-build the C++ unit tests, run them with ctest + qemu
    python3 tools/cross/aarch64.py build      # cross-build orbitfl._core, assemble an aarch64 package tree
    python3 tools/cross/aarch64.py pytest [ARGS]   # pytest under emulated aarch64 Python (tests/kernels)
    python3 tools/cross/aarch64.py digest     # kernel output hashes, this machine against aarch64
    python3 tools/cross/aarch64.py python [ARGS]   # the emulated Python, package tree on its path
    python3 tools/cross/aarch64.py status     # what is there and what is missing (exit 0 when ready)

Needs a Debian host (the target root and libpython<ver>-dev:arm64 come from the host's release).
Missing Debian packages are installed when run as root; otherwise the exact apt command is printed.
Everything is cached under build/cross/ (or $ORBITFL_CROSS_DIR), so a second run only rebuilds.
$ORBITFL_QEMU_CPU picks the emulated CPU (default cortex-a72; never leave it to qemu's default).
docs/aarch64.md explains what is checked and why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ORBITFL_CROSS_DIR") or ROOT / "build" / "cross").resolve()
QEMU_CPU = os.environ.get("ORBITFL_QEMU_CPU") or "cortex-a72"
TRIPLE = "aarch64-linux-gnu"
TOOLCHAIN = ROOT / "tools" / "cmake" / f"{TRIPLE}.cmake"
DIGEST = ROOT / "tools" / "cross" / "kernel_digest.py"
CONSTRAINTS = ROOT / "tools" / "constraints.txt"  # pinned build inputs, shared with tools/dev.py

# Debian's python3 per release: the target root and the arm64 headers must be the same minor version.
PYTHON_OF_SUITE = {"bookworm": "3.11", "trixie": "3.13"}
# What the emulated test run imports: the package's runtime dependencies and its test tools.
# Build tools (cmake, ninja) stay on the host.
HOST_ONLY = {"cmake", "ninja"}
# What the agent daemon imports on a board, from the extras that have it (versions from
# tools/constraints.txt): ZeroMQ and stock ONNX Runtime. Never onnx, scikit-learn or torch: the
# host builds the training artifacts and writes the board's data partition (docs/aarch64.md).
BOARD_PACKAGES = ["onnxruntime", "pyzmq", "flatbuffers"]
FALLBACK_REQUIREMENTS = [
    "numpy",
    "msgpack",
    "zstandard",
    "pytest",
    "hypothesis",
    "pytest-timeout",
    *BOARD_PACKAGES,
]
# The emulated run: every kernel (both backends), the codecs, the agent's outbox and state
# machine (with the ground's, which it talks to), and the trainer on inputs the host made
# (board_inputs()). Suites that need onnx or scikit-learn in the test process stay on the host;
# the whole agent daemon runs emulated in tests/cross/test_aarch64.py.
DEFAULT_PYTEST_ARGS = [
    "tests/kernels",
    "tests/codec",
    "tests/agent/test_outbox.py",
    "tests/agent/test_machine.py",
    "tests/agent/test_machine_alq.py",
    "tests/agent/test_board_trainer.py",
    "tests/agent/test_optim.py",
]
BOARD_INPUTS = ROOT / "tools" / "cross" / "board_inputs.py"


class Missing(RuntimeError):
    """A prerequisite this script cannot provide by itself; the message says what to do."""


def log(msg: str) -> None:
    print(f"[aarch64] {msg}", flush=True)


def run(cmd: Sequence[object], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    kwargs.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kwargs)  # type: ignore[call-overload,no-any-return]


# --------------------------------------------------------------------------------------------
# The host: which Debian release, which packages
# --------------------------------------------------------------------------------------------
def os_release() -> dict[str, str]:
    info: dict[str, str] = {}
    path = Path("/etc/os-release")
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value.strip().strip('"')
    return info


def suite() -> str:
    info = os_release()
    codename = info.get("VERSION_CODENAME", "")
    if info.get("ID") != "debian" or codename not in PYTHON_OF_SUITE:
        raise Missing(
            f"the aarch64 run needs a Debian host ({', '.join(PYTHON_OF_SUITE)}); this is "
            f"{info.get('PRETTY_NAME', 'an unknown system')}. docs/aarch64.md lists what a board needs."
        )
    return codename


def python_version() -> str:
    return PYTHON_OF_SUITE[suite()]


def missing_packages() -> list[str]:
    """Debian packages still needed, judged by the files each provides."""
    ver = python_version()
    need = []
    if not shutil.which(f"{TRIPLE}-g++"):
        need.append(f"g++-{TRIPLE}")
    if not shutil.which("qemu-aarch64"):
        need.append("qemu-user")
    if not rootfs_ready() and not shutil.which("debootstrap"):
        need.append("debootstrap")
    if not Path(f"/usr/include/{TRIPLE}/python{ver}/pyconfig.h").exists():
        need.append(f"libpython{ver}-dev:arm64")
    return need


def apt_command(pkgs: list[str]) -> str:
    steps = []
    if any(p.endswith(":arm64") for p in pkgs):
        steps.append("dpkg --add-architecture arm64")
    steps += ["apt-get update", "apt-get install -y --no-install-recommends " + " ".join(pkgs)]
    return " && ".join(steps)


def ensure_packages() -> None:
    pkgs = missing_packages()
    if not pkgs:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Missing(f"missing Debian packages {', '.join(pkgs)}; as root run:\n  {apt_command(pkgs)}")
    log(f"installing {', '.join(pkgs)}")
    if any(p.endswith(":arm64") for p in pkgs):
        foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
        if "arm64" not in foreign.stdout.split():
            run(["dpkg", "--add-architecture", "arm64"])
    # Other users of the machine may hold the apt lock; wait for it rather than fail.
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    run(["apt-get", *lock, "update", "-q"])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *pkgs], env=env)


# --------------------------------------------------------------------------------------------
# The aarch64 Debian root (only its files are used: qemu -L; no chroot, no binfmt)
# --------------------------------------------------------------------------------------------
def rootfs() -> Path:
    return CACHE / f"rootfs-{suite()}-arm64"


def rootfs_ready() -> bool:
    return (rootfs() / ".orbitfl-ready").exists()


def target_python() -> Path:
    return rootfs() / "usr" / "bin" / f"python{python_version()}"


def apt_mirror(codename: str) -> str | None:
    """The host's own Debian mirror for `codename` (so a local mirror or proxy is used too)."""
    sources = Path("/etc/apt/sources.list.d")
    files = [
        Path("/etc/apt/sources.list"),
        *sorted(sources.glob("*.list")),
        *sorted(sources.glob("*.sources")),
    ]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    key, sep, value = line.partition(":")
                    if sep and not line.startswith((" ", "#")):
                        fields[key.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and codename in fields.get("suites", [])
                    and "main" in fields.get("components", [])
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == codename and "main" in words[3:]:
                    return words[1]
    return None  # debootstrap's own default mirror


def ensure_rootfs() -> None:
    if rootfs_ready():
        return
    codename, ver = suite(), python_version()
    if os.geteuid() != 0:
        raise Missing(
            f"debootstrap needs root to build the aarch64 root {rootfs()}: run this script as root once"
        )
    partial = rootfs().with_name(rootfs().name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror(codename)
    # --foreign only downloads and unpacks the base; the second stage would need to run aarch64
    # code as root in a chroot. Unpacking every downloaded .deb gives a root whose files qemu -L can
    # serve, which is all an emulated python needs.
    cmd = [
        "debootstrap",
        "--arch=arm64",
        "--foreign",
        "--variant=minbase",
        "--include=python3",
        codename,
        partial,
    ]
    run([*cmd, mirror] if mirror else cmd)
    archives = partial / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    log(f"unpacking {len(debs)} packages")
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        deb.unlink()
    python = partial / "usr" / "bin" / f"python{ver}"
    if not python.exists():
        raise RuntimeError(f"debootstrap gave no {python.relative_to(partial)}; see its output above")
    (partial / ".orbitfl-ready").write_text(f"{codename} python{ver}\n")
    shutil.rmtree(rootfs(), ignore_errors=True)
    partial.rename(rootfs())


def glibc_version() -> tuple[int, int]:
    """The target root's glibc, from the version string in libc.so.6 (decides manylinux tags)."""
    libc = rootfs() / "usr" / "lib" / TRIPLE / "libc.so.6"
    match = re.search(rb"GNU C Library [^\n]*?version (\d+)\.(\d+)", libc.read_bytes())
    if not match:
        raise RuntimeError(f"no glibc version string in {libc}")
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------------------------
# aarch64 wheels for the emulated Python
# --------------------------------------------------------------------------------------------
def requirements() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return FALLBACK_REQUIREMENTS
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", [])]
    reqs = [r for r in reqs if _name(r) not in HOST_ONLY]
    # By name only: an extra's markers (e.g. platform_machine) would be judged against the host.
    return reqs + [name for name in BOARD_PACKAGES if name not in {_name(r) for r in reqs}]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def site_dir() -> Path:
    return CACHE / f"site-{suite()}-arm64"


def ensure_wheels() -> None:
    ver = python_version()
    major, minor = glibc_version()
    # pip only takes the tags it is given: list every manylinux level the target's glibc can load,
    # or wheels built for a newer baseline (numpy >= 2.3: manylinux_2_28) are silently skipped.
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, minor + 1)]
    reqs = requirements()
    stamp = {
        "python": ver,
        "glibc": f"{major}.{minor}",
        "requirements": reqs,
        "constraints": CONSTRAINTS.read_text(),
    }
    target = site_dir()
    stamp_file = target / ".orbitfl-wheels.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd: list[object] = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        partial,
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        ver,
        "--abi",
        "cp" + ver.replace(".", ""),
        "-c",
        CONSTRAINTS,
    ]
    for tag in tags:
        cmd += ["--platform", tag]
    run([*cmd, *reqs])
    (partial / ".orbitfl-wheels.json").write_text(json.dumps(stamp))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def setup() -> None:
    ensure_packages()
    ensure_rootfs()
    ensure_wheels()
    python_wrapper()


# --------------------------------------------------------------------------------------------
# The emulated Python
# --------------------------------------------------------------------------------------------
def qemu(ld_prefix: Path) -> list[str]:
    # A concrete -cpu always: qemu's default ("max") offers extensions no board has, and code that
    # dispatches on them at run time takes paths a real board never takes.
    return ["qemu-aarch64", "-cpu", QEMU_CPU, "-L", str(ld_prefix)]


def python_wrapper() -> Path:
    """A script that runs the target's python under qemu: CMake's FindPython asks it for the
    target's SOABI and version, and a human can run it by hand."""
    wrapper = CACHE / "bin" / f"python{python_version()}-aarch64"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    cmd = " ".join([*qemu(rootfs()), str(target_python())])
    text = f'#!/bin/sh\n# Generated by tools/cross/aarch64.py\nexec {cmd} "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
    return wrapper


def package_tree() -> Path:
    return CACHE / "pkg"


def emulated_env() -> dict[str, str]:
    env = emulated_env_bare()
    env["PYTHONPATH"] = os.pathsep.join([str(package_tree()), str(site_dir())])
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the repo's tests/ free of aarch64 caches
    # Tests that start a child Python use this (without binfmt, a guest cannot exec aarch64 code).
    env["ORBITFL_CHILD_PYTHON"] = shlex.join([*qemu(rootfs()), str(target_python())])
    return env


def emulated_python(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    if not (package_tree() / "orbitfl").is_dir():
        raise Missing(f"no aarch64 package tree in {package_tree()}: run `{Path(__file__).name} build` first")
    kwargs.setdefault("cwd", ROOT)
    kwargs.setdefault("env", emulated_env())
    return run([*qemu(rootfs()), target_python(), *args], **kwargs)


# --------------------------------------------------------------------------------------------
# Cross build
# --------------------------------------------------------------------------------------------
VENV_BIN = ROOT / ".venv" / "bin"


def host_tool(name: str) -> str:
    # The project's venv first: its cmake and ninja are the pinned ones (tools/constraints.txt).
    venv_bin = VENV_BIN / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if not found:
        raise Missing(
            f"no {name} on PATH or in .venv: `python3 tools/dev.py test` installs it (or: pip install {name})"
        )
    return found


def pybind11_dir() -> str:
    """pybind11's CMake config: a private copy of the pinned release (tools/constraints.txt), so
    the cross build compiles against the same pybind11 as the native one, whatever the host has."""
    tools = CACHE / "host-tools"
    probe = "import pybind11; print(pybind11.__version__, pybind11.get_cmake_dir())"
    want = next(
        (
            line.split("==")[1].split(";")[0].strip()
            for line in CONSTRAINTS.read_text().splitlines()
            if line.startswith("pybind11==")
        ),
        None,
    )
    if want is None:
        raise RuntimeError(f"{CONSTRAINTS} pins no pybind11")
    for attempt in range(2):
        res = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tools)},
        )
        if res.returncode == 0 and res.stdout.split()[0] == want:
            return res.stdout.split(maxsplit=1)[1].strip()
        if attempt == 0:
            shutil.rmtree(tools, ignore_errors=True)
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                    tools,
                    f"pybind11=={want}",
                ]
            )
    raise RuntimeError(f"pybind11 {want} could not be installed for the cross build: {res.stderr[-300:]}")


def target_ext_suffix() -> str:
    """The target interpreter's own extension suffix (``.cpython-311-aarch64-linux-gnu.so``),
    asked of it directly: CMake gets it passed, never infers it through the emulator."""
    res = subprocess.run(
        [
            *qemu(rootfs()),
            str(target_python()),
            "-c",
            "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX') or '')",
        ],
        capture_output=True,
        text=True,
        env=emulated_env_bare(),
    )
    suffix = res.stdout.strip()
    if res.returncode or not re.fullmatch(r"\.cpython-\d+[a-z]*-aarch64-linux-gnu\.so", suffix):
        raise RuntimeError(
            f"the aarch64 python {target_python()} gave EXT_SUFFIX {suffix!r} "
            f"(exit {res.returncode}): {res.stderr.strip()[-500:]}"
        )
    return suffix


def emulated_env_bare() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    return match.group(1) if match else "0.0.0"


def build_dir() -> Path:
    return CACHE / "build"


def cross_build() -> None:
    """One build tree for the C++ tests and, once the target root exists, the Python module."""
    need = [p for p in missing_packages() if p != "debootstrap"]
    if need:
        raise Missing(f"missing Debian packages {', '.join(need)}; as root run:\n  {apt_command(need)}")
    with_python = rootfs_ready()
    cache = build_dir() / "CMakeCache.txt"
    text = cache.read_text() if cache.exists() else ""
    configured = re.search(r"^CMAKE_TOOLCHAIN_FILE:\w+=(.*)$", text, re.M)
    if text and (not configured or configured.group(1) != str(TOOLCHAIN)):
        # A tree configured without this toolchain keeps its host compiler: start it afresh.
        log(f"{build_dir()} was not configured with {TOOLCHAIN.name}: removing it")
        shutil.rmtree(build_dir())
    cmd: list[object] = [
        host_tool("cmake"),
        "-S",
        ROOT,
        "-B",
        build_dir(),
        f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DORBITFL_QEMU_CPU={QEMU_CPU}",
        "-DORBITFL_BUILD_TESTS=ON",
        f"-DORBITFL_BUILD_PYTHON={'ON' if with_python else 'OFF'}",
    ]
    has_ninja = shutil.which("ninja") or (ROOT / ".venv" / "bin" / "ninja").exists()
    if has_ninja and not (build_dir() / "CMakeCache.txt").exists():
        cmd += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={host_tool('ninja')}"]
    if with_python:
        ver = python_version()
        cmd += [
            f"-DPython_EXECUTABLE={python_wrapper()}",
            f"-DORBITFL_EXT_SUFFIX={target_ext_suffix()}",
            # The target's sysconfig names its own root; the headers come from the host's
            # multiarch libpython<ver>-dev:arm64 (pyconfig.h picks the aarch64 variant).
            f"-DPython_INCLUDE_DIR=/usr/include/python{ver}",
            f"-Dpybind11_DIR={pybind11_dir()}",
            f"-DSKBUILD_PROJECT_VERSION={project_version()}",
        ]
    run(cmd)
    run([host_tool("cmake"), "--build", build_dir(), "--parallel", "2"])


def ctest() -> None:
    cross_build()
    # ctest prepends CMAKE_CROSSCOMPILING_EMULATOR (qemu -cpu ... -L /usr/aarch64-linux-gnu).
    run([host_tool("ctest"), "--test-dir", build_dir(), "--output-on-failure"])


EM_AARCH64 = 183  # ELF e_machine of AArch64


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise RuntimeError(f"{path} is not an ELF file")
    return int.from_bytes(header[18:20], "little")


def wheel_packages() -> dict[str, str]:
    """pyproject's wheel.packages: package path in the wheel -> folder in the repo."""
    try:
        import tomllib

        table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]
        return dict(table["wheel"]["packages"])
    except (ImportError, KeyError):
        return {
            "orbitfl": "src/orbitfl",
            "orbitfl/agent": "agent",
            "orbitfl/ground": "ground",
            "orbitfl/models": "models",
        }


def assemble() -> Path:
    """The orbitfl package as the wheel would lay it out, with the aarch64 _core in it."""
    want = build_dir() / f"_core{target_ext_suffix()}"
    if not want.is_file():
        found = sorted(p.name for p in build_dir().glob("_core*") if p.is_file())
        raise RuntimeError(
            f"the cross build made no {want.name} in {build_dir()} (found: {', '.join(found) or 'nothing'}); "
            f"the target's EXT_SUFFIX is {want.name[len('_core') :]!r}: remove {build_dir()} and build again"
        )
    if elf_machine(want) != EM_AARCH64:
        raise RuntimeError(f"{want} is not an aarch64 binary: remove {build_dir()} and build again")
    cores = [want]
    tree = package_tree()
    shutil.rmtree(tree, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for dest, src in sorted(wheel_packages().items()):
        shutil.copytree(ROOT / src, tree / dest, ignore=ignore, dirs_exist_ok=True)
    for core in cores:
        shutil.copy2(core, tree / "orbitfl" / core.name)
    return tree


def build() -> None:
    if not rootfs_ready():
        raise Missing(f"no aarch64 root in {rootfs()}: run `{Path(__file__).name} setup` first")
    cross_build()
    tree = assemble()
    emulated_python(
        [
            "-c",
            "import orbitfl._core as c, platform; "
            "print('orbitfl._core', c.__version__, 'simd', c.simd, 'on', platform.machine())",
        ]
    )
    log(f"package tree: {tree}")


# --------------------------------------------------------------------------------------------
# Tests under emulation
# --------------------------------------------------------------------------------------------
# The emulated suite is the board's code: the C++ core. The NumPy reference never runs on a board
# (kernels.backend has no fallback), and its own outputs on aarch64 are compared bit for bit with
# x86-64's by the digests (tests/cross); its test suite, run on the host, would double the emulated
# time (2026-12-03, the suite split by backend in two concurrent processes: 580 s and 582 s wall).
# tests/conftest.py deselects the NumPy-backend cases when ORBITFL_EMULATED_BOARD is set; tests
# comparing the two backends stay. ORBITFL_SHARD=i/n keeps every n-th test from the i-th: two
# interleaved shards for two emulated processes (qemu-user runs each guest on one host thread, so
# two processes use both cores), balanced without a hand-kept split.
SUITE_SHARDS = 2


def host_python() -> str:
    """The host's Python with the project's extras (onnx, scikit-learn): .venv's, else this one."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def board_inputs() -> Path:
    """Have the host write the trainer's artifacts and data for the emulated trainer tests
    (tools/cross/board_inputs.py: onnx and scikit-learn run here, never on the board)."""
    out = CACHE / "board-inputs"
    shutil.rmtree(out, ignore_errors=True)
    run([host_python(), BOARD_INPUTS, out], cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def kernel_suite(timeout: float = 1800) -> tuple[bool, str]:
    """Run DEFAULT_PYTEST_ARGS (kernels, codecs, outbox, machines, trainer) under the emulated
    Python (the C++ backend's cases), in SUITE_SHARDS concurrent shards.

    Returns (every shard passed and ran tests, the combined output)."""
    if not (package_tree() / "orbitfl").is_dir():
        raise Missing(f"no aarch64 package tree in {package_tree()}: run `{Path(__file__).name} build` first")
    base = [
        *qemu(rootfs()),
        str(target_python()),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *DEFAULT_PYTEST_ARGS,
    ]
    inputs = board_inputs()
    env = {**emulated_env(), "ORBITFL_BOARD_INPUTS": str(inputs), "ORBITFL_EMULATED_BOARD": "1"}
    shards = [f"{i}/{SUITE_SHARDS}" for i in range(SUITE_SHARDS)]
    for shard in shards:
        print(f"+ ORBITFL_SHARD={shard}", " ".join(base), "&", file=sys.stderr, flush=True)
    procs = [
        subprocess.Popen(
            base,
            cwd=ROOT,
            env={**env, "ORBITFL_SHARD": shard},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for shard in shards
    ]
    outputs, ok = [], True
    for proc, shard in zip(procs, shards, strict=True):
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        ran = re.search(r"\b[1-9]\d* passed", out) is not None
        ok = ok and proc.returncode == 0 and ran
        outputs.append(f"--- shard {shard}: {' '.join(DEFAULT_PYTEST_ARGS)} (exit {proc.returncode})\n{out}")
    return ok, "\n".join(outputs)


def pytest(args: Sequence[str]) -> None:
    if not args:
        ok, out = kernel_suite()
        print(out, flush=True)
        if not ok:
            raise SystemExit("[aarch64] the test suites failed under emulation")
        return
    # -p no:cacheprovider: the emulated run must not leave a .pytest_cache in the repo.
    emulated_python(["-m", "pytest", "-p", "no:cacheprovider", *args])


def digests_native(python: str, backend: str = "cpp") -> dict[str, str]:
    out = subprocess.run(
        [python, str(DIGEST), "--backend", backend], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return dict(json.loads(out.stdout))


def digests_emulated(backend: str = "cpp") -> dict[str, str]:
    out = emulated_python([str(DIGEST), "--backend", backend], capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def compare_digests(native: dict[str, str], emulated: dict[str, str]) -> list[str]:
    """Names of the cases whose output differs (or exists on one side only)."""
    return sorted(k for k in native.keys() | emulated.keys() if native.get(k) != emulated.get(k))


def digest(native_python: str | None = None) -> None:
    """Both backends: the C++ core, and the NumPy reference (numpy's own SIMD differs too)."""
    python = native_python or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        raise Missing("no native orbitfl to compare with: run `python3 tools/dev.py test` first")
    failed = []
    for backend in ("cpp", "numpy"):
        native, emulated = digests_native(python, backend), digests_emulated(backend)
        bad = compare_digests(native, emulated)
        for name in sorted(native.keys() | emulated.keys()):
            mark = "DIFF" if name in bad else "same"
            ours, theirs = native.get(name, "-")[:16], emulated.get(name, "-")[:16]
            print(f"  {mark}  {backend:5s} {name:44s} {ours:16s}  {theirs}")
        absent = sorted(k for k, v in native.items() if v == "absent")
        if absent:
            log(f"{backend}: not in this build, so not compared: {', '.join(absent)}")
        if bad:
            failed.append(f"{backend}: {', '.join(bad)}")
    if failed:
        raise SystemExit(
            f"[aarch64] kernel outputs differ between {os.uname().machine} and aarch64: " + "; ".join(failed)
        )
    log(f"kernel outputs bit-identical on {os.uname().machine} and aarch64 ({QEMU_CPU}), both backends")


def status() -> int:
    try:
        need = missing_packages()
    except Missing as exc:
        print(exc)
        return 1
    print(f"cache            {CACHE}")
    print(f"debian packages  {'ok' if not need else 'missing: ' + apt_command(need)}")
    print(f"aarch64 root     {'ok' if rootfs_ready() else 'missing'} {rootfs()}")
    wheels = (site_dir() / ".orbitfl-wheels.json").exists()
    print(f"aarch64 wheels   {'ok' if wheels else 'missing'} {site_dir()}")
    print(f"package tree     {'ok' if (package_tree() / 'orbitfl').is_dir() else 'missing'} {package_tree()}")
    return 0 if not need and rootfs_ready() else 1


def main(argv: list[str]) -> int:
    step = argv[0] if argv else "all"
    rest = argv[1:]
    timings: list[tuple[str, float]] = []

    def timed(name: str, fn: object, *args: object) -> None:
        t0 = time.monotonic()
        try:
            fn(*args)  # type: ignore[operator]
        finally:
            timings.append((name, time.monotonic() - t0))
            log(f"{name}: {timings[-1][1]:.1f} s")

    try:
        if step == "status":
            return status()
        if step == "all":
            # A failing test step does not hide the others' results; setup and build failures stop.
            failed = []
            for name, fn in (
                ("setup", setup),
                ("ctest", ctest),
                ("build", build),
                ("pytest", pytest),
                ("digest", digest),
            ):
                try:
                    timed(name, fn, *([rest] if name == "pytest" else []))
                except (subprocess.CalledProcessError, SystemExit) as exc:
                    if name in ("setup", "build"):
                        raise
                    failed.append(name)
                    print(f"[aarch64] {name} FAILED: {exc}", file=sys.stderr)
            log(
                "total "
                + ", ".join(f"{n} {t:.0f} s" for n, t in timings)
                + f" = {sum(t for _, t in timings):.0f} s"
            )
            if failed:
                log(f"FAILED: {', '.join(failed)}")
                return 1
        elif step in ("setup", "ctest", "build", "digest"):
            timed(step, {"setup": setup, "ctest": ctest, "build": build, "digest": digest}[step])
        elif step == "pytest":
            timed(step, pytest, rest)
        elif step == "python":
            return emulated_python(rest, check=False).returncode
        else:
            print(__doc__)
            return 2
    except Missing as exc:
        print(f"[aarch64] {exc}", file=sys.stderr)
        return 3
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
