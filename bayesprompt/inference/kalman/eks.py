"""The ensemble Kalman sampler (EKS) with the finite-ensemble (ALDI) correction.

EKS (Garbuno-Inigo, Hoffmann, Li & Stuart 2020, "Interacting Langevin diffusions:
gradient structure and ensemble Kalman sampler") discretises the interacting Langevin
system, for members ``j = 1..J``,

    du_j = - C^{uG} Gamma^-1 (G(u_j) - y) dt - C Gamma0^-1 (u_j - m0) dt
           + (D + 1)/J (u_j - mean u) dt + sqrt(2 C) dW_j,

where ``C`` is the ensemble covariance (``1/J``) and ``C^{uG}`` the parameter-forward
cross-covariance. The first drift is the derivative-free stand-in for
``-C grad Phi``; the second is the Gaussian prior ``N(m0, C0)`` (the method needs one:
see :mod:`.observation`); the third is the finite-ensemble correction of Nüsken & Reich
(2019) and ALDI (Garbuno-Inigo, Nüsken & Reich 2020), without which the ensemble is
under-dispersed for finite ``J``. With it, and ``sqrt(C)`` taken as the generalised
square root ``A^T / sqrt(J)`` (anomalies ``A [J, D]``, ``J``-dimensional noise), the
posterior is invariant for any ``J > D + 1`` when ``G`` is linear (exact, not only
mean-field).

**Fewer members than dimensions** (``J <= D``, e.g. 32 members for a 500-dimensional
prompt): every term of the update lies in the span of the anomalies, so the ensemble never
leaves the affine hull of its initial members, of dimension ``J - 1``. The correction is
then sized to that hull, ``(min(D, J - 1) + 1) / J``, and the dynamics samples the
posterior restricted to the hull (checked against the closed form for a linear-Gaussian
model). The ``D``-dimensional coefficient would push the members apart ``(D + 1) / J``
times harder than the hull can balance (15.7 times for ``D = 500, J = 32``), which keeps
the ensemble at the prior's spread, away from the data. Either way, with ``J <= D`` EKS
samples a ``(J - 1)``-dimensional slice of the posterior through its initial members, not
the posterior: use ``J > D + 1`` (or a smaller prompt dimension) when the full posterior
matters. On SST-2 with a 500-dimensional prompt and 32 members (the benchmark) neither
version beat the zero-shot model.

**Discretisation** (the paper's semi-implicit scheme): with the ``J x J`` coupling
``Q_jk = <Gamma^-1/2 (G(u_j) - y), Gamma^-1/2 (G(u_k) - mean G)> / J`` (the matrix EKP
calls ``D``; computed in ensemble space, linear in ``M``), unscaled anomalies
``A = u - mean u`` (``[J, D]``, ``C = A^T A / J``) and ``xi_j ~ N(0, I_J)``,

    (I + dt C Gamma0^-1) u_j' = u_j - dt sum_k Q_jk (u_k - mean u) + dt C Gamma0^-1 m0
                                + dt (d + 1)/J (u_j - mean u) + sqrt(2 dt / J) A^T xi_j,

with ``d = min(D, J - 1)`` (see below), solved for all members at once in ensemble space (Woodbury: a ``J x J`` system; no
``D x D`` solve). The prior is implicit for stability. The step is adaptive as in
Kovachki & Stuart (2019) and EnsembleKalmanProcesses' ``EKSStableScheduler``:
``dt = step_scale / (||Q||_F + nugget)``. ``||Q||_F`` is large far from the data fit
(small, stable steps) and ``O(sqrt(D))`` near equilibrium; the Euler-Maruyama bias of the
stationary covariance is ``O(dt)`` relative (at most ``dt / 2`` to first order for a
linear-Gaussian target), hence the default ``step_scale = 0.1`` (EKP uses 1, tuned for
stability, not accuracy).

The run is ``finished`` after ``num_iterations`` steps (or once ``t`` reaches
``final_time`` when that is given). The output is the final ensemble, equally weighted,
as approximate posterior samples; pool the ensembles of the last steps through
:func:`~bayesprompt.inference.base.run`'s ``callback`` for more (correlated) samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bayesprompt.inference.base import generator_from
from bayesprompt.inference.kalman.common import EnsembleKalmanEngine, EnsembleState, _require
from bayesprompt.inference.kalman.ensemble import misfits
from bayesprompt.inference.kalman.observation import GaussianPrior, ObservationMap
from bayesprompt.inference.posterior import Status
from bayesprompt.models.potential import Potential

__all__ = ["EKS", "EKSState", "eks_move"]


@dataclass(frozen=True)
class EKSState(EnsembleState):
    """State of :class:`EKS` (see :class:`~.common.EnsembleState` for the fields)."""


class EKS(EnsembleKalmanEngine[EKSState]):
    """Ensemble Kalman sampler with the ALDI finite-ensemble correction; needs a Gaussian prior.

    Parameters
    ----------
    num_ensemble : int
        Ensemble size ``J`` (``J > D + 1`` for the correction's exactness); one step costs
        ``J`` API calls.
    num_iterations : int
        Number of steps.
    final_time : float or None
        Stop once the algorithmic time reaches it (``num_iterations`` then caps the run,
        with status ``max_iterations``).
    step_scale : float
        ``dt0`` in ``dt = dt0 / (||Q||_F + nugget)``.
    nugget : float
        Keeps ``dt`` finite when ``Q`` vanishes.
    correction : bool
        Include the ``(d + 1)/J (u_j - mean u)`` term, ``d = min(D, J - 1)``
        (``False``: the original EKS).
    observation_map : ObservationMap or None
        How observed sites become ``G``, ``y`` and ``Gamma``.
    jitter : float
        Relative scale of the noise added to refilled members.

    Examples
    --------
    >>> from bayesprompt.inference.base import run
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=6, seed=0)
    >>> post = run(EKS(num_ensemble=20, num_iterations=30), Potential(problem.model), seed=0, progress=False)
    >>> post.status, post.samples["z"].shape, post.summary["iterations"]
    ('finished', torch.Size([20, 2]), 30)
    """

    name = "eks"
    progress_keys = ("iteration", "t", "misfit_per_obs", "failed")
    state_class = EKSState

    def __init__(
        self,
        num_ensemble: int = 100,
        num_iterations: int = 200,
        final_time: float | None = None,
        step_scale: float = 0.1,
        nugget: float = 1e-8,
        correction: bool = True,
        observation_map: ObservationMap | None = None,
        jitter: float = 0.1,
    ) -> None:
        super().__init__(num_ensemble, observation_map, jitter)
        _require(num_iterations >= 1, f"num_iterations must be >= 1, got {num_iterations}")
        _require(final_time is None or final_time > 0, f"final_time must be None or > 0, got {final_time}")
        _require(step_scale > 0, f"step_scale must be > 0, got {step_scale}")
        _require(nugget > 0, f"nugget must be > 0, got {nugget}")
        self.num_iterations = int(num_iterations)
        self.final_time = None if final_time is None else float(final_time)
        self.step_scale = float(step_scale)
        self.nugget = float(nugget)
        self.correction = bool(correction)

    def __repr__(self) -> str:
        return (
            f"EKS(num_ensemble={self.num_ensemble}, num_iterations={self.num_iterations}, "
            f"final_time={self.final_time}, step_scale={self.step_scale}, correction={self.correction})"
        )

    # ------------------------------------------------------------------ engine API
    def step(self, potential: Potential, state: EKSState) -> tuple[EKSState, dict[str, Any]]:
        """Evaluate the ensemble (one query) and take one semi-implicit EKS step."""
        generator = generator_from(state.rng_state)
        observations, ok = self._evaluate(potential, state, generator)
        forward, data = observations.whitened()
        u, forward = state.ensemble[ok], forward[ok]
        coupling = _coupling(forward, data)
        dt = self.step_scale / (float(torch.linalg.matrix_norm(coupling)) + self.nugget)
        if self.final_time is not None:
            dt = min(dt, self.final_time - state.time)
        noise = torch.randn(u.shape[0], u.shape[0], generator=generator, dtype=u.dtype)
        moved = eks_move(u, coupling, state.prior, dt, noise, self.correction)
        reached = self.final_time is not None and dt >= self.final_time - state.time
        new_state = EKSState(
            ensemble=self._assemble(moved, ok, generator),
            prior=state.prior,
            time=self.final_time if reached else state.time + dt,
            iteration=state.iteration + 1,
            evaluations=state.evaluations + self.num_ensemble,
            failed=state.failed + int((~ok).sum()),
            misfit=float(misfits(forward, data).mean()),
            rng_state=generator.get_state(),
        )
        return new_state, self._info(new_state, dt, ok, observations)

    def stop_reason(self, state: EKSState) -> str | None:
        """``finished`` at ``final_time`` (if given) or after ``num_iterations`` without one."""
        if self.final_time is not None and state.time >= self.final_time:
            return Status.FINISHED
        if state.iteration >= self.num_iterations:
            return Status.MAX_ITERATIONS if self.final_time is not None else Status.FINISHED
        return None


def _coupling(forward: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """``Q_jk = <G_j - y, G_k - mean G> / J`` for whitened ``forward [J, M]``, ``data [M]``."""
    centred = forward - forward.mean(0, keepdim=True)
    return (forward - data) @ centred.T / forward.shape[0]


def eks_move(
    u: torch.Tensor,
    coupling: torch.Tensor,
    prior: GaussianPrior,
    dt: float,
    noise: torch.Tensor,
    correction: bool = True,
) -> torch.Tensor:
    """One semi-implicit EKS step (see the module docstring), a pure function.

    Parameters
    ----------
    u : Tensor ``[J, D]``
        The ensemble.
    coupling : Tensor ``[J, J]``
        ``Q_jk``.
    prior : GaussianPrior
        ``N(m0, Gamma0)``.
    dt : float
        Step.
    noise : Tensor ``[J, J]``
        Standard normal draws ``xi`` (row ``j`` drives member ``j``).
    correction : bool
        Include the ``(min(D, J - 1) + 1)/J`` finite-ensemble term.

    Examples
    --------
    With no data coupling and no noise, a collapsed ensemble stays put:

    >>> prior = GaussianPrior.from_moments(torch.zeros(2), torch.eye(2))
    >>> u = torch.ones(4, 2, dtype=torch.float64)
    >>> eks_move(u, torch.zeros(4, 4, dtype=torch.float64), prior, 0.1, torch.zeros(4, 4, dtype=torch.float64)).tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    num, dim = u.shape
    centred = u - u.mean(0, keepdim=True)
    weighted = centred @ prior.precision  # A Gamma0^-1 [J, D]; C Gamma0^-1 = A^T (A Gamma0^-1) / J
    prior_pull = centred.T @ (weighted @ prior.mean) / num  # C Gamma0^-1 m0 [D]
    rhs = u - dt * (coupling @ centred) + dt * prior_pull + math.sqrt(2.0 * dt / num) * (noise @ centred)
    if correction:
        span = min(dim, num - 1)  # the ensemble never leaves the affine hull of its members
        rhs = rhs + dt * (span + 1) / num * centred
    return _solve_implicit(centred, weighted, dt / num, rhs)


def _solve_implicit(centred: torch.Tensor, weighted: torch.Tensor, scale: float, rhs: torch.Tensor) -> torch.Tensor:
    """Rows ``x_j`` of ``(I_D + scale A^T W) x_j = r_j`` by Woodbury, in ensemble space.

    ``(I + s A^T W)^-1 = I - s A^T (I_J + s W A^T)^-1 W``; ``W A^T = A Gamma0^-1 A^T`` is
    positive semi-definite, so the ``J x J`` system has eigenvalues ``>= 1``. Cost
    ``O(J^2 D + J^3)``: no ``D x D`` solve.
    """
    small = torch.eye(centred.shape[0], dtype=centred.dtype) + scale * (weighted @ centred.T)
    return rhs - scale * torch.linalg.solve(small, weighted @ rhs.T).T @ centred
