"""Build a codec plug-in wheel from docs/codecs.md's own example, so the docs are what gets tested.

The wheel is assembled by hand (a zip with its dist-info) rather than by a build backend: venvs on
CPython 3.12+ have no setuptools, and a plug-in package is only its module and its entry point.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "codecs.md"


def documented_plugin() -> str:
    """The Python block under '### The Python half' in docs/codecs.md."""
    text = DOCS.read_text()
    section = text[text.index("### The Python half") :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "docs/codecs.md: no python block under '### The Python half'"
    return m.group(1)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """A pure-Python wheel: ``modules`` (module name -> source) and ``entry_points`` (name ->
    'module[:attr]') in the ``orbitfl.codecs`` group."""
    info = f"{dist}-0.1.dist-info"
    files: dict[str, bytes] = {f"{mod}.py": src.encode() for mod, src in modules.items()}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: orbitfl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    files[f"{info}/entry_points.txt"] = f"[orbitfl.codecs]\n{eps}".encode()
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


def install(wheels: list[Path], target: Path) -> Path:
    """``pip install --target``: a folder to put on PYTHONPATH, next to the installed orbitfl."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            *map(str, wheels),
        ],
        check=True,
    )
    return target


def absmax_site(root: Path) -> Path:
    """The docs' absmax plug-in, installed into ``root/site``."""
    wheel = build_wheel(
        root, "orbitfl_absmax", {"orbitfl_absmax": documented_plugin()}, {"absmax": "orbitfl_absmax"}
    )
    return install([wheel], root / "site")
