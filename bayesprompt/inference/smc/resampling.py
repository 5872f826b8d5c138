"""Resampling schemes: ancestor indices drawn from log weights.

Every scheme is a pure function ``(log_weights [N], num_samples, generator) -> ancestors``
returning a ``LongTensor [num_samples]`` of indices in ``[0, N)``. All four are unbiased:
the expected number of offspring of particle ``i`` is ``num_samples * w_i``. They differ
in variance (Douc, Cappé & Moulines, 2005): ``multinomial`` draws i.i.d. indices (the
highest variance); ``stratified`` draws one uniform per stratum ``[k/M, (k+1)/M)``;
``systematic`` uses a single uniform shifted across the strata (lowest variance in
practice, the default); ``residual`` keeps ``floor(M w_i)`` copies deterministically and
draws the remainder multinomially from the residual weights.

Zero weights (``-inf``) are never selected. Weights are handled in float64 and the
inverse CDF is searched without normalising, so rounding can neither push an index
past ``N - 1`` nor select a zero-weight particle.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import torch

from bayesprompt.inference.smc.ess import normalize

__all__ = ["SCHEMES", "multinomial", "resample", "residual", "stratified", "systematic"]

Resampler = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _weights(log_weights: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Validated normalised weights (float64) for ``num_samples`` draws."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return normalize(log_weights).exp()


def _inverse_cdf(weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Indices ``i`` with ``cdf[i-1] <= p * total < cdf[i]`` for points ``p`` in ``[0, 1)``."""
    cdf = torch.cumsum(weights, 0)
    index = torch.searchsorted(cdf, points * cdf[-1], right=True)
    last_positive = int(torch.nonzero(weights > 0)[-1])
    return index.clamp_(max=last_positive)


def _uniform(size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(size, generator=generator, dtype=torch.float64)


def multinomial(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Multinomial resampling: ``num_samples`` i.i.d. draws from the weights.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> multinomial(torch.tensor([0.0, float("-inf"), 0.0]), 6, g).tolist()
    [2, 2, 0, 2, 2, 2]
    """
    weights = _weights(log_weights, num_samples)
    return _inverse_cdf(weights, _uniform(num_samples, generator))


def stratified(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Stratified resampling: one uniform draw in each stratum ``[k/M, (k+1)/M)``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> stratified(torch.log(torch.tensor([0.5, 0.25, 0.25])), 4, g).tolist()
    [0, 0, 1, 2]
    """
    weights = _weights(log_weights, num_samples)
    points = (torch.arange(num_samples, dtype=torch.float64) + _uniform(num_samples, generator)) / num_samples
    return _inverse_cdf(weights, points)


def systematic(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Systematic resampling: a single uniform shift of the grid ``k/M``.

    Particle ``i`` gets ``floor(M w_i)`` or ``ceil(M w_i)`` offspring.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> systematic(torch.log(torch.tensor([0.5, 0.25, 0.25])), 4, g).tolist()
    [0, 0, 1, 2]
    """
    weights = _weights(log_weights, num_samples)
    shift = _uniform(1, generator)
    points = (torch.arange(num_samples, dtype=torch.float64) + shift) / num_samples
    return _inverse_cdf(weights, points)


def residual(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Residual resampling: ``floor(M w_i)`` copies, the rest multinomial on the residuals.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> residual(torch.tensor([2.0, 1.0, 0.0]), 5, g).tolist()  # weights ∝ e^2, e, 1
    [0, 0, 0, 1, 2]
    """
    weights = _weights(log_weights, num_samples)
    expected = num_samples * weights
    counts = torch.floor(expected).long()
    copies = torch.repeat_interleave(torch.arange(weights.shape[0]), counts)
    remainder = num_samples - int(counts.sum())
    if remainder <= 0:
        return copies[:num_samples]
    residuals = (expected - counts).clamp(min=0.0)
    if not bool((residuals > 0).any()):  # only possible through rounding
        residuals = weights
    extra = _inverse_cdf(residuals, _uniform(remainder, generator))
    return torch.cat([copies, extra])


#: The resampling schemes by name (read-only).
SCHEMES: MappingProxyType[str, Resampler] = MappingProxyType(
    {"systematic": systematic, "stratified": stratified, "multinomial": multinomial, "residual": residual}
)


def resample(
    log_weights: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    scheme: str = "systematic",
) -> torch.Tensor:
    """Draw ``num_samples`` ancestor indices from ``log_weights`` with a named scheme.

    Parameters
    ----------
    log_weights : Tensor ``[N]``
        Unnormalised log weights; ``-inf`` entries are never selected.
    num_samples : int
        Number of ancestors ``M`` (need not equal ``N``).
    generator : torch.Generator
        Source of randomness (the only one used).
    scheme : str
        One of ``"systematic"`` (default), ``"stratified"``, ``"multinomial"``,
        ``"residual"``.

    Returns
    -------
    LongTensor ``[num_samples]``
        Ancestor indices; particle ``i`` appears ``num_samples * w_i`` times on average.

    Raises
    ------
    ValueError
        For an unknown scheme, ``num_samples < 1``, or invalid weights (NaN, ``+inf``,
        all ``-inf``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> resample(torch.tensor([0.0, 0.0, float("-inf")]), 4, g).tolist()
    [0, 0, 1, 1]
    >>> resample(torch.zeros(3), 4, g, scheme="bogus")
    Traceback (most recent call last):
    ...
    ValueError: unknown resampling scheme 'bogus'; choose one of 'systematic', ...
    """
    try:
        resampler = SCHEMES[scheme]
    except (KeyError, TypeError):
        choices = ", ".join(repr(name) for name in SCHEMES)
        raise ValueError(f"unknown resampling scheme {scheme!r}; choose one of {choices}") from None
    return resampler(log_weights, num_samples, generator)
