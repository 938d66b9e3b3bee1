"""orbitfl on aarch64 under qemu-user: the C++ tests, the kernel suite, bit-identical kernel output.

Runs in CI (CI=true) or with ORBITFL_CROSS=1, once the aarch64 run is provisioned (Debian cross
packages + the aarch64 root and wheels under build/cross/, made by
`python3 tools/cross/aarch64.py setup`, which `tools/dev.py test` runs in exactly those cases);
skips naming the reason otherwise. The cross build and the aarch64 root are a cache in
build/cross/ (git-ignored), shared with the script.
"""

from __future__ import annotations

import importlib.util
import os
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
    asked = os.environ.get("ORBITFL_CROSS", "")
    if asked == "0":
        return "aarch64 run turned off (ORBITFL_CROSS=0)"
    if asked != "1" and os.environ.get("CI", "").lower() != "true":
        # Minutes of emulation: on by default in CI only; a developer asks for it.
        return "aarch64 run not asked for: set ORBITFL_CROSS=1 (CI=true runs it)"
    try:
        need = cross.missing_packages()
    except cross.Missing as exc:
        return str(exc)
    if need:
        missing = f"Debian packages missing ({cross.apt_command(need)})"
    elif not cross.rootfs_ready():
        missing = f"no aarch64 root in {cross.rootfs()}"
    elif not (cross.site_dir() / ".orbitfl-wheels.json").exists():
        missing = f"no aarch64 wheels in {cross.site_dir()}"
    else:
        return None
    return (
        f"aarch64 run not provisioned: {missing}; run `python3 tools/cross/aarch64.py setup` "
        "(as root it installs the packages) or `ORBITFL_CROSS=1 python3 tools/dev.py test`"
    )


_reason = _not_ready()
needs_cross = pytest.mark.skipif(_reason is not None, reason=str(_reason))


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
        assert cross.elf_machine(exe) == cross.EM_AARCH64, f"{exe.name} is not an aarch64 binary"
    res = subprocess.run(
        [cross.host_tool("ctest"), "--test-dir", str(built), "--output-on-failure"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        "qemu-aarch64"
        in subprocess.run(
            [cross.host_tool("ctest"), "--test-dir", str(built), "-N", "-V"], capture_output=True, text=True
        ).stdout
    ), "ctest does not run the tests through qemu-aarch64"
    assert re.search(r"100% tests passed.* out of [1-9]", res.stdout), res.stdout


@needs_cross
def test_core_module_is_the_aarch64_neon_build(built: Path) -> None:
    cores = list((Path(cross.package_tree()) / "orbitfl").glob("_core.*.so"))
    assert len(cores) == 1 and cross.elf_machine(cores[0]) == cross.EM_AARCH64, cores
    res = cross.emulated_python(
        ["-c", "import platform, orbitfl._core as c; print(platform.machine(), c.simd)"],
        capture_output=True,
        text=True,
    )
    assert res.stdout.split() == ["aarch64", "neon"]


@needs_cross
def test_kernel_suite_passes_under_emulated_aarch64_python(built: Path) -> None:
    ok, out = cross.kernel_suite()
    assert ok, out[-8000:]


@needs_cross
@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_kernel_outputs_bit_identical_on_x86_64_and_aarch64(built: Path, backend: str) -> None:
    native = cross.digests_native(sys.executable, backend)
    emulated = cross.digests_emulated(backend)
    compared = [k for k, v in native.items() if not k.startswith("input/") and v != "absent"]
    assert len(compared) >= 30, f"too few kernels to compare: {compared}"
    differ = cross.compare_digests(native, emulated)
    assert not differ, {k: (native.get(k), emulated.get(k)) for k in differ}


def test_the_emulated_wheel_set_has_what_the_agent_extra_promises_a_board() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["agent"]
    wanted = {cross._name(r) for r in extra if "python_version < '3.11'" not in r}
    have = {cross._name(r) for r in cross.requirements()}
    assert wanted <= have, f"the emulated run lacks {wanted - have}"
    assert not {"onnx", "scikit-learn", "torch", "onnxruntime-training"} & have


def test_comparison_reports_every_difference() -> None:
    a = {"x": "1", "y": "2", "only-here": "3"}
    b = {"x": "1", "y": "different", "only-there": "4"}
    assert cross.compare_digests(a, b) == ["only-here", "only-there", "y"]
    assert cross.compare_digests(a, dict(a)) == []


def _load_integration() -> ModuleType:
    """tests/integration/conftest.py's Cluster and board_inputs: the same configs, keys and
    processes as the native integration tests (loaded by path: tests/ is not a package)."""
    path = ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("orbitfl_tests_integration_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _portable_trainer() -> str | None:
    from orbitfl.agent import backends

    if "onnxruntime" not in backends.BACKENDS:
        return "this orbitfl has no trainer on stock onnxruntime (the only one with an aarch64 wheel)"
    return None


@needs_cross
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_real_agent_under_emulated_aarch64_federates_with_an_x86_64_ground(
    built: Path, tmp_path: Path
) -> None:
    """Hardware in the loop without the hardware: `orbitfl agent run` on aarch64 CPython under
    qemu (stock onnxruntime, the cross-built _core, its SQLite outbox, CurveZMQ) against the host's
    `orbitfl ground serve`; the board gets its artifacts and data from the host, never onnx."""
    why = _portable_trainer()
    if why:
        pytest.skip(why)
    it = _load_integration()
    cluster = it.Cluster(tmp_path)
    try:
        art, (part,) = it.board_inputs(tmp_path, 1)
        cluster.ground_config(rounds=3, min_updates=1, eval_dataset="digits", retransmit_s=30.0)
        # Emulation is ~10x slower: heartbeats must not declare the link dead while it imports.
        link = {"heartbeat_s": 1.0, "liveness": 10}
        cluster.agent_config("pi-0", 0, 1, artifacts=art, data_file=part, link=link)
        cluster.start_ground()
        emulated = [*cross.qemu(cross.rootfs()), str(cross.target_python())]
        cluster.start_agent("pi-0", python=emulated, env=cross.emulated_env())
        cluster.wait("3 rounds", lambda: len(cluster.rounds()) >= 3, timeout_s=600)
    finally:
        codes = cluster.stop()
    rounds = cluster.rounds()[:3]
    log = cluster.log("pi-0")
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(r["updates"] == 1 for r in rounds), rounds
    accuracy = [r["accuracy"] for r in rounds]
    assert accuracy[2] > accuracy[0] and accuracy[2] > 0.5, (accuracy, log[-3000:])
    assert codes["pi-0"] == 0 and codes["ground"] == 0, (codes, log[-3000:])
    assert "agent pi-0 (aarch64, Python 3." in log and "CurveZMQ" in log, log[-3000:]
    assert "trained" in log and "onnx is not installed here" in log, log[-3000:]
    assert (tmp_path / "pi-0" / "outbox.sqlite").exists()
    assert not (tmp_path / "pi-0" / "artifacts").exists(), "the board built artifacts itself"
