"""Codec stages from other packages: the ``orbitfl.codecs`` entry-point group.

A package makes a stage available everywhere a recipe is parsed (the Python API, ``orbitfl codec``,
the simulator, experiments and both daemons) by declaring an entry point in that group; its value
names a module whose import registers the stage (``@register``), or a :class:`Stage` subclass. The
group is read once, the first time a recipe names a stage that is not built in, so a board that
never uses a plug-in never imports one.

A plug-in that fails to import is not fatal: every other stage keeps working, and a recipe that
names the broken one is refused with the plug-in's own error, so the operator sees why.
"""

from __future__ import annotations

import importlib.metadata
import threading

from orbitfl.codec.registry import REGISTRY, Stage, register

GROUP = "orbitfl.codecs"

_lock = threading.Lock()
_loaded = False
_failures: dict[str, str] = {}  # entry-point name -> why it could not be loaded


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=GROUP))


def _load(ep: importlib.metadata.EntryPoint) -> None:
    obj = ep.load()
    # A class its module did not register itself: register it under the entry point's name.
    if isinstance(obj, type) and issubclass(obj, Stage) and obj not in REGISTRY.values():
        register(ep.name)(obj)


def load_plugins() -> dict[str, str]:
    """Import every entry point of the group (once per process). Returns the failures: entry-point
    name -> the error that stopped it, e.g. ``{"absmax": "ImportError: No module named 'x'"}``."""
    global _loaded
    with _lock:
        if _loaded:
            return dict(_failures)
        # Built-in stages first, so a plug-in cannot take a built-in name: that registration fails.
        from orbitfl.codec import stages as _stages  # noqa: F401

        for ep in _entry_points():
            try:
                _load(ep)
            except Exception as exc:  # a third party's import error must not stop the others
                _failures[ep.name] = f"{type(exc).__name__}: {exc}"
        _loaded = True
        return dict(_failures)


def missing_stage_hint(name: str) -> str:
    """Why ``name`` is not a known stage, for the recipe parser's error: a plug-in of that name that
    failed to load, or nothing (then the name is simply unknown)."""
    failures = load_plugins()
    if name in failures:
        return f" (the plug-in {name!r} of entry-point group {GROUP!r} failed to load: {failures[name]})"
    return ""
