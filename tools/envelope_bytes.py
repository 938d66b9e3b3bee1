#!/usr/bin/env python3
"""Bytes of envelope and per-tensor metadata in one UPDATE frame: the full form against the compact
forms 1 and 2 (orbitfl.wire.compact), per zoo model and recipe.

Each row encodes one delta of the model (Gaussian, sd 1e-3: what a round of SGD changes) with the
recipe, wraps it in the UPDATE the agent machine sends (ids, task, round, samples, two metrics) and
splits the frame into:

- ``data``: the codec's arrays (or the zstd frames of them, or the raw float32 bytes): what both
  forms carry alike;
- ``message``: the UPDATE fields outside the payload (v, type, id, task_id, round, base_version,
  samples, metrics);
- ``header``: the payload's own fields (codec, recipe text or id, layout id, mask, chain list);
- ``tensors``: per-tensor metadata (names, dtype, shape, chain index, stage metadata, framing).

``envelope`` is everything but ``data``. Every part is measured as the agent packs it
(``orbitfl.wire.messages.pack_f32``: float32 values as msgpack float32). Form 2 also leaves out the
UPDATE's task_id, as an agent does for a ground offering it. The deltas are seeded, so the figures
repeat.

    .venv/bin/python tools/envelope_bytes.py                      # every zoo model, default recipes
    .venv/bin/python tools/envelope_bytes.py --model lenet-s --recipe "topk:0.05+ef | sign | zstd"
    .venv/bin/python tools/envelope_bytes.py --json envelope.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.models import zoo
from orbitfl.wire.compact import FORM, Layout, compact_payload
from orbitfl.wire.messages import Update, encode, make_id, pack_f32
from orbitfl.wire.payload import encode_payload, new_codec_state

RECIPES = (
    "fp32",
    "topk:0.01+ef | quant:4 | zstd",
    "topk:0.05+ef | sign | zstd",
    "quant:8 | zstd",
    "qsgd:4 | zstd",
)


def _packed(v: Any) -> int:
    return len(pack_f32(v))


def _bins(v: Any) -> int:
    """Bytes held in bin values anywhere inside ``v`` (without their msgpack headers)."""
    if isinstance(v, bytes):
        return len(v)
    if isinstance(v, Mapping):
        return sum(_bins(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_bins(x) for x in v)
    return 0


def _tensor_part(payload: Mapping[str, Any]) -> Any:
    codec = payload["codec"]
    if codec == "fp32":
        return payload["tensors"]
    if codec == "pipeline":
        return payload["body"]["tensors"]
    return payload["t"]


def split(payload: dict[str, Any], task_round: int = 12, omit_task_id: bool = False) -> dict[str, int]:
    """The byte parts of the UPDATE frame carrying ``payload``."""
    msg = Update(
        make_id("sat07", 4242),
        f"r{task_round}/sat07",
        task_round,
        task_round - 1,
        480,
        {"loss": 0.4132, "accuracy": 0.8716},
        payload,
        omit_task_id=omit_task_id,
    )
    frame = len(encode(msg))
    tensors = _tensor_part(payload)
    data = _bins(tensors)
    tensor_meta = _packed(tensors) - data
    header = _packed(payload) - _packed(tensors)  # the ids' bins count here: they are envelope
    message = frame - _packed(payload)
    return {
        "frame": frame,
        "data": data,
        "envelope": frame - data,
        "message": message,
        "header": header,
        "tensors": tensor_meta,
    }


def delta_of(weights: Mapping[str, npt.NDArray[Any]], seed: int) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in weights.items()}


def measure(models: Sequence[str], recipes: Sequence[str], seed: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in models:
        weights = zoo.get_weights(zoo.build(name, seed=seed).model)
        layout = Layout.of_tensors(weights)
        delta = delta_of(weights, seed)
        params = sum(int(v.size) for v in weights.values())
        for recipe in recipes:
            full = encode_payload(recipe, delta, new_codec_state(recipe))
            compact = compact_payload(full, recipe, layout)
            compact2 = compact_payload(full, recipe, layout, FORM)
            if compact is None or compact2 is None:
                raise SystemExit(f"{name} / {recipe}: the payload has no compact form")
            before, form1, after = split(full), split(compact), split(compact2, omit_task_id=True)
            if not before["data"] == form1["data"] == after["data"]:
                raise SystemExit(f"{name} / {recipe}: the forms carry different data ({before}, {after})")
            rows.append(
                {
                    "model": name,
                    "tensors": len(weights),
                    "params": params,
                    "recipe": recipe,
                    "before": before,
                    "form1": form1,
                    "after": after,
                }
            )
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = (
        f"{'model':<13}{'tensors':>8}{'params':>9}  {'recipe':<31}{'data':>8}"
        f"{'env full':>10}{'env c1':>8}{'env c2':>8}{'frame full':>12}{'frame c1':>10}{'frame c2':>10}"
        f"{'saved':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        b, c, a = r["before"], r["form1"], r["after"]
        saved = 1 - a["frame"] / b["frame"]
        lines.append(
            f"{r['model']:<13}{r['tensors']:>8}{r['params']:>9}  {r['recipe']:<31}{b['data']:>8}"
            f"{b['envelope']:>10}{c['envelope']:>8}{a['envelope']:>8}{b['frame']:>12}{c['frame']:>10}"
            f"{a['frame']:>10}{saved:>7.1%}"
        )
    lines.append("")
    lines.append(
        "envelope parts (full -> compact form 1 -> form 2): message / payload header / per-tensor metadata"
    )
    for r in rows:
        b, c, a = r["before"], r["form1"], r["after"]
        parts = (f"{b[k]:>5} -> {c[k]:>4} -> {a[k]:<5}" for k in ("message", "header", "tensors"))
        lines.append(f"  {r['model']:<13}{r['recipe']:<31}" + " ".join(parts))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", action="append", choices=zoo.MODEL_NAMES, help="zoo model (repeat; default all)"
    )
    ap.add_argument("--recipe", action="append", help="codec recipe (repeat; default a representative set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows = measure(args.model or list(zoo.MODEL_NAMES), args.recipe or list(RECIPES), args.seed)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
