"""Host-side optimizers for :class:`orbitfl.agent.graph_trainer.GraphTrainer`, in NumPy, in place.

Each works on one flat float32 slice holding every trainable parameter and on a flat gradient of
the same length, with preallocated moments and scratch, so a step allocates nothing: a few fused
NumPy ufuncs with ``out=`` over the whole slice instead of one small call per parameter. On the
digits mlp (9.6k parameters) that is 15-20 us a step, about a quarter of GraphTrainer's step. Tried
and measured without gain: a fused C++ loop (sqrt and division bind it; NumPy already dispatches
them to AVX2) and updating m and v as the two rows of one array (10 ufunc calls instead of 12).

:class:`AdamW` is the update ONNX Runtime training's ``AdamWOptimizer`` kernel makes for the
artifacts ``onnxruntime.training.artifacts`` generates (``adam_mode=1``, the HuggingFace form,
checked against onnxruntime-training 1.19.2: equal to 3e-8 after one step)::

    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) g^2
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)     (bias correction on)
    p -= lr * weight_decay * p                                        (decoupled, after the step)

with ORT's defaults beta1 0.9, beta2 0.999, eps 1e-6, weight_decay 0.0. :class:`SGD` is plain
``p -= lr g``; it keeps no second moment, so it tracks the documented substitute LAQ weighs its
quantization by: an Adam-style running mean of squared gradients (beta 0.999), bias-corrected when
read (:meth:`SGD.second_moment`).
"""

from __future__ import annotations

import math

import numpy as np

SQ_BETA = 0.999


class AdamW:
    def __init__(
        self,
        size: int,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
    ) -> None:
        for label, value, lo, hi in (("beta1", beta1, 0.0, 1.0), ("beta2", beta2, 0.0, 1.0)):
            if not (lo <= value < hi):
                raise ValueError(f"{label} must be in [0, 1), got {value!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay, self.bias_correction = float(weight_decay), bool(bias_correction)
        self.m = np.zeros(size, np.float32)
        self.v = np.zeros(size, np.float32)
        self.step_count = 0
        self._t = np.empty(size, np.float32)  # scratch

    def reset(self) -> None:
        self.m.fill(0.0)
        self.v.fill(0.0)
        self.step_count = 0

    def step(self, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        """Update ``p`` (flat float32, in place) with gradient ``g`` (same shape)."""
        b1, b2, m, v, t = self.beta1, self.beta2, self.m, self.v, self._t
        self.step_count += 1
        n = self.step_count
        m *= b1
        np.multiply(g, 1.0 - b1, out=t)
        m += t
        v *= b2
        np.multiply(g, g, out=t)
        t *= 1.0 - b2
        v += t
        np.sqrt(v, out=t)
        t += self.eps
        np.divide(m, t, out=t)
        lr_c = lr * math.sqrt(1.0 - b2**n) / (1.0 - b1**n) if self.bias_correction else lr
        t *= lr_c
        p -= t
        if self.weight_decay > 0.0:
            p *= 1.0 - lr * self.weight_decay


class SGD:
    def __init__(self, size: int) -> None:
        self.sq = np.zeros(size, np.float32)  # running mean of g^2 (the substitute for Adam's v)
        self.sq_steps = 0
        self._t = np.empty(size, np.float32)

    def reset(self) -> None:
        self.sq.fill(0.0)
        self.sq_steps = 0

    def step(self, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        t, sq = self._t, self.sq
        self.sq_steps += 1
        sq *= SQ_BETA
        np.multiply(g, g, out=t)
        t *= 1.0 - SQ_BETA
        sq += t
        np.multiply(g, lr, out=t)
        p -= t

    def second_moment(self) -> np.ndarray:
        """Bias-corrected running mean of squared gradients (zeros before the first step)."""
        corr = 1.0 - SQ_BETA**self.sq_steps if self.sq_steps else 1.0
        return (self.sq / np.float32(corr)).astype(np.float32)
