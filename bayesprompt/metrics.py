"""Prediction-quality, calibration, selective-prediction and OOD-detection metrics.

Classification and calibration metrics take probabilities ``probs [N, C]`` (rows summing
to one) and integer labels ``[N]``; detection metrics take per-example scores. All
return Python floats (curves return numpy arrays).

Calibration binning
-------------------
All binned calibration metrics (:func:`ece`, :func:`binary_ece`, :func:`mce`,
:func:`calibration_bins`) use the *top-label* confidence ``max_c p_c`` and the arg-max
prediction (ties go to the lowest class index), ``num_bins`` equal-width bins with edges
``numpy.linspace(lower, 1, num_bins + 1)``, **right-closed** ``(e_k, e_k+1]``, the first
bin also closed on the left (values at or below ``lower`` fall into it). This is the
convention of scikit-learn's ``calibration_curve(strategy="uniform")`` (which searches
the inner edges with ``numpy.searchsorted(..., side="left")``) and of Guo et al.'s (2017)
reference ECE (``lo < conf <= hi``); a confidence exactly equal to an edge value belongs
to the bin below it. Note that ``linspace`` edges are not always the nearest double to
``k / num_bins`` (``linspace(0, 1, 11)[3] == 0.30000000000000004``), so ``0.1 + 0.2``
lands in ``(0.2, 0.3]``; float32 inputs are widened to float64 first (``0.8`` in float32
is ``0.800000011920929`` and lands in ``(0.8, 0.9]``). ``ece`` (``lower=0``) is the
standard top-label ECE; :func:`binary_ece` is the variant of Shen et al. for binary tasks,
whose top-label confidence lies in ``[0.5, 1]``: the bins split ``[0.5, 1]``
(``num_bins=10`` gives width 0.05; ``num_bins=5`` width 0.1).

Selective prediction and OOD detection
--------------------------------------
Scores are *uncertainties* (higher = less confident), as in
:mod:`bayesprompt.uncertainty`. :func:`misclassification_auroc` is the AUROC of
separating wrong (positive) from right predictions; :func:`ood_auroc` and
:func:`fpr_at_tpr` separate OOD (positive) from in-distribution examples. AUROC is the
Mann-Whitney statistic with ties counted one half (equal to scikit-learn's
``roc_auc_score``); when only one class is present it is undefined and these functions
return ``nan`` (no warning, no error), so a report on a perfectly accurate model still
completes. :func:`risk_coverage_curve` keeps the most confident fraction of examples and
gives the error rate on them; :func:`aurc` is the paper's area under the risk-rejection
curve: the mean risk over coverages 0.1, 0.2, ..., 1.0 (lower is better).

Examples
--------
>>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> labels = torch.tensor([0, 1, 1])
>>> round(accuracy(probs, labels), 4)
0.6667
>>> round(nll(probs, labels), 4)
0.4149
>>> misclassification_auroc([0.1, 0.2, 0.4], [True, True, False])
1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch

__all__ = [
    "DEFAULT_COVERAGES",
    "accuracy",
    "aurc",
    "auroc",
    "binary_ece",
    "binary_f1",
    "brier",
    "calibration_bins",
    "classification_report",
    "ece",
    "fpr_at_tpr",
    "mce",
    "misclassification_auroc",
    "nll",
    "ood_auroc",
    "ood_report",
    "risk_coverage_curve",
    "selective_prediction_report",
]

#: Anything :func:`numpy.asarray` accepts, or a (CPU) tensor.
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]

#: The paper's ten coverage levels 0.1, ..., 1.0 (exact decimals, ``k / 10``).
DEFAULT_COVERAGES = tuple(k / 10 for k in range(1, 11))

_EPS = 1e-12


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be [N={probs.shape[0]}], got shape {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("metrics need at least one example")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be class indices (whole numbers)")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")
    return probs.double(), labels


def _vector(values: ArrayLike, name: str, dtype: type = np.float64) -> np.ndarray:
    """A non-empty 1-D numpy copy of ``values`` (tensors detached), without NaN."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if dtype is bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        return array.astype(bool)
    array = array.astype(np.float64)
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    return array


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same length, got {a.shape[0]} and {b.shape[0]}")


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of arg-max predictions equal to the label."""
    probs, labels = _check(probs, labels)
    return float((probs.argmax(-1) == labels).double().mean())


def binary_f1(probs: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> float:
    """F1 score of class ``positive`` (MRPC's metric); 0 when there are no true positives."""
    probs, labels = _check(probs, labels)
    if not 0 <= positive < probs.shape[1]:
        raise ValueError(f"positive must be a class index in [0, {probs.shape[1] - 1}], got {positive!r}")
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


def calibration_bins(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 10, lower: float = 0.0
) -> dict[str, np.ndarray]:
    """Per-bin statistics of the top-label confidence (the reliability diagram's data).

    Parameters
    ----------
    probs : Tensor ``[N, C]``
    labels : Tensor ``[N]``
    num_bins : int
        Number of equal-width bins over ``[lower, 1]``.
    lower : float
        Left end of the binned range, in ``[0, 1)``: 0 for the standard ECE, 0.5 for
        the binary variant. The binning convention is in the module docstring.

    Returns
    -------
    dict
        ``edges [num_bins + 1]``, ``count [num_bins]`` (int), and ``confidence``
        (mean confidence) and ``accuracy`` ``[num_bins]`` (NaN for empty bins).

    Examples
    --------
    >>> probs = torch.tensor([[0.95, 0.05], [0.3, 0.7], [0.7, 0.3]], dtype=torch.float64)
    >>> bins = calibration_bins(probs, torch.tensor([0, 1, 1]), num_bins=5, lower=0.5)
    >>> bins["count"].tolist(), bins["accuracy"][[1, 4]].tolist()
    ([0, 2, 0, 0, 1], [0.5, 1.0])
    """
    probs, labels = _check(probs, labels)
    confidence, prediction = probs.max(-1)
    return _bin_statistics(confidence.numpy(), (prediction == labels).numpy(), num_bins, lower)


def _bin_statistics(confidence: np.ndarray, correct: np.ndarray, num_bins: int, lower: float) -> dict[str, np.ndarray]:
    """Right-closed equal-width binning of ``confidence`` over ``[lower, 1]`` (see the module docstring)."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    if not 0.0 <= lower < 1.0:
        raise ValueError(f"lower must lie in [0, 1), got {lower}")
    edges = np.linspace(lower, 1.0, num_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=num_bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=num_bins)
    sum_correct = np.bincount(index, weights=correct.astype(np.float64), minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, sum_confidence / count, np.nan)
        mean_accuracy = np.where(count > 0, sum_correct / count, np.nan)
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": mean_accuracy}


def _gaps(bins: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bin shares and ``|accuracy - confidence|`` of the non-empty bins."""
    filled = bins["count"] > 0
    share = bins["count"][filled] / bins["count"].sum()
    return share, np.abs(bins["accuracy"][filled] - bins["confidence"][filled])


def ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 10, lower: float = 0.0) -> float:
    """Top-label expected calibration error with ``num_bins`` equal-width bins over ``[lower, 1]``.

    ``Σ_b (n_b / N) |acc_b - conf_b|`` over non-empty bins. Bins are right-closed,
    ``(lo, hi]``, with the first bin also containing ``lower`` (and anything below);
    edges are ``numpy.linspace(lower, 1, num_bins + 1)`` -- the convention of
    scikit-learn's ``calibration_curve`` (see the module docstring).

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.35, 0.65]], dtype=torch.float64)
    >>> round(ece(probs, torch.tensor([0, 0])), 4)  # (0.1 + 0.65) / 2
    0.375
    """
    share, gap = _gaps(calibration_bins(probs, labels, num_bins, lower))
    return float((share * gap).sum())


def binary_ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 10) -> float:
    """The binary-task ECE of Shen et al.: ``num_bins`` equal bins over ``[0.5, 1]``.

    The top-label confidence of a two-class prediction is at least 0.5, so the standard
    ECE leaves half of its bins empty; this variant splits ``[0.5, 1]`` instead
    (``num_bins=10``: width 0.05; ``num_bins=5``: width 0.1), otherwise as :func:`ece`.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.35, 0.65], [0.6, 0.4]], dtype=torch.float64)
    >>> round(binary_ece(probs, torch.tensor([0, 1, 1]), num_bins=5), 4)  # (0.1 + 0.35 + 0.6) / 3
    0.35
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"binary_ece needs two-class probs [N, 2], got shape {tuple(probs.shape)}")
    return ece(probs, labels, num_bins, lower=0.5)


def mce(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 10, lower: float = 0.0) -> float:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over non-empty bins (binning of :func:`ece`).

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.35, 0.65]], dtype=torch.float64)
    >>> mce(probs, torch.tensor([0, 0]))
    0.65
    """
    _, gap = _gaps(calibration_bins(probs, labels, num_bins, lower))
    return float(gap.max())


def auroc(scores: ArrayLike, positive: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive).

    The Mann-Whitney statistic ``P(score_pos > score_neg) + P(score_pos = score_neg) / 2``
    (average ranks), equal to scikit-learn's ``roc_auc_score``. Returns ``nan`` when
    ``positive`` is all true or all false (AUROC undefined).

    Examples
    --------
    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auroc([0.5, 0.5], [0, 1]), auroc([0.2, 0.3], [1, 1])
    (0.5, nan)
    """
    scores = _vector(scores, "scores")
    positive = _vector(positive, "positive", bool)
    _same_length(scores, positive, "scores and positive")
    num_pos = int(positive.sum())
    num_neg = positive.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(scores)[positive].sum())
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = ((starts + 1 + ends) / 2)[group]
    return ranks


def misclassification_auroc(uncertainty: ArrayLike, correct: ArrayLike) -> float:
    """AUROC of detecting misclassified examples (positive) by their uncertainty.

    ``nan`` when all predictions are right or all wrong.

    Examples
    --------
    >>> misclassification_auroc([0.9, 0.1, 0.3], [False, True, True])
    1.0
    """
    correct = _vector(correct, "correct", bool)
    return auroc(uncertainty, ~correct)


def ood_auroc(in_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """AUROC of detecting OOD examples (positive) by their uncertainty score.

    Examples
    --------
    >>> ood_auroc([0.1, 0.2, 0.6], [0.5, 0.9])
    0.8333333333333334
    """
    scores, positive = _pool(in_scores, ood_scores)
    return auroc(scores, positive)


def _pool(in_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated scores and OOD indicators."""
    inside, outside = _vector(in_scores, "in_scores"), _vector(ood_scores, "ood_scores")
    positive = np.r_[np.zeros(inside.size, bool), np.ones(outside.size, bool)]
    return np.r_[inside, outside], positive


def fpr_at_tpr(in_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``.

    Examples are flagged OOD when their score is ``>= t``; over the distinct score values
    ``t`` (descending), the result is the in-distribution fraction flagged at the first
    ``t`` that flags at least a fraction ``tpr`` of the OOD examples -- the smallest FPR
    with ``TPR >= tpr`` (as ``fpr[searchsorted(tpr_curve, tpr)]`` on scikit-learn's
    ``roc_curve``). Lower is better. Tied scores are flagged together.

    Examples
    --------
    >>> fpr_at_tpr([0.1, 0.2, 0.3, 0.7], [0.25, 0.8, 0.9, 0.95], tpr=0.75)
    0.0
    >>> fpr_at_tpr([0.1, 0.2, 0.3, 0.7], [0.25, 0.8, 0.9, 0.95], tpr=1.0)
    0.5
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    scores, positive = _pool(in_scores, ood_scores)
    order = np.argsort(-scores, kind="mergesort")
    ordered, flagged_ood = scores[order], positive[order]
    last_of_group = np.r_[ordered[1:] != ordered[:-1], True]
    true_pos = np.cumsum(flagged_ood)[last_of_group] / positive.sum()
    false_pos = np.cumsum(~flagged_ood)[last_of_group] / (~positive).sum()
    return float(false_pos[np.searchsorted(true_pos, tpr, side="left")])


def risk_coverage_curve(
    confidence: ArrayLike, correct: ArrayLike, coverages: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Error rate on the most confident examples at each coverage level.

    At coverage ``c`` the ``k = ceil(c N)`` most confident examples are kept (at least
    one) and the risk is their error rate. When the ``k``-th confidence is tied, the
    tied examples are taken in expectation over a uniformly random order (each tied
    example contributes the tie group's mean error), so the result does not depend on
    the input order.

    Parameters
    ----------
    confidence : array-like ``[N]``
        Higher = more confident (pass ``-uncertainty`` for an uncertainty score).
    correct : array-like ``[N]`` of bool
        Whether each prediction is right.
    coverages : sequence of float in ``(0, 1]``, optional
        Requested levels; default 0.1, 0.2, ..., 1.0.

    Returns
    -------
    coverages : ndarray
        The achieved coverages ``k / N``.
    risks : ndarray
        Error rates on the kept examples.

    Examples
    --------
    >>> cov, risk = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False], [0.25, 0.5, 1.0])
    >>> cov.tolist(), risk.tolist()
    ([0.25, 0.5, 1.0], [0.0, 0.5, 0.5])
    """
    confidence = _vector(confidence, "confidence")
    errors = (~_vector(correct, "correct", bool)).astype(np.float64)
    _same_length(confidence, errors, "confidence and correct")
    levels = np.asarray(DEFAULT_COVERAGES if coverages is None else coverages, dtype=np.float64).reshape(-1)
    if levels.size == 0 or not ((levels > 0) & (levels <= 1)).all():
        raise ValueError(f"coverages must be non-empty and lie in (0, 1], got {levels.tolist()}")
    n = confidence.size
    kept = np.maximum(1, np.ceil(np.round(levels * n, 9))).astype(np.int64)
    descending = -confidence
    order = np.argsort(descending, kind="mergesort")
    ordered, cum_errors = descending[order], np.r_[0.0, np.cumsum(errors[order])]
    threshold = ordered[kept - 1]
    start = np.searchsorted(ordered, threshold, side="left")
    stop = np.searchsorted(ordered, threshold, side="right")
    tie_mean = (cum_errors[stop] - cum_errors[start]) / (stop - start)
    risks = (cum_errors[start] + (kept - start) * tie_mean) / kept
    return kept / n, risks


def aurc(confidence: ArrayLike, correct: ArrayLike, coverages: Sequence[float] | None = None) -> float:
    """Area under the risk-rejection curve: the mean risk over the coverage levels (lower is better).

    With the default coverages 0.1, ..., 1.0 this is the paper's metric. See
    :func:`risk_coverage_curve` for the arguments.

    Examples
    --------
    >>> aurc([0.9, 0.8, 0.7, 0.6], [True, False, True, False], [0.25, 0.5, 1.0])
    0.3333333333333333
    """
    return float(risk_coverage_curve(confidence, correct, coverages)[1].mean())


def selective_prediction_report(
    probs: torch.Tensor,
    labels: torch.Tensor,
    scores: Mapping[str, ArrayLike] | None = None,
    coverages: Sequence[float] | None = None,
) -> dict[str, float]:
    """Misclassification detection and risk-rejection metrics for each uncertainty score.

    Parameters
    ----------
    probs : Tensor ``[N, C]``
        Predictive probabilities (their arg-max is the prediction).
    labels : Tensor ``[N]``
    scores : mapping of name to array-like ``[N]``, optional
        Uncertainty scores (higher = less confident), e.g.
        ``EnsemblePredictions.uncertainty()``; default ``{"one_minus_max_prob": 1 - max p}``.
    coverages : sequence of float, optional
        Coverage levels of :func:`aurc`.

    Returns
    -------
    dict
        ``accuracy``, ``num_examples``, ``num_errors`` and, per score ``name``,
        ``"{name}/auroc"`` (misclassified = positive; ``nan`` if there are no errors or
        no right predictions) and ``"{name}/aurc"``.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    >>> report = selective_prediction_report(probs, torch.tensor([0, 1, 1]))
    >>> report["one_minus_max_prob/auroc"], report["num_errors"]
    (1.0, 1)
    """
    probs, labels = _check(probs, labels)
    confidence, prediction = probs.max(-1)
    correct = (prediction == labels).numpy()
    if scores is None:
        scores = {"one_minus_max_prob": (1.0 - confidence).numpy()}
    report: dict[str, float] = {
        "accuracy": float(correct.mean()),
        "num_examples": int(correct.size),
        "num_errors": int((~correct).sum()),
    }
    for name, score in scores.items():
        score = _vector(score, f"scores[{name!r}]")
        _same_length(score, correct, f"scores[{name!r}] and labels")
        report[f"{name}/auroc"] = misclassification_auroc(score, correct)
        report[f"{name}/aurc"] = aurc(-score, correct, coverages)
    return report


def ood_report(
    in_scores: Mapping[str, ArrayLike] | ArrayLike,
    ood_scores: Mapping[str, ArrayLike] | ArrayLike,
    tpr: float = 0.95,
) -> dict[str, float]:
    """OOD detection metrics (OOD = positive) for one score or a mapping of named scores.

    Returns ``num_in``, ``num_ood`` and ``auroc`` and ``fpr{100 tpr}`` (``fpr95`` by
    default), prefixed ``"{name}/"`` per score when mappings are given (both arguments
    must then have the same names).

    Examples
    --------
    >>> ood_report([0.1, 0.2, 0.6], [0.5, 0.9])
    {'num_in': 3, 'num_ood': 2, 'auroc': 0.8333333333333334, 'fpr95': 0.3333333333333333}
    """
    as_mapping = isinstance(in_scores, Mapping)
    if as_mapping != isinstance(ood_scores, Mapping):
        raise TypeError("in_scores and ood_scores must both be mappings or both be arrays")
    if not as_mapping:
        in_scores, ood_scores = {"": in_scores}, {"": ood_scores}
    if set(in_scores) != set(ood_scores) or not in_scores:
        raise ValueError(
            f"in_scores and ood_scores need the same non-empty names, got {sorted(in_scores)} and {sorted(ood_scores)}"
        )
    fpr_key = f"fpr{round(100 * tpr):d}"
    report: dict[str, float] = {}
    for name in in_scores:
        inside, outside = _vector(in_scores[name], "in_scores"), _vector(ood_scores[name], "ood_scores")
        sizes = {"num_in": int(inside.size), "num_ood": int(outside.size)}
        if any(report.setdefault(key, size) != size for key, size in sizes.items()):
            raise ValueError(f"score {name!r} has {sizes}, other scores {report['num_in']} and {report['num_ood']} examples")
        prefix = f"{name}/" if as_mapping else ""
        report[f"{prefix}auroc"] = ood_auroc(inside, outside)
        report[f"{prefix}{fpr_key}"] = fpr_at_tpr(inside, outside, tpr)
    return report


def classification_report(probs: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy") -> dict[str, float]:
    """The headline metrics in one dict.

    Accuracy (and F1 when ``metric == "f1"``), NLL, Brier, ECE and MCE (10 bins over
    [0, 1]) and, for two classes, ``ece_binary`` (:func:`binary_ece`, 10 bins over [0.5, 1]).
    """
    report = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
        "mce": mce(probs, labels),
        "num_examples": int(labels.shape[0]),
    }
    if probs.shape[-1] == 2:
        report["ece_binary"] = binary_ece(probs, labels)
    if metric == "f1":
        report["f1"] = binary_f1(probs, labels)
    return report
