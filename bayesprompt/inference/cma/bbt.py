"""Black-Box Tuning (Sun et al., ICML 2022): CMA-ES on the low-dimensional prompt z.

BBT is the point-estimate baseline: CMA-ES (pycma) minimises the training loss
``-log p(y | z)`` (optionally plus ``-log p(z)``, a MAP variant), each CMA population is
scored in one batched black-box call, and the prompt is chosen on a dev split. The
result is a :class:`~bayesprompt.inference.posterior.Posterior` with a single sample.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cma
import numpy as np
import torch

from bayesprompt.inference.base import Engine
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.models.potential import Potential
from bayesprompt.models.priors import GaussianPrior, fixed_gaussian_prior

__all__ = ["CMAES", "CMAState"]

#: Scores a population ``u [P, D]`` on a dev split; higher is better.
DevScore = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CMAState:
    """State of :class:`CMAES` (the pycma strategy is copied, never mutated in place).

    Attributes
    ----------
    strategy : cma.CMAEvolutionStrategy or None
        The optimiser (``None`` in a prompt ensemble's members that are not running, see
        :mod:`~bayesprompt.inference.cma.ensembles`).
    iteration : int
        Completed iterations.
    best_u : Tensor ``[D]``
        The selected prompt so far (best dev score, or best training loss without dev).
    best_score : float
        Its selection score (higher is better).
    best_train_loss : float
        Lowest training loss seen.
    """

    strategy: Any
    iteration: int
    best_u: torch.Tensor
    best_score: float
    best_train_loss: float


class CMAES(Engine[CMAState]):
    """BBT's CMA-ES prompt search.

    Parameters
    ----------
    popsize : int
        CMA-ES population (BBT: 20). One iteration costs ``popsize`` API calls.
    sigma0 : float
        Initial step size in unconstrained coordinates (BBT: 1).
    max_iterations : int or None
        Stop after this many iterations (``None``: until the budget or pycma stops).
    dev_score : callable or None
        ``u [P, D] -> score [P]`` on a dev split (higher is better). If given, the CMA mean
        is scored every ``dev_every`` iterations and the best-dev prompt is kept (BBT's
        selection); otherwise the best training candidate is kept.
    dev_every : int
        Dev-evaluation period in iterations (each costs one API call per dev batch).
    map_objective : bool
        Minimise ``-(log_likelihood + log_prior)`` instead of BBT's plain training loss.
    diagonal : bool
        Use separable (diagonal) CMA-ES, cheaper for large ``D``.

    Examples
    --------
    >>> from bayesprompt.testing import LinearGaussian
    >>> from bayesprompt.inference.base import run
    >>> problem = LinearGaussian.random(dim=2, num_obs=8, seed=0)
    >>> post = run(CMAES(popsize=8, max_iterations=30), Potential(problem.model), progress=False)
    >>> post.num_samples, post.status
    (1, 'max_iterations')
    """

    name = "cmaes"
    progress_keys = ("iteration", "train_loss", "best_score")

    def __init__(
        self,
        popsize: int = 20,
        sigma0: float = 1.0,
        max_iterations: int | None = None,
        dev_score: DevScore | None = None,
        dev_every: int = 5,
        map_objective: bool = False,
        diagonal: bool = False,
    ) -> None:
        if popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {popsize}")
        if sigma0 <= 0:
            raise ValueError(f"sigma0 must be > 0, got {sigma0}")
        if dev_every < 1:
            raise ValueError(f"dev_every must be >= 1, got {dev_every}")
        self.popsize = popsize
        self.sigma0 = sigma0
        self.max_iterations = max_iterations
        self.dev_score = dev_score
        self.dev_every = dev_every
        self.map_objective = map_objective
        self.diagonal = diagonal

    def init(self, potential: Potential, seed: int) -> CMAState:
        """Start at the prior mean (``u = 0`` under BBT's prior; see :func:`start_point`).

        The prior is read for free when the Potential has a meter; without one, reading it
        would cost a query, so the start is ``u = 0``.
        """
        potential.discover_sites(torch.Generator().manual_seed(seed))
        prior = fixed_gaussian_prior(potential) if potential.meter is not None else None  # free only with a meter
        x0 = start_point(prior, potential.dim)
        strategy = new_strategy(x0.numpy(), self.sigma0, self.popsize, seed, self.diagonal)
        return CMAState(strategy, 0, x0.float(), -math.inf, math.inf)

    def step(self, potential: Potential, state: CMAState) -> tuple[CMAState, dict[str, Any]]:
        """Ask a population, score it in one call, tell the losses; maybe score the mean on dev."""
        strategy, candidates = ask(state.strategy)
        u = torch.as_tensor(candidates, dtype=torch.float32)
        evaluation = potential.evaluate(u)
        objective = evaluation.log_likelihood
        if self.map_objective:
            objective = objective + evaluation.log_prior
        losses = tell(strategy, candidates, -objective)
        iteration = state.iteration + 1
        best = int(losses.argmin())
        new = replace(
            state,
            strategy=strategy,
            iteration=iteration,
            best_train_loss=min(state.best_train_loss, float(losses[best])),
        )
        info: dict[str, Any] = {
            "iteration": iteration,
            "train_loss": float(losses.min()),
            "train_loss_mean": float(losses.mean()),
            "max_std": float(np.max(strategy.stds)),  # largest per-coordinate step size
        }
        if self.dev_score is None:
            if float(losses[best]) <= state.best_train_loss:
                new = replace(new, best_u=u[best].clone(), best_score=-float(losses[best]))
        elif dev_due(iteration, self.dev_every):
            mean = torch.as_tensor(strategy.mean, dtype=torch.float32).unsqueeze(0)
            score = float(self.dev_score(mean)[0])
            info["dev_score"] = score
            if score > state.best_score:
                new = replace(new, best_u=mean[0].clone(), best_score=score)
        info["best_score"] = new.best_score
        return new, info

    def stop_reason(self, state: CMAState) -> str | None:
        """Stop at ``max_iterations`` or when pycma's own criteria fire."""
        return strategy_stop_reason(state.strategy, state.iteration, self.max_iterations)

    def posterior(self, potential: Potential, state: CMAState) -> Posterior:
        """A one-sample posterior at the selected prompt."""
        u = state.best_u.unsqueeze(0)
        samples = {k: v.detach() for k, v in potential.unpack(u).items()}
        return Posterior(
            samples,
            torch.zeros(1),
            summary={
                "best_score": state.best_score,
                "best_train_loss": state.best_train_loss,
                "iterations": state.iteration,
            },
        )


# ---------------------------------------------------------------------- shared CMA-ES helpers
# Used by every engine of the CMA-ES family (BBT, prompt ensembles, CMA-ELBO).


class StrategyRandn:
    """pycma's ``randn(*shape)`` option backed by a private numpy generator.

    By default pycma samples from numpy's *global* RNG (seeded once, when a strategy is
    built), so a copied strategy would not carry its random state and any other user of
    ``np.random`` (another strategy included) would change a run. Owning the generator
    makes every deep copy of a strategy -- every engine state -- a complete, replayable
    snapshot.

    Examples
    --------
    >>> randn = StrategyRandn(0)
    >>> randn(2, 3).shape
    (2, 3)
    >>> bool((copy.deepcopy(randn)(4) == randn(4)).all())
    True
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(int(seed))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def start_point(prior: GaussianPrior | None, dim: int) -> torch.Tensor:
    """Where the CMA-ES family starts: the prior mean of ``u`` ``[dim]`` (float64).

    ``prior`` is the model's prior as a fixed Gaussian
    (:func:`~bayesprompt.models.priors.fixed_gaussian_prior`): its mean is ``u = 0`` under
    the default ``N(0, s^2 I)`` prompt prior (BBT's start) and the dev prompt under a
    dev-centred prior. Any other prior (``None``) starts at ``u = 0``.

    Examples
    --------
    >>> start_point(None, 2).tolist()
    [0.0, 0.0]
    >>> start_point(GaussianPrior.from_moments(torch.ones(2), torch.eye(2)), 2).tolist()
    [1.0, 1.0]
    """
    return torch.zeros(dim, dtype=torch.float64) if prior is None else prior.mean.clone()


def new_strategy(x0: np.ndarray, sigma0: float, popsize: int, seed: int, diagonal: bool) -> Any:
    """A silent pycma strategy at ``x0`` sampling from its own generator seeded with ``seed``."""
    options = {
        "popsize": popsize,
        "randn": StrategyRandn(seed),
        "seed": math.nan,  # pycma's seed only seeds the global RNG, which is not used
        "verbose": -9,
        "CMA_diagonal": diagonal,
    }
    return cma.CMAEvolutionStrategy(x0, sigma0, options)


def ask(strategy: Any) -> tuple[Any, np.ndarray]:
    """Copy ``strategy`` (states stay immutable) and ask the copy for a population ``[P, n]``."""
    strategy = copy.deepcopy(strategy)
    return strategy, np.asarray(strategy.ask())


def tell(strategy: Any, candidates: np.ndarray, losses: torch.Tensor) -> torch.Tensor:
    """Tell ``strategy`` (in place) the losses of ``candidates``; non-finite losses count as ``1e30``.

    Returns the float64 losses as told.
    """
    losses = losses.double()
    losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, 1e30))
    strategy.tell(list(candidates), losses.tolist())
    return losses


def dev_due(iteration: int, dev_every: int) -> bool:
    """Whether the dev split is scored after ``iteration`` (the first and every ``dev_every``-th)."""
    return iteration % dev_every == 0 or iteration == 1


def strategy_stop_reason(strategy: Any, iteration: int, max_iterations: int | None) -> str | None:
    """``max_iterations`` reached, or pycma's own stopping criteria fired."""
    if max_iterations is not None and iteration >= max_iterations:
        return Status.MAX_ITERATIONS
    if iteration > 0 and strategy.stop():
        return Status.FINISHED
    return None
