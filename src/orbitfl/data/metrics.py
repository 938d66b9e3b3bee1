"""Scores of a model's outputs against held-out labels, the same for the ground, a board and the
simulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def accuracy(logits: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float:
    """Share of samples whose largest logit is their label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def roc_auc(score: npt.NDArray[Any], positive: npt.NDArray[np.bool_]) -> float:
    """Mann-Whitney AUC with ties averaged."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
