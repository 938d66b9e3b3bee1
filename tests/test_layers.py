"""The layers import only downward and no module imports itself back (docs/architecture.md).

Every module of the package is read with ``ast`` (nothing is imported), its ``orbitfl`` imports
resolved to modules, and two rules checked: a module never imports a higher layer (nor, for the
two sides, the other side), and the import graph has no cycle. A self-test plants an upward import
in a temporary tree and sees the check fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each part of the package lives in the checkout (pyproject's wheel.packages).
ROOTS = {
    "orbitfl": "src/orbitfl",
    "orbitfl.agent": "agent",
    "orbitfl.ground": "ground",
    "orbitfl.models": "models",
}

# Lowest first. A module may import its own layer and the layers below it, never above. Within
# one layer, packages listed together in a tuple of SIBLINGS may not import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "orbitfl",  # the package itself: version, the compiled _core
            "orbitfl._core",
            "orbitfl.kernels",
            "orbitfl.codec",
            "orbitfl.wire",
            "orbitfl.transfer",
            "orbitfl.runtime",
            "orbitfl.data",
            "orbitfl.ort_import",
            "orbitfl.arrays",
        ),
    ),
    ("models", ("orbitfl.models",)),
    ("sides", ("orbitfl.agent", "orbitfl.ground")),
    ("apps", ("orbitfl.apps",)),
    ("entry", ("orbitfl.cli",)),
]
SIBLINGS = [("orbitfl.agent", "orbitfl.ground")]


def modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py under the roots (the longest root prefix wins)."""
    out: dict[str, Path] = {}
    for pkg, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([pkg, *parts])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for each orbitfl import of the module, at any depth."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            if t == "orbitfl" or t.startswith("orbitfl."):
                yield t, node.lineno


def layer_of(module: str) -> tuple[int, str]:
    best = (-1, "", "")
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best[2]):
                best = (i, p, p)
    if best[0] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best[0], best[1]


def problems(roots: Mapping[str, Path]) -> list[str]:
    mods = modules(roots)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    found: list[str] = []
    for name, path in mods.items():
        here, here_pkg = layer_of(name)
        for target, line in imports(name, path, known):
            if target in known:
                graph[name].add(target)
            there, there_pkg = layer_of(target)
            where = f"{path}:{line}: {name} imports {target}"
            if there > here:
                found.append(f"{where} ({LAYERS[there][0]} is above {LAYERS[here][0]})")
            elif any({here_pkg, there_pkg} == set(pair) for pair in SIBLINGS):
                found.append(f"{where} (the two sides never import each other)")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-import).
    A package's ``__init__`` importing its own submodules is not a cycle unless they import it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan, recursive: the graph is a few hundred modules
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layers_import_only_downward_and_without_cycles() -> None:
    found = problems({pkg: REPO / root for pkg, root in ROOTS.items()})
    assert not found, "\n".join(found)


def test_the_check_sees_a_planted_upward_import_and_a_cycle(tmp_path: Path) -> None:
    def write(rel: str, text: str = "") -> None:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    write("src/orbitfl/__init__.py")
    write("src/orbitfl/wire/__init__.py")
    write("src/orbitfl/wire/messages.py", "from orbitfl.codec import x\n")
    write("src/orbitfl/codec/__init__.py", "x = 1\n")
    write("src/orbitfl/apps/__init__.py")
    write("src/orbitfl/apps/sim.py", "from orbitfl.agent import machine\n")
    write("agent/__init__.py")
    write("agent/machine.py", "import orbitfl.wire.messages\n")
    write("ground/__init__.py")
    write("models/__init__.py")
    roots = {pkg: tmp_path / root for pkg, root in ROOTS.items()}
    assert problems(roots) == []  # downward imports only: clean

    write("agent/machine.py", "import orbitfl.wire.messages\nfrom orbitfl.apps import sim\n")
    write("ground/store.py", "from orbitfl.agent.machine import X\n")
    write("src/orbitfl/codec/__init__.py", "from orbitfl.codec.a import y\n")
    write("src/orbitfl/codec/a.py", "from orbitfl.codec.b import z\n")
    write("src/orbitfl/codec/b.py", "from orbitfl.codec.a import w\n")
    found = problems(roots)
    assert any("orbitfl.agent.machine imports orbitfl.apps.sim (apps is above sides)" in f for f in found)
    assert any("orbitfl.ground.store imports orbitfl.agent.machine (the two sides" in f for f in found)
    assert any(f.startswith("import cycle:") and "orbitfl.apps.sim" in f for f in found)
    assert "import cycle: orbitfl.codec.a -> orbitfl.codec.b" in found
