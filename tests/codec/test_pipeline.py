"""Round trips, error bounds, error feedback, budgets and state, on both kernel backends."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitfl.arrays import F32
from orbitfl.codec import CodecState, Payload, PayloadLimits, Pipeline, rel_error
from orbitfl.kernels import BACKENDS

from .conftest import layers

LOSSLESS = ["fp32", "zstd", "fp32|zstd", "fp32|zstd:19"]


def roundtrip(
    pipe: Pipeline, tensors: dict[str, F32], state: CodecState | None = None, **kw: object
) -> dict[str, F32]:
    payload = pipe.encode(tensors, state if state is not None else pipe.new_state(), **kw)  # type: ignore[arg-type]
    back = Payload.from_bytes(payload.to_bytes())
    assert back.nbytes == payload.nbytes
    return pipe.decode(back)


@pytest.mark.parametrize("recipe", LOSSLESS)
def test_lossless_recipes_round_trip_exactly(backend: str, recipe: str) -> None:
    t = layers()
    t["zeros"] = np.zeros(5000, np.float32)  # compressible, so zstd really compresses
    t["huge"] = np.array([3.4e38, -1e-45, 0.0, -0.0], np.float32)
    out = roundtrip(Pipeline.parse(recipe, backend), t)
    assert list(out) == list(t)
    for name, x in t.items():
        assert out[name].shape == x.shape and out[name].dtype == np.float32
        assert out[name].tobytes() == x.tobytes(), name


def test_zstd_shrinks_compressible_tensors(backend: str) -> None:
    t = {"z": np.zeros(10_000, np.float32)}
    assert (
        Pipeline.parse("zstd", backend).encode(t).nbytes
        < Pipeline.parse("fp32", backend).encode(t).nbytes / 50
    )


def test_half_precision_error_bounds(backend: str) -> None:
    t = layers()
    for recipe, rel in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        out = roundtrip(Pipeline.parse(recipe, backend), t)
        for name, x in t.items():
            err = np.abs(out[name] - x)
            assert (err <= np.maximum(np.abs(x) * rel, 2.0**-24)).all(), (recipe, name)


def test_fp16_refuses_values_out_of_its_range(backend: str) -> None:
    with pytest.raises(ValueError, match="65504"):
        Pipeline.parse("fp16", backend).encode({"w": np.array([1e5], np.float32)})


def _bucket_steps(x: F32, bits: int, bucket: int) -> F32:
    flat = x.reshape(-1)
    steps = np.empty(flat.size, np.float32)
    for j in range(0, flat.size, bucket):
        b = flat[j : j + bucket]
        steps[j : j + bucket] = (b.max() - b.min()) / (2**bits - 1)
    return steps.reshape(x.shape)


@pytest.mark.parametrize(
    ("recipe", "bits", "bucket", "steps"),
    [
        ("quant:8", 8, 512, 0.5),
        ("quant:4,bucket=64", 4, 64, 0.5),
        ("quant:2|zstd", 2, 512, 0.5),
        ("quant:4,bucket=256,stochastic", 4, 256, 1.0),
        ("qsgd:4", 4, 512, 1.0),
        ("qsgd:1", 1, 512, 1.0),
    ],
)
def test_uniform_quantization_error_within_half_or_one_step(
    backend: str, recipe: str, bits: int, bucket: int, steps: float
) -> None:
    t = layers()
    out = roundtrip(Pipeline.parse(recipe, backend), t)
    for name, x in t.items():
        bound = _bucket_steps(x, bits, bucket) * steps * (1 + 1e-5) + 1e-7
        assert (np.abs(out[name] - x) <= bound).all(), name


def test_stochastic_rounding_is_unbiased_over_rounds(backend: str) -> None:
    x = np.random.default_rng(1).normal(size=2000).astype(np.float32)
    pipe = Pipeline.parse("qsgd:2", backend)
    state = pipe.new_state()
    mean = np.zeros_like(x, dtype=np.float64)
    rounds = 200
    for _ in range(rounds):
        mean += pipe.decode(pipe.encode({"x": x}, state))["x"]
    mean /= rounds
    one = pipe.decode(pipe.encode({"x": x}, state))["x"]
    # Averaging independent roundings shrinks the error like 1/sqrt(rounds): far below one rounding.
    assert rel_error(x, mean.astype(np.float32)) < rel_error(x, one) / 5


def test_sign_sends_sign_times_mean_magnitude(backend: str) -> None:
    x = layers()["fc.weight"]
    out = roundtrip(Pipeline.parse("sign", backend), {"x": x})["x"]
    scale = np.abs(x).mean(dtype=np.float64)
    np.testing.assert_allclose(out, np.where(x >= 0, scale, -scale), rtol=1e-5)


def test_topk_keeps_the_largest_magnitudes(backend: str) -> None:
    x = layers()["fc.weight"]
    out = roundtrip(Pipeline.parse("topk:0.05", backend), {"x": x})["x"]
    kept = out != 0
    assert kept.sum() == math.ceil(0.05 * x.size)
    np.testing.assert_array_equal(out[kept], x[kept])
    assert np.abs(x[kept]).min() >= np.abs(x[~kept]).max()


def test_topk_then_quant_bounds_the_kept_values(backend: str) -> None:
    x = layers()["fc.weight"]
    out = roundtrip(Pipeline.parse("topk:0.1|quant:8|zstd", backend), {"x": x})["x"]
    kept = out != 0
    vals = x[np.abs(x) >= np.sort(np.abs(x).ravel())[-kept.sum()]]
    step = (vals.max() - vals.min()) / 255
    assert np.abs(out[kept] - x[kept]).max() <= step / 2 * (1 + 1e-5) + 1e-7


def test_gcc_replaces_the_most_replaceable_values_by_centroids(backend: str) -> None:
    x = layers()["fc.weight"]
    out = roundtrip(Pipeline.parse("gcc:8,rho=0.5+noef", backend), {"x": x})["x"].ravel()
    xs = x.ravel()
    exact = out == xs
    assert exact.sum() >= xs.size - math.floor(0.5 * xs.size)
    cents = np.unique(out[~exact])
    assert cents.size <= 8
    # The values replaced are those nearest their centroid: closer than any value sent exactly.
    dist = np.abs(xs[:, None] - cents[None, :]).min(axis=1)
    assert dist[~exact].max() <= dist[exact].min() + 1e-6
    assert rel_error(x, out.reshape(x.shape)) < 0.2


@pytest.mark.parametrize(
    "recipe", ["kmeans:16", "coreset:16", "coreset:16,codebook=8", "kmeans:4,method=optimal"]
)
def test_weight_sharing_sends_each_value_as_its_nearest_codebook_entry(backend: str, recipe: str) -> None:
    x = layers()["fc.weight"]
    out = roundtrip(Pipeline.parse(recipe, backend), {"x": x})["x"].ravel()
    book = np.unique(out)
    k = int(recipe.split(":")[1].split(",")[0])
    assert book.size <= k
    nearest = np.abs(x.ravel()[:, None] - book[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(x.ravel() - out), nearest, atol=1e-7)
    # k-means with k = 2**b levels beats b-bit uniform levels over the same range.
    uni = roundtrip(Pipeline.parse(f"quant:{int(math.log2(k))},bucket={x.size}", backend), {"x": x})["x"]
    assert ((out - x.ravel()) ** 2).sum() <= ((uni.ravel() - x.ravel()) ** 2).sum() * 1.02


def _curvature(t: dict[str, F32], seed: int = 3) -> dict[str, F32]:
    rng = np.random.default_rng(seed)
    return {n: (np.abs(rng.normal(size=x.shape)) + 0.1).astype(np.float32) for n, x in t.items()}


def test_laq_values_are_alpha_times_levels_and_beat_sending_nothing(backend: str) -> None:
    t = layers()
    d = _curvature(t)
    for bits in (1, 2, 3):
        out = roundtrip(Pipeline.parse(f"laq:{bits}", backend), t, curvature=d)
        for name, x in t.items():
            y = out[name]
            assert np.isfinite(y).all() and y.shape == x.shape
            levels = np.unique(np.abs(y))
            assert levels.size <= 2**bits
            assert (d[name] * (x - y) ** 2).sum() < (d[name] * x**2).sum(), (bits, name)


def test_laq_needs_curvature(backend: str) -> None:
    with pytest.raises(ValueError, match="curvature"):
        Pipeline.parse("laq:2", backend).encode(layers())
    with pytest.raises(TypeError, match="curvature"):
        Pipeline.parse("laq:2", backend).encode({"x": np.ones(4, np.float32)}, curvature={"x": np.ones(4)})


@pytest.mark.parametrize(
    ("recipe", "rounds", "frac"),
    [
        ("topk:0.02+ef", 150, 0.2),
        ("topk:0.02+ef|quant:4|zstd", 150, 0.2),
        ("efsign", 100, 0.1),
        ("gcc:4", 60, 0.1),
    ],
)
def test_error_feedback_makes_the_sum_of_decoded_track_the_sum_of_inputs(
    backend: str, recipe: str, rounds: int, frac: float
) -> None:
    rng = np.random.default_rng(5)
    drift = rng.normal(size=3000).astype(np.float32)
    pipe = Pipeline.parse(recipe, backend)
    state = pipe.new_state()
    sent = np.zeros(3000, np.float64)
    got = np.zeros(3000, np.float64)
    errs = []
    for r in range(rounds):
        x = (drift + rng.normal(size=3000)).astype(np.float32)  # gradients: a steady part plus noise
        sent += x
        got += pipe.decode(pipe.encode({"x": x}, state))["x"]
        if r in (rounds // 10, rounds - 1):
            errs.append(np.linalg.norm(sent - got) / np.linalg.norm(sent))
        # What has not arrived yet is exactly what waits in the residual.
        np.testing.assert_allclose(sent - got, state.residuals["x"], atol=1e-3 * (r + 1))
    assert errs[-1] < frac and errs[-1] < errs[0] / 2.5, errs


def test_error_feedback_needs_a_state(backend: str) -> None:
    with pytest.raises(ValueError, match="state"):
        Pipeline.parse("efsign", backend).encode(layers())


def test_state_round_trips_through_a_plain_dict(backend: str) -> None:
    pipe = Pipeline.parse("topk:0.05+ef|qsgd:4|zstd; *.bias=efsign", backend)
    a = pipe.new_state(seed=42)
    for s in range(3):
        pipe.encode(layers(s), a)
    d = msgpack.unpackb(msgpack.packb(a.to_dict()))  # what an agent persists across a reboot
    b = CodecState.from_dict(d)
    assert b.round == a.round and b.seed == 42 and set(b.residuals) == set(a.residuals)
    for s in range(3, 5):
        assert pipe.encode(layers(s), a).to_bytes() == pipe.encode(layers(s), b).to_bytes()
    with pytest.raises(ValueError, match="residuals"):
        CodecState.from_dict({**d, "residuals": {"x": {"dtype": "float32", "shape": [3], "data": b"\0" * 8}}})
    with pytest.raises(ValueError, match="round"):
        CodecState.from_dict({**d, "round": -1})


def test_state_is_untouched_when_encode_fails(backend: str) -> None:
    pipe = Pipeline.parse("topk:0.5+ef|fp16", backend)
    state = pipe.new_state()
    pipe.encode({"x": np.ones(10, np.float32), "y": np.ones(10, np.float32)}, state)
    before = state.to_dict()
    with pytest.raises(ValueError, match="'y'"):
        pipe.encode({"x": np.ones(10, np.float32), "y": np.full(10, 1e6, np.float32)}, state)
    assert state.to_dict() == before
    with pytest.raises(ValueError, match="model changed"):
        pipe.encode({"x": np.ones(11, np.float32)}, state)


def test_alq_fits_the_budget_and_spends_more_bytes_for_less_error(backend: str) -> None:
    t = layers()
    d = _curvature(t)
    fp32 = Pipeline.parse("fp32", backend).encode(t).nbytes
    pipe = Pipeline.parse("alq", backend)
    errors = []
    for budget in (fp32 // 24, fp32 // 10, fp32 // 4):
        payload = pipe.encode(t, curvature=d, budget_bytes=budget)
        assert payload.nbytes <= budget
        out = pipe.decode(Payload.from_bytes(payload.to_bytes()))
        full = {n: out.get(n, np.zeros_like(x)) for n, x in t.items()}
        errors.append(sum(float((d[n] * (x - full[n]) ** 2).sum()) for n, x in t.items()))
    assert errors[0] >= errors[1] >= errors[2] and errors[0] > errors[2]
    with pytest.raises(ValueError, match="budget_bytes"):
        pipe.encode(t, curvature=d)
    with pytest.raises(ValueError):
        pipe.encode(t, curvature=d, budget_bytes=10)


def test_budget_is_enforced_for_other_recipes(backend: str) -> None:
    with pytest.raises(ValueError, match="over budget"):
        Pipeline.parse("quant:8", backend).encode(layers(), budget_bytes=100)


def test_per_tensor_overrides_send_biases_exactly(backend: str) -> None:
    t = layers()
    out = roundtrip(Pipeline.parse("quant:2; *.bias=fp32; <2=fp32", backend), t)
    assert out["fc.bias"].tobytes() == t["fc.bias"].tobytes()
    assert out["temp"].tobytes() == t["temp"].tobytes()
    assert out["fc.weight"].tobytes() != t["fc.weight"].tobytes()


def test_wrong_input_types(backend: str) -> None:
    pipe = Pipeline.parse("quant:8", backend)
    with pytest.raises(TypeError, match="float32"):
        pipe.encode({"x": np.ones(3)})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        pipe.encode({"x": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        pipe.encode([np.ones(3, np.float32)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'x'"):
        pipe.encode({"x": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        Pipeline.parse("fp32", backend).encode({"x": np.array([np.inf], np.float32)})
    with pytest.raises(ValueError, match="chars"):
        pipe.encode({"x" * 600: np.ones(3, np.float32)})


def test_many_tensors_and_non_contiguous_input(backend: str) -> None:
    rng = np.random.default_rng(9)
    t = {f"layer{i}.w": rng.normal(size=(i % 7 + 1, 3)).astype(np.float32) for i in range(400)}
    t["strided"] = rng.normal(size=(20, 20)).astype(np.float32)[::2, ::3]
    out = roundtrip(Pipeline.parse("quant:8|zstd", backend), t)
    assert list(out) == list(t)
    for n, x in t.items():
        assert out[n].shape == x.shape
        assert rel_error(x, out[n]) < 0.02


def test_backends_agree_bit_for_bit() -> None:
    t = layers()
    for recipe in [
        "quant:4",
        "qsgd:3",
        "fp16",
        "bf16",
        "topk:0.1+ef|quant:8",
        "efsign",
        "kmeans:8,method=optimal",
    ]:
        enc = [
            Pipeline.parse(recipe, b).encode(t, Pipeline.parse(recipe, b).new_state()).to_bytes()
            for b in BACKENDS
        ]
        assert enc[0] == enc[1], recipe


RECIPES = [
    "fp32",
    "fp32|zstd",
    "fp16",
    "bf16",
    "quant:3",
    "qsgd:4",
    "sign",
    "efsign",
    "topk:0.3+ef|quant:4|zstd",
    "gcc:4",
    "gcc:4|quant:8|zstd",
    "kmeans:4",
    "coreset:8,codebook=8",
]


@pytest.mark.parametrize("be", BACKENDS)
@settings(max_examples=40, deadline=None, database=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
    recipe=st.sampled_from(RECIPES),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]),
    seed=st.integers(0, 2**16),
    const=st.booleans(),
)
def test_any_shape_round_trips(
    be: str, shape: tuple[int, ...], recipe: str, scale: float, seed: int, const: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = (np.full(shape, scale) if const else rng.normal(size=shape) * scale).astype(np.float32)
    pipe = Pipeline.parse(recipe, be)
    out = roundtrip(pipe, {"x": x, "s": np.array(scale, np.float32)}, pipe.new_state())
    assert out["x"].shape == x.shape and out["x"].dtype == np.float32
    assert np.isfinite(out["x"]).all()
    if pipe.recipe.default.lossless or (const and recipe.startswith(("quant", "qsgd"))):
        np.testing.assert_array_equal(out["x"], x)


def test_alq_with_error_feedback_keeps_what_it_did_not_send(backend: str) -> None:
    t = layers()
    d = _curvature(t)
    pipe = Pipeline.parse("alq:0/1/2+ef", backend)
    state = pipe.new_state()
    budget = Pipeline.parse("fp32", backend).encode(t).nbytes // 30
    sent = {n: np.zeros(x.size) for n, x in t.items()}
    got = {n: np.zeros(x.size) for n, x in t.items()}
    for _ in range(4):
        out = pipe.decode(pipe.encode(t, state, curvature=d, budget_bytes=budget))
        for n, x in t.items():
            sent[n] += x.ravel()
            got[n] += out[n].ravel() if n in out else 0.0
    for n in t:
        np.testing.assert_allclose(sent[n] - got[n], state.residuals[n], atol=1e-5)


@pytest.mark.parametrize(
    "recipe", ["topk:0.01+ef|quant:8|zstd", "topk:0.05+ef|quant:4", "topk:0.1+ef|qsgd:4", "topk:0.02+ef|sign"]
)
def test_topk_error_feedback_is_input_minus_what_the_receiver_decodes(backend: str, recipe: str) -> None:
    """The residual top-k keeps in place, plus the later stages' error on the k kept values, is
    bit for bit x + r - decode(payload): what error feedback means, without decoding all n."""
    pipe = Pipeline.parse(recipe, backend=backend)
    state = pipe.new_state()
    for r in range(3):
        tensors = layers(seed=r)
        before = {k: v.copy() for k, v in state.residuals.items()}
        back = pipe.decode(Payload.from_wire(pipe.encode(tensors, state).to_wire(), limits=PayloadLimits()))
        for name, x in tensors.items():
            acc = x.reshape(-1) + before[name] if name in before else x.reshape(-1)
            want = acc - back[name].reshape(-1)
            assert np.array_equal(want.view(np.uint32), state.residuals[name].view(np.uint32)), (name, r)
