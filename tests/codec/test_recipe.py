"""The recipe grammar: canonical text round trips, and every malformed recipe says what is wrong."""

from __future__ import annotations

import pytest

from orbitfl.codec import REGISTRY, parse_chain, parse_recipe


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("fp32", "fp32"),
        ("zstd", "fp32|zstd:3"),
        ("fp32 | zstd:7", "fp32|zstd:7"),
        ("quant:8", "quant:8"),
        ("quant:4,bucket=256,stochastic", "quant:4,bucket=256,stochastic"),
        ("quant:4, stochastic=yes ,bucket=256", "quant:4,bucket=256,stochastic"),
        ("qsgd:4", "qsgd:4"),
        ("topk:0.01+ef | quant:4 | zstd", "topk:0.01+ef|quant:4|zstd:3"),
        ("topk:0.1", "topk:0.1|fp32"),
        ("efsign", "efsign"),
        ("sign+ef", "sign+ef"),
        ("gcc:16,rho=0.5", "gcc:16|fp32"),
        ("gcc:8,rho=0.25+noef|fp16", "gcc:8,rho=0.25+noef|fp16"),
        ("kmeans:16", "kmeans:16"),
        ("coreset:16,codebook=8", "coreset:16,codebook=8"),
        ("laq:3", "laq:3"),
        ("alq", "alq"),
        ("alq:0/2/4", "alq:0/2/4"),
        ("bf16|zstd:1", "bf16|zstd:1"),
    ],
)
def test_canonical_text_round_trips(text: str, canonical: str) -> None:
    chain = parse_chain(text)
    assert chain.text == canonical
    assert parse_chain(chain.text).text == canonical


def test_gcc_has_error_feedback_by_default_and_can_drop_it() -> None:
    assert parse_chain("gcc:16").ef
    assert not parse_chain("gcc:16+noef").ef
    assert parse_chain("efsign").ef and not parse_chain("sign").ef


def test_overrides_pick_the_first_matching_chain() -> None:
    r = parse_recipe("quant:4|zstd; *.bias=fp32; <100=fp16")
    assert r.chain_for("fc.weight", 10_000).text == "quant:4|zstd:3"
    assert r.chain_for("fc.bias", 10_000).text == "fp32"
    assert r.chain_for("tiny", 99).text == "fp16"
    assert parse_recipe(r.text).text == r.text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("nope:3", "unknown codec stage 'nope'"),
        ("quant", "missing argument 'bits'"),
        ("quant:9", "bits=9 must be in 1..8"),
        ("quant:x", "not a valid int"),
        ("quant:4,bucket=0", "bucket=0"),
        ("quant:4,foo=1", "unknown argument 'foo'"),
        ("quant:4,5", "unexpected argument '5'"),
        ("quant:4,bits=5", "given twice"),
        ("quant:", "no arguments"),
        ("topk:0", "must be in (0, 1]"),
        ("topk:nan", "not a valid float"),
        ("zstd|quant:4", "after a byte stage"),
        ("quant:4|topk:0.1", "leaves no float values"),
        ("fp16|fp32", "leaves no float values"),
        ("zstd|zstd", "more than one byte stage"),
        ("topk:0.1|laq:2", "must be the first stage"),
        ("topk:0.1|quant:4+ef", "only the first stage"),
        ("fp32+ef", "lossless"),
        ("quant:4+xyz", "unknown modifier"),
        ("zstd:0", "must be in 1..19"),
        ("quant:4||zstd", "empty stage"),
        ("coreset:16,codebook=4", "must be one of"),
        ("alq:2/9", "bit widths in 0..8"),
        ("quant:4; bias", "SELECTOR=CHAIN"),
        ("quant:4; <x=fp32", "whole number"),
        ("quant:4; *.bias=nope", "unknown codec stage"),
    ],
)
def test_bad_recipes_raise_value_error_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_recipe(text)
    assert says in str(info.value)


def test_recipe_must_be_text() -> None:
    with pytest.raises(TypeError):
        parse_recipe(8)  # type: ignore[arg-type]


def test_every_registered_stage_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "codecs.md").read_text()
    for name, cls in REGISTRY.items():
        assert f"`{name}" in doc, name
        assert cls.__doc__, name
