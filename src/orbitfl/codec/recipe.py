"""The recipe grammar: text such as ``topk:0.01+ef | quant:4 | zstd`` to a checked chain of stages.

    recipe   := chain ( ";" override )*
    override := selector "=" chain          first matching override wins, else the default chain
    selector := GLOB                        fnmatch over tensor names, e.g. *.bias
              | "<" INT                     tensors with fewer than INT values
    chain    := stage ( "|" stage )*
    stage    := NAME [ ":" arg ( "," arg )* ] ( "+ef" | "+noef" )*
    arg      := VALUE                       positional, in the stage's declared order
              | KEY "=" VALUE
              | FLAG                        a boolean argument set to true

Rules a chain must satisfy (else ValueError): float stages come before byte stages; only the last
float stage may consume all values (a stage such as ``topk`` passes its kept values on); stages that
need the whole tensor (``laq``, ``alq``) come first; ``+ef`` (error feedback) only on the first stage;
at most one byte stage. A chain whose float stages leave values over (or that has none, e.g.
``zstd``) sends them as float32: the parser appends an explicit ``fp32``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from orbitfl.codec.plugins import missing_stage_hint
from orbitfl.codec.registry import REGISTRY, Param, Stage

MAX_RECIPE_CHARS = 2000
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MOD = re.compile(r"\+\s*(ef|noef)\s*$")


@dataclass(frozen=True)
class Chain:
    """The stages one tensor goes through, checked; ``text`` is canonical and parses back to it."""

    stages: tuple[Stage, ...]

    @property
    def text(self) -> str:
        return "|".join(s.spec() for s in self.stages)

    @property
    def float_stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.kind == "float")

    @property
    def byte_stage(self) -> Stage | None:
        return next((s for s in self.stages if s.kind == "bytes"), None)

    @property
    def ef(self) -> bool:
        return self.stages[0].ef

    @property
    def lossless(self) -> bool:
        return all(s.lossless for s in self.float_stages)

    @property
    def kernel_ef(self) -> bool:
        """True when the first stage's kernel can keep the residual itself: it is the only lossy
        stage, so its residual equals input minus decoded output."""
        first, *rest = self.float_stages
        return first.kernel_ef and all(s.lossless for s in rest)

    @property
    def uses(self) -> set[str]:
        return {s.name for s in self.stages}

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Recipe:
    default: Chain
    overrides: tuple[tuple[str, Chain], ...] = ()

    @property
    def text(self) -> str:
        return "; ".join([self.default.text, *(f"{sel}={c.text}" for sel, c in self.overrides)])

    @property
    def chains(self) -> tuple[Chain, ...]:
        return (self.default, *(c for _, c in self.overrides))

    def chain_for(self, name: str, size: int) -> Chain:
        for sel, chain in self.overrides:
            if sel.startswith("<"):
                if size < int(sel[1:]):
                    return chain
            elif fnmatch.fnmatchcase(name, sel):
                return chain
        return self.default


def parse_recipe(text: str) -> Recipe:
    """Parse a recipe (see the module doc); ValueError with the reason for anything wrong."""
    if not isinstance(text, str):
        raise TypeError(f"recipe must be a str, got {type(text).__name__}")
    if len(text) > MAX_RECIPE_CHARS:
        raise ValueError(f"recipe is {len(text)} characters long; at most {MAX_RECIPE_CHARS}")
    parts = [p.strip() for p in text.split(";")]
    if not parts[0]:
        raise ValueError("recipe is empty: expected e.g. 'quant:8' or 'topk:0.01+ef|quant:4|zstd'")
    default = parse_chain(parts[0])
    overrides: list[tuple[str, Chain]] = []
    for part in parts[1:]:
        if not part:
            raise ValueError(f"recipe {text!r}: empty override after ';'")
        sel, eq, chain_text = part.partition("=")
        sel = sel.strip()
        if not eq or not sel or any(c in sel for c in ":|,+"):
            raise ValueError(
                f"recipe override {part!r}: expected SELECTOR=CHAIN, e.g. '*.bias=fp32' or '<1024=fp32'"
            )
        if sel.startswith("<"):
            num = sel[1:].strip()
            if not num.isdigit():
                raise ValueError(f"recipe override selector {sel!r}: expected '<' and a whole number")
            sel = "<" + str(int(num))
        overrides.append((sel, parse_chain(chain_text)))
    return Recipe(default, tuple(overrides))


@lru_cache(maxsize=256)
def parse_chain(text: str) -> Chain:
    """Parse one chain ``stage | stage | ...`` and check its order."""
    stages = [parse_stage(t.strip(), i) for i, t in enumerate(text.split("|"))]
    floats = [s for s in stages if s.kind == "float"]
    nbytes = [s for s in stages if s.kind == "bytes"]
    for i, s in enumerate(stages):
        if s.kind == "float" and any(b.kind == "bytes" for b in stages[:i]):
            raise ValueError(
                f"chain {text!r}: float stage {s.name!r} after a byte stage; byte stages such as "
                "zstd compress the finished bytes and must come last"
            )
    if len(nbytes) > 1:
        raise ValueError(f"chain {text!r}: more than one byte stage ({', '.join(b.name for b in nbytes)})")
    for i, s in enumerate(floats[:-1]):
        if s.terminal:
            raise ValueError(
                f"chain {text!r}: {s.name!r} leaves no float values for {floats[i + 1].name!r} "
                "(only stages such as topk or gcc pass values on)"
            )
    for i, s in enumerate(floats):
        if i > 0 and s.first_only:
            raise ValueError(f"chain {text!r}: {s.name!r} needs the whole tensor and must be the first stage")
        if i > 0 and s.ef:
            raise ValueError(
                f"chain {text!r}: +ef on {s.name!r}: error feedback applies to the whole tensor, "
                "so only the first stage may carry it"
            )
    if not floats or not floats[-1].terminal:
        # Leftover values (or a chain of only byte stages) travel as float32.
        fp32 = REGISTRY["fp32"]()
        fp32.args = {}
        stages.insert(len(floats), fp32)
    chain = Chain(tuple(stages))
    if chain.ef and chain.lossless:
        raise ValueError(f"chain {text!r}: +ef on a lossless chain has no error to feed back")
    return chain


def parse_stage(text: str, position: int = 0) -> Stage:
    if not text:
        raise ValueError("empty stage in recipe (two '|' in a row, or a trailing '|')")
    mods: list[str] = []
    while (m := _MOD.search(text)) is not None:
        mods.insert(0, m.group(1))
        text = text[: m.start()].rstrip()
    name, colon, arg_text = text.partition(":")
    name = name.strip().lower()
    if "+" in name or "+" in arg_text:
        raise ValueError(f"stage {text!r}: unknown modifier; the modifiers are +ef and +noef")
    if not _NAME.match(name):
        raise ValueError(f"stage {text!r}: bad stage name {name!r}")
    cls = REGISTRY.get(name)
    if cls is None:
        hint = missing_stage_hint(name)  # loads the plug-ins, which may register it
        cls = REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown codec stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}{hint}")
    if colon and not arg_text.strip():
        raise ValueError(f"stage {text!r}: ':' but no arguments")
    args = _parse_args(name, cls.params, [a.strip() for a in arg_text.split(",")] if colon else [])
    stage = cls()
    stage.args = args
    stage.ef = cls.default_ef
    for mod in mods:
        stage.ef = mod == "ef"
    if stage.ef and cls.kind != "float":
        raise ValueError(f"stage {name!r}: +ef applies to float stages only")
    if stage.ef and cls.lossless:
        raise ValueError(f"stage {name!r} is lossless: +ef has no error to feed back")
    validate = getattr(stage, "validate_args", None)
    if validate is not None:
        validate()
    return stage


def _parse_args(stage: str, params: tuple[Param, ...], raw: list[str]) -> dict[str, Any]:
    by_name = {p.name: p for p in params}
    positional = [p for p in params if p.positional]
    values: dict[str, Any] = {}
    for item in raw:
        if not item:
            raise ValueError(f"stage {stage!r}: empty argument (stray ',')")
        key, eq, val = item.partition("=")
        key = key.strip()
        if eq:
            p = by_name.get(key)
            if p is None:
                raise ValueError(f"stage {stage!r}: unknown argument {key!r}{_known(params)}")
        elif key in by_name and by_name[key].kind is bool:
            p, val = by_name[key], "1"
        else:
            p = next((q for q in positional if q.name not in values), None)
            if p is None:
                raise ValueError(f"stage {stage!r}: unexpected argument {item!r}{_known(params)}")
            val = key
        if p.name in values:
            raise ValueError(f"stage {stage!r}: argument {p.name!r} given twice")
        values[p.name] = _convert(stage, p, val.strip())
    for p in params:
        if p.name not in values:
            if p.default is None:
                raise ValueError(f"stage {stage!r}: missing argument {p.name!r} (e.g. '{stage}:...')")
            values[p.name] = p.default
    return values


def _convert(stage: str, p: Param, text: str) -> Any:
    v: Any
    try:
        if p.kind is bool:
            low = text.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            v = low in ("1", "true", "yes", "on")
        elif p.kind is int:
            v = int(text, 10)
        elif p.kind is float:
            v = float(text)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
        else:
            v = text
    except ValueError:
        raise ValueError(
            f"stage {stage!r}: argument {p.name}={text!r} is not a valid {p.kind.__name__}"
        ) from None
    if p.check is not None and (why := p.check(v)) is not None:
        raise ValueError(f"stage {stage!r}: argument {p.name}={text} {why}")
    return v


def _known(params: tuple[Param, ...]) -> str:
    return f" (it takes: {', '.join(p.name for p in params)})" if params else " (it takes no arguments)"
