"""Pyro's own random-walk Metropolis kernel, run through ``pyro.infer.MCMC``, as a :class:`Posterior`.

:class:`PyroRandomWalk` (``"rw-mcmc"``) runs :class:`pyro.infer.mcmc.RandomWalkKernel`
on a Pyro model: an isotropic Gaussian random walk in the model's unconstrained space
whose step size is adapted during warmup toward ``target_accept_prob``. Every MCMC
step scores **one** prompt (one black-box query of one API call); Pyro's set-up costs
a few more (4 for a model without invalid initial points: plate-nesting guess,
prototype trace, initial-point check, initial energy).

Why not the :class:`~bayesprompt.inference.base.Engine` contract
-------------------------------------------------------------
Pyro's ``MCMC.run`` owns the loop (warmup, adaptation, sampling) and keeps the chain
state inside the kernel object, so there is no immutable ``init``/``step`` state to
hand out. Instead :meth:`PyroRandomWalk.run` mirrors
``run(engine, potential, seed, meter, progress)``. Draws are collected by MCMC's
``hook_fn`` as they are made, so when the meter raises
:class:`~bayesprompt.lm.meter.BudgetExhausted` mid-chain the completed post-warmup
draws are kept and returned with status ``budget_exhausted`` (warmup draws are
dropped; with no post-warmup draw at all :class:`WarmupBudgetError` is raised).

Chains
------
Chains run one after another, each with a **fresh kernel** under its own seed (drawn
from the engine seed) in its own single-chain ``MCMC``. This avoids two Pyro 1.9.2
behaviours: ``MCMC(num_chains > 1)`` forks worker processes when CPUs allow it (a
metered black box would then be charged in the children, out of reach of the budget),
and its sequential fallback reuses one ``RandomWalkKernel`` whose step size, step
counter and acceptance counts carry over from chain to chain (later chains get no
warmup adaptation and a cumulative "acceptance rate"). Samples are returned
chain-major (``samples[site].reshape(num_chains, draws, ...)``), equally weighted.
When the budget cuts a run short, the chains are truncated to a common length (needed
for the chain-major layout and R-hat), choosing the number of chains that keeps the
most draws; ``summary["dropped_draws"]`` counts the rest.

The model is run **unvectorised** (``z`` of shape ``[k]``) and Pyro passes latent values
that require grad (its initial-point check computes gradients), so the model must
detach them before the black box (:class:`~bayesprompt.models.prompt.PromptModel` does).
Never use ``arviz.from_pyro`` on this kernel; convert the returned Posterior instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer import MCMC
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.mcmc import RandomWalkKernel

from bayesprompt.inference.base import make_generator
from bayesprompt.inference.mcmc.autocorr import autocorr_reliable, integrated_time
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.lm.meter import BudgetExhausted, Meter
from bayesprompt.models.potential import Potential, seeded

__all__ = ["PyroRandomWalk", "WarmupBudgetError", "run_random_walk"]


class WarmupBudgetError(BudgetExhausted):
    """The budget ran out before any chain made a post-warmup draw."""

    def __init__(self, err: BudgetExhausted, engine: str, warmup_steps: int) -> None:
        super().__init__(err.budget, err.used, err.requested)
        self.args = (
            f"{engine}: the API budget ({err.budget} calls) ran out before the first post-warmup "
            f"draw (set-up plus warmup_steps={warmup_steps} calls per chain); raise the budget or "
            "lower warmup_steps",
        )


@dataclass(frozen=True)
class PyroRandomWalk:
    """Settings of a :class:`pyro.infer.mcmc.RandomWalkKernel` run (see the module docstring).

    Parameters
    ----------
    num_samples : int
        Post-warmup draws per chain.
    warmup_steps : int
        Warmup (step-size adaptation) steps per chain, discarded.
    num_chains : int
        Chains, run sequentially.
    init_step_size : float
        Initial random-walk standard deviation (Pyro's ``init_step_size``).
    target_accept_prob : float
        Acceptance probability the warmup adapts the step size toward.
    init_strategy : callable or None
        Pyro initialisation function for each chain's starting point, e.g.
        ``init_to_sample`` (a prior draw) or ``init_to_uniform(radius=0.5)``; ``None``:
        Pyro's default (uniform in ``[-2, 2]`` in unconstrained space).

    Examples
    --------
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> sampler = PyroRandomWalk(num_samples=50, warmup_steps=20, num_chains=2)
    >>> post = sampler.run(Potential(problem.model, meter=problem.meter), seed=0, progress=False)
    >>> post.status, post.num_chains, post.samples["z"].reshape(2, 50, 2).shape
    ('finished', 2, torch.Size([2, 50, 2]))
    >>> problem.meter.calls  # per chain: 4 set-up + 20 warmup + 50 draws
    148
    """

    num_samples: int = 1000
    warmup_steps: int = 500
    num_chains: int = 1
    init_step_size: float = 0.1
    target_accept_prob: float = 0.234
    init_strategy: Callable | None = field(default=None, repr=False)

    name = "rw-mcmc"

    def __post_init__(self) -> None:
        _require(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(self.num_chains >= 1, f"num_chains must be >= 1, got {self.num_chains}")
        _require(self.init_step_size > 0, f"init_step_size must be > 0, got {self.init_step_size}")
        _require(
            0.0 < self.target_accept_prob < 1.0,
            f"target_accept_prob must be in (0, 1), got {self.target_accept_prob}",
        )

    def run(
        self, potential: Potential, seed: int = 0, meter: Meter | None = None, progress: bool = True
    ) -> Posterior:
        """Sample the (unvectorised) model of ``potential``; the signature of ``run(engine, ...)``.

        ``meter`` defaults to ``potential.meter``; it is read for ``api_calls``.
        """
        meter = meter if meter is not None else potential.meter
        args, kwargs = potential.model_args, potential.model_kwargs
        return self.sample(potential.model, args, kwargs, seed=seed, meter=meter, progress=progress)

    def sample(
        self,
        model: Callable,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
        seed: int = 0,
        meter: Meter | None = None,
        progress: bool = True,
    ) -> Posterior:
        """Run the chains on ``model(*model_args, **model_kwargs)`` and return the posterior.

        Raises
        ------
        WarmupBudgetError
            If the budget runs out before any post-warmup draw.
        """
        generator = make_generator(seed)
        if self.init_strategy is not None:
            # Pyro's kernel ignores MCMC(initial_params=...) and hard-codes its init strategy;
            # this innermost handler sets the initial values (later, conditioning overrides it)
            model = InitMessenger(self.init_strategy)(model)
        chains: list[_ChainRecorder] = []
        for _ in range(self.num_chains):
            with seeded(generator):  # Pyro draws from torch's global RNG; restored afterwards
                chain = self._run_chain(model, tuple(model_args), dict(model_kwargs or {}), progress)
            chains.append(chain)
            if chain.exhausted is not None:
                break
        exhausted = next((c.exhausted for c in chains if c.exhausted is not None), None)
        if not any(c.draws for c in chains):
            raise WarmupBudgetError(exhausted, self.name, self.warmup_steps) from exhausted
        posterior = self._posterior(chains)
        posterior.status = Status.FINISHED if exhausted is None else Status.BUDGET_EXHAUSTED
        if meter is not None:
            posterior.api_calls = meter.snapshot().to_dict()
        return posterior

    # ------------------------------------------------------------------ internals
    def _run_chain(self, model: Callable, args: tuple, kwargs: dict, progress: bool) -> "_ChainRecorder":
        kernel = RandomWalkKernel(
            model,
            init_step_size=float(self.init_step_size),
            target_accept_prob=float(self.target_accept_prob),
        )
        recorder = _ChainRecorder()
        mcmc = MCMC(
            kernel,
            num_samples=self.num_samples,
            warmup_steps=self.warmup_steps,
            num_chains=1,
            hook_fn=recorder,
            disable_progbar=not progress,
        )
        try:
            mcmc.run(*args, **kwargs)
        except BudgetExhausted as err:
            recorder.exhausted = err
        return recorder

    def _posterior(self, chains: list["_ChainRecorder"]) -> Posterior:
        num_chains, length = _common_length([len(c.draws) for c in chains])
        kept = chains[:num_chains]
        transforms = kept[0].transforms
        samples = {}
        for name in kept[0].draws[0]:
            u = torch.stack([torch.stack([d[name] for d in c.draws[:length]]) for c in kept])
            x = transforms[name].inv(u) if name in transforms else u
            samples[name] = x.reshape(num_chains * length, *x.shape[2:]).detach()
        post = Posterior(
            samples,
            torch.zeros(num_chains * length, dtype=torch.float64),
            engine=self.name,
            num_chains=num_chains,
        )
        post.diagnostics = [
            {"chain": i, "draw": j, "accepted": c.accepted[j], "step_size": c.step_sizes[j]}
            for i, c in enumerate(kept)
            for j in range(length)
        ]
        post.summary = self._summary(kept, length, sum(len(c.draws) for c in chains))
        return post

    def _summary(self, kept: list["_ChainRecorder"], length: int, total_draws: int) -> dict[str, Any]:
        acceptance = [sum(c.accepted[:length]) / length for c in kept]
        flat = [[torch.cat([v.reshape(-1) for v in d.values()]) for d in c.draws[:length]] for c in kept]
        u = torch.stack([torch.stack(chain) for chain in flat], dim=1)  # [draws, chains, D], unconstrained
        tau = integrated_time(u) if length > 1 else torch.full((u.shape[2],), math.nan)
        return {
            "acceptance_rate": sum(acceptance) / len(acceptance),
            "acceptance_per_chain": acceptance,
            "warmup_acceptance_per_chain": [c.warmup_acceptance for c in kept],
            "step_size_per_chain": [c.step_sizes[length - 1] for c in kept],
            "num_chains": len(kept),
            "draws_per_chain": length,
            "dropped_draws": total_draws - len(kept) * length,
            "num_samples": self.num_samples,
            "warmup_steps": self.warmup_steps,
            "init_step_size": self.init_step_size,
            "target_accept_prob": self.target_accept_prob,
            "autocorr_time_max": float(tau.max()),
            "autocorr_time_mean": float(tau.mean()),
            "autocorr_reliable": autocorr_reliable(tau, length),
        }


def run_random_walk(
    model: Callable,
    model_args: tuple = (),
    num_samples: int = 1000,
    warmup_steps: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    meter: Meter | None = None,
    progress: bool = True,
    model_kwargs: dict | None = None,
    init_step_size: float = 0.1,
    target_accept_prob: float = 0.234,
    init_strategy: Callable | None = None,
) -> Posterior:
    """Functional form of :class:`PyroRandomWalk` on a (unvectorised) Pyro model.

    Examples
    --------
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> post = run_random_walk(problem.model, num_samples=30, warmup_steps=10, progress=False)
    >>> post.engine, post.samples["z"].shape, 0.0 <= post.summary["acceptance_rate"] <= 1.0
    ('rw-mcmc', torch.Size([30, 2]), True)
    """
    sampler = PyroRandomWalk(
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=num_chains,
        init_step_size=init_step_size,
        target_accept_prob=target_accept_prob,
        init_strategy=init_strategy,
    )
    return sampler.sample(model, model_args, model_kwargs, seed=seed, meter=meter, progress=progress)


@dataclass
class _ChainRecorder:
    """MCMC ``hook_fn``: keeps each post-warmup draw (unconstrained) as it is made."""

    draws: list[dict[str, torch.Tensor]] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    warmup_accepted: int = 0
    warmup_draws: int = 0
    transforms: dict = field(default_factory=dict)
    exhausted: BudgetExhausted | None = None
    _previous: dict[str, torch.Tensor] | None = None

    def __call__(self, kernel: RandomWalkKernel, params: dict, stage: str, i: int) -> None:
        previous = self._previous if self._previous is not None else kernel.initial_params
        self.transforms = kernel.transforms
        # a rejected proposal returns the previous tensors unchanged; an accepted one is new
        moved = any(not torch.equal(params[k], previous[k]) for k in params)
        self._previous = params
        if stage.lower().startswith("warmup"):
            self.warmup_draws += 1
            self.warmup_accepted += int(moved)
            return
        self.draws.append({k: v.detach() for k, v in params.items()})
        self.accepted.append(moved)
        self.step_sizes.append(float(kernel.logging()["step size"]))

    @property
    def warmup_acceptance(self) -> float:
        """Fraction of accepted warmup proposals (NaN without warmup)."""
        return self.warmup_accepted / self.warmup_draws if self.warmup_draws else math.nan


def _common_length(lengths: list[int]) -> tuple[int, int]:
    """``(c, L)``: keep the first ``c`` chains truncated to ``L`` draws, maximising ``c * L``.

    Chains run in order, so lengths are non-increasing; ties prefer more chains.

    Examples
    --------
    >>> _common_length([100, 100, 30, 0])
    (2, 100)
    >>> _common_length([100, 80])
    (2, 80)
    """
    best = (1, lengths[0])
    for count in range(2, len(lengths) + 1):
        length = min(lengths[:count])
        if count * length >= best[0] * best[1] and length > 0:
            best = (count, length)
    return best


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
