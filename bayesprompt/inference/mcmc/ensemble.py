"""Batched affine-invariant ensemble MCMC (emcee-style), one black-box call per half-step.

``W`` walkers explore the model's unconstrained log density
``log p(u) + log L(u)`` (:class:`~bayesprompt.models.potential.Potential`'s
``log_prior + log_likelihood``, log-Jacobian included). Each iteration:

1. picks one move with the given weights (as emcee does);
2. splits the walkers at random into two halves (emcee's red-blue scheme);
3. for each half in turn, proposes a new position for **all** its walkers from the
   *other* half (the complement, fixed during the half-step), scores all proposals in
   **one** ``potential.evaluate`` call, and accepts each with probability
   ``min(1, factor * p(u') / p(u))``. Updating one half conditionally on the other keeps
   the joint target ``prod_w p(u_w)`` invariant (Goodman & Weare, 2010, sec. 3; Foreman-
   Mackey et al., 2013, sec. 3).

So an iteration costs **two black-box queries of ``W / 2`` prompts each** (``W`` API
calls), the initial population one query of ``W``. The current walkers' log densities
are cached in the state and never recomputed.

Moves
-----
* :class:`StretchMove` (Goodman & Weare, 2010): ``u' = c + Z (u - c)`` with ``c`` a random
  complementary walker and ``Z`` drawn from ``g(z) ∝ 1/sqrt(z)`` on ``[1/a, a]``; the
  factor is ``Z^(D-1)``.
* :class:`DEMove` (ter Braak, 2006; Nelson et al., 2014; emcee's ``DEMove``):
  ``u' = u + gamma (c_1 - c_2) + e`` with two distinct complementary walkers,
  ``gamma = 2.38 / sqrt(2 D)`` and a tiny jitter ``e ~ N(0, sigma^2 I)``; symmetric.

Walkers and dimension
---------------------
Both moves only combine walkers, so without the DE jitter the ensemble never leaves the
affine hull of its initial positions: with ``W <= D`` walkers the sampler explores at
most a ``(W - 1)``-dimensional slice of the space (the DE jitter leaks out of it, but
only at scale ``sigma``). emcee asks for ``W >= 2 D``. For prompt dimensions
(``D`` ~ 500) that costs ~1000 API calls per iteration, so any even ``W >= 4`` is
allowed: fewer walkers buy more iterations for the budget at the price of a sampler
restricted to (and mixing within) the span of its walkers -- report its output as an
approximation then.

Draws and memory
----------------
After ``burn_in`` iterations every ``thin``-th iteration's walkers are appended to the
state (an immutable tuple of ``[W, D]`` tensors, so a state is never mutated):
``draws * W * D`` numbers of ``u``'s dtype, e.g. 1000 draws of 32 walkers in ``D = 500``
float32 take 64 MB. :meth:`EnsembleSampler.posterior` returns them chain-major, each
walker a chain (``num_chains = W``), with equal weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bayesprompt.inference.base import Engine, generator_from, make_generator
from bayesprompt.inference.mcmc.autocorr import autocorr_reliable, integrated_time
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.models.potential import Evaluation, Potential, seeded

__all__ = ["DEMove", "EnsembleSampler", "EnsembleState", "MOVES", "Move", "StretchMove"]


class Move(Protocol):
    """A red-blue ensemble move: proposals for one half from the other half."""

    name: str

    def propose(
        self, walkers: torch.Tensor, complement: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return proposals ``[S, D]`` for ``walkers [S, D]`` and log factors ``[S]``
        (log proposal-density ratio added to the Metropolis-Hastings log ratio)."""


@dataclass(frozen=True)
class StretchMove:
    """Goodman & Weare's stretch move with scale ``a > 1`` (emcee's default ``a = 2``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> q, log_factor = StretchMove().propose(torch.zeros(3, 2), torch.ones(4, 2), g)
    >>> q.shape, log_factor.shape
    (torch.Size([3, 2]), torch.Size([3]))
    """

    a: float = 2.0
    name: str = "stretch"

    def __post_init__(self) -> None:
        if not self.a > 1.0:
            raise ValueError(f"the stretch scale a must be > 1, got {self.a}")

    def propose(
        self, walkers: torch.Tensor, complement: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``c + Z (u - c)`` with ``Z = ((a - 1) U + 1)^2 / a``; log factor ``(D - 1) log Z``."""
        size, dim = walkers.shape
        uniform = torch.rand(size, generator=generator, dtype=torch.float64)
        z = ((self.a - 1.0) * uniform + 1.0).square() / self.a
        partners = complement[torch.randint(len(complement), (size,), generator=generator)]
        proposal = partners + z.unsqueeze(1) * (walkers - partners)
        return proposal, (dim - 1.0) * torch.log(z)


@dataclass(frozen=True)
class DEMove:
    """Differential-evolution move (ter Braak, 2006; emcee's ``DEMove``).

    Parameters
    ----------
    sigma : float
        Standard deviation of the jitter ``e ~ N(0, sigma^2 I)`` (per coordinate; emcee
        adds one scalar per walker to all coordinates).
    gamma0 : float or None
        Scale of the difference vector; ``None``: ``2.38 / sqrt(2 D)``, optimal for a
        Gaussian target.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> q, log_factor = DEMove().propose(torch.zeros(3, 2), torch.randn(4, 2), g)
    >>> q.shape, log_factor.tolist()
    (torch.Size([3, 2]), [0.0, 0.0, 0.0])
    """

    sigma: float = 1e-5
    gamma0: float | None = None
    name: str = "de"

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.gamma0 is not None and not self.gamma0 > 0:
            raise ValueError(f"gamma0 must be > 0 or None, got {self.gamma0}")

    def propose(
        self, walkers: torch.Tensor, complement: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``u + gamma (c_i - c_j) + e`` with distinct random ``i, j`` (symmetric: factor 0)."""
        size, dim = walkers.shape
        if len(complement) < 2:
            raise ValueError("the DE move needs at least 2 complementary walkers")
        gamma = self.gamma0 if self.gamma0 is not None else 2.38 / math.sqrt(2.0 * dim)
        first = torch.randint(len(complement), (size,), generator=generator)
        second = torch.randint(len(complement) - 1, (size,), generator=generator)
        second = second + (second >= first).long()  # uniform over the others: i != j
        jitter = self.sigma * torch.randn(size, dim, generator=generator, dtype=torch.float64)
        proposal = walkers + gamma * (complement[first] - complement[second]) + jitter
        return proposal, torch.zeros(size, dtype=torch.float64)


#: Moves selectable by name in :class:`EnsembleSampler` (default parameters).
MOVES: dict[str, Move] = {"stretch": StretchMove(), "de": DEMove()}


@dataclass(frozen=True)
class EnsembleState:
    """State of :class:`EnsembleSampler` after a completed iteration.

    Attributes
    ----------
    walkers : Evaluation
        Current walkers ``u [W, D]`` with their cached log prior and log likelihood.
    iteration : int
        Completed iterations (burn-in included).
    accepted : Tensor ``[W]``
        Accepted proposals per walker so far (``accepted / iteration`` is the running
        acceptance fraction of each walker).
    draws : tuple of Tensor ``[W, D]``
        The kept walkers (after ``burn_in``, every ``thin``-th iteration), oldest first.
    evaluations : int
        Walker evaluations so far (the initial population included).
    rng_state : Tensor
        State of the engine's generator.
    """

    walkers: Evaluation
    iteration: int
    accepted: torch.Tensor
    draws: tuple[torch.Tensor, ...]
    evaluations: int
    rng_state: torch.Tensor


class EnsembleSampler(Engine[EnsembleState]):
    """Affine-invariant ensemble sampler with batched red-blue half-steps (see module doc).

    Parameters
    ----------
    num_iterations : int
        Iterations to run (burn-in included); then the status is ``finished``.
    num_walkers : int or None
        Even number ``W >= 4`` of walkers; ``None``: ``max(2 D + 2, 32)`` rounded up to even
        (emcee's ``W >= 2 D``). Each iteration costs ``W`` API calls. See the module
        docstring for ``W <= D``.
    moves : sequence of (move, weight)
        Moves (a :class:`Move` or a name in :data:`MOVES`: ``"stretch"``, ``"de"``) and
        their selection weights, e.g. ``[("stretch", 0.8), ("de", 0.2)]``; one move is
        drawn per iteration.
    burn_in : int
        Iterations whose walkers are not kept.
    thin : int
        Keep every ``thin``-th iteration after burn-in.

    Examples
    --------
    >>> from bayesprompt.inference.base import run
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> sampler = EnsembleSampler(num_iterations=60, num_walkers=8, burn_in=20)
    >>> post = run(sampler, Potential(problem.model, meter=problem.meter), seed=0, progress=False)
    >>> post.status, post.num_chains, post.samples["z"].shape
    ('finished', 8, torch.Size([320, 2]))
    >>> problem.meter.calls, problem.meter.queries  # 8 + 60 * 8 calls; 1 + 60 * 2 queries
    (488, 121)
    """

    name = "ensemble-mcmc"
    progress_keys = ("acceptance", "mean_acceptance")

    def __init__(
        self,
        num_iterations: int = 1000,
        num_walkers: int | None = None,
        moves: Sequence[tuple[Move | str, float]] = (("stretch", 1.0),),
        burn_in: int = 0,
        thin: int = 1,
    ) -> None:
        _require(num_iterations >= 1, f"num_iterations must be >= 1, got {num_iterations}")
        _require(
            num_walkers is None or (num_walkers >= 4 and num_walkers % 2 == 0),
            f"num_walkers must be an even number >= 4 (or None), got {num_walkers}",
        )
        _require(burn_in >= 0, f"burn_in must be >= 0, got {burn_in}")
        _require(thin >= 1, f"thin must be >= 1, got {thin}")
        _require(
            num_iterations - burn_in >= thin,
            f"no draw would be kept: num_iterations={num_iterations}, burn_in={burn_in}, thin={thin}",
        )
        self.num_iterations = int(num_iterations)
        self.num_walkers = num_walkers
        self.moves, self.move_weights = _parse_moves(moves)
        self.burn_in = int(burn_in)
        self.thin = int(thin)

    def __repr__(self) -> str:
        moves = ", ".join(f"({m!r}, {w:.3g})" for m, w in zip(self.moves, self.move_weights.tolist()))
        return (
            f"EnsembleSampler(num_iterations={self.num_iterations}, num_walkers={self.num_walkers}, "
            f"moves=[{moves}], burn_in={self.burn_in}, thin={self.thin})"
        )

    def walkers_for(self, dim: int) -> int:
        """The number of walkers used for a ``dim``-dimensional model."""
        if self.num_walkers is not None:
            return self.num_walkers
        walkers = max(2 * dim + 2, 32)
        return walkers + walkers % 2

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> EnsembleState:
        """Draw the walkers from the prior and score them (one query of ``W`` calls).

        With ``num_walkers=None`` the model's dimension is learnt first by
        :meth:`Potential.discover_sites` (free when the potential has a meter).

        Raises
        ------
        ValueError
            If no initial walker has a finite log density.
        """
        generator = make_generator(seed)
        if self.num_walkers is None:
            potential.discover_sites()  # free with a meter; else one query of one prompt
        num_walkers = self.num_walkers if self.num_walkers is not None else self.walkers_for(potential.dim)
        walkers = _sanitised(potential.init_population(num_walkers, generator))
        if not bool(torch.isfinite(_log_density(walkers)).any()):
            raise ValueError(
                f"{self.name}: all {num_walkers} initial walkers have a -inf or NaN log density; "
                "check the model and data"
            )
        return EnsembleState(
            walkers=walkers,
            iteration=0,
            accepted=torch.zeros(num_walkers, dtype=torch.long),
            draws=(),
            evaluations=num_walkers,
            rng_state=generator.get_state(),
        )

    def step(self, potential: Potential, state: EnsembleState) -> tuple[EnsembleState, dict[str, Any]]:
        """One iteration: a move for each of the two halves (two queries of ``W / 2``)."""
        generator = generator_from(state.rng_state)
        move = self.moves[int(torch.multinomial(self.move_weights, 1, generator=generator))]
        num_walkers = len(state.walkers)
        halves = torch.randperm(num_walkers, generator=generator).reshape(2, -1)
        walkers, accepted = state.walkers, torch.zeros(num_walkers, dtype=torch.bool)
        for active, other in ((halves[0], halves[1]), (halves[1], halves[0])):
            walkers, accept = _half_step(potential, walkers, active, other, move, generator)
            accepted[active] = accept
        iteration = state.iteration + 1
        draws = state.draws + ((walkers.u.detach().clone(),) if self._keeps(iteration) else ())
        total_accepted = state.accepted + accepted.long()
        new_state = EnsembleState(
            walkers=walkers,
            iteration=iteration,
            accepted=total_accepted,
            draws=draws,
            evaluations=state.evaluations + num_walkers,
            rng_state=generator.get_state(),
        )
        running = total_accepted.double() / iteration
        info = {
            "iteration": iteration,
            "move": move.name,
            "acceptance": float(accepted.double().mean()),
            "mean_acceptance": float(running.mean()),
            "min_walker_acceptance": float(running.min()),
            "max_walker_acceptance": float(running.max()),
            "log_density": float(_log_density(walkers).mean()),
            "draws": len(draws),
            "evaluations": new_state.evaluations,
        }
        return new_state, info

    def stop_reason(self, state: EnsembleState) -> str | None:
        """``finished`` after ``num_iterations`` iterations."""
        return Status.FINISHED if state.iteration >= self.num_iterations else None

    def posterior(self, potential: Potential, state: EnsembleState) -> Posterior:
        """The kept draws, chain-major with one chain per walker, equally weighted.

        ``summary`` holds the acceptance fractions and the integrated autocorrelation time
        per coordinate (:func:`~bayesprompt.inference.mcmc.autocorr.integrated_time` over
        the kept draws, so in units of kept draws), summarised by its max and mean.

        Raises
        ------
        RuntimeError
            If no draw has been kept yet (e.g. the budget ran out during burn-in).
        """
        if not state.draws:
            raise RuntimeError(
                f"{self.name}: no post-burn-in draws after {state.iteration} iterations "
                f"(burn_in={self.burn_in}); raise the budget or lower burn_in"
            )
        chains = torch.stack(state.draws)  # [N, W, D]
        num_draws, num_walkers, dim = chains.shape
        flat = chains.transpose(0, 1).reshape(num_walkers * num_draws, dim)  # chain-major
        samples = {name: value.detach() for name, value in potential.unpack(flat).items()}
        return Posterior(
            samples,
            torch.zeros(len(flat), dtype=torch.float64),
            status=self.stop_reason(state) or Status.RUNNING,
            engine=self.name,
            summary=self._summary(state, chains),
            num_chains=num_walkers,
            mcmc=True,
        )

    # ------------------------------------------------------------------ internals
    def _keeps(self, iteration: int) -> bool:
        return iteration > self.burn_in and (iteration - self.burn_in) % self.thin == 0

    def _summary(self, state: EnsembleState, chains: torch.Tensor) -> dict[str, Any]:
        acceptance = state.accepted.double() / max(state.iteration, 1)
        tau = integrated_time(chains) if len(chains) > 1 else torch.full((chains.shape[2],), math.nan)
        return {
            "acceptance_rate": float(acceptance.mean()),
            "acceptance_per_walker": acceptance.tolist(),
            "autocorr_time_max": float(tau.max()),
            "autocorr_time_mean": float(tau.mean()),
            "autocorr_reliable": autocorr_reliable(tau, len(chains)),
            "iterations": state.iteration,
            "num_walkers": chains.shape[1],
            "draws_per_walker": len(chains),
            "burn_in": self.burn_in,
            "thin": self.thin,
            "evaluations": state.evaluations,
        }


def _half_step(
    potential: Potential,
    walkers: Evaluation,
    active: torch.Tensor,
    other: torch.Tensor,
    move: Move,
    generator: torch.Generator,
) -> tuple[Evaluation, torch.Tensor]:
    """Move the ``active`` walkers given the ``other`` ones: one evaluate call for all of them."""
    current = walkers.select(active)
    dtype = current.u.dtype
    proposal, log_factor = move.propose(current.u.double(), walkers.u[other].double(), generator)
    with seeded(generator):  # model-internal randomness stays a function of the engine seed
        proposed = _sanitised(potential.evaluate(proposal.to(dtype)))
    log_ratio = log_factor + _log_density(proposed) - _log_density(current)
    log_uniform = torch.log(torch.rand(len(active), generator=generator, dtype=torch.float64))
    # NaN ratios (e.g. -inf to -inf) reject; so do +inf densities (a degenerate model)
    accept = (log_uniform < log_ratio) & (_log_density(proposed) < math.inf)
    moved = Evaluation.where(accept, proposed, current)
    return _assign(walkers, active, moved), accept


def _assign(walkers: Evaluation, index: torch.Tensor, values: Evaluation) -> Evaluation:
    """A copy of ``walkers`` with the rows at ``index`` replaced by ``values``."""

    def put(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        result = target.clone()
        result[index] = source.to(result.dtype)
        return result

    return Evaluation(
        put(walkers.u, values.u),
        put(walkers.log_prior, values.log_prior),
        put(walkers.log_likelihood, values.log_likelihood),
        {k: put(v, values.outputs[k]) for k, v in walkers.outputs.items()},
    )


def _log_density(walkers: Evaluation) -> torch.Tensor:
    """Unnormalised log posterior ``[W]`` in unconstrained coordinates (float64)."""
    return walkers.log_prior.double() + walkers.log_likelihood.double()


def _sanitised(evaluation: Evaluation) -> Evaluation:
    """Map NaN log densities to ``-inf`` (a zero density, never accepted)."""
    return Evaluation(
        evaluation.u,
        torch.nan_to_num(evaluation.log_prior, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
        torch.nan_to_num(evaluation.log_likelihood, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
        evaluation.outputs,
    )


def _parse_moves(moves: Sequence[tuple[Move | str, float]]) -> tuple[tuple[Move, ...], torch.Tensor]:
    """Resolve move names and check the weights (normalised to probabilities)."""
    _require(len(moves) >= 1, "moves must name at least one move")
    resolved, weights = [], []
    for entry in moves:
        _require(
            isinstance(entry, (tuple, list)) and len(entry) == 2,
            f"each move must be a (move, weight) pair, got {entry!r}",
        )
        move, weight = entry
        if isinstance(move, str):
            _require(move in MOVES, f"unknown move {move!r}; choose one of {tuple(MOVES)} or pass a Move")
            move = MOVES[move]
        _require(callable(getattr(move, "propose", None)), f"{move!r} has no propose() method")
        _require(math.isfinite(weight) and weight > 0, f"move weights must be finite and > 0, got {weight}")
        resolved.append(move)
        weights.append(float(weight))
    weights_t = torch.tensor(weights, dtype=torch.float64)
    return tuple(resolved), weights_t / weights_t.sum()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
