"""Normalising log weights and the Kish effective sample size, computed stably.

Both functions work on a 1-D tensor of *log* weights in float64 after subtracting the
maximum, so weights spanning hundreds of nats (typical of tempered likelihoods) neither
overflow nor underflow. Zero weights (``-inf``) are allowed; ``NaN``, ``+inf`` and
all-zero weights are errors because no distribution corresponds to them.
"""

from __future__ import annotations

import torch

__all__ = ["ess", "normalize"]


def _checked(log_weights: torch.Tensor) -> torch.Tensor:
    """Validate ``log_weights`` and return them in float64 shifted so their max is 0."""
    log_weights = torch.as_tensor(log_weights)
    if log_weights.ndim != 1 or log_weights.shape[0] == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D tensor, got shape {tuple(log_weights.shape)}")
    log_weights = log_weights.detach().to(torch.float64)
    if torch.isnan(log_weights).any():
        raise ValueError("log_weights contain NaN")
    if (log_weights == float("inf")).any():
        raise ValueError("log_weights contain +inf: the weights cannot be normalised")
    top = log_weights.max()
    if top == float("-inf"):
        raise ValueError("all log_weights are -inf: every weight is zero")
    return log_weights - top


def normalize(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalise log weights so that they ``logsumexp`` to zero.

    Parameters
    ----------
    log_weights : Tensor ``[N]``
        Unnormalised log weights; ``-inf`` entries are zero weights.

    Returns
    -------
    Tensor ``[N]``
        Normalised log weights (float64).

    Raises
    ------
    ValueError
        For NaN or ``+inf`` entries, or when every weight is zero.

    Examples
    --------
    >>> normalize(torch.tensor([0.0, 0.0, float("-inf"), 0.0])).exp()
    tensor([0.3333, 0.3333, 0.0000, 0.3333], dtype=torch.float64)
    >>> normalize(torch.tensor([1000.0, 1000.0])).exp()  # no overflow
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    shifted = _checked(log_weights)
    return shifted - torch.logsumexp(shifted, 0)


def ess(log_weights: torch.Tensor) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` from log weights.

    Computed as ``exp(2 logsumexp(l) - logsumexp(2 l))`` on max-shifted log weights, so
    it needs no normalisation and never overflows. It lies in ``[1, N]``: ``N`` for equal
    weights and ``1`` when one weight dominates; zero weights do not count.

    Parameters
    ----------
    log_weights : Tensor ``[N]``
        Unnormalised log weights; ``-inf`` entries are zero weights.

    Returns
    -------
    float
        The effective sample size.

    Raises
    ------
    ValueError
        For NaN or ``+inf`` entries, or when every weight is zero.

    Examples
    --------
    >>> round(ess(torch.zeros(8)), 6)
    8.0
    >>> round(ess(torch.tensor([0.0, float("-inf"), 0.0, -1e4])), 6)
    2.0
    """
    shifted = _checked(log_weights)
    return float(torch.exp(2.0 * torch.logsumexp(shifted, 0) - torch.logsumexp(2.0 * shifted, 0)))
