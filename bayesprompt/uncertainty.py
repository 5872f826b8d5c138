"""Uncertainty scores of a weighted ensemble of predictive distributions.

Every function takes per-sample class probabilities ``probs [S, N, C]`` (sample,
example, class) and optional posterior weights ``[S]`` (uniform when omitted;
normalised here) and returns one float64 score per example, ``[N]``. They are pure and
deterministic. With the weighted mean ``p̄ = Σ_s w_s p_s``:

* :func:`predictive_entropy` ``H[p̄]`` -- total uncertainty;
* :func:`expected_entropy` ``Σ_s w_s H[p_s]`` -- aleatoric part;
* :func:`mutual_information` ``H[p̄] - Σ_s w_s H[p_s] >= 0`` -- epistemic part (the
  disagreement between samples);
* :func:`one_minus_max_prob` ``1 - max_c p̄_c``;
* :func:`vote_margin` -- difference between the two largest weighted vote shares of the
  per-sample arg-max labels (a *confidence*: 1 for a unanimous vote).

Entropies are in nats with ``0 log 0 = 0``.

Examples
--------
>>> probs = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])  # two samples that disagree
>>> round(float(predictive_entropy(probs)), 4), round(float(expected_entropy(probs)), 4)
(0.6931, 0.3251)
>>> round(float(mutual_information(probs)), 4), float(vote_margin(probs))
(0.3681, 0.0)
"""

from __future__ import annotations

import torch

__all__ = [
    "UNCERTAINTY_SCORES",
    "expected_entropy",
    "mutual_information",
    "normalised_weights",
    "one_minus_max_prob",
    "predictive_entropy",
    "uncertainty_scores",
    "vote_margin",
]

#: Names of the scores returned by :func:`uncertainty_scores` (all: higher = more uncertain).
UNCERTAINTY_SCORES = (
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "one_minus_max_prob",
    "one_minus_vote_margin",
)


def _check(probs: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 ``probs [S, N, C]`` and normalised weights ``[S, 1]``."""
    probs = torch.as_tensor(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be [S, N, C] (samples, examples, classes), got shape {tuple(probs.shape)}")
    samples, examples, classes = probs.shape
    if samples == 0 or examples == 0:
        raise ValueError(f"probs needs at least one sample and one example, got shape {tuple(probs.shape)}")
    if classes < 2:
        raise ValueError(f"probs needs at least two classes, got {classes}")
    probs = probs.double()
    if torch.isnan(probs).any() or (probs < 0).any():
        raise ValueError("probs must be non-negative and contain no NaN")
    if weights is None:
        return probs, torch.full((samples, 1), 1.0 / samples, dtype=torch.float64)
    return probs, normalised_weights(weights, samples).unsqueeze(1)


def normalised_weights(weights: torch.Tensor, samples: int) -> torch.Tensor:
    """Posterior weights ``[S]`` checked and divided by their sum (float64).

    Raises
    ------
    ValueError
        If ``weights`` is not ``[samples]``, holds a negative or non-finite entry, or sums to 0.

    Examples
    --------
    >>> normalised_weights(torch.tensor([1.0, 3.0]), 2)
    tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    weights = torch.as_tensor(weights).double()
    if weights.shape != (samples,):
        raise ValueError(f"weights must be [S={samples}], got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or not weights.sum() > 0:
        raise ValueError("weights must be finite and non-negative, with a positive sum")
    return weights / weights.sum()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last axis, with ``0 log 0 = 0``."""
    return torch.special.entr(p).sum(-1)


def predictive_entropy(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of the weighted mean prediction, ``H[Σ_s w_s p_s]`` ``[N]`` (total uncertainty).

    Examples
    --------
    >>> uniform = torch.full((3, 2, 4), 0.25)
    >>> torch.allclose(predictive_entropy(uniform), torch.log(torch.tensor(4.0)).double())
    True
    """
    probs, w = _check(probs, weights)
    return _entropy((w.unsqueeze(-1) * probs).sum(0))


def expected_entropy(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of the per-sample entropies, ``Σ_s w_s H[p_s]`` ``[N]`` (aleatoric part).

    Examples
    --------
    >>> expected_entropy(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])).tolist()
    [0.0]
    """
    probs, w = _check(probs, weights)
    return (w * _entropy(probs)).sum(0)


def mutual_information(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mutual information between label and sample (epistemic part) ``[N]``.

    ``H[p̄] - Σ_s w_s H[p_s]``; non-negative by Jensen's inequality (rounding below zero
    is clipped), and zero when all samples with positive weight agree.

    Examples
    --------
    >>> agree = torch.tensor([[[0.7, 0.3]], [[0.7, 0.3]]])
    >>> mutual_information(agree).tolist()
    [0.0]
    >>> round(float(mutual_information(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))), 6)  # log 2
    0.693147
    """
    probs, w = _check(probs, weights)
    total = _entropy((w.unsqueeze(-1) * probs).sum(0))
    return (total - (w * _entropy(probs)).sum(0)).clamp_min(0.0)


def one_minus_max_prob(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - max_c p̄_c`` ``[N]`` for the weighted mean prediction ``p̄``.

    Examples
    --------
    >>> one_minus_max_prob(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]], dtype=torch.float64)).tolist()
    [0.30000000000000004]
    """
    probs, w = _check(probs, weights)
    return 1.0 - (w.unsqueeze(-1) * probs).sum(0).amax(-1)


def vote_margin(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Top-two margin of the weighted votes of the per-sample arg-max labels ``[N]``.

    Each sample votes for its arg-max class (ties go to the lowest class index, as in
    :func:`torch.argmax`) with its weight; the score is the largest vote share minus
    the second largest, in ``[0, 1]``: 1 when every sample votes alike, 0 for a tie.
    This is a confidence; ``1 - margin`` is the matching uncertainty.

    Examples
    --------
    >>> probs = torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])
    >>> vote_margin(probs).tolist()
    [0.5]
    >>> round(float(vote_margin(probs, torch.tensor([0.1, 0.1, 0.7, 0.1]))), 6)
    0.4
    """
    probs, w = _check(probs, weights)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).double()
    shares = (w.unsqueeze(-1) * votes).sum(0)
    top_two = shares.topk(2, dim=-1).values
    return top_two[:, 0] - top_two[:, 1]


def uncertainty_scores(probs: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All scores of :data:`UNCERTAINTY_SCORES`, each ``[N]`` and oriented so higher = more uncertain.

    The vote margin enters as ``one_minus_vote_margin``.

    Examples
    --------
    >>> scores = uncertainty_scores(torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]]))
    >>> list(scores) == list(UNCERTAINTY_SCORES)
    True
    >>> float(scores["one_minus_vote_margin"])
    1.0
    """
    probs, w = _check(probs, weights)
    w = w.squeeze(1)
    total = predictive_entropy(probs, w)
    aleatoric = expected_entropy(probs, w)
    return {
        "predictive_entropy": total,
        "expected_entropy": aleatoric,
        "mutual_information": (total - aleatoric).clamp_min(0.0),
        "one_minus_max_prob": one_minus_max_prob(probs, w),
        "one_minus_vote_margin": 1.0 - vote_margin(probs, w),
    }
