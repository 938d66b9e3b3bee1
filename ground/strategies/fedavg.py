"""FedAvg: the sample-weighted mean of the deltas, streamed block by block in float64."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.base import BLOCK, Strategy
from orbitfl.wire.tensors import TensorDict


class FedAvg(Strategy):
    """Sample-weighted mean of the deltas, added to the global model (McMahan et al. 2017).

    Sums are kept in float64 per tensor, together with the weight that reached each tensor, so an
    update that sends only some tensors averages those over their senders and leaves the others
    alone (tensor-level partial averaging). ``staleness_decay`` < 1 down-weights updates built on
    an older global version (weight × decay^staleness); 1.0 is plain FedAvg.
    """

    name = "fedavg"

    def __init__(
        self, *, partial_ok: bool = False, staleness_decay: float = 1.0, server_lr: float = 1.0
    ) -> None:
        if not 0.0 < staleness_decay <= 1.0:
            raise ValueError(f"staleness_decay must be in (0, 1], got {staleness_decay}")
        if server_lr <= 0.0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.partial_ok = partial_ok
        self.staleness_decay = staleness_decay
        self.server_lr = server_lr
        self._sum: dict[str, npt.NDArray[np.float64]] = {}
        self._weight: dict[str, float] = {}
        self._scratch = np.empty(BLOCK, np.float64)
        self._n = 0
        self._finalized = False

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self._sum = {k: np.zeros(np.shape(v), np.float64) for k, v in global_weights.items()}
        self._weight = dict.fromkeys(global_weights, 0.0)
        self._n = 0
        self._finalized = False

    def accumulate(self, delta: Mapping[str, npt.NDArray[Any]], samples: int, staleness: int = 0) -> None:
        if samples <= 0:
            raise ValueError(f"samples must be > 0, got {samples}")
        self._check_open()
        w = float(samples) * self.staleness_decay ** max(staleness, 0)
        for name, d in delta.items():
            acc = self._sum.get(name)
            if acc is None:
                raise KeyError(f"tensor {name!r} is not in the model")
            if d.shape != acc.shape:
                raise ValueError(f"tensor {name!r} has shape {d.shape}, the model has {acc.shape}")
            # Block by block through one small float64 scratch: no temporary of model size per
            # update, and the block stays in cache between the multiply and the add.
            flat_d, flat_acc = d.reshape(-1), acc.reshape(-1)
            for lo in range(0, flat_d.size, BLOCK):
                hi = min(lo + BLOCK, flat_d.size)
                s = self._scratch[: hi - lo]
                np.multiply(flat_d[lo:hi], w, out=s, dtype=np.float64)
                np.add(flat_acc[lo:hi], s, out=flat_acc[lo:hi])
            self._weight[name] += w
        self._n += 1

    def finalize(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        """The next global model. Works in place on the sums (no model-size temporaries), so the
        strategy must be ``reset`` before it accumulates again."""
        self._check_open()
        out: TensorDict = {}
        for name, g in global_weights.items():
            wsum = self._weight.get(name, 0.0)
            if wsum == 0.0:
                out[name] = np.array(g, copy=True)
                continue
            acc = self._sum[name]
            acc *= self.server_lr / wsum
            acc += g
            out[name] = acc.astype(g.dtype)
        self._finalized = True
        return out

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError("FedAvg.finalize consumed the sums; call reset first")

    def state(self) -> tuple[TensorDict, dict[str, float]]:
        self._check_open()
        scalars = {f"w/{k}": v for k, v in self._weight.items()}
        scalars["n"] = float(self._n)
        return dict(self._sum), scalars

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None:
        if set(arrays) != set(self._sum):
            raise ValueError("checkpoint tensors do not match the model")
        for k, a in arrays.items():
            self._sum[k][...] = a
            self._weight[k] = float(scalars[f"w/{k}"])
        self._n = int(scalars["n"])

    @property
    def updates(self) -> int:
        return self._n
