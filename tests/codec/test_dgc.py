"""DGC (momentum correction and factor masking for top-k) against a NumPy re-statement of the
paper's update, on both kernel backends; its state across rounds and reboots."""

from __future__ import annotations

import math
import weakref

import msgpack
import numpy as np
import pytest

from orbitfl.codec import CodecState, Payload, Pipeline
from orbitfl.codec.registry import EncodeContext, Encoded
from orbitfl.codec.stages import Dgc

N = 2000


def _grads(rounds: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    drift = rng.normal(size=N).astype(np.float32)
    return [(drift + rng.normal(size=N)).astype(np.float32) for _ in range(rounds)]


def _restated(xs: list[np.ndarray], frac: float, m: float) -> list[np.ndarray]:
    """Lin et al. 2018, Alg. 1 with momentum correction and factor masking, in plain NumPy:
    u = m·u + g; v = v + u; send the k largest |v|; zero u and v where sent."""
    u = np.zeros(N, np.float32)
    v = np.zeros(N, np.float32)
    out = []
    k = max(1, math.ceil(frac * N))
    for g in xs:
        u = (u * np.float32(m) + g).astype(np.float32)
        v = (v + u).astype(np.float32)
        idx = np.sort(np.argsort(-np.abs(v), kind="stable")[:k])
        sent = np.zeros(N, np.float32)
        sent[idx] = v[idx]
        u[idx] = 0
        v[idx] = 0
        out.append(sent)
    return out


def test_dgc_sends_what_the_paper_sends(backend: str) -> None:
    xs = _grads(12)
    pipe = Pipeline.parse("dgc:0.03,momentum=0.8", backend)
    state = pipe.new_state()
    want = _restated(xs, 0.03, 0.8)
    for x, w in zip(xs, want, strict=True):
        got = pipe.decode(Payload.from_bytes(pipe.encode({"x": x}, state).to_bytes()))["x"]
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-6)
        sent = w != 0
        assert (state.momenta["x"][sent] == 0).all() and (state.residuals["x"][sent] == 0).all()


def test_dgc_without_momentum_is_topk_with_error_feedback(backend: str) -> None:
    a, b = Pipeline.parse("dgc:0.05,momentum=0", backend), Pipeline.parse("topk:0.05+ef", backend)
    sa, sb = a.new_state(), b.new_state()
    for x in _grads(5):
        pa, pb = a.encode({"x": x}, sa), b.encode({"x": x}, sb)
        assert pa.records["x"].raw == pb.records["x"].raw
        np.testing.assert_array_equal(a.decode(pa)["x"], b.decode(pb)["x"])
        np.testing.assert_array_equal(sa.residuals["x"], sb.residuals["x"])


@pytest.mark.parametrize("recipe", ["dgc:0.02|quant:4|zstd", "dgc:0.02,momentum=0.5|sign"])
def test_the_residual_keeps_the_quantization_error_of_the_sent_values(backend: str, recipe: str) -> None:
    """v after T rounds is exactly Σ u (before masking) − Σ decoded: what the later stages lost on
    the kept values waits in v like the values top-k dropped."""
    pipe = Pipeline.parse(recipe, backend)
    m = float(pipe.recipe.default.float_stages[0].args["momentum"])
    state = pipe.new_state()
    pushed = np.zeros(N, np.float64)
    got = np.zeros(N, np.float64)
    for r, x in enumerate(_grads(30)):
        u_prev = state.momenta.get("x", np.zeros(N, np.float32))
        pushed += u_prev.astype(np.float64) * m + x
        got += pipe.decode(pipe.encode({"x": x}, state))["x"]
        np.testing.assert_allclose(pushed - got, state.residuals["x"], atol=2e-3 * (r + 1))


def test_warm_up_sends_exponentially_fewer_values_until_frac(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.01,warmup=4", backend)
    state = pipe.new_state()
    ks = [pipe.encode({"x": x}, state).records["x"].meta[0]["k"] for x in _grads(6)]
    assert ks == [math.ceil(d * N) for d in (0.25, 0.0625, 0.015625, 0.01, 0.01, 0.01)]


def test_geometric_ramp_spreads_the_descent_over_every_warm_up_round(backend: str) -> None:
    # 25 % -> 1 % in four equal ratios (0.04 ** (1/4) each), then frac: where DGC's factor 4 would
    # reach frac by the third round
    pipe = Pipeline.parse("dgc:0.01,warmup=4,ramp=geometric", backend)
    state = pipe.new_state()
    ks = [pipe.encode({"x": x}, state).records["x"].meta[0]["k"] for x in _grads(6)]
    assert ks == [500, 224, 100, 45, 20, 20]
    stepped = Pipeline.parse("dgc:0.01,warmup=4", backend)
    s2 = stepped.new_state()
    ks2 = [stepped.encode({"x": x}, s2).records["x"].meta[0]["k"] for x in _grads(6)]
    assert ks2 == [500, 125, 32, 20, 20, 20]  # the default ramp is DGC's, as before


def test_geometric_ramp_never_sends_less_than_frac_and_leaves_the_wire_as_is(backend: str) -> None:
    # frac above the ramp's 25 % start: no warm-up at all; the payload decodes without the recipe
    # knowing the ramp (k travels in the metadata)
    pipe = Pipeline.parse("dgc:0.4,warmup=5,ramp=geometric|sign|zstd", backend)
    state = pipe.new_state()
    for x in _grads(3):
        p = pipe.encode({"x": x}, state)
        assert p.records["x"].meta[0]["k"] == 800
        got = Pipeline.parse("dgc:0.4|sign|zstd", backend).decode(Payload.from_bytes(p.to_bytes()))["x"]
        assert np.count_nonzero(got) == 800


def test_dgc_state_survives_a_reboot_bit_for_bit(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.05|quant:8|zstd; <100=fp32", backend)
    t = {"w": np.zeros(N, np.float32), "b": np.zeros(10, np.float32)}
    a = pipe.new_state(seed=7)
    xs = _grads(6)
    for x in xs[:3]:
        pipe.encode({**t, "w": x}, a)
    b = CodecState.from_dict(msgpack.unpackb(msgpack.packb(a.to_dict())))
    assert set(b.momenta) == {"w"} and set(b.residuals) == {"w"}
    for x in xs[3:]:
        assert pipe.encode({**t, "w": x}, a).to_bytes() == pipe.encode({**t, "w": x}, b).to_bytes()
    np.testing.assert_array_equal(a.momenta["w"], b.momenta["w"])
    bad = a.to_dict()
    bad["momenta"] = {"w": {"dtype": "float32", "shape": [3], "data": b"\0" * 8}}
    with pytest.raises(ValueError, match="momenta"):
        CodecState.from_dict(bad)


def test_a_state_without_momenta_still_reads() -> None:
    """States written before DGC existed have no "momenta" key."""
    d = Pipeline.parse("topk:0.1+ef").new_state().to_dict()
    assert "momenta" not in d
    assert CodecState.from_dict(d).momenta == {}


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("dgc:0.01+noef", "noef"),
        ("dgc:0.01,momentum=1", "momentum"),
        ("dgc:0", "frac"),
        ("topk:0.1|dgc:0.1", "first stage"),
        ("dgc:0.01,warmup=-1", "warmup"),
        ("dgc:0.01,warmup=3,ramp=linear", "ramp"),
    ],
)
def test_bad_dgc_recipes_are_refused_by_name(recipe: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pipeline.parse(recipe)


def test_a_changed_model_is_refused_not_mixed_into_the_momentum(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.1", backend)
    state = pipe.new_state()
    pipe.encode({"x": np.ones(10, np.float32)}, state)
    before = state.to_dict()
    with pytest.raises(ValueError, match="model changed"):
        pipe.encode({"x": np.ones(11, np.float32)}, state)
    assert state.to_dict() == before


def _old_encode(self: Dgc, x: np.ndarray, ctx: EncodeContext) -> Encoded:
    """The dgc stage before the fused kernel: NumPy momentum update, topk, NumPy masking."""
    u = ctx.momentum
    assert u is not None and ctx.residual is not None
    np.multiply(u, np.float32(self.args["momentum"]), out=u)
    np.add(u, x, out=u)
    k = min(x.size, max(1, math.ceil(self.density(ctx.round) * x.size)))
    idx, vals = ctx.kern.topk(u, k, ctx.residual)
    u[idx] = np.float32(0)
    return self._indices(ctx.kern, idx, vals)


@pytest.mark.parametrize(
    "recipe",
    [
        "dgc:0.015|sign|zstd",
        "dgc:0.01,momentum=0.9,warmup=2|quant:8|zstd",
        "dgc:0.05",
        "dgc:0.03,warmup=6,ramp=geometric|sign|zstd",
    ],
)
def test_payloads_and_state_match_the_unfused_stage_over_rounds(
    backend: str, recipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused kernel changes no byte: payloads, residuals and momenta equal those of the
    stage as it was (copied state, NumPy update, topk), round after round, on tensors large
    enough for the kernel's one-pass path and small ones."""
    rng = np.random.default_rng(9)
    shapes = {"big": (300, 700), "mid": (5000,), "bias": (10,)}
    rounds = [{n: rng.laplace(0, 1e-3, s).astype(np.float32) for n, s in shapes.items()} for _ in range(6)]

    def run() -> tuple[list[bytes], list[dict[str, bytes]]]:
        pipe = Pipeline.parse(recipe, backend)
        state = pipe.new_state()
        payloads, states = [], []
        for tensors in rounds:
            payloads.append(pipe.encode(tensors, state).to_bytes())
            states.append(
                {f"r.{n}": a.tobytes() for n, a in state.residuals.items()}
                | {f"m.{n}": a.tobytes() for n, a in state.momenta.items()}
            )
        return payloads, states

    new = run()
    monkeypatch.setattr(Dgc, "encode", _old_encode)
    monkeypatch.setattr(Dgc, "replaces_state", False)
    old = run()
    assert new[0] == old[0]
    assert new[1] == old[1]


def test_a_failed_encode_leaves_the_state_as_it_was(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.02|sign", backend)
    state = pipe.new_state()
    x = np.random.default_rng(10).laplace(0, 1e-3, 70_000).astype(np.float32)
    pipe.encode({"x": x}, state)
    before = (state.residuals["x"].tobytes(), state.momenta["x"].tobytes(), state.round)
    bad = x.copy()
    bad[123] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        pipe.encode({"x": bad}, state)
    assert (state.residuals["x"].tobytes(), state.momenta["x"].tobytes(), state.round) == before


@pytest.mark.parametrize("recipe", ["dgc:0.03,warmup=2,ramp=geometric|sign|zstd", "topk:0.02+ef|quant:8"])
def test_retired_state_is_reused_only_when_nothing_else_holds_it(backend: str, recipe: str) -> None:
    """From the third round the kernel writes the new state into the arrays of two rounds before
    (no fresh pages to fault in) when nothing else references them; arrays someone still holds
    never change. Either way the payloads and states are the same."""
    pipe = Pipeline.parse(recipe, backend)
    rng = np.random.default_rng(15)
    shapes = {"big": (300, 700), "bias": (10,)}
    free, held = pipe.new_state(), pipe.new_state()
    kept: list[tuple[np.ndarray, bytes]] = []
    weak: list[weakref.ref[np.ndarray]] = []
    for r in range(7):
        tensors = {n: rng.laplace(0, 1e-3, s).astype(np.float32) for n, s in shapes.items()}
        kept += [(a, a.tobytes()) for a in (*held.residuals.values(), *held.momenta.values())]
        assert pipe.encode(tensors, free).to_bytes() == pipe.encode(tensors, held).to_bytes()
        for a, b in ((free.residuals, held.residuals), (free.momenta, held.momenta)):
            assert {n: x.tobytes() for n, x in a.items()} == {n: x.tobytes() for n, x in b.items()}
        weak.append(weakref.ref(free.residuals["big"]))
        if r >= 2:
            assert free.residuals["big"] is weak[r - 2]()
    assert all(a.tobytes() == b for a, b in kept)
    assert not any(a is x for a, _ in kept for x in (*held.residuals.values(), *held.momenta.values()))


def test_a_failed_encode_with_spare_arrays_leaves_the_state_as_it_was(backend: str) -> None:
    pipe = Pipeline.parse("dgc:0.02|sign", backend)
    state = pipe.new_state()
    rng = np.random.default_rng(16)
    xs = [rng.laplace(0, 1e-3, 70_000).astype(np.float32) for _ in range(4)]
    for x in xs[:3]:
        pipe.encode({"x": x}, state)
    before = (state.residuals["x"].tobytes(), state.momenta["x"].tobytes(), state.round)
    bad = xs[3].copy()
    bad[123] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        pipe.encode({"x": bad}, state)
    assert (state.residuals["x"].tobytes(), state.momenta["x"].tobytes(), state.round) == before
    fresh = CodecState.from_dict(state.to_dict())  # no spare arrays
    assert pipe.encode({"x": xs[3]}, state).to_bytes() == pipe.encode({"x": xs[3]}, fresh).to_bytes()
    assert state.residuals["x"].tobytes() == fresh.residuals["x"].tobytes()
