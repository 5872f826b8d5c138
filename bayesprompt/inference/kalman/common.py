"""The parts :class:`~.eki.EKI` and :class:`~.eks.EKS` share: state, init, evaluation, output.

Both engines keep an ensemble ``u [J, D]`` of unconstrained latent vectors (float64).
One step evaluates the whole ensemble in **one** batched model run (``J`` API calls),
drops the members whose forward output is NaN / inf, moves the survivors and refills
the dropped slots (see :func:`EnsembleKalmanEngine._assemble`). The state holds the
ensemble *after* the move (not yet evaluated), so :func:`~bayesprompt.inference.base.run`
can stop at any step boundary without losing work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from bayesprompt.inference.base import Engine, discover_sites, make_generator
from bayesprompt.inference.kalman.ensemble import refill, require_survivors, spread
from bayesprompt.inference.kalman.observation import (
    GaussianPrior,
    ObservationMap,
    Observations,
    ensemble_trace,
    gaussian_prior,
    prior_moments,
)
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.models.potential import Potential

__all__ = ["EnsembleKalmanEngine", "EnsembleState"]

#: Prior draws read at init (two, so a prior that depends on another latent site shows
#: up as differing moments before any budget is spent on the ensemble).
_PROBE_SIZE = 2


@dataclass(frozen=True)
class EnsembleState:
    """State of an ensemble Kalman engine after a completed step.

    Attributes
    ----------
    ensemble : Tensor ``[J, D]`` (float64)
        Unconstrained latent vectors, to be evaluated by the next step.
    prior : GaussianPrior
        The model's prior on ``u`` (read once at init, checked at every step).
    time : float
        Algorithmic time ``t`` (sum of the steps).
    iteration : int
        Completed steps.
    evaluations : int
        Ensemble-member evaluations by the steps so far (``J`` per step).
    failed : int
        Member evaluations with a NaN / inf forward output so far (each refilled).
    misfit : float
        Mean data misfit ``0.5 ||Gamma^-1/2 (y - G(u_j))||^2`` of the last evaluated
        ensemble's survivors (NaN before the first step).
    rng_state : Tensor
        State of the engine's generator.
    """

    ensemble: torch.Tensor
    prior: GaussianPrior
    time: float
    iteration: int
    evaluations: int
    failed: int
    misfit: float
    rng_state: torch.Tensor


State = TypeVar("State", bound=EnsembleState)


class EnsembleKalmanEngine(Engine[State]):
    """Shared machinery (not an engine by itself): see :class:`~.eki.EKI`, :class:`~.eks.EKS`."""

    state_class: type = EnsembleState

    def __init__(self, num_ensemble: int, observation_map: ObservationMap | None, jitter: float) -> None:
        _require(num_ensemble >= 2, f"num_ensemble must be >= 2, got {num_ensemble}")
        _require(jitter >= 0, f"jitter must be >= 0, got {jitter}")
        self.num_ensemble = int(num_ensemble)
        self.observation_map = observation_map if observation_map is not None else ObservationMap()
        self.jitter = float(jitter)

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> State:
        """Read the Gaussian prior and draw the ensemble from it.

        The prior is read from 2 draws that Pyro makes itself (so a prior that depends on
        another latent site shows up as differing moments). With the potential's meter this
        is free (the model is stopped at its first query); without one it costs 1 call to
        discover the sites and 2 for the draws. The ensemble is evaluated by the first step.

        Raises
        ------
        ValueError
            Naming the site, if a latent site's prior is not a fixed Gaussian with real
            support.
        """
        generator = make_generator(seed)
        discover_sites(potential, generator)
        prior = gaussian_prior(potential.prior_trace(_PROBE_SIZE, generator), potential)
        ensemble = prior.sample(self.num_ensemble, generator)
        return self.state_class(
            ensemble=ensemble,
            prior=prior,
            time=0.0,
            iteration=0,
            evaluations=0,
            failed=0,
            misfit=math.nan,
            rng_state=generator.get_state(),
        )

    def posterior(self, potential: Potential, state: State) -> Posterior:
        """The equally weighted ensemble, in constrained coordinates."""
        samples = {k: v.detach() for k, v in potential.unpack(state.ensemble.to(state.prior.dtype)).items()}
        return Posterior(
            samples,
            torch.zeros(self.num_ensemble, dtype=torch.float64),
            status=self.stop_reason(state) or Status.RUNNING,
            engine=self.name,
            summary=self._summary(state),
        )

    # ------------------------------------------------------------------ shared step parts
    def _evaluate(
        self, potential: Potential, state: State, generator: torch.Generator
    ) -> tuple[Observations, torch.Tensor]:
        """Evaluate the ensemble (one query); return its observations and the survivor mask.

        Raises ``ValueError`` naming the site for an observed site that is neither Normal
        nor Categorical, and :class:`~.ensemble.EnsembleFailure` with fewer than 2 survivors.
        """
        if not potential.is_initialised:  # a state resumed with a fresh potential
            potential.discover_sites()
        trace = ensemble_trace(potential, state.ensemble, generator, state.prior.dtype)
        if not state.prior.matches(*prior_moments(trace, potential)[:2]):
            raise ValueError(f"{self.name}: the model's prior changed since init; it must be fixed")
        observations = self.observation_map.from_trace(trace, potential)
        ok = observations.ok
        require_survivors(ok, self.name, state.iteration + 1)
        return observations, ok

    def _assemble(self, moved: torch.Tensor, ok: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Put the moved survivors back in place; refill failed slots from them.

        Policy for failed members (NaN / inf forward output): they are dropped from the
        ensemble statistics of this step, and each failed slot gets a copy of a uniformly
        drawn moved survivor plus ``N(0, jitter^2 C_survivors)`` noise, to be evaluated
        by the next step like any member (no extra query).
        """
        ensemble = torch.empty(ok.shape[0], moved.shape[1], dtype=moved.dtype)
        ensemble[ok] = moved
        num_failed = int((~ok).sum())
        if num_failed:
            ensemble[~ok] = refill(moved, num_failed, generator, self.jitter)
        return ensemble

    def _info(self, state: State, step: float, ok: torch.Tensor, observations: Observations) -> dict[str, Any]:
        return {
            "iteration": state.iteration,
            "t": state.time,
            "dt": step,
            "misfit": state.misfit,
            "misfit_per_obs": 2.0 * state.misfit / observations.num_obs,
            "spread": spread(state.ensemble),
            "failed": int((~ok).sum()),
            "evaluations": state.evaluations,
        }

    def _summary(self, state: State) -> dict[str, Any]:
        return {
            "time": state.time,
            "iterations": state.iteration,
            "evaluations": state.evaluations,
            "failed_members": state.failed,
            "misfit": state.misfit,
            "spread": spread(state.ensemble),
            "num_ensemble": self.num_ensemble,
        }


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
