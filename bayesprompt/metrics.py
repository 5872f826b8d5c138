"""Prediction-quality and calibration metrics on predictive probabilities.

All functions take probabilities ``probs [N, C]`` (rows summing to one) and integer
labels ``[N]`` and return Python floats.

Examples
--------
>>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> labels = torch.tensor([0, 1, 1])
>>> round(accuracy(probs, labels), 4)
0.6667
>>> round(nll(probs, labels), 4)
0.4149
"""

from __future__ import annotations

import torch

__all__ = ["accuracy", "binary_f1", "nll", "brier", "ece", "classification_report"]

_EPS = 1e-12


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be [N={probs.shape[0]}], got shape {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("metrics need at least one example")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")
    return probs.double(), labels


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of arg-max predictions equal to the label."""
    probs, labels = _check(probs, labels)
    return float((probs.argmax(-1) == labels).double().mean())


def binary_f1(probs: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> float:
    """F1 score of class ``positive`` (MRPC's metric); 0 when there are no true positives."""
    probs, labels = _check(probs, labels)
    pred = probs.argmax(-1) == positive
    gold = labels == positive
    tp = float((pred & gold).sum())
    denom = float(pred.sum() + gold.sum())
    return 0.0 if tp == 0 else 2 * tp / denom


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels (probabilities clipped at 1e-12)."""
    probs, labels = _check(probs, labels)
    picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    return float(-picked.clamp_min(_EPS).log().mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over examples of ``sum_c (p_c - 1[y = c])^2``."""
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(-1).mean())


def ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 10) -> float:
    """Top-label expected calibration error with equal-width bins over [0, 1].

    Bins are right-closed, ``(lo, hi]``, with the first bin ``[0, 1/num_bins]``.
    """
    probs, labels = _check(probs, labels)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence, prediction = probs.max(-1)
    correct = (prediction == labels).double()
    index = (torch.ceil(confidence * num_bins) - 1).clamp(0, num_bins - 1).long()
    total = 0.0
    for b in range(num_bins):
        in_bin = index == b
        if in_bin.any():
            gap = (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
            total += float(in_bin.double().mean() * gap)
    return total


def classification_report(probs: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy") -> dict[str, float]:
    """The headline metrics in one dict: accuracy (and F1 when ``metric == "f1"``), NLL, Brier, ECE."""
    report = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
        "num_examples": int(labels.shape[0]),
    }
    if metric == "f1":
        report["f1"] = binary_f1(probs, labels)
    return report
