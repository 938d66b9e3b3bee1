"""Host-side optimizers for :class:`orbitfl.agent.graph_trainer.GraphTrainer`, in NumPy, in place.

Each works on one flat float32 slice holding every trainable parameter and on a flat gradient of
the same length, with preallocated moments, in place, allocating nothing. A step is one call of the
C++ kernel ``orbitfl._core.adamw_step`` / ``sgd_step`` (one pass; AVX-512/AVX2/generic picked at
load time, bit-identical on each since the build disables FMA contraction): 2 us a step on the
digits mlp (9.6k parameters) where the NumPy form, kept as ``numpy=True`` for reference and tests,
needs a dozen ufunc calls and 16-21 us, about 10 us of it call overhead whatever the model's size.

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

from orbitfl import _core

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
        numpy: bool = False,
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
        self.numpy = bool(numpy)
        self._t = np.empty(size if numpy else 0, np.float32)  # scratch of the NumPy path

    def reset(self) -> None:
        self.m.fill(0.0)
        self.v.fill(0.0)
        self.step_count = 0

    def step(self, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        """Update ``p`` (flat float32, in place) with gradient ``g`` (same shape)."""
        b1, b2, m, v, t = self.beta1, self.beta2, self.m, self.v, self._t
        self.step_count += 1
        n = self.step_count
        lr_c = lr * math.sqrt(1.0 - b2**n) / (1.0 - b1**n) if self.bias_correction else lr
        if not self.numpy:
            decay = 1.0 - lr * self.weight_decay if self.weight_decay > 0.0 else 1.0
            _core.adamw_step(p, g, m, v, b1, b2, 1.0 - b1, 1.0 - b2, lr_c, self.eps, decay)
            return
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
        t *= lr_c
        p -= t
        if self.weight_decay > 0.0:
            p *= 1.0 - lr * self.weight_decay


class SGD:
    def __init__(self, size: int, *, numpy: bool = False) -> None:
        self.sq = np.zeros(size, np.float32)  # running mean of g^2 (the substitute for Adam's v)
        self.sq_steps = 0
        self.numpy = bool(numpy)
        self._t = np.empty(size if numpy else 0, np.float32)

    def reset(self) -> None:
        self.sq.fill(0.0)
        self.sq_steps = 0

    def step(self, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        t, sq = self._t, self.sq
        self.sq_steps += 1
        if not self.numpy:
            _core.sgd_step(p, g, sq, lr, SQ_BETA)
            return
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
