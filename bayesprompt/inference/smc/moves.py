"""Metropolis-Hastings moves shared by the SMC engines.

An SMC stage rejuvenates an equally weighted population with Metropolis-Hastings moves
on some target ``log pi(u)`` in the model's unconstrained coordinates. The
pieces here are shared by :class:`~bayesprompt.inference.smc.tempered.TemperedSMC`
(target ``log p(u) + beta log L(u)``) and
:class:`~bayesprompt.inference.smc.abc_mcmc.AdaptiveABCSMC` (target
``log p(u) + log 1[d(u) <= eps]``):

* :func:`proposal_factor` -- the random-walk factor from the weighted particle cloud,
  scaled by ``scale * 2.38 / sqrt(D)`` (Roberts & Rosenthal, 2001): full Cholesky when
  ``N >= 4 D`` (``"auto"``), per-coordinate standard deviations otherwise (``"diag"``),
  or one common standard deviation (``"iso"``);
* :func:`random_walk` and :func:`crank_nicolson` (pCN, Cotter et al., 2013) --
  proposals; pCN is reversible w.r.t. a Gaussian reference (:func:`isotropic_gaussian`,
  corrected for with :func:`gaussian_log_density`), so its acceptance does not decay
  with the dimension when the target is close to that reference outside a few
  directions (e.g. a Gaussian prior restricted by a likelihood of a few features);
* :func:`metropolis` -- one move of the whole population, scored in **one**
  ``potential.evaluate`` call;
* :func:`rejuvenate` -- moves until the planned number is done, re-planned after each
  move from the mean acceptance rate with :func:`planned_moves`; when the meter refuses
  a move after at least one was made, the moves made are kept (:class:`Rejuvenated`);
* :func:`adapted_scale` -- the update ``scale *= exp(a - target)``, applied between
  stages (TemperedSMC) or after every move (:func:`rejuvenate` with a target);
* :func:`sanitised` -- NaN log densities become ``-inf`` (never accepted or resampled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesprompt.lm.meter import BudgetExhausted
from bayesprompt.models.potential import Evaluation, Potential, seeded

__all__ = [
    "PROPOSALS",
    "SCALE_BOUNDS",
    "Kernel",
    "LogTarget",
    "Propose",
    "Rejuvenated",
    "adapted_scale",
    "crank_nicolson",
    "gaussian_log_density",
    "isotropic_gaussian",
    "metropolis",
    "planned_moves",
    "proposal_factor",
    "random_walk",
    "rejuvenate",
    "sanitised",
]

#: Bounds of the adapted step-size multiplier.
SCALE_BOUNDS = (1e-3, 1e2)
#: Accepted values of the ``proposal`` option.
PROPOSALS = ("auto", "full", "diag", "iso")
#: ``Evaluation -> log target [P]`` (float64; ``-inf`` where the target is zero).
LogTarget = Callable[[Evaluation], torch.Tensor]
#: ``(u [P, D] float64, generator) -> proposals [P, D]`` (float64).
Propose = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
#: ``scale -> Propose``: proposals indexed by a step-size multiplier.
Kernel = Callable[[float], Propose]

_MAX_JITTER_TRIES = 8


def proposal_factor(
    u: torch.Tensor, log_weights: torch.Tensor, scale: float, proposal: str = "auto", jitter: float = 1e-6
) -> torch.Tensor:
    """Random-walk factor: a std vector ``[D]`` (diagonal) or a Cholesky factor ``[D, D]``.

    ``"iso"`` uses the root mean weighted variance for every coordinate: a single
    scalar estimated from all ``N x D`` values, which few particles estimate far more
    reliably than ``D`` separate variances.

    Parameters
    ----------
    u : Tensor ``[N, D]``
        Particles.
    log_weights : Tensor ``[N]``
        Their *normalised* log weights (``-inf``: weight zero).
    scale : float
        Multiplier of the ``2.38 / sqrt(D)`` random-walk scale.
    proposal : {"auto", "full", "diag", "iso"}
        ``"auto"`` is full when ``N >= 4 D`` (enough particles for a covariance), else
        diagonal.
    jitter : float
        Relative diagonal jitter.

    Examples
    --------
    >>> u = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    >>> proposal_factor(u, torch.log(torch.tensor([0.5, 0.5])), 1.0, "diag", 0.0)
    tensor([1.6829, 3.3658], dtype=torch.float64)
    >>> proposal_factor(u, torch.log(torch.tensor([0.5, 0.5])), 1.0, "iso", 0.0)  # sqrt((1 + 4) / 2)
    tensor([2.6609, 2.6609], dtype=torch.float64)
    """
    dim = u.shape[1]
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    full = proposal == "full" or (proposal == "auto" and len(u) >= 4 * dim)
    estimate = _weighted_cholesky if full else _isotropic_std if proposal == "iso" else _weighted_std
    return (scale * 2.38 / math.sqrt(dim)) * estimate(u, log_weights, jitter)


def metropolis(
    potential: Potential,
    particles: Evaluation,
    propose: Propose,
    generator: torch.Generator,
    log_target: LogTarget,
) -> tuple[Evaluation, float]:
    """One Metropolis-Hastings move of the whole population (one evaluate call).

    Proposes ``u' = propose(u)`` (e.g. :func:`random_walk`), evaluates all proposals in
    one batched model run under :func:`~bayesprompt.models.potential.seeded` (so
    stochastic simulators stay a function of ``generator``) and accepts each with
    probability ``min(1, exp(log_target(u') - log_target(u)))``: the proposal must be
    symmetric, or ``log_target`` must include its correction (for :func:`crank_nicolson`,
    subtract :func:`gaussian_log_density`). NaN ratios and ``+inf`` proposed targets reject.

    Returns
    -------
    (Evaluation, float)
        The moved population (accepted particles carry their new evaluation) and the
        fraction accepted.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> potential = Potential(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
    >>> g = torch.Generator().manual_seed(0)
    >>> particles = potential.init_population(4, g)
    >>> moved, rate = metropolis(potential, particles, random_walk(torch.ones(1)), g, lambda e: e.log_prior.double())
    >>> moved.u.shape, 0.0 <= rate <= 1.0
    (torch.Size([4, 1]), True)
    """
    u = particles.u
    proposal = propose(u.double(), generator)
    with seeded(generator):  # model-internal randomness stays a function of the engine seed
        proposed = sanitised(potential.evaluate(proposal.to(u.dtype)))
    proposed_target = log_target(proposed)
    log_ratio = proposed_target - log_target(particles)
    log_uniform = torch.log(torch.rand(len(particles), generator=generator, dtype=torch.float64))
    # NaN ratios reject; so do +inf densities (a degenerate likelihood, e.g. a zero noise scale)
    accept = (log_uniform < log_ratio) & (proposed_target < math.inf)
    return Evaluation.where(accept, proposed, particles), float(accept.double().mean())


def random_walk(factor: torch.Tensor) -> Propose:
    """Gaussian random-walk proposals ``u + factor * xi`` (``factor``: std ``[D]`` or Cholesky ``[D, D]``).

    Examples
    --------
    >>> propose = random_walk(torch.tensor([0.0, 1.0]))
    >>> propose(torch.zeros(3, 2, dtype=torch.float64), torch.Generator().manual_seed(0))[:, 0]
    tensor([0., 0., 0.], dtype=torch.float64)
    """

    def propose(u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(u.shape, generator=generator, dtype=torch.float64)
        return u + (noise * factor if factor.ndim == 1 else noise @ factor.T)

    return propose


def crank_nicolson(step: float, mean: float = 0.0, std: float = 1.0) -> Propose:
    """pCN proposals ``m + sqrt(1 - step^2) (u - m) + step * std * xi``, reversible w.r.t. ``N(m, std^2 I)``.

    The MH ratio of a target ``pi`` is then ``[pi(u') / N(u')] / [pi(u) / N(u)]``
    (see :func:`gaussian_log_density`): when ``pi`` is that Gaussian restricted to a
    region, only the region's indicator remains, whatever the dimension.

    Examples
    --------
    >>> propose = crank_nicolson(1.0, mean=2.0, std=0.0)  # step 1: a fresh reference draw
    >>> propose(torch.zeros(2, 3, dtype=torch.float64), torch.Generator())
    tensor([[2., 2., 2.],
            [2., 2., 2.]], dtype=torch.float64)
    """
    if not 0.0 < step <= 1.0:
        raise ValueError(f"the pCN step must be in (0, 1], got {step}")
    keep = math.sqrt(1.0 - step**2)

    def propose(u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(u.shape, generator=generator, dtype=torch.float64)
        return mean + keep * (u - mean) + (step * std) * noise

    return propose


def gaussian_log_density(u: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """``log N(u; mean, std^2 I)`` per row, up to its constant (float64).

    Examples
    --------
    >>> gaussian_log_density(torch.tensor([[0.0, 2.0]]), std=2.0)
    tensor([-0.5000], dtype=torch.float64)
    """
    return -0.5 * ((u.double() - mean) / std).square().sum(-1)


def isotropic_gaussian(u: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of all entries of ``u [N, D]``: an isotropic Gaussian fit.

    Fitted to prior draws, it is the natural :func:`crank_nicolson` reference: exact for
    an isotropic Gaussian prior (such as the prompt models' ``N(0, s^2 I)``) up to
    ``O(1 / sqrt(N D))`` estimation error, and only an efficiency choice otherwise.

    Examples
    --------
    >>> isotropic_gaussian(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    (1.0, 1.0)
    """
    x = u.detach().double()
    std = float(x.std(unbiased=False))
    return float(x.mean()), std if std > 0 else 1.0


class Rejuvenated(NamedTuple):
    """What :func:`rejuvenate` returns.

    Attributes
    ----------
    particles : Evaluation
        The moved population.
    rates : list of float
        Acceptance rate of every move made.
    scale : float
        The step-size multiplier after the last move.
    interrupted : bool
        The meter refused a planned move: fewer moves were made than planned.
    """

    particles: Evaluation
    rates: list[float]
    scale: float
    interrupted: bool = False


def rejuvenate(
    potential: Potential,
    particles: Evaluation,
    kernel: Kernel,
    generator: torch.Generator,
    log_target: LogTarget,
    min_moves: int,
    max_moves: int,
    move_probability: float,
    scale: float = 1.0,
    target_acceptance: float | None = None,
    max_scale: float = SCALE_BOUNDS[1],
) -> Rejuvenated:
    """Metropolis moves until the planned number (re-planned after each move) is done.

    Move ``k`` proposes with ``kernel(scale_k)``. With ``target_acceptance`` the scale is
    adapted after every move (:func:`adapted_scale`, at most ``max_scale``); without it,
    it stays ``scale``. Each move costs one ``potential.evaluate`` call on the whole
    population.

    Every move leaves the target invariant, so the population after any number of them
    still targets it. When the meter refuses a move (:class:`BudgetExhausted`) after at
    least one was made, the moves made are returned with ``interrupted=True`` instead of
    being lost; a refused first move raises, as nothing was done.

    Returns
    -------
    Rejuvenated
        The moved population, the acceptance rate of every move, the final scale and
        whether the budget cut the moves short.

    Raises
    ------
    BudgetExhausted
        If the meter refuses the first move.
    """
    rates: list[float] = []
    planned = min_moves
    while len(rates) < planned:
        try:
            particles, rate = metropolis(potential, particles, kernel(scale), generator, log_target)
        except BudgetExhausted:
            if not rates:
                raise
            return Rejuvenated(particles, rates, scale, interrupted=True)
        rates.append(rate)
        scale = adapted_scale(scale, rate, target_acceptance, max_scale)
        planned = planned_moves(sum(rates) / len(rates), min_moves, max_moves, move_probability)
    return Rejuvenated(particles, rates, scale)


def planned_moves(acceptance: float, min_moves: int, max_moves: int, move_probability: float) -> int:
    """Smallest ``m`` with ``1 - (1 - acceptance)^m >= move_probability``, clipped.

    Examples
    --------
    >>> planned_moves(0.25, 1, 10, 0.9)  # 1 - 0.75^8 < 0.9 <= 1 - 0.75^9
    9
    >>> planned_moves(0.0, 1, 10, 0.9), planned_moves(1.0, 2, 10, 0.9)
    (10, 2)
    """
    if acceptance <= 0.0:
        return max_moves
    if acceptance >= 1.0:
        return min_moves
    moves = math.ceil(math.log1p(-move_probability) / math.log1p(-acceptance))
    return min(max(moves, min_moves), max_moves)


def adapted_scale(
    scale: float, acceptance: float, target_acceptance: float | None, upper: float = SCALE_BOUNDS[1]
) -> float:
    """``scale * exp(acceptance - target_acceptance)`` clipped to ``[1e-3, upper]`` (``None``: keep).

    Examples
    --------
    >>> round(adapted_scale(1.0, 0.75, 0.25), 4), adapted_scale(2.0, 0.9, None)
    (1.6487, 2.0)
    """
    if target_acceptance is None:
        return scale
    return min(max(scale * math.exp(acceptance - target_acceptance), SCALE_BOUNDS[0]), upper)


def sanitised(evaluation: Evaluation) -> Evaluation:
    """Map NaN log densities to ``-inf`` (a zero density, never accepted or resampled)."""
    return Evaluation(
        evaluation.u,
        torch.nan_to_num(evaluation.log_prior, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
        torch.nan_to_num(evaluation.log_likelihood, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
        evaluation.outputs,
    )


def _weighted_moments(u: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[N]`` and weighted-mean-centred particles ``[N, D]`` (float64)."""
    weights = log_weights.exp().to(torch.float64)
    u = u.detach().to(torch.float64)
    centred = u - weights @ u
    return weights, centred


def _weighted_std(u: torch.Tensor, log_weights: torch.Tensor, jitter: float) -> torch.Tensor:
    weights, centred = _weighted_moments(u, log_weights)
    variance = weights @ centred.square()
    return (variance + jitter * variance.mean() + 1e-12).sqrt()


def _isotropic_std(u: torch.Tensor, log_weights: torch.Tensor, jitter: float) -> torch.Tensor:
    std = _weighted_std(u, log_weights, jitter)
    return std.square().mean().sqrt().expand_as(std).clone()


def _weighted_cholesky(u: torch.Tensor, log_weights: torch.Tensor, jitter: float) -> torch.Tensor:
    """Cholesky factor of the weighted covariance; jitter grows until it factorises."""
    weights, centred = _weighted_moments(u, log_weights)
    cov = (centred * weights.unsqueeze(1)).T @ centred
    cov = 0.5 * (cov + cov.T)
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    ridge = jitter * float(cov.diagonal().mean()) + 1e-12
    for _ in range(_MAX_JITTER_TRIES):
        factor, status = torch.linalg.cholesky_ex(cov + ridge * eye)
        if int(status) == 0:
            return factor
        ridge *= 10.0
    return _weighted_std(u, log_weights, jitter)
