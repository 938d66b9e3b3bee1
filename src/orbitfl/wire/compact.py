"""The compact UPDATE payload: the recipe and the model's tensor layout by id, no per-tensor metadata
that both sides already hold.

The full form (``orbitfl.wire.payload``) repeats, in every update, the recipe text twice (in the
payload and as the codec's chain list) and every tensor's name, dtype, shape and chain index. The
receiver holds the model and the recipe it asked for, so the compact form sends instead::

    {"codec": "compact",
     "rid": bin(8),      # recipe_id(recipe): which recipe encoded it
     "lid": bin(8),      # Layout.id: which tensor layout (names, shapes, dtypes) it is laid out for
                         # (form 2: one "id": bin(16), rid then lid)
     "mask": bin,        # optional: bit i set when the layout's i-th tensor is sent (absent: all)
     "t": [...]}         # one entry per sent tensor, in layout order (sorted names)

An entry is the tensor's float32 little-endian bytes for raw float32 recipes, else
``[*values, data]``: the codec's per-stage metadata as values in the order each stage declares its
keys (``Stage.meta_schema``; nil for a key left out), then either the stages' arrays (a list of
bin) or the byte stage's frame (one bin). The chain of each tensor is the one the recipe assigns to
its name and size (``Pipeline.chain_for``), so it is not sent either, nor are the keys.

Form 2 (``"f": 2`` in the payload; sent only when TASK.compact offers ``f >= 2``) carries the same
entries with less metadata, all of it restored exactly before the codec sees it:

- the metadata a top-k stage (``topk``, ``dgc``) states about itself is left out when the receiver
  recomputes the same: ``k`` when it is ``min(n, max(1, ceil(frac·n)))`` (no warm-up in force), ``ib``
  (the index bytes) from the index array's own length, or, for a byte-stage frame, from the size the
  zstd frame header declares minus the chain's other arrays. An entry is then shorter by those
  values; when any of them differs the entry lists every value, as in form 1;
- the arrays of an entry that are not a byte-stage frame travel concatenated in one bin (a list of
  one bin), cut again at the sizes the metadata gives.

Both ids are content hashes, so they mean the same on every node holding the same recipe text and
model: a station forwards a compact update as it is and the aggregator resolves it with its own
recipe and model. ``expand_payload`` turns a compact payload (either form) back into the full form,
which the codec then validates as usual (lengths, metadata, values against the model's shapes).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from orbitfl.codec.inputs import RAW_RECIPES, pipeline
from orbitfl.codec.recipe import Chain
from orbitfl.codec.stages import TopK
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import COMPACT_ID_BYTES as ID_BYTES

COMPACT = "compact"
# The full form's payload format version (orbitfl.codec.payload.FORMAT_VERSION) the expansion
# produces; the codec refuses any other, so a change there shows up here in the tests.
_BODY_VERSION = 1
# The newest compact form this build writes and reads. Form 1 is the original (no "f" key); a
# sender uses form 2 only when the TASK's offer says the receiver reads it.
FORM = 2


def recipe_id(recipe: str) -> bytes:
    """The id of a recipe: the first 8 bytes of SHA-256 over its text, exactly as TASK.recipe
    carries it (the ground compares the text, so two spellings of one pipeline are two recipes)."""
    return hashlib.sha256(b"orbitfl-recipe/1\n" + recipe.encode()).digest()[:ID_BYTES]


@dataclass(frozen=True)
class Layout:
    """The tensors of a model in the order the compact form lists them: sorted by name."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    id: bytes

    @classmethod
    def of(cls, spec: Mapping[str, tuple[tuple[int, ...], str]]) -> Layout:
        """From name -> (shape, dtype name), e.g. the ground's model spec."""
        names = tuple(sorted(spec))
        shapes = tuple(tuple(int(s) for s in spec[n][0]) for n in names)
        dtypes = tuple(str(spec[n][1]) for n in names)
        h = hashlib.sha256(b"orbitfl-layout/1\n")
        for n, s, d in zip(names, shapes, dtypes, strict=True):
            h.update(f"{n}\0{list(s)}\0{d}\n".encode())
        return cls(names, shapes, dtypes, h.digest()[:ID_BYTES])

    @classmethod
    def of_tensors(cls, tensors: Mapping[str, npt.NDArray[Any]]) -> Layout:
        return cls.of({k: (tuple(np.shape(v)), np.asarray(v).dtype.name) for k, v in tensors.items()})

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def compact_payload(
    full: Mapping[str, Any], recipe: str, layout: Layout, form: int = 1
) -> dict[str, Any] | None:
    """The compact form ``form`` (1 or 2, see the module text) of ``full`` (what
    ``encode_payload(recipe, ...)`` returned), or None when it cannot be said compactly: a tensor
    not in ``layout`` or of another shape, a tensor whose chain is not the one the recipe assigns
    it. The caller then sends ``full``: the receiver refuses it by name, where a compact form would
    only say that the ids differ."""
    if form not in (1, FORM):
        raise ValueError(f"compact form {form} is not 1 or {FORM}")
    index = layout.index()
    codec = full.get("codec")
    sent: dict[int, Any] = {}
    if codec == "fp32":
        if recipe not in RAW_RECIPES:
            return None
        for name, t in full["tensors"].items():
            i = index.get(name)
            if i is None or t["dtype"] != "float32" or tuple(t["shape"]) != layout.shapes[i]:
                return None
            if layout.dtypes[i] != "float32":
                return None
            sent[i] = t["data"]
    elif codec == "pipeline":
        if full.get("recipe") != recipe or recipe in RAW_RECIPES:  # raw recipes travel as "fp32"
            return None
        pipe = pipeline(recipe)
        body = full["body"]
        chains = body["chains"]
        for name, rec in body["tensors"].items():
            i = index.get(name)
            if i is None or tuple(rec["shape"]) != layout.shapes[i] or layout.dtypes[i] != "float32":
                return None
            chain = pipe.chain_for(name, math.prod(layout.shapes[i]))
            values = _meta_values(chain, rec["meta"]) if chains[rec["c"]] == chain.text else None
            if values is None:
                return None
            data = rec["z"] if "z" in rec else rec["data"]
            if form >= 2:
                if isinstance(data, list) and len(data) > 1:
                    data = [b"".join(data)]  # one bin header, not one per array
                short = _short_values(chain, rec["meta"], math.prod(layout.shapes[i]), data)
                values = values if short is None else short
            sent[i] = [*values, data]
    else:
        return None
    order = sorted(sent)
    out: dict[str, Any] = {"codec": COMPACT}
    if form >= 2:
        out.update(f=form, id=recipe_id(recipe) + layout.id)  # one bin header, one key
    else:
        out.update(rid=recipe_id(recipe), lid=layout.id)
    if len(order) != len(layout.names):
        mask = bytearray((len(layout.names) + 7) // 8)
        for i in order:
            mask[i >> 3] |= 1 << (i & 7)
        out["mask"] = bytes(mask)
    out["t"] = [sent[i] for i in order]
    return out


def ids_of(d: Mapping[str, Any]) -> Any:
    """The recipe id a compact payload names (form 1's 'rid', form 2's first half of 'id'), as
    sent: not checked (``expand_payload`` does), so possibly not bytes."""
    both = d.get("id")
    if d.get("f", 1) != 1 and isinstance(both, bytes):
        return both[:ID_BYTES]
    return d.get("rid")


def sent_indices(d: Mapping[str, Any], layout: Layout) -> list[int]:
    """Which of the layout's tensors a compact payload carries (its mask, checked). WireError."""
    n = len(layout.names)
    mask = d.get("mask")
    if mask is None:
        return list(range(n))
    if not isinstance(mask, bytes) or len(mask) != (n + 7) // 8:
        raise WireError(
            Reason.SCHEMA, f"UPDATE.payload.mask: expected {(n + 7) // 8} bytes of bin for {n} tensors"
        )
    bits = np.unpackbits(np.frombuffer(mask, np.uint8), bitorder="little")
    if bits[n:].any():
        raise WireError(Reason.SCHEMA, f"UPDATE.payload.mask: bits set past the model's {n} tensors")
    return [int(i) for i in np.flatnonzero(bits)]


def expand_payload(
    d: Mapping[str, Any], layout: Layout | None, recipes: Mapping[bytes, str]
) -> dict[str, Any]:
    """The full form of a compact payload, for ``decode_payload`` to validate and decode.

    ``layout`` is the receiver's model; ``recipes`` maps the recipe ids it accepts to their text.
    Raises WireError: ``bad_payload`` for an unknown recipe id or a receiver without a model,
    ``bad_shape`` for a payload laid out for another model or carrying another number of tensors,
    ``schema`` for fields of the wrong type or count, ``bad_payload`` for form-2 metadata that
    cannot be recomputed or arrays that do not add up. The entries' bytes are reused, except that
    a form-2 bin of concatenated (uncompressed) arrays is cut into copies of them."""
    form = d.get("f", 1)
    if type(form) is not int or form not in (1, FORM):
        raise WireError(
            Reason.SCHEMA, f"UPDATE.payload.f: compact form {form!r}; this side reads 1 and {FORM}"
        )
    entries = d.get("t")
    if form >= 2:
        both = d.get("id")
        if not isinstance(both, bytes) or len(both) != 2 * ID_BYTES or "rid" in d or "lid" in d:
            raise WireError(
                Reason.SCHEMA,
                f"UPDATE.payload: a form-2 compact payload needs 'id', {2 * ID_BYTES} bytes, "
                "and no 'rid' or 'lid'",
            )
        rid, lid = both[:ID_BYTES], both[ID_BYTES:]
    else:
        rid_in, lid_in = d.get("rid"), d.get("lid")
        if (
            not isinstance(rid_in, bytes)
            or len(rid_in) != ID_BYTES
            or not isinstance(lid_in, bytes)
            or len(lid_in) != ID_BYTES
        ):
            raise WireError(
                Reason.SCHEMA,
                f"UPDATE.payload: a compact payload needs 'rid' and 'lid', {ID_BYTES} bytes each",
            )
        rid, lid = rid_in, lid_in
    if not isinstance(entries, list):
        raise WireError(Reason.SCHEMA, "UPDATE.payload.t: expected a list of tensors")
    if layout is None:
        raise WireError(Reason.BAD_PAYLOAD, "a compact payload cannot be read here: this side holds no model")
    if lid != layout.id:
        raise WireError(
            Reason.BAD_SHAPE,
            f"UPDATE.payload is laid out for model layout {lid.hex()}; this side's model is {layout.id.hex()}"
            f" ({len(layout.names)} tensors)",
        )
    recipe = recipes.get(rid)
    if recipe is None:
        known = ", ".join(f"{k.hex()} ({v!r})" for k, v in recipes.items()) or "none"
        raise WireError(
            Reason.BAD_PAYLOAD,
            f"UPDATE.payload.rid {rid.hex()} names no recipe this side knows (known: {known})",
        )
    idx = sent_indices(d, layout)
    if len(entries) != len(idx):
        raise WireError(
            Reason.BAD_SHAPE,
            f"UPDATE.payload.t holds {len(entries)} tensors, the mask and model say {len(idx)}",
        )
    if recipe in RAW_RECIPES:
        return {"codec": "fp32", "tensors": _raw_tensors(entries, idx, layout)}
    pipe = pipeline(recipe)
    chains: dict[str, int] = {}
    tensors: dict[str, Any] = {}
    for i, e in zip(idx, entries, strict=True):
        name, shape = layout.names[i], layout.shapes[i]
        where = f"UPDATE.payload.t[{name!r}]"
        chain = pipe.chain_for(name, math.prod(shape))
        n_values = len(_value_keys(chain, short=False))
        n_short = len(_value_keys(chain, short=True))
        n_legacy = len(_value_keys(chain, short=False, legacy=True))
        short = form >= 2 and n_short < n_values and isinstance(e, list) and len(e) == n_short + 1
        # An older agent's form 1 lists no index coding (varints): read it with its own keys.
        legacy = form < 2 and n_legacy < n_values and isinstance(e, list) and len(e) == n_legacy + 1
        if not isinstance(e, list) or (not short and not legacy and len(e) != n_values + 1):
            also = f" (or {n_short} with k and ib left out)" if form >= 2 and n_short < n_values else ""
            raise WireError(
                Reason.SCHEMA,
                f"{where}: expected {n_values} metadata values{also} of {chain.text!r} and the data",
            )
        data = e[-1]
        if not isinstance(data, (bytes, list)):
            raise WireError(Reason.SCHEMA, f"{where}: data must be bin (compressed) or a list of bin")
        values = e[:-1]
        meta: list[dict[str, Any]] = []
        it = iter(values)
        for stage_keys in _stage_keys(chain, short, legacy):
            m = {k: v for k, v in zip(stage_keys, it, strict=False) if v is not None}  # takes len(keys)
            meta.append(m)
        if short:
            try:
                meta = _derive(chain, meta, math.prod(shape), data)
            except (ValueError, TypeError, zstandard.ZstdError) as exc:
                raise WireError(
                    Reason.BAD_PAYLOAD, f"{where}: the left-out k and ib cannot be recomputed ({exc})"
                ) from None
        if form >= 2 and isinstance(data, list) and len(data) == 1 and isinstance(data[0], bytes):
            data = _split(chain, meta, math.prod(shape), data[0], where)
        rec: dict[str, Any] = {
            "c": chains.setdefault(chain.text, len(chains)),
            "dtype": "float32",
            "shape": list(shape),
            "meta": meta,
        }
        if isinstance(data, bytes):
            rec["z"] = data
        else:
            rec["data"] = data
        tensors[name] = rec
    return {
        "codec": "pipeline",
        "recipe": recipe,
        "body": {"v": _BODY_VERSION, "chains": list(chains), "tensors": tensors},
    }


def as_full(d: Mapping[str, Any], layout: Layout | None, recipes: Mapping[bytes, str]) -> Mapping[str, Any]:
    """``d`` in the full form: expanded when compact, else as it is (for readers of the full form,
    e.g. a tool inspecting the codec body). WireError as ``expand_payload``."""
    return expand_payload(d, layout, recipes) if d.get("codec") == COMPACT else d


def _raw_tensors(entries: Sequence[Any], idx: Sequence[int], layout: Layout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, e in zip(idx, entries, strict=True):
        name = layout.names[i]
        if not isinstance(e, bytes):
            raise WireError(Reason.SCHEMA, f"UPDATE.payload.t[{name!r}]: expected the tensor's bytes (bin)")
        out[name] = {"dtype": layout.dtypes[i], "shape": list(layout.shapes[i]), "data": e}
    return out


def _meta_values(chain: Chain, meta: Any) -> list[Any] | None:
    """The chain's per-stage metadata maps as one list of values in the order the stages declare
    their keys (``Stage.meta_schema``), None for a key a stage left out; None when ``meta`` holds a
    key its stage does not declare (then the full form says it)."""
    stages = chain.float_stages
    if not isinstance(meta, list) or len(meta) != len(stages):
        return None
    out: list[Any] = []
    for stage, m in zip(stages, meta, strict=True):
        if not isinstance(m, dict) or set(m) - set(stage.meta_schema) or None in m.values():
            return None
        out.extend(m.get(k) for k in stage.meta_schema)
    return out


_DERIVED = ("k", "ib")  # what form 2 leaves out of a top-k stage's metadata
_CODING = ("rb",)  # the index coding's own values: sent (nil for varints), never derived
# Top-k metadata keys of the compact entries older agents send (before the Rice index coding).
_LEGACY_TOPK = ("k", "ib")


def _derivable(stage: Any) -> bool:
    """A top-k stage whose metadata is what the receiver can recompute (k, ib) plus the index
    coding's parameter. Another schema keeps all its values on the wire."""
    keys = set(stage.meta_schema) if isinstance(stage, TopK) else set()
    return set(_DERIVED) <= keys <= set(_DERIVED) | set(_CODING)


def _stage_keys(chain: Chain, short: bool, legacy: bool = False) -> list[list[str]]:
    out = []
    for st in chain.float_stages:
        keys = list(st.meta_schema)
        if short and _derivable(st):
            keys = [k for k in keys if k not in _DERIVED]
        elif legacy and isinstance(st, TopK):
            keys = [k for k in keys if k in _LEGACY_TOPK]
        out.append(keys)
    return out


def _value_keys(chain: Chain, short: bool, legacy: bool = False) -> list[str]:
    """The key of every metadata value an entry lists, in order."""
    return [k for keys in _stage_keys(chain, short, legacy) for k in keys]


def _derive(chain: Chain, meta: Sequence[Mapping[str, Any]], n: int, data: Any) -> list[dict[str, Any]]:
    """``meta`` with every top-k stage's k and ib recomputed (those stages' maps are empty): k from
    the recipe's fraction and the stage's input size, ib from the index array's length, or, for a
    byte-stage frame, from the size its header declares minus the chain's other arrays. The same
    function decides on the sender whether the values may be left out, so both sides agree.
    ValueError, TypeError or zstandard.ZstdError when it cannot be done."""
    out = [dict(m) for m in meta]
    at: list[tuple[int, int, int]] = []  # (stage, position of its index array, placeholder ib)
    pos = total = 0
    for j, (st, m) in enumerate(zip(chain.float_stages, out, strict=True)):
        if _derivable(st):
            k = min(n, max(1, math.ceil(st.args["frac"] * n)))
            # A placeholder ib in the coding's range (the fewest bytes k indices can take); the
            # real ib replaces it below.
            b = m.get("rb")
            m["k"] = k
            m["ib"] = k if b is None else -(-k * (int(b) + 1) // 8)
            at.append((j, pos, m["ib"]))
        fields, n = st.layout(m, n)
        pos += len(fields)
        total += sum(f.nbytes for f in fields)
    joined = isinstance(data, list) and len(data) == 1 and pos > 1  # form 2: the arrays in one bin
    if isinstance(data, list) and not joined:
        for j, p, _ in at:
            if p >= len(data) or not isinstance(data[p], bytes):
                raise ValueError(f"data[{p}] (the index bytes) is missing")
            out[j]["ib"] = len(data[p])
        return out
    if isinstance(data, list):
        if not isinstance(data[0], bytes):
            raise TypeError("data[0] must be bin")
        declared = len(data[0])
    elif isinstance(data, bytes):
        declared = zstandard.frame_content_size(data)
        if declared < 0:
            raise ValueError("the zstd frame declares no content size")
    else:
        raise TypeError("data must be bin or a list of bin")
    if len(at) != 1:
        raise ValueError(f"the arrays' total size gives one left-out ib, the chain has {len(at)}")
    j, _, placeholder = at[0]
    out[j]["ib"] = declared - (total - placeholder)
    return out


def _split(chain: Chain, meta: Sequence[dict[str, Any]], n: int, blob: bytes, where: str) -> list[bytes]:
    """Form 2's one bin of a tensor's arrays, cut at the sizes the metadata gives (one copy of
    each array; they are the small, compressed side of an update). WireError as the codec would
    refuse a wrong length: bad_payload."""
    sizes: list[int] = []
    try:
        for st, m in zip(chain.float_stages, meta, strict=True):
            fields, n = st.layout(m, n)
            sizes.extend(f.nbytes for f in fields)
    except (ValueError, TypeError) as exc:
        raise WireError(Reason.BAD_PAYLOAD, f"{where}: metadata {exc}") from None
    if len(sizes) < 2:
        return [blob]
    if sum(sizes) != len(blob):
        raise WireError(
            Reason.BAD_PAYLOAD, f"{where}: {len(blob)} bytes of arrays, the metadata says {sum(sizes)}"
        )
    out, at = [], 0
    for size in sizes:
        out.append(blob[at : at + size])
        at += size
    return out


def _short_values(chain: Chain, meta: Sequence[Mapping[str, Any]], n: int, data: Any) -> list[Any] | None:
    """The entry's values with the top-k stages' k and ib left out, when ``_derive`` restores them
    exactly; else None (then every value is listed)."""
    if not any(_derivable(st) for st in chain.float_stages):
        return None
    kept = [
        {k: v for k, v in m.items() if k not in _DERIVED} if _derivable(st) else m
        for st, m in zip(chain.float_stages, meta, strict=True)
    ]
    try:
        derived = _derive(chain, kept, n, data)
    except (ValueError, TypeError, zstandard.ZstdError):
        return None
    if any(
        {k: (type(v), v) for k, v in a.items()} != {k: (type(v), v) for k, v in b.items()}
        for a, b in zip(derived, meta, strict=True)
    ):
        return None
    return [m.get(k) for keys, m in zip(_stage_keys(chain, short=True), meta, strict=True) for k in keys]
