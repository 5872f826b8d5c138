"""Adaptive tempering: choosing the next inverse temperature by bisection.

Tempered SMC targets ``p_beta(u) ∝ p(u) L(u)^beta`` for ``0 = beta_0 < ... < beta_T = 1``.
Moving an equally weighted population from ``beta`` to ``beta'`` reweights particle ``i``
by ``L_i^(beta' - beta)``; :func:`next_beta` picks the largest ``beta'`` whose weights keep
an effective sample size of ``target_ess_fraction`` times the number of particles that
survive (Jasra et al., 2011; Beskos et al., 2016).

The solver and the engine's weight update both call :func:`incremental_log_weights`, so
the ESS the solver aims for is by construction the ESS the engine gets (a sign or
convention mismatch between the two stalls a run).

Conventions: a ``NaN`` log likelihood is treated as ``-inf`` (likelihood zero); such a
particle gets weight zero at any positive step, and ``L^0 = 1`` for every particle so
that ``p_0`` is the prior.
"""

from __future__ import annotations

import math

import torch

from bayesprompt.inference.smc.ess import ess

__all__ = ["incremental_log_weights", "next_beta", "tempered_log_likelihood"]

_MAX_BISECTIONS = 200


def tempered_log_likelihood(log_likelihood: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * log_likelihood`` with the conventions above (float64).

    ``NaN`` entries count as ``-inf``; with ``beta == 0`` every entry is ``0``
    (``L^0 = 1``, even where ``L = 0``).

    Examples
    --------
    >>> ll = torch.tensor([-2.0, float("-inf"), float("nan")])
    >>> tempered_log_likelihood(ll, 0.5)
    tensor([-1., -inf, -inf], dtype=torch.float64)
    >>> tempered_log_likelihood(ll, 0.0)
    tensor([0., 0., 0.], dtype=torch.float64)
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    log_likelihood = torch.as_tensor(log_likelihood).detach().to(torch.float64)
    if beta == 0:
        return torch.zeros_like(log_likelihood)
    log_likelihood = torch.nan_to_num(log_likelihood, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    return beta * log_likelihood


def incremental_log_weights(log_likelihood: torch.Tensor, beta_old: float, beta_new: float) -> torch.Tensor:
    """Log incremental weights ``(beta_new - beta_old) * log_likelihood`` of a tempering step.

    This is the only place the reweighting is defined: :func:`next_beta` evaluates its
    candidates with it, and the engine reweights with it.

    Parameters
    ----------
    log_likelihood : Tensor ``[N]``
        Per-particle log likelihoods (``-inf``/``NaN``: zero likelihood).
    beta_old, beta_new : float
        Current and next inverse temperatures, ``beta_new >= beta_old``.

    Returns
    -------
    Tensor ``[N]``
        float64 log incremental weights.

    Examples
    --------
    >>> incremental_log_weights(torch.tensor([-4.0, -2.0]), 0.25, 0.75)
    tensor([-2., -1.], dtype=torch.float64)
    """
    if beta_new < beta_old:
        raise ValueError(f"beta must not decrease: {beta_old} -> {beta_new}")
    return tempered_log_likelihood(log_likelihood, beta_new - beta_old)


def next_beta(
    log_likelihood: torch.Tensor,
    beta: float,
    target_ess_fraction: float = 0.5,
    min_step: float = 1e-6,
    tol: float = 1e-4,
) -> float:
    """The next inverse temperature for an equally weighted population.

    Solves ``ESS(incremental_log_weights(ll, beta, beta')) = target_ess_fraction * n``
    for ``beta'`` in ``(beta, 1]`` by bisection, where ``n`` is the number of particles
    with a finite log likelihood: the others have weight zero at *any* positive step, so
    the target is relative to the survivors (with no ``-inf`` entries, ``n = N``). The
    ESS is non-increasing in ``beta'`` (its log-derivative is ``2 (E_{beta'}[log L] -
    E_{2 beta'}[log L]) <= 0``), so bisection applies.

    Parameters
    ----------
    log_likelihood : Tensor ``[N]``
        Log likelihoods of the current, equally weighted particles.
    beta : float
        Current inverse temperature in ``[0, 1]``.
    target_ess_fraction : float
        Target ESS as a fraction of the surviving particles, in ``(0, 1)``.
    min_step : float
        Smallest allowed increment (guarantees progress when the likelihood is very
        peaked; ``beta + min_step`` is capped at 1).
    tol : float
        Bisection stops once ``|ESS / n - target_ess_fraction| <= tol``.

    Returns
    -------
    float
        The next inverse temperature; ``1.0`` when even ``beta' = 1`` keeps the ESS at or
        above the target (e.g. a flat likelihood).

    Raises
    ------
    ValueError
        For invalid arguments, or when no particle has a finite log likelihood.

    Examples
    --------
    >>> ll = -0.5 * torch.linspace(-3, 3, 101) ** 2 * 50
    >>> b = next_beta(ll, 0.0)
    >>> 0 < b < 1
    True
    >>> abs(ess(incremental_log_weights(ll, 0.0, b)) / 101 - 0.5) <= 1e-4
    True
    >>> next_beta(torch.full((10,), -123.0), 0.0)  # flat likelihood
    1.0
    """
    _check_args(beta, target_ess_fraction, min_step, tol)
    log_likelihood = torch.as_tensor(log_likelihood).detach().to(torch.float64)
    if log_likelihood.ndim != 1 or log_likelihood.shape[0] == 0:
        raise ValueError(f"log_likelihood must be a non-empty 1-D tensor, got {tuple(log_likelihood.shape)}")
    if (log_likelihood == math.inf).any():
        raise ValueError("log_likelihood contains +inf")
    survivors = int(torch.isfinite(log_likelihood).sum())
    if survivors == 0:
        raise ValueError("no particle has a finite log likelihood (all are -inf or NaN)")
    if beta >= 1.0:
        return 1.0

    def ess_fraction(candidate: float) -> float:
        return ess(incremental_log_weights(log_likelihood, beta, candidate)) / survivors

    if ess_fraction(1.0) >= target_ess_fraction - tol:
        return 1.0
    low, high = beta, 1.0  # invariant: ESS(low) > target > ESS(high), with ESS(beta+) = 1
    for _ in range(_MAX_BISECTIONS):
        middle = 0.5 * (low + high)
        if not low < middle < high:  # float resolution reached
            break
        fraction = ess_fraction(middle)
        if abs(fraction - target_ess_fraction) <= tol:
            low = middle
            break
        if fraction > target_ess_fraction:
            low = middle
        else:
            high = middle
    return min(max(low, beta + min_step), 1.0)


def _check_args(beta: float, target: float, min_step: float, tol: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_ess_fraction must be in (0, 1), got {target}")
    if not 0.0 < min_step <= 1.0:
        raise ValueError(f"min_step must be in (0, 1], got {min_step}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
