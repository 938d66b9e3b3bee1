"""orbitfl on aarch64 under qemu-user: the C++ tests, the kernel suite, bit-identical kernel output.

Runs when the aarch64 run is provisioned (Debian cross packages + the aarch64 root and wheels
under build/cross/, made by `python3 tools/cross/aarch64.py setup`, which `tools/dev.py test` runs
in CI or with ORBITFL_CROSS=1); skips with the missing step named otherwise. The cross build and the
aarch64 root are a cache in build/cross/ (git-ignored), shared with the script.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_cross() -> ModuleType:
    path = ROOT / "tools" / "cross" / "aarch64.py"
    spec = importlib.util.spec_from_file_location("orbitfl_tools_cross_aarch64", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cross = _load_cross()


def _not_ready() -> str | None:
    try:
        need = cross.missing_packages()
    except cross.Missing as exc:
        return str(exc)
    if need:
        return f"Debian packages missing ({cross.apt_command(need)})"
    if not cross.rootfs_ready():
        return f"no aarch64 root in {cross.rootfs()}"
    if not (cross.site_dir() / ".orbitfl-wheels.json").exists():
        return f"no aarch64 wheels in {cross.site_dir()}"
    return None


_reason = _not_ready()
needs_cross = pytest.mark.skipif(
    _reason is not None,
    reason=f"aarch64 run not provisioned: {_reason}; run `python3 tools/cross/aarch64.py setup` "
    "(root installs the packages) or `ORBITFL_CROSS=1 python3 tools/dev.py test`",
)

EM_AARCH64 = 183  # ELF e_machine of AArch64


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


@pytest.fixture(scope="module")
def built() -> Path:
    """Cross-build the C++ tests and orbitfl._core, and lay out the aarch64 package tree."""
    subprocess.run([sys.executable, str(ROOT / "tools/cross/aarch64.py"), "build"], check=True, cwd=ROOT)
    return Path(cross.build_dir())


@needs_cross
def test_cpp_tests_pass_under_qemu(built: Path) -> None:
    tests = sorted(p for p in built.glob("test_*") if p.is_file())
    assert tests, f"no C++ test binaries in {built}"
    for exe in tests:
        # An x86-64 binary would run without qemu and prove nothing about aarch64.
        assert _elf_machine(exe) == EM_AARCH64, f"{exe.name} is not an aarch64 binary"
    res = subprocess.run([cross.host_tool("ctest"), "--test-dir", str(built), "--output-on-failure"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "qemu-aarch64" in subprocess.run(
        [cross.host_tool("ctest"), "--test-dir", str(built), "-N", "-V"], capture_output=True, text=True
    ).stdout, "ctest does not run the tests through qemu-aarch64"
    assert re.search(r"100% tests passed.* out of [1-9]", res.stdout), res.stdout


@needs_cross
def test_core_module_is_the_aarch64_neon_build(built: Path) -> None:
    cores = list((Path(cross.package_tree()) / "orbitfl").glob("_core.*.so"))
    assert len(cores) == 1 and _elf_machine(cores[0]) == EM_AARCH64, cores
    res = cross.emulated_python(
        ["-c", "import platform, orbitfl._core as c; print(platform.machine(), c.simd)"],
        capture_output=True, text=True,
    )
    assert res.stdout.split() == ["aarch64", "neon"]


@needs_cross
def test_kernel_suite_passes_under_emulated_aarch64_python(built: Path) -> None:
    res = cross.emulated_python(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", *cross.DEFAULT_PYTEST_ARGS],
        capture_output=True, text=True, check=False, timeout=1800,
    )
    tail = res.stdout[-6000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert re.search(r"\b[1-9]\d* passed", res.stdout), tail


@needs_cross
@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_kernel_outputs_bit_identical_on_x86_64_and_aarch64(built: Path, backend: str) -> None:
    native = cross.digests_native(sys.executable, backend)
    emulated = cross.digests_emulated(backend)
    compared = [k for k, v in native.items() if not k.startswith("input/") and v != "absent"]
    assert len(compared) >= 30, f"too few kernels to compare: {compared}"
    differ = cross.compare_digests(native, emulated)
    assert not differ, {k: (native.get(k), emulated.get(k)) for k in differ}


def test_comparison_reports_every_difference() -> None:
    a = {"x": "1", "y": "2", "only-here": "3"}
    b = {"x": "1", "y": "different", "only-there": "4"}
    assert cross.compare_digests(a, b) == ["only-here", "only-there", "y"]
    assert cross.compare_digests(a, dict(a)) == []
