"""Codec pipeline: named, composable compression recipes over the kernels.

    pipe = Pipeline.parse("topk:0.01+ef | quant:8 | zstd")      # backend="cpp" or "numpy"
    state = pipe.new_state()                                     # residuals etc.; state.to_dict()
    payload = pipe.encode({"w": w, "b": b}, state)               # -> Payload
    wire = payload.to_wire()                                     # plain dict for msgpack
    back = pipe.decode(Payload.from_wire(wire, limits=PayloadLimits())) # validated, then decoded

The recipe grammar is in :mod:`orbitfl.codec.recipe`; docs/codecs.md describes every stage.
"""

from orbitfl.codec.entropy import EntropyReport, entropy_report, symbol_entropy
from orbitfl.codec.payload import DEFAULT_LIMITS, FORMAT_VERSION, Payload, PayloadLimits, TensorRecord
from orbitfl.codec.pipeline import CodecState, Pipeline, rel_error
from orbitfl.codec.recipe import Chain, Recipe, parse_chain, parse_recipe
from orbitfl.codec.registry import REGISTRY, EncodeContext, Encoded, Field, FloatStage, Param, Stage, register

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "REGISTRY",
    "Chain",
    "CodecState",
    "EncodeContext",
    "Encoded",
    "EntropyReport",
    "Field",
    "FloatStage",
    "Param",
    "Payload",
    "PayloadLimits",
    "Pipeline",
    "Recipe",
    "Stage",
    "TensorRecord",
    "entropy_report",
    "parse_chain",
    "parse_recipe",
    "register",
    "rel_error",
    "symbol_entropy",
]
