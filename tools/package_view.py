"""The ``orbitfl`` package as one folder of symlinks, for tools that cannot read wheel.packages.

pyproject maps ``src/orbitfl``, ``agent``, ``ground`` and ``models`` into one package; an installed
wheel (or the editable install's import hook) is that package, but mypy reads source folders. This
builds ``build/typecheck/orbitfl`` whose entries link to the real files, so ``mypy`` (pyproject:
``mypy_path = "build/typecheck"``, ``packages = ["orbitfl"]``) sees exactly one package.

    python3 tools/package_view.py && .venv/bin/mypy     # what ``tools/dev.py lint`` runs
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where each part of the package lives in the checkout (keep in step with wheel.packages).
PARTS = {"agent": "agent", "ground": "ground", "models": "models"}


def build_view(root: Path = ROOT, dest: Path | None = None) -> Path:
    """(Re)make ``dest`` (default ``build/typecheck``) holding ``orbitfl/``; returns ``dest``."""
    dest = dest or root / "build" / "typecheck"
    pkg = dest / "orbitfl"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in sorted((root / "src" / "orbitfl").iterdir()):
        if entry.name != "__pycache__" and entry.suffix not in (".so", ".pyd"):
            os.symlink(entry, pkg / entry.name)
    for name, folder in PARTS.items():
        os.symlink(root / folder, pkg / name)
    return dest


if __name__ == "__main__":
    print(build_view(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
