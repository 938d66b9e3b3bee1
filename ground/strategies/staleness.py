"""Staleness weights s(τ) for updates built on a global version τ versions old.

``poly``  s(τ) = (1+τ)^-α, α = 0.5 gives FedBuff's 1/√(1+τ) (Nguyen et al. 2022, §5);
``hinge`` s(τ) = 1 for τ ≤ b, else 1/(a(τ−b)+1) (FedAsync, Xie et al. 2019);
``constant`` s(τ) = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "poly", "hinge")


@dataclass(frozen=True)
class Staleness:
    kind: str = "poly"
    alpha: float = 0.5  # poly exponent
    a: float = 10.0  # hinge slope
    b: int = 4  # hinge: no discount up to this staleness

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"staleness kind {self.kind!r} is not one of {list(KINDS)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0.0):
            raise ValueError(f"staleness alpha must be a finite number >= 0, got {self.alpha}")
        if not (math.isfinite(self.a) and self.a > 0.0):
            raise ValueError(f"staleness a must be a finite number > 0, got {self.a}")
        if self.b < 0:
            raise ValueError(f"staleness b must be >= 0, got {self.b}")

    def __call__(self, tau: int) -> float:
        if tau < 0:
            raise ValueError(f"staleness must be >= 0, got {tau}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "poly":
            return float((1.0 + tau) ** -self.alpha)
        return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)
