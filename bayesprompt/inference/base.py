"""The engine contract: ``init -> step -> ... -> posterior``, driven by :func:`run`.

Every engine follows the BlackJAX shape:

* ``init(potential, seed) -> state``: draw and evaluate the first population;
* ``step(potential, state) -> (state, info)``: one iteration, returning a *new* state
  (states are immutable dataclasses of tensors, including the RNG state) and a small
  JSON-serialisable info record;
* ``stop_reason(state) -> str | None``: a :class:`Status` value once the engine is done;
* ``posterior(potential, state) -> Posterior``: the weighted samples of a state.

:func:`run` drives the loop with a progress bar. Because a step either completes and
returns a new state or raises before returning, a :class:`BudgetExhausted` during a step
leaves the last complete state intact: the run returns it with status
``budget_exhausted`` and never loses finished work. An engine whose partial step is still
a valid state may instead catch the refusal, return that state and report
``budget_exhausted`` from :meth:`Engine.stop_reason` (the SMC engines with Metropolis
moves keep the moves made in a stage the budget cut short, and tempered SMC keeps the
free reweighting of a stage whose first move is refused).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch
from tqdm import tqdm

from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.lm.meter import BudgetExhausted, Meter
from bayesprompt.models.potential import Potential

__all__ = ["Engine", "run", "init_state", "make_generator", "generator_from", "discover_sites", "InitialBudgetError"]

State = TypeVar("State")


class InitialBudgetError(BudgetExhausted):
    """The budget does not even cover the engine's initial population."""

    def __init__(self, err: BudgetExhausted, engine: str) -> None:
        super().__init__(err.budget, err.used, err.requested)
        self.args = (
            f"{engine}: the API budget ({err.budget} calls, {err.budget - err.used} left) does not "
            f"cover the initial population ({err.requested} calls); raise the budget or shrink the population",
        )


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def discover_sites(potential: Potential, generator: torch.Generator) -> None:
    """Let ``potential`` learn its latent sites, advancing ``generator`` by exactly one draw.

    The draw seeds the discovery (see :meth:`Potential.discover_sites`) whether or not
    the sites are already known, so an engine's draws after it, and so its run for a
    seed, do not depend on whether the potential was used before.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("z", dist.Normal(0.0, 1.0))
    >>> fresh, used = Potential(model), Potential(model)
    >>> _ = used.discover_sites()
    >>> draws = []
    >>> for potential in (fresh, used):
    ...     generator = make_generator(0)
    ...     discover_sites(potential, generator)
    ...     draws.append(torch.randn(1, generator=generator))
    >>> torch.equal(*draws)
    True
    """
    potential.discover_sites(make_generator(int(torch.randint(0, 2**62, (1,), generator=generator))))


def generator_from(rng_state: torch.Tensor) -> torch.Generator:
    """A generator restored from a state saved in an engine state."""
    generator = torch.Generator()
    generator.set_state(rng_state.clone())
    return generator


class Engine(ABC, Generic[State]):
    """Base class of inference engines (see the module docstring)."""

    #: Short name used by the CLI and in saved results.
    name: str = "engine"
    #: Keys of the info record shown on the progress bar.
    progress_keys: tuple[str, ...] = ()

    @abstractmethod
    def init(self, potential: Potential, seed: int) -> State:
        """Draw and evaluate the initial population."""

    @abstractmethod
    def step(self, potential: Potential, state: State) -> tuple[State, dict[str, Any]]:
        """Run one iteration and return the new state and its info record."""

    @abstractmethod
    def stop_reason(self, state: State) -> str | None:
        """A :class:`Status` value when the engine is done, else ``None``."""

    @abstractmethod
    def posterior(self, potential: Potential, state: State) -> Posterior:
        """The weighted samples represented by ``state``."""


def init_state(engine: Engine, potential: Potential, seed: int) -> Any:
    """``engine.init``, with a budget too small for it reported as :class:`InitialBudgetError`.

    An engine may raise its own subclass of :class:`BudgetExhausted` instead, which passes through.
    """
    try:
        return engine.init(potential, seed)
    except BudgetExhausted as err:
        if type(err) is not BudgetExhausted:  # the engine's own, more specific account
            raise
        raise InitialBudgetError(err, engine.name) from err


def run(
    engine: Engine,
    potential: Potential,
    seed: int = 0,
    meter: Meter | None = None,
    progress: bool = True,
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    state: Any = None,
) -> Posterior:
    """Run ``engine`` to completion (or budget exhaustion) and return its posterior.

    Parameters
    ----------
    engine : Engine
        The algorithm.
    potential : Potential
        The model's vectorised log densities.
    seed : int
        Engine seed (ignored when ``state`` is given).
    meter : Meter or None
        The black box's meter, read for progress and saved in the result.
    progress : bool
        Show a tqdm progress bar.
    callback : callable or None
        Called as ``callback(state, info)`` after every completed step (e.g. checkpoints).
    state : engine state or None
        Resume from this state instead of calling ``engine.init``.
    """
    if state is not None:
        potential.discover_sites()  # a fresh Potential (e.g. on resume) learns its sites, free with a meter
    else:
        state = init_state(engine, potential, seed)
    diagnostics: list[dict[str, Any]] = []
    total = meter.budget if meter is not None else None
    status = engine.stop_reason(state)
    with contextlib.ExitStack() as stack:
        start = meter.calls if meter is not None else 0  # so the rate counts this run's calls only
        bar = stack.enter_context(
            tqdm(total=total, initial=start, desc=engine.name, unit="call", disable=not progress, leave=False)
        )
        if meter is not None and progress:
            stack.enter_context(meter.watching(lambda m: _update_bar(bar, m)))  # moves with every query
        _update_bar(bar, meter)
        while status is None:
            try:
                state, info = engine.step(potential, state)
            except BudgetExhausted:
                status = Status.BUDGET_EXHAUSTED
                break
            if meter is not None:
                info.setdefault("api_calls", meter.calls)
            diagnostics.append(info)
            bar.set_postfix({k: _short(info[k]) for k in engine.progress_keys if k in info})
            _update_bar(bar, meter)
            if callback is not None:
                callback(state, info)
            status = engine.stop_reason(state)
    posterior = engine.posterior(potential, state)
    posterior.diagnostics = diagnostics
    posterior.status = status
    posterior.engine = engine.name
    if meter is not None:
        posterior.api_calls = meter.snapshot().to_dict()
    return posterior


def _update_bar(bar: tqdm, meter: Meter | None) -> None:
    if meter is not None:
        bar.n = meter.calls
        bar.refresh()
    else:
        bar.update()


def _short(value: Any) -> Any:
    return f"{value:.3g}" if isinstance(value, float) else value
