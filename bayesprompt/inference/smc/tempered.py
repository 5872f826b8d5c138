"""Adaptive tempered SMC with random-walk Metropolis moves (gradient-free).

The sampler moves a population from the prior (``beta = 0``) to the posterior
(``beta = 1``) through ``p_beta(u) ∝ p(u) L(u)^beta`` in the model's unconstrained
coordinates. One :meth:`TemperedSMC.step` is one *stage*:

1. **Temper**: choose ``beta'`` by bisection so that the incremental weights
   ``L^(beta' - beta)`` have ESS ``target_ess * N`` (:func:`next_beta`), reusing the
   cached log likelihoods (no query).
2. **Evidence**: ``log Z += logsumexp(log w_prev + incr)`` with the normalised previous
   weights (here uniform, ``-log N``).
3. **Proposal**: weighted mean-free covariance of the reweighted cloud, scaled by
   ``scale^2 * 2.38^2 / D`` (Roberts & Rosenthal, 2001), full or diagonal, with jitter.
4. **Resample** (always, with the chosen scheme): the population is equally weighted at
   the start of every stage, so the ESS of the incremental weights *is* the conditional
   ESS that the solver controls, and the evidence update needs no stored weights (the
   one weighted state, a stage whose first move the budget refused, ends the run).
5. **Move**: Metropolis on ``log p(u) + beta' log L(u)`` with random-walk proposals
   (``kernel="rw"``) or preconditioned Crank-Nicolson ones (``kernel="pcn"``, reversible
   w.r.t. an isotropic Gaussian fitted to the prior draws, with the matching correction
   in the acceptance ratio; its step is adapted after every move). Each move scores
   the whole population in one ``potential.evaluate`` call (``N`` API calls); accepted
   particles keep the new log likelihoods, rejected ones their cached ones. After every
   move the stage's mean acceptance rate ``a`` sets the number of moves to the smallest
   ``m`` with ``1 - (1 - a)^m >= move_probability`` (the chance that a particle has moved
   at least once), clipped to ``[min_moves, max_moves]``.
6. **Adapt** (optional): ``scale *= exp(a - target_acceptance)`` for the next stage, so
   the kernel is fixed within a stage.

A stage returns a new immutable state. When the meter refuses a move
(:class:`~bayesprompt.lm.meter.BudgetExhausted`), the stage is kept as far as it got:
each move leaves ``p_beta'`` invariant, so the population targets ``p_beta'`` after any
number of them, and the queries already paid for are not lost. If the first move is
refused, the stage keeps the previous population with its incremental weights
``L^(beta' - beta)`` (an importance sample of ``p_beta'`` at the ESS the solver chose, with
the evidence update of step 2; no resampling, so no duplicates). The state is then
``interrupted`` and the run stops with status ``budget_exhausted``; at ``beta' = 1`` it is
a sample of the posterior, with the estimate of the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bayesprompt.inference.base import Engine, generator_from, make_generator
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.inference.smc.ess import ess, normalize
from bayesprompt.inference.smc.moves import (
    PROPOSALS,
    SCALE_BOUNDS,
    Kernel,
    LogTarget,
    adapted_scale,
    crank_nicolson,
    gaussian_log_density,
    isotropic_gaussian,
    proposal_factor,
    random_walk,
    rejuvenate,
    sanitised,
)
from bayesprompt.inference.smc.resampling import SCHEMES, resample
from bayesprompt.inference.smc.tempering import incremental_log_weights, next_beta, tempered_log_likelihood
from bayesprompt.lm.meter import BudgetExhausted
from bayesprompt.models.potential import Evaluation, Potential

__all__ = ["TemperedSMC", "TemperedSMCState"]


@dataclass(frozen=True)
class TemperedSMCState:
    """State of :class:`TemperedSMC` after a stage (completed, or cut short by the budget).

    Attributes
    ----------
    particles : Evaluation
        The population targeting ``p_beta``, with cached log prior and log likelihood
        (never recomputed): equally weighted, unless ``log_weights`` is set.
    beta : float
        Current inverse temperature.
    log_evidence : float
        Estimate of ``log Z_beta = log ∫ p(u) L(u)^beta du`` (``log p(y)`` at ``beta = 1``).
    scale : float
        Random-walk scale multiplier for the next stage.
    stage : int
        Stages done (an ``interrupted`` last one included).
    evaluations : int
        Particle evaluations so far (the initial population included).
    rng_state : Tensor
        State of the engine's generator.
    reference : (float, float) or None
        Mean and standard deviation of the pCN reference ``N(m, s^2 I)`` (``None`` for
        random-walk moves).
    interrupted : bool
        The budget cut the last stage's moves short (the run ends here).
    log_weights : Tensor or None
        Normalised log weights of ``particles``, set only when the budget refused the first
        move of the last stage (``interrupted``): the population is then the previous one,
        weighted toward ``p_beta``. ``None``: equally weighted.
    """

    particles: Evaluation
    beta: float
    log_evidence: float
    scale: float
    stage: int
    evaluations: int
    rng_state: torch.Tensor
    reference: tuple[float, float] | None = None
    interrupted: bool = False
    log_weights: torch.Tensor | None = None


class TemperedSMC(Engine[TemperedSMCState]):
    """Adaptive tempered SMC with adaptive random-walk Metropolis moves.

    Parameters
    ----------
    num_particles : int
        Population size ``N``. Every move costs ``N`` API calls.
    target_ess : float
        Fraction of ``N`` the ESS may drop to at each tempering step, in ``(0, 1)``.
    resampling : str
        Resampling scheme (see :data:`~bayesprompt.inference.smc.resampling.SCHEMES`).
    proposal : str
        ``"full"`` (Cholesky of the particle covariance), ``"diag"`` (per-coordinate
        variances) or ``"auto"``: full when ``N >= 4 D`` (enough particles to estimate a
        covariance), diagonal otherwise.
    min_moves, max_moves : int
        Bounds on the Metropolis moves per stage.
    move_probability : float
        Target probability that a particle moves at least once per stage.
    target_acceptance : float or None
        Acceptance rate the proposal scale is adapted toward between stages
        (``None``: keep ``initial_scale``).
    initial_scale : float
        Initial multiplier of the ``2.38 / sqrt(D)`` random-walk scale.
    min_step : float
        Smallest increment of ``beta`` per stage.
    tol : float
        Tolerance of the tempering bisection on ``ESS / N``.
    max_stages : int
        Stop with status ``max_iterations`` after this many stages.
    jitter : float
        Relative diagonal jitter added to the proposal covariance.
    kernel : {"rw", "pcn"}
        ``"rw"``: random-walk proposals from the particle cloud (``proposal``), scale
        adapted between stages. ``"pcn"``: preconditioned Crank-Nicolson proposals
        ``m + sqrt(1 - b^2) (u - m) + b s xi`` reversible w.r.t. ``N(m, s^2 I)`` fitted to
        the initial prior draws, ``b = min(scale, 1)`` adapted toward
        ``target_acceptance`` after every move. For an isotropic Gaussian prior (the
        prompt models' ``N(0, s^2 I)``) the acceptance then depends on the likelihood
        only, not on the dimension, so particles keep moving in a 500-dimensional z
        where random-walk steps shrink as ``1 / sqrt(D)``.

    Examples
    --------
    >>> from bayesprompt.inference.base import run
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> post = run(TemperedSMC(num_particles=64), Potential(problem.model), seed=0, progress=False)
    >>> post.status, post.samples["z"].shape, post.summary["final_beta"]
    ('finished', torch.Size([64, 2]), 1.0)
    >>> abs(post.summary["log_evidence"] - problem.log_evidence()) < 1.0
    True
    """

    name = "smc"
    progress_keys = ("beta", "ess", "acceptance")

    def __init__(
        self,
        num_particles: int = 64,
        target_ess: float = 0.5,
        resampling: str = "systematic",
        proposal: str = "auto",
        min_moves: int = 1,
        max_moves: int = 10,
        move_probability: float = 0.9,
        target_acceptance: float | None = 0.25,
        initial_scale: float = 1.0,
        min_step: float = 1e-6,
        tol: float = 1e-4,
        max_stages: int = 1000,
        jitter: float = 1e-6,
        kernel: str = "rw",
    ) -> None:
        _require(kernel in ("rw", "pcn"), f"kernel must be 'rw' or 'pcn', got {kernel!r}")
        _require(kernel == "rw" or target_acceptance is not None, "kernel='pcn' adapts its step: target_acceptance must not be None")
        _require(num_particles >= 2, f"num_particles must be >= 2, got {num_particles}")
        _require(0.0 < target_ess < 1.0, f"target_ess must be in (0, 1), got {target_ess}")
        _require(
            resampling in SCHEMES, f"unknown resampling scheme {resampling!r}; choose one of {tuple(SCHEMES)}"
        )
        _require(proposal in PROPOSALS, f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        _require(
            1 <= min_moves <= max_moves, f"need 1 <= min_moves <= max_moves, got {min_moves}, {max_moves}"
        )
        _require(0.0 < move_probability < 1.0, f"move_probability must be in (0, 1), got {move_probability}")
        _require(
            target_acceptance is None or 0.0 < target_acceptance < 1.0,
            f"target_acceptance must be None or in (0, 1), got {target_acceptance}",
        )
        _require(initial_scale > 0, f"initial_scale must be > 0, got {initial_scale}")
        _require(0.0 < min_step <= 1.0, f"min_step must be in (0, 1], got {min_step}")
        _require(0.0 < tol < 1.0, f"tol must be in (0, 1), got {tol}")
        _require(max_stages >= 1, f"max_stages must be >= 1, got {max_stages}")
        _require(jitter >= 0, f"jitter must be >= 0, got {jitter}")
        self.num_particles = int(num_particles)
        self.target_ess = float(target_ess)
        self.resampling = resampling
        self.proposal = proposal
        self.min_moves = int(min_moves)
        self.max_moves = int(max_moves)
        self.move_probability = float(move_probability)
        self.target_acceptance = target_acceptance
        self.initial_scale = float(initial_scale)
        self.min_step = float(min_step)
        self.tol = float(tol)
        self.max_stages = int(max_stages)
        self.jitter = float(jitter)
        self.kernel = kernel

    def __repr__(self) -> str:
        return (
            f"TemperedSMC(num_particles={self.num_particles}, target_ess={self.target_ess}, "
            f"resampling={self.resampling!r}, proposal={self.proposal!r}, moves=[{self.min_moves}, "
            f"{self.max_moves}], target_acceptance={self.target_acceptance}, kernel={self.kernel!r})"
        )

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> TemperedSMCState:
        """Draw ``N`` particles from the prior and score them (one query of ``N`` calls).

        Raises
        ------
        ValueError
            If no initial particle has a finite log likelihood (nothing to temper toward).
        """
        generator = make_generator(seed)
        particles = sanitised(potential.init_population(self.num_particles, generator))
        if not bool(torch.isfinite(particles.log_likelihood).any()):
            raise ValueError(
                f"{self.name}: all {self.num_particles} initial particles have a -inf or NaN log "
                "likelihood; the likelihood is zero (or undefined) on the prior draws -- check the "
                "model and data, or use more particles"
            )
        if (particles.log_likelihood == math.inf).any():
            raise ValueError(f"{self.name}: an initial particle has a +inf log likelihood")
        return TemperedSMCState(
            particles=particles,
            beta=0.0,
            log_evidence=0.0,
            scale=self.initial_scale,
            stage=0,
            evaluations=self.num_particles,
            rng_state=generator.get_state(),
            reference=isotropic_gaussian(particles.u) if self.kernel == "pcn" else None,
        )

    def step(self, potential: Potential, state: TemperedSMCState) -> tuple[TemperedSMCState, dict[str, Any]]:
        """One stage: temper, reweight, resample, move (see the module docstring).

        A state whose stage was ``interrupted`` ends the run (:meth:`stop_reason`); it is
        not stepped further.

        Raises
        ------
        ValueError
            If ``state`` is weighted (``log_weights`` set): every stage starts from an
            equally weighted population.
        """
        if state.log_weights is not None:
            raise ValueError(
                f"{self.name}: cannot step a weighted state (a stage whose first move the budget "
                "refused ends the run); resume from the state before it with more budget"
            )
        generator = generator_from(state.rng_state)
        particles = state.particles
        beta = next_beta(particles.log_likelihood, state.beta, self.target_ess, self.min_step, self.tol)
        increments = incremental_log_weights(particles.log_likelihood, state.beta, beta)
        log_evidence = state.log_evidence + float(torch.logsumexp(increments, 0)) - math.log(len(particles))
        stage_ess = ess(increments)
        kernel, log_target = self._kernel(state, increments, beta)  # from the cloud before resampling
        resampled = particles.select(resample(increments, len(particles), generator, self.resampling))
        pcn = state.reference is not None  # pCN adapts its step after every move; RW between stages
        try:
            moved, rates, moved_scale, interrupted = rejuvenate(
                potential,
                resampled,
                kernel,
                generator,
                log_target,
                self.min_moves,
                self.max_moves,
                self.move_probability,
                scale=min(state.scale, 1.0) if pcn else state.scale,
                target_acceptance=self.target_acceptance if pcn else None,
                max_scale=1.0 if pcn else SCALE_BOUNDS[1],
            )
        except BudgetExhausted:  # the first move refused: keep the reweighted, unresampled population
            moved, rates, moved_scale, interrupted = particles, [], state.scale, True
        acceptance = sum(rates) / len(rates) if rates else math.nan
        next_scale = moved_scale if pcn or not rates else adapted_scale(state.scale, acceptance, self.target_acceptance)
        new_state = TemperedSMCState(
            particles=moved,
            beta=beta,
            log_evidence=log_evidence,
            scale=next_scale,
            stage=state.stage + 1,
            evaluations=state.evaluations + len(rates) * len(particles),
            rng_state=generator.get_state(),
            reference=state.reference,
            interrupted=interrupted,
            log_weights=None if rates else normalize(increments),
        )
        info = {
            "stage": new_state.stage,
            "beta": beta,
            "ess": stage_ess,
            "acceptance": acceptance,
            "moves": len(rates),
            "scale": state.scale,
            "log_evidence": log_evidence,
            "evaluations": new_state.evaluations,
            "interrupted": interrupted,
        }
        return new_state, info

    def stop_reason(self, state: TemperedSMCState) -> str | None:
        """``budget_exhausted`` after an interrupted stage, ``finished`` once a stage at ``beta = 1``
        is done, ``max_iterations`` after ``max_stages``."""
        if state.interrupted:
            return Status.BUDGET_EXHAUSTED
        if state.beta >= 1.0:
            return Status.FINISHED
        if state.stage >= self.max_stages:
            return Status.MAX_ITERATIONS
        return None

    def posterior(self, potential: Potential, state: TemperedSMCState) -> Posterior:
        """The population, in constrained coordinates: equally weighted, or with the
        incremental weights of a stage whose first move the budget refused.

        Before ``beta = 1`` (budget exhausted, ``max_stages``) the particles target the
        tempered ``p_beta``, not the posterior: ``summary["final_beta"]`` says which, and
        ``summary["log_evidence"]`` is NaN (``log_normalizer`` then holds the estimate of
        ``log Z_beta``, which is not the evidence and must not enter a Bayes factor).
        """
        samples = {name: value.detach() for name, value in potential.unpack(state.particles.u).items()}
        return Posterior(
            samples,
            torch.zeros(len(state.particles), dtype=torch.float64) if state.log_weights is None else state.log_weights,
            status=self.stop_reason(state) or "running",
            engine=self.name,
            summary={
                "log_evidence": state.log_evidence if state.beta >= 1.0 else math.nan,
                "log_normalizer": state.log_evidence,
                "final_beta": state.beta,
                "stages": state.stage,
                "evaluations": state.evaluations,
            },
        )

    # ------------------------------------------------------------------ internals
    def _kernel(self, state: TemperedSMCState, increments: torch.Tensor, beta: float) -> tuple[Kernel, LogTarget]:
        """The stage's proposals (indexed by step size) and the log target of their MH ratio.

        Random walk: the factor of the reweighted cloud, already scaled by ``state.scale``.
        pCN: reversible w.r.t. ``N(m, s^2 I)``, so the MH ratio divides that density out.
        """

        def log_target(evaluation: Evaluation) -> torch.Tensor:
            return _log_target(evaluation, beta)

        if state.reference is None:
            factor = proposal_factor(state.particles.u, normalize(increments), state.scale, self.proposal, self.jitter)
            return (lambda _: random_walk(factor)), log_target
        mean, std = state.reference

        def corrected(evaluation: Evaluation) -> torch.Tensor:
            return log_target(evaluation) - gaussian_log_density(evaluation.u, mean, std)

        return (lambda step: crank_nicolson(step, mean, std)), corrected


def _log_target(particles: Evaluation, beta: float) -> torch.Tensor:
    """``log p(u) + beta log L(u)`` in float64 (``-inf`` where the likelihood is zero)."""
    return particles.log_prior.double() + tempered_log_likelihood(particles.log_likelihood, beta)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
