"""Ensemble Kalman inversion (EKI) with the data-misfit controller, optionally Tikhonov.

**Prior.** Ensemble Kalman methods need a Gaussian prior: every latent site must be
``Normal``, ``Independent(Normal)`` or ``MultivariateNormal`` with real support and
fixed moments (a clear ``ValueError`` names the offending site otherwise). Prior mean
``m0`` and covariance ``C0`` are read from the site distributions of a traced run.

**Update.** With whitened observations (``Gamma = I`` after scaling by
``Gamma^-1/2``, see :class:`~.observation.ObservationMap`), ``J`` members, scaled
anomalies ``A_u [J, D]`` and ``A_g [J, M]`` (``1/(J - 1)`` covariances) and a step
``h``, every member moves by the perturbed-observation Kalman update

    u_j <- u_j + C^{uG} (C^{GG} + h^-1 I)^-1 (y + xi_j - G(u_j)),   xi_j ~ N(0, h^-1 I),

computed in ensemble space through the SVD of ``A_g`` (:func:`~.ensemble.kalman_increments`):
``O(J^2 M)`` time, ``O(J M)`` memory, no ``M x M`` matrix. ``perturb=False`` drops
``xi`` (deterministic EKI, the ensemble-space Levenberg-Marquardt view).

**Step size.** The data-misfit controller (Iglesias & Yang 2021, as EnsembleKalmanProcesses'
``DataMisfitController``): with ``Phi_j = 0.5 ||y - G(u_j)||^2`` over the survivors,

    h_n = min(max(M / (2 mean Phi), sqrt(M / (2 Var Phi))), T - t_n),

so the steps sum to ``T`` exactly (``sum 1/alpha_n = 1`` for ``T = 1``). A fixed
``step_size`` replaces the controller (still capped by ``T - t``).

**Two uses.**

* *Bayesian tempering* (default: ``tikhonov=False``, ``final_time=1``): the ensemble is
  drawn from the prior and tempered to the posterior; at ``t = 1`` it approximates
  posterior samples (exactly, in the mean-field limit, for a linear forward map). The run
  is ``finished`` when ``t`` reaches 1.
* *Tikhonov EKI* (``tikhonov=True``; Chada, Stuart & Tong 2020): the prior enters as
  ``D`` extra observations, ``G~(u) = [G(u); L0^-1 (u - m0)]`` with data ``[y; 0]``
  (``C0 = L0 L0^T``), and the ensemble is driven to the minimiser of
  ``0.5 ||y - G(u)||^2_Gamma + 0.5 ||u - m0||^2_C0`` (for a linear ``G``: the posterior
  mean, i.e. the regularised least-squares solution). Its default ``final_time`` is
  ``1e8``: for a linear ``G`` the ensemble mean at time ``T`` is the posterior mean of the
  initial ensemble's Gaussian with the *augmented* likelihood raised to the power ``T``,
  which differs from the minimiser by ``O(1/T)`` relative. As the ensemble collapses,
  ``Var Phi`` shrinks and the controller's steps grow geometrically, so ``T = 1e8`` takes
  a few dozen steps. (Without ``tikhonov`` and with a large ``final_time`` the same
  iteration converges to the least-squares solution within the ensemble's span.) The
  returned ensemble is then a collapsed cloud around the point estimate, not posterior
  samples.

Failed members (NaN / inf forward output) are dropped and refilled, see
:meth:`~.common.EnsembleKalmanEngine._assemble`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bayesprompt.inference.base import generator_from
from bayesprompt.inference.kalman.common import EnsembleKalmanEngine, EnsembleState, _require
from bayesprompt.inference.kalman.ensemble import anomalies, data_misfit_step, kalman_increments, misfits
from bayesprompt.inference.kalman.observation import GaussianPrior, ObservationMap, Observations
from bayesprompt.inference.posterior import Status
from bayesprompt.models.potential import Potential

__all__ = ["EKI", "EKIState"]

#: Default algorithmic end time of Tikhonov EKI (relative distance to the minimiser ~ 1/T).
TIKHONOV_FINAL_TIME = 1e8
#: Largest step: bounds the controller when the misfit spread vanishes (``Var Phi = 0``).
MAX_STEP = 1e12


@dataclass(frozen=True)
class EKIState(EnsembleState):
    """State of :class:`EKI` (see :class:`~.common.EnsembleState` for the fields)."""


class EKI(EnsembleKalmanEngine[EKIState]):
    """Ensemble Kalman inversion with adaptive (data-misfit) steps; needs a Gaussian prior.

    Parameters
    ----------
    num_ensemble : int
        Ensemble size ``J``; one step costs ``J`` API calls. ``J > D`` lets the ensemble
        span the whole latent space (EKI stays in the span of its initial ensemble).
    tikhonov : bool
        Add the prior as extra observations (Tikhonov EKI, a point estimator); see the
        module docstring.
    final_time : float or None
        Algorithmic end time ``T``: the run is ``finished`` once ``t = T``. ``None``: 1
        (posterior tempering) without ``tikhonov``, ``1e8`` with it.
    step_size : float or None
        Fixed step ``h`` instead of the data-misfit controller.
    max_step : float or None
        Upper bound on the controller's step. On a weakly informative likelihood the
        controller can reach ``t = 1`` in a single step; ``max_step = 1 / n`` forces at
        least ``n`` smaller steps (as multiple data assimilation, ES-MDA, does), which
        changes nothing for a linear-Gaussian model in the large-ensemble limit and
        follows a nonlinear forward map more closely, at ``J`` calls per extra step.
    perturb : bool
        Perturb the data of each member (stochastic EKI); ``False``: deterministic EKI.
    max_iterations : int
        Stop with status ``max_iterations`` after this many steps.
    observation_map : ObservationMap or None
        How observed sites become ``G``, ``y`` and ``Gamma`` (categorical noise etc.).
    jitter : float
        Relative scale of the noise added to refilled members.

    Examples
    --------
    >>> from bayesprompt.inference.base import run
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=6, seed=0)
    >>> potential = Potential(problem.model, meter=problem.meter)
    >>> post = run(EKI(num_ensemble=20, tikhonov=True), potential, seed=0, progress=False)
    >>> post.status, post.samples["z"].shape
    ('finished', torch.Size([20, 2]))
    >>> bool(torch.allclose(post.mean("z"), problem.posterior_mean(), atol=1e-4))
    True
    """

    name = "eki"
    progress_keys = ("iteration", "t", "misfit_per_obs", "failed")
    state_class = EKIState

    def __init__(
        self,
        num_ensemble: int = 50,
        tikhonov: bool = False,
        final_time: float | None = None,
        step_size: float | None = None,
        max_step: float | None = None,
        perturb: bool = True,
        max_iterations: int = 1000,
        observation_map: ObservationMap | None = None,
        jitter: float = 0.1,
    ) -> None:
        super().__init__(num_ensemble, observation_map, jitter)
        if final_time is None:
            final_time = TIKHONOV_FINAL_TIME if tikhonov else 1.0
        _require(final_time > 0, f"final_time must be > 0, got {final_time}")
        _require(step_size is None or step_size > 0, f"step_size must be None or > 0, got {step_size}")
        _require(max_step is None or max_step > 0, f"max_step must be None or > 0, got {max_step}")
        _require(step_size is None or max_step is None, "give step_size (fixed steps) or max_step (a cap), not both")
        _require(max_iterations >= 1, f"max_iterations must be >= 1, got {max_iterations}")
        self.tikhonov = bool(tikhonov)
        self.final_time = float(final_time)
        self.step_size = None if step_size is None else float(step_size)
        self.max_step = MAX_STEP if max_step is None else float(max_step)
        self.perturb = bool(perturb)
        self.max_iterations = int(max_iterations)

    def __repr__(self) -> str:
        return (
            f"EKI(num_ensemble={self.num_ensemble}, tikhonov={self.tikhonov}, final_time={self.final_time}, "
            f"step_size={self.step_size}, max_step={self.max_step}, perturb={self.perturb})"
        )

    # ------------------------------------------------------------------ engine API
    def step(self, potential: Potential, state: EKIState) -> tuple[EKIState, dict[str, Any]]:
        """Evaluate the ensemble (one query), choose ``h``, apply the Kalman update."""
        generator = generator_from(state.rng_state)
        observations, ok = self._evaluate(potential, state, generator)
        u = state.ensemble[ok]
        forward, data = self._problem(observations, ok, u, state.prior)
        data_misfit = misfits(forward[:, : observations.num_obs], data[: observations.num_obs])
        remaining = self.final_time - state.time
        h = self._step(misfits(forward, data), forward.shape[1], remaining)
        moved = u + self._increments(u, forward, data, h, generator)
        new_state = EKIState(
            ensemble=self._assemble(moved, ok, generator),
            prior=state.prior,
            time=self.final_time if h >= remaining * (1 - 1e-9) else state.time + h,  # no sliver step from rounding
            iteration=state.iteration + 1,
            evaluations=state.evaluations + self.num_ensemble,
            failed=state.failed + int((~ok).sum()),
            misfit=float(data_misfit.mean()),
            rng_state=generator.get_state(),
        )
        return new_state, self._info(new_state, h, ok, observations)

    def stop_reason(self, state: EKIState) -> str | None:
        """``finished`` once ``t = T``; ``max_iterations`` after ``max_iterations`` steps."""
        if state.time >= self.final_time:
            return Status.FINISHED
        if state.iteration >= self.max_iterations:
            return Status.MAX_ITERATIONS
        return None

    # ------------------------------------------------------------------ internals
    def _problem(
        self, observations: Observations, ok: torch.Tensor, u: torch.Tensor, prior: GaussianPrior
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened forward ``[J_ok, M']`` and data ``[M']`` (augmented with the prior if Tikhonov)."""
        forward, data = observations.whitened()
        forward = forward[ok]
        if self.tikhonov:
            forward = torch.cat([forward, prior.whiten(u)], dim=1)
            data = torch.cat([data, torch.zeros(prior.dim, dtype=data.dtype)])
        return forward, data

    def _step(self, phi: torch.Tensor, num_obs: int, remaining: float) -> float:
        if self.step_size is not None:
            return min(self.step_size, remaining)
        return data_misfit_step(phi, num_obs, remaining, self.max_step)

    def _increments(
        self, u: torch.Tensor, forward: torch.Tensor, data: torch.Tensor, h: float, generator: torch.Generator
    ) -> torch.Tensor:
        residuals = data - forward
        if self.perturb:
            residuals = residuals + torch.randn(forward.shape, generator=generator, dtype=forward.dtype) / math.sqrt(h)
        return kalman_increments(anomalies(u, 1), anomalies(forward, 1), residuals, 1.0 / h)
