"""Adaptive ABC-SMC with MCMC moves: likelihood-free inference that works in high dimension.

This engine (Del Moral, Doucet & Jasra, 2012, "An adaptive sequential Monte Carlo method
for approximate Bayesian computation", *Statistics and Computing*) targets the same ABC
posterior as :class:`~bayesprompt.inference.smc.abc.ABCSMC`::

    pi_eps(u)  propto  p(u) * 1[d(y_sim(u), y_obs) <= eps]

through decreasing tolerances ``eps_1 > eps_2 > ...``, but it never computes a proposal
density: each population is an equally weighted sample moved by Markov kernels that
leave ``pi_eps`` invariant. The importance weights of ABCSMC, ``p(u) / sum_j w_j K(u |
u_j)``, have log-variance ``O(D)`` when ``N`` particles live in ``D`` dimensions (with
``D = 500``, ``N = 32`` their ESS is 1 after the first stage); the weights here are
indicators, whose ESS is simply the number of particles that survive.

Population 0 is ``N`` prior draws (one black-box call for the batch) at ``eps_0 = inf``.
Each :meth:`AdaptiveABCSMC.step` is one **stage**:

1. **Tolerance** (no query). ``eps_t`` is the smallest distance that keeps at least a
   fraction ``alpha`` of the current (all alive, equally weighted) particles alive: the
   ``alpha``-quantile of their distances, computed by ABCSMC's quantile schedule
   (:meth:`ABCSMC.next_epsilon <bayesprompt.inference.smc.abc.ABCSMC.next_epsilon>`).
   Label distances are discrete, so the quantile can equal ``eps_{t-1}`` (ties); it
   then falls back, as there, to the largest distance below ``eps_{t-1}``, which keeps
   fewer than ``alpha N`` particles alive. That fallback is taken only if it keeps at
   least ``min_alive * N`` of them (default ``0.1 N``: resampling copies each survivor
   at most ten times); otherwise ``eps`` is **held** and the stage only rejuvenates the
   population at ``eps_{t-1}`` (its new distances may then reach below it).
2. **Reweight and resample** (no query). Weights ``w_i propto 1[d_i <= eps_t]`` (the
   ratio ``pi_{eps_t} / pi_{eps_{t-1}}`` for an equally weighted population), whose ESS
   is the number alive; the population is resampled (systematic by default), so every
   stage starts and ends equally weighted.
3. **Move** (one query of ``N`` calls per move). Metropolis-Hastings on ``pi_{eps_t}``:
   the whole population's proposals are simulated in one batch and each is accepted
   with probability ``min(1, p(u') q(u) / (p(u) q(u'))) * 1[d(u') <= eps_t]``
   (``q``: the proposal's reversing measure, below). Moves are repeated until each
   particle has moved at least once with probability ``move_probability`` given the
   observed acceptance rate (at most ``max_moves``), and the step size adapts toward
   ``target_acceptance`` after every move (each move is ``pi_eps``-invariant given its
   step, which depends on the population only through its acceptance rate) -- the
   helpers of
   :class:`~bayesprompt.inference.smc.tempered.TemperedSMC`
   (:mod:`bayesprompt.inference.smc.moves`). Two proposals:

   ``kernel="pcn"`` (default)
       preconditioned Crank-Nicolson ``u' = m + sqrt(1 - b^2) (u - m) + b s xi``,
       reversible w.r.t. the isotropic Gaussian reference ``q = N(m, s^2 I)`` fitted to
       population 0 (or given as ``reference``), with step ``b = min(scale, 1)``
       (``b = 1`` at stage 1: fresh reference draws). For the prompt models' prior
       ``N(0, s^2 I)`` the ratio ``p / q`` is constant, so only the indicator decides
       and the acceptance does not decay with ``D``. Any prior stays exact (the ratio is
       in the MH test); a prior far from isotropic only makes the moves less efficient.
   ``kernel="rw"``
       random walk ``u' = u + N(0, Sigma)``, ``Sigma = (scale * 2.38 / sqrt(D))^2``
       times the reweighted cloud's variance: one pooled variance (``proposal="iso"``,
       default), per coordinate (``"diag"``) or the full covariance (``"full"``;
       ``"auto"``: full when ``N >= 4 D``).

   Why pCN by default: the random walk's steps shrink like ``1 / sqrt(D)``, so in the
   many directions the labels do not constrain, the copies made by resampling barely
   separate; uniform weights then hide a population that has collapsed onto a few
   lineages. Measured on a ``D = 500``, ``N = 32`` prompt task (the fake black box of
   the tests, 3 classes, ``B = 32``, run to ``eps = 0``): final mean per-coordinate
   variance of ``z`` 0.22 of the prior's with ``"rw"`` (2944 calls) and 0.91 with
   ``"pcn"`` (2464 calls). Per-coordinate (``"diag"``) or full covariances estimated
   from the particles being moved also bias the spread downward when ``D`` is not small
   against the number alive (such a data-dependent kernel contracts the directions the
   sample over-disperses faster than it restores the others): on the ``D = 50`` toy of
   the tests, the mean variance of the 48 unconstrained ``N(0, 1)`` coordinates was
   0.94 (``"diag"``, ``N = 200``) and 0.87 (``"full"``, ``N = 500``), against 0.96 /
   0.98 for ``"iso"`` (``N = 200`` / 500) and 1.00 for ``"pcn"`` (``N = 400``; 10 seeds
   each). ``1 - KAPPA / N`` is expected from particle correlation alone, with ``KAPPA``
   about 6 for the random walk and 1.6 for pCN there.

All of this happens in the Potential's unconstrained coordinates ``u``; its
``log_prior`` includes the log-Jacobian, so ``p(u') / p(u)`` is the right ratio for
constrained sites too. Observed sites of the model, if any, are ignored (as in ABCSMC):
the only data are the simulated labels.

Stopping
--------
``finished``
    a stage at ``epsilon_min`` is complete;
``stalled``
    ``eps`` was held (no decrease was attainable, see step 1) for ``patience``
    consecutive stages; the population is a rejuvenated sample of ``pi_eps`` at the
    smallest tolerance reached, which is then typically the best error the simulator
    allows near the particles;
``max_iterations``
    after ``max_stages`` stages;
``budget_exhausted``
    a move was refused by the meter. A stage with at least one move made is kept with
    those moves (each leaves ``pi_eps`` invariant, so the queries paid for are not lost)
    and ends the run as ``interrupted``; if the first move of a stage is refused,
    :func:`~bayesprompt.inference.base.run` returns the last complete stage.

Choosing ``alpha``: Del Moral et al. use ``alpha = 0.9`` with resampling only when the
ESS falls below ``N / 2``, i.e. one resampling per ``log 0.5 / log 0.9 ~ 6.6`` stages,
each with its own moves. This engine resamples at every stage, so its default
``alpha = 0.5`` shrinks the tolerance at the same rate per resampling with about six
times fewer moves (queries) per halving of the ABC posterior's mass; use
``alpha = 0.9`` for gentler steps when queries are cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from bayesprompt.inference.base import Engine, generator_from, make_generator
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.inference.smc.abc import ABCSMC, EPS_ATOL, ABCSMCState, Distance, error_rate
from bayesprompt.inference.smc.ess import ess, normalize
from bayesprompt.inference.smc.moves import (
    PROPOSALS,
    SCALE_BOUNDS,
    Kernel,
    LogTarget,
    crank_nicolson,
    gaussian_log_density,
    isotropic_gaussian,
    proposal_factor,
    random_walk,
    rejuvenate,
    sanitised,
)
from bayesprompt.inference.smc.resampling import SCHEMES, resample
from bayesprompt.models.potential import Evaluation, Potential

__all__ = ["KERNELS", "AdaptiveABCSMC", "AdaptiveABCSMCState", "indicator_log_weights"]

#: Accepted values of the ``kernel`` option.
KERNELS = ("pcn", "rw")


def indicator_log_weights(distances: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Log weights ``log 1[d_i <= eps]``: ``0`` alive, ``-inf`` dead (float64).

    Comparisons carry ABCSMC's slack ``EPS_ATOL`` (``k / B`` distances are not exact).

    Examples
    --------
    >>> indicator_log_weights(torch.tensor([0.25, 0.75, 0.5]), 0.5)
    tensor([0., -inf, 0.], dtype=torch.float64)
    """
    inside = torch.as_tensor(distances).double() <= epsilon + EPS_ATOL
    return torch.where(inside, 0.0, -math.inf).double()


@dataclass(frozen=True)
class AdaptiveABCSMCState:
    """An equally weighted population targeting ``pi_eps`` (immutable).

    Attributes
    ----------
    particles : Evaluation
        The population with its log priors and simulated outputs (site ``y_pred``).
    distances : Tensor ``[N]`` (float64)
        Their distances to the observed labels (all ``<= epsilon``).
    epsilon : float
        Tolerance the population satisfies (``inf`` for the prior population 0).
    scale : float
        Step-size multiplier for the next stage (the pCN step itself, ``<= 1``).
    reference : (float, float)
        Mean and standard deviation of the pCN reference ``N(m, s^2 I)``.
    stage : int
        Stages done (0 = prior draws; an ``interrupted`` last one included).
    held : int
        Consecutive stages that could not decrease ``epsilon``.
    simulations : int
        Particles evaluated so far (the prior batch and every proposal).
    rng_state : Tensor
        State of the engine's generator.
    interrupted : bool
        The budget cut the last stage's moves short (the run ends here).
    """

    particles: Evaluation
    distances: torch.Tensor
    epsilon: float
    scale: float
    reference: tuple[float, float]
    stage: int
    held: int
    simulations: int
    rng_state: torch.Tensor
    interrupted: bool = False

    @property
    def num_particles(self) -> int:
        """Population size ``N``."""
        return len(self.particles)

    @property
    def mean_distance(self) -> float:
        """Mean distance (e.g. the training error rate of the ensemble's members)."""
        return float(self.distances.mean())


class AdaptiveABCSMC(Engine[AdaptiveABCSMCState]):
    """Adaptive ABC-SMC with MCMC moves (see the module docstring).

    Parameters
    ----------
    observed : LongTensor ``[B]``
        Observed labels.
    num_particles : int
        Population size ``N``; every move costs ``N`` API calls.
    distance : callable
        ``(simulated [P, B], observed [B]) -> [P]``, e.g.
        :func:`~bayesprompt.inference.smc.abc.error_rate` (default) or
        :func:`~bayesprompt.inference.smc.abc.one_minus_f1`.
    alpha : float
        Fraction of the particles each new tolerance keeps alive, in ``(0, 1)``.
    min_alive : float or None
        Smallest fraction of particles a tie fallback may keep alive (default
        ``min(0.1, alpha)``); below it the tolerance is held. In ``(0, alpha]``.
    epsilon_min : float
        Final tolerance.
    patience : int
        Stop ``stalled`` after this many consecutive stages without a decrease.
    kernel : {"pcn", "rw"}
        Preconditioned Crank-Nicolson or random-walk proposals.
    reference : (float, float) or None
        Mean and standard deviation of the pCN reference (e.g. ``(0, prior_scale)``);
        ``None`` fits them to population 0 (:func:`~bayesprompt.inference.smc.moves.isotropic_gaussian`).
    proposal : {"iso", "diag", "full", "auto"}
        Covariance of the random walk (``kernel="rw"`` only).
    resampling : str
        Resampling scheme (see :data:`~bayesprompt.inference.smc.resampling.SCHEMES`).
    min_moves, max_moves : int
        Bounds on the Metropolis moves per stage.
    move_probability : float
        Target probability that a particle moves at least once per stage.
    target_acceptance : float or None
        Acceptance rate the step size is adapted toward between stages (``None``: fixed).
    initial_scale : float
        Initial step: the pCN step (clipped to 1), or the multiplier of the random
        walk's ``2.38 / sqrt(D)``.
    jitter : float
        Relative diagonal jitter of the random walk's covariance.
    max_stages : int or None
        Stop (``max_iterations``) after this many stages.
    site : str
        Name of the model's deterministic site holding the simulated labels.

    Examples
    --------
    A 1-D prompt ``z ~ N(0, 1)`` whose simulated label ``b`` is ``z > c_b``:

    >>> import pyro, pyro.distributions as dist
    >>> from bayesprompt.inference.base import run
    >>> thresholds = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    >>> def model():
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     pyro.deterministic("y_pred", (z.unsqueeze(-1) > thresholds).long(), event_dim=1)
    >>> observed = torch.tensor([1, 1, 0, 0])  # what every z in (0, 1] predicts
    >>> engine = AdaptiveABCSMC(observed, num_particles=100)
    >>> posterior = run(engine, Potential(model), seed=0, progress=False)
    >>> posterior.status, posterior.summary["epsilon"]
    ('finished', 0.0)
    >>> z = posterior.samples["z"]
    >>> bool(((z > 0) & (z <= 1)).all()), round(posterior.ess)
    (True, 100)
    """

    name = "abc-mcmc"
    progress_keys = ("epsilon", "ess", "acceptance")

    def __init__(
        self,
        observed: torch.Tensor,
        num_particles: int = 64,
        *,
        distance: Distance = error_rate,
        alpha: float = 0.5,
        min_alive: float | None = None,
        epsilon_min: float = 0.0,
        patience: int = 3,
        kernel: str = "pcn",
        reference: tuple[float, float] | None = None,
        proposal: str = "iso",
        resampling: str = "systematic",
        min_moves: int = 1,
        max_moves: int = 10,
        move_probability: float = 0.9,
        target_acceptance: float | None = 0.25,
        initial_scale: float = 1.0,
        jitter: float = 1e-6,
        max_stages: int | None = None,
        site: str = "y_pred",
    ) -> None:
        # ABCSMC validates observed / alpha / epsilon_min and owns the distances and the
        # quantile schedule with its tie fallback, which are reused as they are.
        self._schedule = ABCSMC(
            observed,
            num_particles,
            distance=distance,
            schedule="quantile",
            alpha=alpha,
            epsilon_min=epsilon_min,
            site=site,
        )
        min_alive = min(0.1, alpha) if min_alive is None else float(min_alive)
        _check(num_particles >= 2, f"num_particles must be >= 2, got {num_particles}")
        _check(0.0 < min_alive <= alpha, f"min_alive must be in (0, alpha={alpha}], got {min_alive}")
        _check(patience >= 1, f"patience must be >= 1, got {patience}")
        _check(kernel in KERNELS, f"kernel must be one of {KERNELS}, got {kernel!r}")
        _check(
            reference is None or (len(reference) == 2 and math.isfinite(reference[0]) and reference[1] > 0),
            f"reference must be None or (mean, std > 0), got {reference}",
        )
        _check(proposal in PROPOSALS, f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        _check(resampling in SCHEMES, f"unknown resampling scheme {resampling!r}; choose one of {tuple(SCHEMES)}")
        _check(1 <= min_moves <= max_moves, f"need 1 <= min_moves <= max_moves, got {min_moves}, {max_moves}")
        _check(0.0 < move_probability < 1.0, f"move_probability must be in (0, 1), got {move_probability}")
        _check(
            target_acceptance is None or 0.0 < target_acceptance < 1.0,
            f"target_acceptance must be None or in (0, 1), got {target_acceptance}",
        )
        _check(initial_scale > 0, f"initial_scale must be > 0, got {initial_scale}")
        _check(jitter >= 0, f"jitter must be >= 0, got {jitter}")
        _check(max_stages is None or max_stages >= 1, f"max_stages must be >= 1, got {max_stages}")
        self.observed = self._schedule.observed
        self.num_particles = int(num_particles)
        self.alpha = float(alpha)
        self.min_alive = min_alive
        self.epsilon_min = float(epsilon_min)
        self.patience = int(patience)
        self.kernel = kernel
        self.reference = None if reference is None else (float(reference[0]), float(reference[1]))
        self.proposal = proposal
        self.resampling = resampling
        self.min_moves = int(min_moves)
        self.max_moves = int(max_moves)
        self.move_probability = float(move_probability)
        self.target_acceptance = target_acceptance
        self.initial_scale = float(initial_scale)
        self.jitter = float(jitter)
        self.max_stages = max_stages

    def __repr__(self) -> str:
        return (
            f"AdaptiveABCSMC(num_particles={self.num_particles}, alpha={self.alpha}, "
            f"min_alive={self.min_alive}, epsilon_min={self.epsilon_min}, patience={self.patience}, "
            f"kernel={self.kernel!r}, moves=[{self.min_moves}, {self.max_moves}])"
        )

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> AdaptiveABCSMCState:
        """Population 0: ``N`` prior draws at ``epsilon = inf`` (one query of ``N`` calls)."""
        generator = make_generator(seed)
        particles = sanitised(potential.init_population(self.num_particles, generator))
        return AdaptiveABCSMCState(
            particles=particles,
            distances=self.distances(particles),
            epsilon=math.inf,
            scale=min(self.initial_scale, self._max_scale),
            reference=self.reference or isotropic_gaussian(particles.u),
            stage=0,
            held=0,
            simulations=self.num_particles,
            rng_state=generator.get_state(),
        )

    def step(
        self, potential: Potential, state: AdaptiveABCSMCState
    ) -> tuple[AdaptiveABCSMCState, dict[str, Any]]:
        """One stage: choose ``eps``, reweight, resample, move (see the module docstring)."""
        generator = generator_from(state.rng_state)
        epsilon = self.next_epsilon(state)
        log_weights = indicator_log_weights(state.distances, epsilon)
        kernel, log_target = self._kernel(state, log_weights, epsilon)
        particles = state.particles.select(resample(log_weights, self.num_particles, generator, self.resampling))
        particles, rates, scale, interrupted = rejuvenate(
            potential,
            particles,
            kernel,
            generator,
            log_target,
            self.min_moves,
            self.max_moves,
            self.move_probability,
            scale=state.scale,
            target_acceptance=self.target_acceptance,
            max_scale=self._max_scale,
        )
        new = replace(
            state,
            particles=particles,
            distances=self.distances(particles),
            epsilon=epsilon,
            scale=scale,
            stage=state.stage + 1,
            held=state.held + 1 if epsilon >= state.epsilon - EPS_ATOL else 0,
            simulations=state.simulations + len(rates) * self.num_particles,
            rng_state=generator.get_state(),
            interrupted=interrupted,
        )
        return new, self._info(new, log_weights, rates)

    def stop_reason(self, state: AdaptiveABCSMCState) -> str | None:
        """``budget_exhausted`` after an interrupted stage, ``finished`` at ``epsilon_min``, ``stalled``
        after ``patience`` held stages, or ``max_iterations``."""
        if state.interrupted:
            return Status.BUDGET_EXHAUSTED
        if state.epsilon <= self.epsilon_min + EPS_ATOL:
            return Status.FINISHED
        if state.held >= self.patience:
            return Status.STALLED
        if self.max_stages is not None and state.stage >= self.max_stages:
            return Status.MAX_ITERATIONS
        return None

    def posterior(self, potential: Potential, state: AdaptiveABCSMCState) -> Posterior:
        """The equally weighted population as constrained samples; summary holds its tolerance."""
        samples = {name: value.detach() for name, value in potential.unpack(state.particles.u).items()}
        return Posterior(
            samples,
            torch.zeros(state.num_particles, dtype=torch.float64),
            status=self.stop_reason(state) or Status.RUNNING,
            engine=self.name,
            summary={
                "epsilon": state.epsilon,
                "stage": state.stage,
                "mean_distance": state.mean_distance,
                "simulations": state.simulations,
                "scale": state.scale,
                "kernel": self.kernel,
            },
        )

    # ------------------------------------------------------------------ pieces
    def distances(self, particles: Evaluation) -> torch.Tensor:
        """Distances ``[P]`` (float64) of the particles' simulated labels (ABCSMC's rules)."""
        return self._schedule.distances(particles.outputs)

    def next_epsilon(self, state: AdaptiveABCSMCState) -> float:
        """ABCSMC's quantile tolerance, or ``state.epsilon`` (held) if it keeps too few alive."""
        candidate = self._schedule.next_epsilon(self._as_abc_state(state))
        alive = int(torch.isfinite(indicator_log_weights(state.distances, candidate)).sum())
        return candidate if alive >= self.min_alive * state.num_particles - EPS_ATOL else state.epsilon

    def log_target(self, epsilon: float) -> LogTarget:
        """``u -> log p(u) + log 1[d(u) <= epsilon]``, the ABC posterior's log density (float64)."""

        def log_target(evaluation: Evaluation) -> torch.Tensor:
            return evaluation.log_prior.double() + indicator_log_weights(self.distances(evaluation), epsilon)

        return log_target

    def _kernel(
        self, state: AdaptiveABCSMCState, log_weights: torch.Tensor, epsilon: float
    ) -> tuple[Kernel, LogTarget]:
        """The stage's proposals (by step size) and the log target of their MH ratio."""
        log_target = self.log_target(epsilon)
        if self.kernel == "rw":
            base = proposal_factor(state.particles.u, normalize(log_weights), 1.0, self.proposal, self.jitter)
            return (lambda scale: random_walk(scale * base)), log_target
        mean, std = state.reference

        def corrected(evaluation: Evaluation) -> torch.Tensor:  # pCN is reversible w.r.t. N(mean, std^2)
            return log_target(evaluation) - gaussian_log_density(evaluation.u, mean, std)

        return (lambda scale: crank_nicolson(scale, mean, std)), corrected

    @property
    def _max_scale(self) -> float:
        """The pCN step is at most 1 (a fresh reference draw)."""
        return 1.0 if self.kernel == "pcn" else SCALE_BOUNDS[1]

    def _as_abc_state(self, state: AdaptiveABCSMCState) -> ABCSMCState:
        """The equally weighted population as an :class:`ABCSMCState` (for the schedule)."""
        size = state.num_particles
        return ABCSMCState(
            u=state.particles.u,
            log_prior=state.particles.log_prior,
            distances=state.distances,
            log_weights=torch.full((size,), -math.log(size), dtype=torch.float64),
            epsilon=state.epsilon,
            stage=state.stage,
            simulations=state.simulations,
            stalled=False,
            rng_state=state.rng_state,
        )

    def _info(self, state: AdaptiveABCSMCState, log_weights: torch.Tensor, rates: list[float]) -> dict[str, Any]:
        return {
            "stage": state.stage,
            "epsilon": state.epsilon,
            "alive": int(torch.isfinite(log_weights).sum()),
            "ess": ess(log_weights),  # of the reweighting: the number alive (indicator weights)
            "acceptance": sum(rates) / len(rates),
            "moves": len(rates),
            "scale": state.scale,  # at the end of the stage
            "unique": int(torch.unique(state.particles.u, dim=0).shape[0]),
            "mean_distance": state.mean_distance,
            "held": state.held,
            "simulations": state.simulations,
            "interrupted": state.interrupted,
        }


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
