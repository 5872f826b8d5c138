"""Pyro's own random-walk Metropolis kernel, driven as an :class:`~bayesprompt.inference.base.Engine`.

:class:`PyroRandomWalk` (``"rw-mcmc"``) runs :class:`pyro.infer.mcmc.RandomWalkKernel`
on a Pyro model: an isotropic Gaussian random walk in the model's unconstrained space
whose step size is adapted during warmup toward ``target_accept_prob``. Every MCMC
step scores **one** prompt (one black-box query of one API call); Pyro's set-up costs
a few more (4 for a model without invalid initial points: plate-nesting guess,
prototype trace, initial-point check, initial energy).

One kernel transition per engine step
-------------------------------------
``pyro.infer.MCMC.run`` owns its loop and keeps the chain inside the kernel object,
so it could not checkpoint or resume. Here the engine drives the kernel itself, the
way ``MCMC`` does (same set-up, same transitions, same random numbers, under
``poutine.block`` with Pyro's validation off), one transition per :meth:`step`, and
copies what the kernel carries from one transition to the next (the point, its
energy, the step-size adaptation counters and Pyro's stream of the global RNG) into
an immutable :class:`RandomWalkState`. So a run checkpoints after every transition
and continues exactly where it stopped (:func:`bayesprompt.runs.run_with_checkpoints`,
``bayesprompt fit --resume``). A continued run rebuilds the kernel's potential
function from a trace of the model cut at its first black-box query (free with a
meter), so it spends no call on set-up and draws what an uninterrupted run draws. A
model that draws a latent site only after its first query cannot be continued that
way (the error says so); such a run starts afresh. Latent sites must be continuous.

``init`` sets up chain 0; a :meth:`step` at the end of a chain sets up the next one
(its info record has ``stage == "setup"``). When the meter raises
:class:`~bayesprompt.lm.meter.BudgetExhausted`, the run keeps the completed
post-warmup draws with status ``budget_exhausted`` (warmup draws are dropped; with no
post-warmup draw at all :class:`WarmupBudgetError` is raised).

Chains
------
Chains run one after another, each with a fresh set-up and fresh step-size adaptation
under its own seed (drawn from the engine seed). This avoids two Pyro 1.9.2
behaviours of ``MCMC(num_chains > 1)``: it forks worker processes when CPUs allow it
(a metered black box would then be charged in the children, out of reach of the
budget), and its sequential fallback carries one kernel's step size, step counter
and acceptance counts over from chain to chain. Samples are returned chain-major
(``samples[site].reshape(num_chains, draws, ...)``), equally weighted. When the
budget cuts a run short, the chains are truncated to a common length (needed for the
chain-major layout and R-hat), choosing the number of chains that keeps the most
draws; ``summary["dropped_draws"]`` counts the rest.

The model is run **unvectorised** (``z`` of shape ``[k]``) and Pyro passes latent values
that require grad (its initial-point check computes gradients), so the model must
detach them before the black box (:class:`~bayesprompt.models.prompt.PromptModel` does).
Never use ``arviz.from_pyro`` on this kernel; convert the returned Posterior instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.mcmc import RandomWalkKernel
from torch.distributions import biject_to

from bayesprompt.inference.base import Engine, generator_from, make_generator
from bayesprompt.inference.base import run as run_engine
from bayesprompt.inference.mcmc.autocorr import autocorr_reliable, integrated_time
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.lm.meter import BudgetExhausted, Meter, ProbeInterrupt
from bayesprompt.models.potential import Potential, seeded

__all__ = ["KernelState", "PyroRandomWalk", "RandomWalkChain", "RandomWalkState", "WarmupBudgetError",
           "run_random_walk"]


class WarmupBudgetError(BudgetExhausted):
    """The budget ran out before any chain made a post-warmup draw."""

    def __init__(self, budget: int | None, used: int, engine: str, warmup_steps: int) -> None:
        super().__init__(budget, used, 1)
        self.args = (
            f"{engine}: the API budget ({budget} calls) ran out before the first post-warmup "
            f"draw (set-up plus warmup_steps={warmup_steps} calls per chain); raise the budget or "
            "lower warmup_steps",
        )


@dataclass(frozen=True)
class KernelState:
    """What :class:`~pyro.infer.mcmc.RandomWalkKernel` carries between transitions.

    Attributes
    ----------
    t : int
        Transitions made (Pyro's ``_t``).
    log_step_size : float
        Log of the random walk's standard deviation.
    accept_count : int
        Accepted post-warmup proposals.
    mean_accept_prob : float
        Running mean of the acceptance probabilities (warmup and sampling apart).
    energy : Tensor
        Potential energy (negative log joint) of the current point.
    """

    t: int
    log_step_size: float
    accept_count: int
    mean_accept_prob: float
    energy: torch.Tensor

    @classmethod
    def of(cls, kernel: RandomWalkKernel) -> "KernelState":
        """Read the state off ``kernel``."""
        return cls(kernel._t, kernel._log_step_size, kernel._accept_cnt, kernel._mean_accept_prob,
                   kernel._energy_last.detach())

    def load_into(self, kernel: RandomWalkKernel, warmup_steps: int) -> None:
        """Put the state into ``kernel`` (which then transitions as if it had made the earlier ones)."""
        kernel._warmup_steps = warmup_steps
        kernel._t, kernel._log_step_size = self.t, self.log_step_size
        kernel._accept_cnt, kernel._mean_accept_prob = self.accept_count, self.mean_accept_prob
        kernel._energy_last = self.energy


@dataclass(frozen=True)
class RandomWalkChain:
    """The record of one chain.

    Attributes
    ----------
    draws : dict of Tensor
        Post-warmup points (unconstrained), site name to ``[n, *site_shape]``, oldest first.
    accepted : Tensor ``[n]``
        Whether each post-warmup transition moved (bool).
    step_sizes : Tensor ``[n]``
        Step size after each post-warmup transition, as Pyro logs it (3 digits).
    warmup_draws, warmup_accepted : int
        Warmup transitions made, and how many of them moved.
    """

    draws: dict[str, torch.Tensor]
    accepted: torch.Tensor
    step_sizes: torch.Tensor
    warmup_draws: int = 0
    warmup_accepted: int = 0

    @classmethod
    def empty(cls, params: dict[str, torch.Tensor]) -> "RandomWalkChain":
        """A chain with no transition yet, at the point ``params``."""
        draws = {k: v.new_empty((0, *v.shape)) for k, v in params.items()}
        return cls(draws, torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64))

    @property
    def num_draws(self) -> int:
        """Post-warmup draws made."""
        return len(self.accepted)

    @property
    def transitions(self) -> int:
        """Transitions made, warmup included."""
        return self.warmup_draws + self.num_draws

    def with_draw(self, params: dict[str, torch.Tensor], moved: bool, step_size: float) -> "RandomWalkChain":
        """This chain with one more post-warmup draw."""
        draws = {k: torch.cat([v, params[k].unsqueeze(0)]) for k, v in self.draws.items()}
        return dataclasses.replace(self, draws=draws, accepted=torch.cat([self.accepted, torch.tensor([moved])]),
                                   step_sizes=torch.cat([self.step_sizes, torch.tensor([step_size], dtype=torch.float64)]))

    @property
    def warmup_acceptance(self) -> float:
        """Fraction of accepted warmup proposals (NaN without warmup)."""
        return self.warmup_accepted / self.warmup_draws if self.warmup_draws else math.nan


@dataclass(frozen=True)
class RandomWalkState:
    """State of :class:`PyroRandomWalk` after a completed set-up or transition.

    Attributes
    ----------
    chains : tuple of RandomWalkChain
        The finished chains, then the one in progress.
    params : dict of Tensor
        The current point of the chain in progress (unconstrained).
    kernel : KernelState
        Its kernel's state.
    pyro_rng : Tensor
        State of torch's global RNG inside the chain (Pyro draws from it).
    rng_state : Tensor
        State of the engine's generator (it seeds the next chain).
    """

    chains: tuple[RandomWalkChain, ...]
    params: dict[str, torch.Tensor]
    kernel: KernelState
    pyro_rng: torch.Tensor
    rng_state: torch.Tensor


@dataclass(frozen=True)
class PyroRandomWalk(Engine[RandomWalkState]):
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
    >>> from bayesprompt.inference import run
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> sampler = PyroRandomWalk(num_samples=50, warmup_steps=20, num_chains=2)
    >>> post = run(sampler, Potential(problem.model, meter=problem.meter), seed=0, progress=False)
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
    #: Set-up kernels by potential (they hold the potential function and transforms).
    _kernels: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False
    )

    name = "rw-mcmc"
    progress_keys = ("chain", "stage", "step_size")

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
        """``bayesprompt.inference.run(self, ...)``; ``meter`` defaults to ``potential.meter``."""
        meter = meter if meter is not None else potential.meter
        return run_engine(self, potential, seed=seed, meter=meter, progress=progress)

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
        return self.run(Potential(model, model_args, model_kwargs, meter=meter), seed=seed, progress=progress)

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> RandomWalkState:
        """Set up chain 0 (Pyro's set-up: 4 calls for a model without invalid initial points).

        With a meter, the potential also learns its latent sites first (free), as prediction needs them.

        Raises
        ------
        WarmupBudgetError
            If the budget does not cover the set-up.
        """
        if potential.meter is not None:
            potential.discover_sites()
        try:
            return self._start_chain(potential, make_generator(seed), ())
        except BudgetExhausted as err:
            raise WarmupBudgetError(err.budget, err.used, self.name, self.warmup_steps) from err

    def step(self, potential: Potential, state: RandomWalkState) -> tuple[RandomWalkState, dict[str, Any]]:
        """One kernel transition (one call), or the next chain's set-up after a finished chain."""
        if self._finished(state.chains[-1]):
            new = self._start_chain(potential, generator_from(state.rng_state), state.chains)
            return new, {"chain": len(state.chains), "stage": "setup"}
        kernel = self._kernel(potential, tuple(state.params))
        state.kernel.load_into(kernel, self.warmup_steps)
        with torch.random.fork_rng(devices=[]), _as_in_pyro_mcmc():
            torch.set_rng_state(state.pyro_rng)
            params = {k: v.detach() for k, v in kernel.sample(dict(state.params)).items()}
            pyro_rng = torch.get_rng_state()
        # a rejected proposal returns the previous tensors unchanged; an accepted one is new
        moved = any(not torch.equal(params[k], state.params[k]) for k in params)
        step_size = _logged_step_size(kernel)
        record = state.chains[-1]
        stage = "warmup" if record.warmup_draws < self.warmup_steps else "sample"
        if stage == "warmup":
            record = dataclasses.replace(record, warmup_draws=record.warmup_draws + 1,
                                         warmup_accepted=record.warmup_accepted + int(moved))
        else:
            record = record.with_draw(params, moved, step_size)
        new = dataclasses.replace(state, chains=(*state.chains[:-1], record), params=params,
                                  kernel=KernelState.of(kernel), pyro_rng=pyro_rng)
        info = {"chain": len(state.chains) - 1, "stage": stage, "transition": record.transitions, "accepted": moved,
                "step_size": step_size}
        return new, info

    def stop_reason(self, state: RandomWalkState) -> str | None:
        """``finished`` once the last chain has made all its transitions."""
        done = len(state.chains) == self.num_chains and self._finished(state.chains[-1])
        return Status.FINISHED if done else None

    def posterior(self, potential: Potential, state: RandomWalkState) -> Posterior:
        """The post-warmup draws of the chains, truncated to a common length, equally weighted.

        Raises
        ------
        WarmupBudgetError
            If no chain made a post-warmup draw (the budget ran out in warmup).
        """
        chains = state.chains
        if not any(c.num_draws for c in chains):
            meter = potential.meter
            raise WarmupBudgetError(meter.budget if meter is not None else None, meter.calls if meter is not None
                                    else 0, self.name, self.warmup_steps)
        num_chains, length = _common_length([c.num_draws for c in chains])
        kept = chains[:num_chains]
        transforms = self._kernel(potential, tuple(state.params)).transforms
        samples = {}
        for name in kept[0].draws:
            u = torch.stack([c.draws[name][:length] for c in kept])
            x = transforms[name].inv(u)
            samples[name] = x.reshape(num_chains * length, *x.shape[2:]).detach()
        post = Posterior(
            samples,
            torch.zeros(num_chains * length, dtype=torch.float64),
            engine=self.name,
            num_chains=num_chains,
            mcmc=True,
        )
        post.summary = self._summary(kept, length, sum(c.num_draws for c in chains))
        return post

    # ------------------------------------------------------------------ internals
    def _finished(self, chain: RandomWalkChain) -> bool:
        return chain.transitions >= self.warmup_steps + self.num_samples

    def _model(self, potential: Potential) -> Callable:
        if self.init_strategy is None:
            return potential.model
        # Pyro's kernel ignores MCMC(initial_params=...) and hard-codes its init strategy;
        # this innermost handler sets the initial values (later, conditioning overrides it)
        return InitMessenger(self.init_strategy)(potential.model)

    def _start_chain(
        self, potential: Potential, generator: torch.Generator, chains: tuple[RandomWalkChain, ...]
    ) -> RandomWalkState:
        """Pyro's set-up of a fresh chain under a seed drawn from ``generator``."""
        kernel = self._new_kernel(potential)
        with seeded(generator), _as_in_pyro_mcmc():  # Pyro draws from torch's global RNG; restored afterwards
            kernel.setup(self.warmup_steps, *potential.model_args, **potential.model_kwargs)
            pyro_rng = torch.get_rng_state()
        _require_continuous(kernel._prototype_trace)
        self._keep(potential, kernel)
        params = {k: v.detach() for k, v in kernel.initial_params.items()}
        return RandomWalkState(
            chains=(*chains, RandomWalkChain.empty(params)),
            params=params,
            kernel=KernelState.of(kernel),
            pyro_rng=pyro_rng,
            rng_state=generator.get_state(),
        )

    def _kernel(self, potential: Potential, sites: tuple[str, ...]) -> RandomWalkKernel:
        """The kernel set up for ``potential``; rebuilt without a query for a continued run.

        Raises
        ------
        RuntimeError
            If the rebuilt kernel does not know the latent ``sites`` of the state (the
            model draws some only after its first black-box query).
        """
        kernel = self._kernels.get(potential)
        if kernel is None:
            kernel = self._new_kernel(potential)
            kernel.transforms = latent_transforms(kernel.model, potential.model_args, potential.model_kwargs,
                                                  potential.meter)
            missing = sorted(set(sites) - set(kernel.transforms))
            if missing:
                raise RuntimeError(
                    f"{self.name}: cannot continue this run without a query: the model draws the latent site(s) "
                    f"{missing} only after its first black-box query; start the run afresh"
                )
            self._keep(potential, kernel)
        return kernel

    def _new_kernel(self, potential: Potential) -> RandomWalkKernel:
        return RandomWalkKernel(self._model(potential), init_step_size=float(self.init_step_size),
                                target_accept_prob=float(self.target_accept_prob))

    def _keep(self, potential: Potential, kernel: RandomWalkKernel) -> None:
        """Cache ``kernel`` for ``potential``, its transitions using :class:`PotentialEnergy`.

        That equals Pyro's potential function and needs no set-up query when a run continues.
        """
        kernel.potential_fn = PotentialEnergy(kernel.model, potential.model_args, potential.model_kwargs,
                                              kernel.transforms)
        self._kernels[potential] = kernel

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep-copy the settings only (the kernel cache holds the model and black box)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_kernels"}

    def __setstate__(self, settings: dict[str, Any]) -> None:
        for name, value in {**settings, "_kernels": weakref.WeakKeyDictionary()}.items():
            object.__setattr__(self, name, value)

    def _summary(self, kept: tuple[RandomWalkChain, ...], length: int, total_draws: int) -> dict[str, Any]:
        acceptance = [int(c.accepted[:length].sum()) / length for c in kept]
        flat = [torch.cat([v[:length].reshape(length, -1) for v in c.draws.values()], dim=1) for c in kept]
        u = torch.stack(flat, dim=1)  # [draws, chains, D], unconstrained
        tau = integrated_time(u) if length > 1 else torch.full((u.shape[2],), math.nan)
        return {
            "acceptance_rate": sum(acceptance) / len(acceptance),
            "acceptance_per_chain": acceptance,
            "warmup_acceptance_per_chain": [c.warmup_acceptance for c in kept],
            "step_size_per_chain": [float(c.step_sizes[length - 1]) for c in kept],
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


@dataclass(frozen=True)
class PotentialEnergy:
    """Negative log joint of ``model`` at unconstrained latent values, as Pyro's MCMC computes it.

    For a model with continuous latent sites this equals the ``potential_fn`` of
    :func:`pyro.infer.mcmc.util.initialize_model`: the model conditioned on the
    constrained values, its trace's ``log_prob_sum``, minus the log-Jacobians of
    ``transforms`` (site name to the transform from constrained to unconstrained space).
    """

    model: Callable
    model_args: tuple
    model_kwargs: dict
    transforms: dict

    def __call__(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        constrained = {k: self.transforms[k].inv(v) for k, v in params.items()}
        trace = poutine.trace(poutine.condition(self.model, constrained)).get_trace(*self.model_args,
                                                                                    **self.model_kwargs)
        log_joint = trace.log_prob_sum()
        for name, transform in self.transforms.items():
            log_joint = log_joint - torch.sum(transform.log_abs_det_jacobian(constrained[name], params[name]))
        return -log_joint


def latent_transforms(model: Callable, model_args: tuple, model_kwargs: dict, meter: Meter | None) -> dict:
    """Transforms from each latent site's support to unconstrained space, as Pyro's MCMC sets them up.

    With a meter the model runs only up to its first black-box query (free), so latent
    sites drawn after it are not found; without one it runs in full. Torch's global RNG
    is left as it was.

    Raises
    ------
    ValueError
        If a latent site is discrete (the random walk needs continuous ones).
    """
    tracer = poutine.trace(model)
    with torch.random.fork_rng(devices=[]), _as_in_pyro_mcmc(), torch.no_grad():
        probe = meter.probe() if meter is not None else contextlib.nullcontext()
        with probe, contextlib.suppress(ProbeInterrupt):
            tracer(*model_args, **model_kwargs)
    return {name: biject_to(fn.support).inv for name, fn in _require_continuous(tracer.trace).items()}


def _require_continuous(trace: poutine.Trace) -> dict[str, Any]:
    """The distributions of the latent sites of ``trace``, which must all be continuous.

    Raises
    ------
    ValueError
        If a latent site is discrete: Pyro would enumerate it out; this engine does not.
    """
    latent = {}
    for name, site in trace.iter_stochastic_nodes():
        fn = site["fn"]
        if type(fn).__name__ == "_Subsample":
            continue
        if isinstance(fn, TorchDistributionMixin) and fn.has_enumerate_support:
            raise ValueError(f"rw-mcmc: latent site {name!r} is discrete; the random walk needs continuous sites")
        latent[name] = fn
    return latent


@contextlib.contextmanager
def _as_in_pyro_mcmc() -> Iterator[None]:
    """What ``pyro.infer.MCMC.run`` wraps its kernel in: ``poutine.block`` and no validation."""
    with poutine.block(), pyro.validation_enabled(False):
        yield


def _logged_step_size(kernel: RandomWalkKernel) -> float:
    return float(kernel.logging()["step size"])


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
