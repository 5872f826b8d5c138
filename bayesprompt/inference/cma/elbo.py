"""CMA-ELBO (Shen et al., EACL 2023 Findings): variational inference driven by CMA-ES.

The variational family is a diagonal Gaussian in the model's unconstrained coordinates,
``q(u) = N(m, diag(s^2))``. CMA-ES searches the ``2D`` parameters ``theta = (m, log s)``
(with ``scale="isotropic"``, the ``D + 1`` parameters of ``q(u) = N(m, s^2 I)``) and scores
each candidate by the Monte Carlo negative ELBO

.. math::

    F(\\theta) = -\\frac{1}{S} \\sum_{s=1}^{S} \\log p(y \\mid u_s)
        + \\lambda \\, \\mathrm{KL}(q_\\theta \\,\\|\\, p), \\qquad u_s = m + s \\odot \\epsilon_s,

with **common random numbers**: the ``S`` draws ``epsilon_s ~ N(0, I)`` are fixed within
an iteration and shared by all candidates, so candidates are compared on the same noise.
All ``popsize * S`` prompts of an iteration are scored in one ``potential.evaluate``
call (``popsize * S`` API calls).

``lambda`` is ``kl_weight``: ``1`` gives the true negative ELBO (whose minimiser is the
KL-closest diagonal Gaussian to the posterior); the paper down-weights the prior with
``1e-3`` (the default), which sharpens ``q`` towards the maximum-likelihood prompt.

The KL term is exact when every latent site has a fixed Normal prior (Gaussian in ``u``,
e.g. the standard-normal prompt ``z``; see :func:`gaussian_prior`); otherwise it is the
estimate ``-H(q) - (1/S) sum_s log p(u_s)`` with the exact entropy of ``q`` and the
Potential's log prior (log-Jacobian included) at the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from bayesprompt.inference.base import Engine, discover_sites, generator_from, make_generator
from bayesprompt.inference.cma.bbt import (
    DevScore,
    ask,
    dev_due,
    new_strategy,
    start_point,
    strategy_stop_reason,
    tell,
)
from bayesprompt.inference.posterior import Posterior
from bayesprompt.models.potential import Potential
from bayesprompt.models.priors import GaussianPrior
from bayesprompt.models.priors import fixed_gaussian_prior as gaussian_prior

__all__ = ["CMAELBO", "CMAELBOState", "NegativeELBO", "gaussian_prior"]

#: Variance parameterisations of ``q``: one ``log s`` per coordinate, or one for all.
SCALES = ("diagonal", "isotropic")


@dataclass(frozen=True)
class NegativeELBO:
    """Per-candidate terms of the Monte Carlo negative ELBO (``[P]`` each, float64)."""

    fitness: torch.Tensor
    expected_nll: torch.Tensor
    kl: torch.Tensor


@dataclass(frozen=True)
class CMAELBOState:
    """State of :class:`CMAELBO` (the pycma strategy is copied, never mutated in place).

    Attributes
    ----------
    strategy : cma.CMAEvolutionStrategy
        The optimiser over ``theta = (m, log s)`` (``2D`` coordinates, or ``D + 1`` for an
        isotropic ``q``).
    iteration : int
        Completed iterations.
    best_params : Tensor ``[2D]`` or ``[D + 1]``
        The selected ``theta``: the CMA mean (pycma's ``result.xfavorite``), or with a dev split
        the CMA mean with the best dev score.
    best_score : float
        Its selection score (higher is better): minus the last population's mean fitness,
        or the dev score.
    best_fitness : float
        Lowest fitness (Monte Carlo negative ELBO) seen.
    rng_state : Tensor
        State of the engine's generator (draws ``epsilon``).
    prior : GaussianPrior or None
        The prior when it is Gaussian in ``u`` (closed-form KL), else ``None``.
    """

    strategy: Any
    iteration: int
    best_params: torch.Tensor
    best_score: float
    best_fitness: float
    rng_state: torch.Tensor
    prior: GaussianPrior | None


class CMAELBO(Engine[CMAELBOState]):
    """CMA-ES over a mean-field Gaussian ``q(u)``, minimising the Monte Carlo negative ELBO.

    Parameters
    ----------
    popsize : int
        CMA-ES population of ``theta`` candidates.
    num_mc_samples : int
        Draws ``S`` per candidate; one iteration costs ``popsize * S`` API calls.
    kl_weight : float
        Weight of ``KL(q || prior)``: ``1.0`` is the true negative ELBO, the paper uses
        ``1e-3`` (default).
    init_std : float
        Initial ``s`` (every coordinate); the initial mean is ``m = 0``.
    sigma0 : float
        Initial CMA-ES step size in ``theta`` coordinates.
    num_samples : int
        Samples drawn from the selected ``q`` for the returned posterior (no query).
    max_iterations : int or None
        Stop after this many iterations (``None``: until the budget or pycma stops).
    dev_score : callable or None
        ``u [P, D] -> score [P]`` on a dev split (higher is better). If given, the mean
        ``m`` of the CMA mean's ``q`` is scored every ``dev_every`` iterations (one call)
        and the best-dev ``q`` is kept, as :class:`~bayesprompt.inference.cma.bbt.CMAES`
        does; otherwise the latest CMA mean is kept. (The lowest fitness over the run is
        not a selection rule: each iteration draws its own ``epsilon``, so fitnesses of
        different iterations are not comparable, and their minimum favours candidates
        whose draws happened to make a wide ``s`` look cheap.)
    dev_every : int
        Dev-evaluation period in iterations.
    diagonal : bool
        Use separable (diagonal) CMA-ES, cheaper for large ``D``.
    scale : {"diagonal", "isotropic"}
        Variance parameters of ``q``: one ``log s`` per coordinate (the paper's mean-field
        family, default), or a single ``log s`` for ``N(m, s^2 I)``. With a few dozen
        iterations in hundreds of dimensions, CMA-ES cannot resolve ``D`` scales from a
        four-draw ELBO and the per-coordinate ``log s`` drift like a random walk, which
        widens ``q`` (``python -m benchmarks.cma_elbo_drift``); one scale is learnt fast.

    Examples
    --------
    >>> from bayesprompt.testing import LinearGaussian
    >>> from bayesprompt.inference.base import run
    >>> problem = LinearGaussian.random(dim=2, num_obs=8, seed=0)
    >>> engine = CMAELBO(popsize=8, num_mc_samples=4, max_iterations=20, num_samples=16)
    >>> post = run(engine, Potential(problem.model), progress=False)
    >>> post.num_samples, post.status, post.summary["closed_form_kl"]
    (16, 'max_iterations', True)
    """

    name = "cma-elbo"
    progress_keys = ("iteration", "fitness", "best_fitness")

    def __init__(
        self,
        popsize: int = 20,
        num_mc_samples: int = 4,
        kl_weight: float = 1e-3,
        init_std: float = 1.0,
        sigma0: float = 1.0,
        num_samples: int = 32,
        max_iterations: int | None = None,
        dev_score: DevScore | None = None,
        dev_every: int = 5,
        diagonal: bool = False,
        scale: str = "diagonal",
    ) -> None:
        _check_at_least(popsize=(popsize, 2), num_mc_samples=(num_mc_samples, 1))
        _check_at_least(num_samples=(num_samples, 1), dev_every=(dev_every, 1))
        if init_std <= 0 or sigma0 <= 0 or kl_weight < 0:
            raise ValueError(f"need init_std > 0, sigma0 > 0, kl_weight >= 0; got {init_std}, {sigma0}, {kl_weight}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.popsize = popsize
        self.num_mc_samples = num_mc_samples
        self.kl_weight = kl_weight
        self.init_std = init_std
        self.sigma0 = sigma0
        self.num_samples = num_samples
        self.max_iterations = max_iterations
        self.dev_score = dev_score
        self.dev_every = dev_every
        self.diagonal = diagonal
        self.scale = scale

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> CMAELBOState:
        """Start at ``m`` = the prior mean (see :func:`start_point`), ``s = init_std``; no query."""
        generator = make_generator(seed)
        discover_sites(potential, generator)
        dim = potential.dim
        prior = gaussian_prior(potential)
        log_scales = torch.full((self._num_scales(dim),), math.log(self.init_std))
        theta0 = torch.cat([start_point(prior, dim), log_scales]).double()
        strategy = new_strategy(theta0.numpy(), self.sigma0, self.popsize, seed, self.diagonal)
        return CMAELBOState(strategy, 0, theta0, -math.inf, math.inf, generator.get_state(), prior)

    def step(self, potential: Potential, state: CMAELBOState) -> tuple[CMAELBOState, dict[str, Any]]:
        """Draw ``epsilon``, score the population's negative ELBOs in one call, tell them."""
        generator = generator_from(state.rng_state)
        eps = torch.randn(self.num_mc_samples, potential.dim, generator=generator, dtype=torch.float64)
        strategy, candidates = ask(state.strategy)
        params = torch.as_tensor(candidates, dtype=torch.float64)
        terms = self.objective(potential, params, eps, state.prior)
        losses = tell(strategy, candidates, terms.fitness)
        best = int(losses.argmin())
        new = replace(
            state,
            strategy=strategy,
            iteration=state.iteration + 1,
            best_fitness=min(state.best_fitness, float(losses[best])),
            rng_state=generator.get_state(),
        )
        info: dict[str, Any] = {
            "iteration": new.iteration,
            "fitness": float(losses[best]),
            "fitness_mean": float(losses.mean()),
            "expected_nll": float(terms.expected_nll[best]),
            "kl": float(terms.kl[best]),
            "max_std": float(np.max(strategy.stds)),  # largest per-coordinate step size
        }
        new = self._select(new, float(losses.mean()), info)
        info["best_fitness"] = new.best_fitness
        info["best_score"] = new.best_score
        return new, info

    def stop_reason(self, state: CMAELBOState) -> str | None:
        """Stop at ``max_iterations`` or when pycma's own criteria fire."""
        return strategy_stop_reason(state.strategy, state.iteration, self.max_iterations)

    def posterior(self, potential: Potential, state: CMAELBOState) -> Posterior:
        """``num_samples`` equally weighted draws from the selected ``q`` (no query)."""
        mean, std = self.variational_params(state)
        generator = generator_from(state.rng_state)
        eps = torch.randn(self.num_samples, mean.shape[0], generator=generator, dtype=torch.float64)
        u = (mean + std * eps).float()
        samples = {k: v.detach() for k, v in potential.unpack(u).items()}
        summary = {
            "best_fitness": state.best_fitness,
            "best_score": state.best_score,
            "q_mean_norm": float(mean.norm()),
            "q_std_norm": float(std.norm()),
            "kl_weight": self.kl_weight,
            "scale": self.scale,
            "closed_form_kl": state.prior is not None,
            "iterations": state.iteration,
        }
        return Posterior(samples, torch.zeros(self.num_samples), summary=summary)

    # ------------------------------------------------------------------ the objective
    def objective(
        self,
        potential: Potential,
        params: torch.Tensor,
        eps: torch.Tensor,
        prior: GaussianPrior | None = None,
    ) -> NegativeELBO:
        """Monte Carlo negative ELBO of candidates ``params [P, 2D]`` with shared ``eps [S, D]``.

        All ``P * S`` draws ``u = m + s * eps`` are scored in one ``potential.evaluate``.
        ``prior`` selects the closed-form KL; ``None`` uses the Monte Carlo estimate.
        """
        num_scales = self._num_scales(potential.dim)
        if params.ndim != 2 or params.shape[-1] != potential.dim + num_scales:
            raise ValueError(
                f"params must be [P, {potential.dim + num_scales}] ({potential.dim} means and "
                f"{num_scales} log-scales for scale={self.scale!r}), got {tuple(params.shape)}"
            )
        mean, std = _split(params, potential.dim)
        num, draws = params.shape[0], eps.shape[0]
        u = (mean.unsqueeze(1) + std.unsqueeze(1) * eps.unsqueeze(0)).reshape(num * draws, -1)
        evaluation = potential.evaluate(u.float())
        expected_nll = -evaluation.log_likelihood.double().reshape(num, draws).mean(-1)
        if prior is not None:
            kl = prior.kl_from_diagonal(mean, std)
        else:
            kl = -_entropy(std) - evaluation.log_prior.double().reshape(num, draws).mean(-1)
        return NegativeELBO(expected_nll + self.kl_weight * kl, expected_nll, kl)

    def variational_params(self, state: CMAELBOState) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviations ``[D]`` (float64) of the selected ``q``."""
        mean, std = _split(state.best_params.unsqueeze(0), self._latent_dim(state.best_params))
        return mean[0], std[0]

    def _num_scales(self, dim: int) -> int:
        """Number of ``log s`` parameters of ``q`` in ``dim`` dimensions."""
        return dim if self.scale == "diagonal" else 1

    def _latent_dim(self, theta: torch.Tensor) -> int:
        """``D`` from a parameter vector ``theta`` of this engine's family."""
        size = theta.shape[-1]
        return size // 2 if self.scale == "diagonal" else size - 1

    def _select(self, state: CMAELBOState, mean_fitness: float, info: dict[str, Any]) -> CMAELBOState:
        """Keep the latest CMA mean's ``q``, or the CMA mean's ``q`` with the best dev score."""
        theta = torch.as_tensor(np.asarray(state.strategy.mean), dtype=torch.float64)
        if self.dev_score is None:
            return replace(state, best_params=theta, best_score=-mean_fitness)
        if not dev_due(state.iteration, self.dev_every):
            return state
        mean = theta[: self._latent_dim(theta)]
        score = float(self.dev_score(mean.unsqueeze(0).float())[0])
        info["dev_score"] = score
        if score > state.best_score:
            return replace(state, best_params=theta, best_score=score)
        return state


def _check_at_least(**values: tuple[int, int]) -> None:
    for name, (value, low) in values.items():
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


def _split(params: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta [P, 2D]`` or ``[P, D + 1]`` ``-> (m [P, D], s [P, D])``."""
    params = params.double()
    mean, log_std = params[..., :dim], params[..., dim:]
    return mean, log_std.exp().expand_as(mean)


def _entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy ``[P]`` of ``N(m, diag(std^2))`` for ``std [P, D]``."""
    return std.log().sum(-1) + 0.5 * std.shape[-1] * (1.0 + math.log(2 * math.pi))
