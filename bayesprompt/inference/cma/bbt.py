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

__all__ = ["CMAES", "CMAState"]

#: Scores a population ``u [P, D]`` on a dev split; higher is better.
DevScore = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CMAState:
    """State of :class:`CMAES` (the pycma strategy is copied, never mutated in place).

    Attributes
    ----------
    strategy : cma.CMAEvolutionStrategy
        The optimiser.
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
        """Start at the prior draw-free point ``u = 0`` (BBT's initialisation)."""
        potential.discover_sites(torch.Generator().manual_seed(seed))
        options = {
            "popsize": self.popsize,
            "seed": int(seed) + 1,  # pycma treats seed 0 as "random"
            "verbose": -9,
            "CMA_diagonal": self.diagonal,
        }
        strategy = cma.CMAEvolutionStrategy(np.zeros(potential.dim), self.sigma0, options)
        return CMAState(strategy, 0, torch.zeros(potential.dim), -math.inf, math.inf)

    def step(self, potential: Potential, state: CMAState) -> tuple[CMAState, dict[str, Any]]:
        """Ask a population, score it in one call, tell the losses; maybe score the mean on dev."""
        strategy = copy.deepcopy(state.strategy)
        candidates = np.asarray(strategy.ask())
        u = torch.as_tensor(candidates, dtype=torch.float32)
        evaluation = potential.evaluate(u)
        objective = evaluation.log_likelihood
        if self.map_objective:
            objective = objective + evaluation.log_prior
        losses = (-objective).double()
        losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, 1e30))
        strategy.tell(list(candidates), losses.tolist())
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
            "sigma": float(strategy.sigma),
        }
        if self.dev_score is None:
            if float(losses[best]) <= state.best_train_loss:
                new = replace(new, best_u=u[best].clone(), best_score=-float(losses[best]))
        elif iteration % self.dev_every == 0 or iteration == 1:
            mean = torch.as_tensor(strategy.mean, dtype=torch.float32).unsqueeze(0)
            score = float(self.dev_score(mean)[0])
            info["dev_score"] = score
            if score > state.best_score:
                new = replace(new, best_u=mean[0].clone(), best_score=score)
        info["best_score"] = new.best_score
        return new, info

    def stop_reason(self, state: CMAState) -> str | None:
        """Stop at ``max_iterations`` or when pycma's own criteria fire."""
        if self.max_iterations is not None and state.iteration >= self.max_iterations:
            return Status.MAX_ITERATIONS
        if state.iteration > 0 and state.strategy.stop():
            return Status.FINISHED
        return None

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
