"""The learner of one board, real or simulated: its share of the data, its trainer, the delta a
task produces, the optimizer's curvature for loss-aware codecs, and held-out evaluation.

The agent daemon builds one from its TOML config; the simulator builds one per satellite. Both
pick the share with :func:`share_indices` and train through :meth:`Learner.train`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.agent.train_loop import StepTrainer
from orbitfl.agent.trainer import Trainer
from orbitfl.data.metrics import roc_auc
from orbitfl.data.partition import dirichlet_partition, iid_partition, shard_partition

CURVATURE_EPS = np.float32(1e-8)  # keeps D > 0 where Adam's v is still 0
SPLITS = ("dirichlet", "iid", "shards")  # "shard" is accepted for "shards" (the simulator's spelling)


def share_indices(
    labels: npt.NDArray[Any],
    n: int,
    split: str,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[npt.NDArray[Any]]:
    """Sample indices of each of ``n`` boards: Dirichlet(``alpha``) label skew, IID, or McMahan's
    label shards (``shards_per_client`` each)."""
    if split == "dirichlet":
        return dirichlet_partition(labels, n, alpha, seed=seed)
    if split == "iid":
        return iid_partition(len(labels), n, seed=seed)
    if split in ("shards", "shard"):
        return shard_partition(labels, n, shards_per_client, seed=seed)
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


@dataclass
class Trained:
    delta: dict[str, npt.NDArray[Any]]  # w_local - w_base, per tensor sent
    samples: int
    metrics: dict[str, float]  # loss, and train_accuracy for classifiers
    seconds: float  # wall time of the training run
    # SCAFFOLD: the mean raw gradient of the run (the agent's new control variate); None without
    mean_gradient: dict[str, npt.NDArray[Any]] | None = None


class Learner:
    """A trainer and the share of the data it trains on (each keeps its own optimizer state)."""

    def __init__(self, trainer: Trainer, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        self.trainer = trainer
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = y

    def train(
        self,
        weights: Mapping[str, npt.NDArray[Any]],
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        max_batches: int | None = None,
        keep: Collection[str] | None = None,
        proximal_mu: float = 0.0,
        correction: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> Trained:
        """Train from ``weights``; the delta holds every tensor, or only those in ``keep``.
        ``proximal_mu`` > 0: FedProx's μ/2·‖w − weights‖² joins the loss. ``correction``
        (SCAFFOLD's c − cᵢ per trainable tensor) joins every gradient, and the result carries the
        run's mean raw gradient."""
        base = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.trainer.set_weights(base)
        # After set_weights: the anchor is the global model this round starts from; 0 clears a
        # previous round's term.
        if isinstance(self.trainer, StepTrainer):
            self.trainer.set_proximal(proximal_mu)
            self.trainer.set_correction(correction)
        elif proximal_mu > 0.0:
            raise ValueError(f"{type(self.trainer).__name__} cannot train with a proximal term (FedProx)")
        elif correction is not None:
            raise ValueError(f"{type(self.trainer).__name__} cannot train with SCAFFOLD's correction")
        m = self.trainer.train(
            self.x, self.y, epochs=epochs, batch_size=batch_size, max_batches=max_batches, seed=seed
        )
        new = self.trainer.get_weights(list(base))
        delta = {k: new[k] - base[k] for k in base if keep is None or k in keep}
        metrics = {"loss": float(m.loss)}
        if m.accuracy is not None:
            metrics["train_accuracy"] = float(m.accuracy)
        mean_grad = None
        if correction is not None and isinstance(self.trainer, StepTrainer):
            mean_grad = self.trainer.mean_gradient()
            self.trainer.set_correction(None)
        return Trained(delta, len(self.x), metrics, float(m.seconds), mean_grad)

    def curvature(self, delta: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[np.float32]]:
        """Loss-aware codecs' curvature D = sqrt(v) + eps from the optimizer's second moments
        (DESIGN §5), shaped like the update; tensors the optimizer does not track get none."""
        v = self.trainer.second_moments()
        out: dict[str, npt.NDArray[np.float32]] = {}
        for name, d in delta.items():
            m = v.get(name)
            if m is not None and m.size == d.size:
                out[name] = (np.sqrt(np.asarray(m, np.float32)) + CURVATURE_EPS).reshape(d.shape)
        return out


def evaluate(
    trainer: Trainer,
    weights: Mapping[str, npt.NDArray[Any]],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    positive: npt.NDArray[np.bool_] | None = None,
) -> float:
    """Held-out score of ``weights``: a classifier's accuracy; for a reconstruction model (given
    ``positive``, the rare target samples), the ROC AUC of detecting them by reconstruction error."""
    trainer.set_weights({k: np.asarray(v, np.float32) for k, v in weights.items()})
    if positive is None:
        acc = trainer.evaluate(x, y).accuracy
        return float(acc) if acc is not None else float("nan")
    pred = trainer.predict(x)
    err = np.mean((pred.reshape(len(pred), -1) - y.reshape(len(pred), -1)) ** 2, axis=1)
    return roc_auc(err, positive)
