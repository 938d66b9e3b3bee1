"""What an operator installs besides the package: sysusers.d and tmpfiles.d files that agree with the
units, `orbitfl systemd install` putting everything where systemd looks, the install commands of
docs/operations.md naming extras and paths that exist, and the environment carrying the files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "tools" / "systemd"
UNITS = ["orbitfl-ground.service", "orbitfl-agent.service"]
DOCS = REPO / "docs" / "operations.md"


def directives(unit: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def orbitfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed (Debian: apt-get install systemd)",
)
def test_sysusers_and_tmpfiles_make_the_user_and_the_folders_each_unit_runs_with(tmp_path: Path) -> None:
    # The docs' steps, in a scratch root: stage the files, then the bare-name commands systemd runs.
    (tmp_path / "etc").mkdir()
    staged = orbitfl("systemd", "install", "--prefix", str(tmp_path))
    assert staged.returncode == 0, staged.stderr
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        args = ["--create"] if tool == "systemd-tmpfiles" else []
        if tool == "systemd-tmpfiles" and os.geteuid() != 0:
            args = (
                ["--dry-run"]
                if "--dry-run" in subprocess.run([tool, "--help"], capture_output=True, text=True).stdout
                else []
            )
            if not args:
                pytest.skip("systemd-tmpfiles needs root to chown in a root folder")
        res = subprocess.run(
            [tool, f"--root={tmp_path}", *args, "orbitfl.conf"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert "Failed" not in res.stderr, res.stderr
    users = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    for unit in UNITS:
        d = directives(unit)
        user, group = users[d["User"]], groups[d["Group"]]
        assert user[6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), (
            "a daemon user must not log in"
        )
        if os.geteuid() != 0:
            continue
        state = tmp_path / "var/lib" / d["StateDirectory"]
        st = state.stat()
        assert (st.st_uid, st.st_gid) == (int(user[2]), int(group[2])), f"{state} owner"
        assert oct(st.st_mode & 0o777) == oct(int(d["StateDirectoryMode"], 8)), f"{state} mode"
        conf = (tmp_path / "etc" / d["ConfigurationDirectory"]).stat()
        assert conf.st_uid == 0 and conf.st_gid == int(group[2]), "configs: root's, readable by the group"
        assert conf.st_mode & 0o007 == 0, "configs and keys must not be world-readable"


def test_systemd_install_puts_units_sysusers_tmpfiles_and_docs_where_systemd_looks(tmp_path: Path) -> None:
    dry = orbitfl("systemd", "install", "--prefix", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not any(tmp_path.iterdir()), "--dry-run wrote something"
    res = orbitfl("systemd", "install", "--prefix", str(tmp_path))
    assert res.returncode == 0, res.stderr
    for unit in UNITS:
        text = (tmp_path / "etc/systemd/system" / unit).read_text()
        doc = re.search(r"^Documentation=file://(\S+)$", text, re.M)
        assert doc is not None and (tmp_path / doc.group(1).lstrip("/")).is_file(), (
            "Documentation= names no file"
        )
        exec_start = re.search(r"^ExecStart=(\S+) ", text, re.M)
        assert exec_start is not None and Path(exec_start.group(1)).is_file(), "ExecStart= names no orbitfl"
        assert text.replace(exec_start.group(1), "X") == (SYSTEMD / unit).read_text().replace(
            "/opt/orbitfl/bin/orbitfl", "X"
        ).replace("file:///opt/orbitfl/share/doc/orbitfl/", "file:///usr/share/doc/orbitfl/")
    for conf in ("sysusers.d", "tmpfiles.d"):
        assert (tmp_path / "usr/lib" / conf / "orbitfl.conf").read_bytes() == (
            SYSTEMD / conf / "orbitfl.conf"
        ).read_bytes()
    assert (tmp_path / "usr/share/doc/orbitfl/operations.md").read_bytes() == DOCS.read_bytes()
    again = orbitfl("systemd", "install", "--prefix", str(tmp_path))
    assert again.returncode == 0 and "\n0 of " in "\n" + again.stdout.splitlines()[-1], again.stdout
    vendor = orbitfl("systemd", "install", "--prefix", str(tmp_path), "--vendor")
    assert vendor.returncode == 0 and (tmp_path / "usr/lib/systemd/system" / UNITS[0]).is_file()
    bad = orbitfl("systemd", "install", "--prefix", "relative/dir")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--prefix" in bad.stderr


def install_section() -> str:
    text = DOCS.read_text()
    start = text.index("## 1. Install")
    return text[start : text.index("\n## 2.", start)]


def test_the_docs_install_commands_name_extras_and_paths_that_exist() -> None:
    section = install_section()
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    pip_lines = [line for b in blocks for line in b.splitlines() if "pip install" in line]
    assert len(pip_lines) >= 4, "the checkout and wheel commands for each side"
    named: set[str] = set()
    for line in pip_lines:
        m = re.search(r"\[([a-z0-9,-]+)\]", line)
        assert m is not None, f"no extras in: {line}"
        named |= set(m.group(1).split(","))
        c = re.search(r"-c (\S+)", line)
        assert c is not None, f"unpinned install: {line}"
        if c.group(1).startswith("tools/"):
            assert (REPO / c.group(1)).is_file(), line
        assert "'orbitfl[" not in line, "orbitfl is not on PyPI: install from a checkout or a wheel"
    assert named <= extras, f"extras the package does not have: {named - extras}"
    # each side's unit names the very extras the docs give that side
    for unit, side in (
        ("orbitfl-ground.service", "ground"),
        ("orbitfl-agent.service", "agent (host-like board)"),
    ):
        comment = next(
            line for line in (SYSTEMD / unit).read_text().splitlines() if line.startswith("# Install:")
        )
        m = re.search(r"\[([a-z0-9,-]+)\]", comment)
        assert m is not None, comment
        assert any(m.group(0) in line and line.rstrip().endswith(f"# {side}") for line in pip_lines), (
            unit,
            m.group(0),
        )
    commands = {c.strip() for b in blocks for c in re.findall(r"orbitfl (systemd install[^\n#]*)", b)}
    assert commands, "the docs do not say how to install the units"
    for cmd in commands:
        res = orbitfl(*cmd.split(), *([] if "--dry-run" in cmd else ["--dry-run"]))
        assert res.returncode == 0, (cmd, res.stderr)


def test_the_environment_carries_the_units_and_docs_a_wheel_ships() -> None:
    """The package's CMake install rules put these into the wheel's data; an install (here the
    editable one of this checkout) lays them out under its prefix, as a wheel does under /opt/orbitfl.
    Names only: an editable install's copies are as old as the install."""
    share = Path(sys.prefix) / "share"
    if not (share / "orbitfl").is_dir():
        pytest.skip(f"{sys.prefix} is not an install of this checkout (run tools/dev.py to make one)")
    shipped = {
        p.relative_to(share / "orbitfl/systemd")
        for p in (share / "orbitfl/systemd").rglob("*")
        if p.is_file()
    }
    assert shipped == {p.relative_to(SYSTEMD) for p in SYSTEMD.rglob("*") if p.is_file()}
    assert {p.name for p in (share / "doc/orbitfl").glob("*.md")} >= {
        p.name for p in (REPO / "docs").glob("*.md")
    }
