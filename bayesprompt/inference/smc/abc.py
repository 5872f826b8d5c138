"""ABC-SMC: a likelihood-free posterior over prompts from predicted labels only.

Approximate Bayesian computation (ABC) never evaluates a likelihood. A prompt ``z`` is
kept when the labels the black box predicts with it (the model's ``pyro.deterministic``
site, ``"y_pred"`` by default) are within a tolerance ``eps`` of the observed training
labels under a distance ``d``. The ABC posterior at tolerance ``eps`` is::

    pi_eps(z)  propto  p(z) * 1[d(y_sim(z), y_obs) <= eps]

and ABC-SMC (Toni et al., 2009; Beaumont et al., 2009) reaches a small ``eps`` through a
decreasing sequence ``eps_1 > eps_2 > ...``, one population of ``N`` weighted particles
per tolerance:

1. **Population 0** is a batch of prior draws (one black-box call for the batch): every
   draw is accepted at ``eps_0 = inf`` with uniform weight, so it represents the prior.
2. **Stage t** picks ``eps_t`` from the schedule, then repeats, one batch (= one
   black-box call) at a time, until ``N`` proposals are accepted:

   * ancestors ``j ~ w_{t-1}``; proposals ``u = u_j + xi`` with ``xi ~ N(0, Sigma_t)``,
     ``Sigma_t = kernel_scale * (weighted covariance of population t-1)`` (Beaumont's
     choice is ``kernel_scale = 2``);
   * accept a proposal when ``d <= eps_t``;
   * give it the weight ``w_i propto p(u_i) / sum_j w_j K(u_i | u_j)`` (computed in log
     space; ``K``'s normaliser cancels, the Mahalanobis term uses ``Sigma_t``).

   The weight is the ratio of the target ``pi_{eps_t}`` to the mixture the proposals
   came from, so the population is a proper importance sample of ``pi_{eps_t}``.

All of this happens in the Potential's **unconstrained** coordinates ``u``; its
``log_prior`` includes the log-Jacobian, so it is the prior density of ``u`` and the
weights are correct for constrained sites too.

``weighting="uniform"`` reproduces the variant of Shen et al. (EACL 2023 Findings,
"Reliable Gradient-free and Likelihood-free Prompt Tuning"), whose public code computes
importance weights and then overwrites them with uniform ones. It ignores the ratio of
prior to proposal, so it is *not* a sample of ``pi_eps``: its particles follow the
kernel mixture restricted to the acceptance region (see ``tests/test_abc_smc.py`` for a
case where its mean is off by many standard errors).

Tolerance schedules
-------------------
``"paper"`` (Shen et al.)
    ``eps_1`` = the best (smallest) distance in the prior batch, then
    ``eps_t = eps_{t-1} - step`` with ``step = 1/B`` by default (one training example
    for the error rate).
``"quantile"`` (Del Moral et al., 2012; pyABC)
    ``eps_t`` = the weighted ``alpha``-quantile of population ``t-1``'s distances. Label
    distances are discrete, so the quantile can equal ``eps_{t-1}``; the tolerance must
    strictly decrease, so ``eps_t`` then falls back to the largest distance in the
    population below ``eps_{t-1}``, or to ``eps_{t-1} - step`` if there is none.

Both are clipped at ``epsilon_min``; the run is ``finished`` once a population at
``epsilon_min`` is complete. Each engine :meth:`~ABCSMC.step` is **one batch** (one
black-box call): the state holds the last complete population and the proposals the stage
in progress has accepted so far (:class:`PartialPopulation`), so a checkpoint after every
step loses at most one batch when a run is killed, and a resumed run continues the stage
it was in, drawing the same random numbers as an uninterrupted run. The step whose batch
completes a population says so in its info record (``"complete": True``). When the API
budget runs out part-way through a stage, :func:`~bayesprompt.inference.base.run` returns
the last *complete* population. If ``max_rejected_batches`` consecutive batches bring no
accepted proposal, the stage gives up and the run stops ``stalled`` with the last
complete population.

Shen et al.'s code builds population 1 by rejection sampling from the prior at
``eps_1``; here every stage, the first included, perturbs the previous population (the
prior batch for stage 1), which is exact with importance weights and cheaper.

Choosing a population on a dev split (as Shen et al. do) is a separate, explicit step:
pass a :class:`PopulationHistory` as ``run(..., callback=history)`` and call
:meth:`PopulationHistory.best` (or :func:`select_population`) with a dev score.

Notes
-----
* Simulators may be stochastic (e.g. draw noise with ``torch.randn``): each batch is
  evaluated under :func:`~bayesprompt.models.potential.seeded` with the engine's
  generator, so runs stay reproducible.
* The importance weights are exact but degenerate when the population is small
  compared with the dimension: the kernel components barely overlap, so each weight is
  dominated by one prior-over-kernel ratio whose log varies by ``O(sqrt(D))``. With
  ``N = 50`` and ``D >= 20`` the ESS falls to about 1 after one or two stages; the
  weighted covariance, and hence the kernel, then collapses and the run stops
  ``stalled``. Watch the ``ess`` diagnostic; use more particles or a smaller ``D``.
  The uniform variant never shows this because it does not target ``pi_eps``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from bayesprompt.inference.base import Engine, generator_from, make_generator
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.inference.smc.ess import ess
from bayesprompt.inference.smc.resampling import multinomial
from bayesprompt.models.potential import Potential, seeded

__all__ = [
    "ABCSMC",
    "ABCSMCState",
    "PartialPopulation",
    "PopulationHistory",
    "error_rate",
    "one_minus_f1",
    "kernel_covariance",
    "importance_log_weights",
    "weighted_quantile",
    "select_population",
]

#: ``(simulated [P, B], observed [B]) -> distances [P]``.
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Schedule = Literal["paper", "quantile"]
Weighting = Literal["importance", "uniform"]
KernelKind = Literal["auto", "full", "diagonal"]

#: Slack of every tolerance comparison: label distances are ratios such as ``k / B``,
#: and ``k / B - 1 / B`` need not equal ``(k - 1) / B`` in floating point.
EPS_ATOL = 1e-9
#: Relative ridge added to the kernel covariance so its Cholesky factor always exists.
_RIDGE = 1e-10


# ---------------------------------------------------------------------- distances
def _check_labels(simulated: torch.Tensor, observed: torch.Tensor) -> None:
    if simulated.ndim != 2 or observed.ndim != 1 or simulated.shape[1] != observed.shape[0]:
        raise ValueError(
            f"distance needs simulated labels [P, B] and observed labels [B], got "
            f"{tuple(simulated.shape)} and {tuple(observed.shape)}"
        )


def error_rate(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """One minus accuracy of each row of ``simulated`` against ``observed``.

    Parameters
    ----------
    simulated : LongTensor ``[P, B]``
        Predicted labels of ``P`` particles.
    observed : LongTensor ``[B]``
        Gold labels.

    Returns
    -------
    Tensor ``[P]`` (float64)

    Examples
    --------
    >>> error_rate(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]), torch.tensor([0, 1, 0, 0]))
    tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    _check_labels(simulated, observed)
    return (simulated != observed).double().mean(-1)


def one_minus_f1(simulated: torch.Tensor, observed: torch.Tensor, positive: int = 1) -> torch.Tensor:
    """One minus the binary F1 score of class ``positive`` (MRPC's metric) per row.

    ``F1 = 2 TP / (2 TP + FP + FN)``. When neither the simulated nor the observed labels
    contain the positive class the labels agree on it perfectly and ``F1 = 1`` (distance
    0), so that ``d(y, y) = 0`` always holds; note that this differs from the metric
    convention ``F1 = 0`` used by :func:`bayesprompt.metrics.binary_f1`.

    Parameters
    ----------
    simulated : LongTensor ``[P, B]``
        Predicted labels of ``P`` particles.
    observed : LongTensor ``[B]``
        Gold labels.
    positive : int
        The positive class.

    Returns
    -------
    Tensor ``[P]`` (float64) in ``[0, 1]``.

    Examples
    --------
    >>> observed = torch.tensor([1, 1, 0, 0])
    >>> one_minus_f1(torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]), observed)
    tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
    >>> one_minus_f1(torch.tensor([[0, 0]]), torch.tensor([0, 0]))
    tensor([0.], dtype=torch.float64)
    """
    _check_labels(simulated, observed)
    predicted, gold = simulated == positive, (observed == positive).unsqueeze(0)
    true_pos = (predicted & gold).sum(-1).double()
    denominator = (predicted.sum(-1) + gold.sum(-1)).double()
    f1 = torch.where(denominator > 0, 2.0 * true_pos / denominator.clamp_min(1.0), 1.0)
    return 1.0 - f1


# ---------------------------------------------------------------------- weights & kernel
def kernel_covariance(
    u: torch.Tensor,
    log_weights: torch.Tensor,
    scale: float = 2.0,
    kind: Literal["full", "diagonal"] = "full",
) -> torch.Tensor:
    """Covariance of the Gaussian perturbation kernel: ``scale`` x weighted covariance.

    ``scale = 2`` is the choice of Beaumont et al. (2009). A tiny ridge (relative
    ``1e-10`` of the mean variance) keeps the matrix positive definite.

    Parameters
    ----------
    u : Tensor ``[N, D]``
        Particles.
    log_weights : Tensor ``[N]``
        Their log weights (need not be normalised).
    scale : float
        Multiplier of the weighted covariance.
    kind : {"full", "diagonal"}
        Full covariance, or only its diagonal (for ``N <= D``, where the full one is
        singular).

    Returns
    -------
    Tensor ``[D, D]`` (float64)

    Examples
    --------
    >>> u = torch.tensor([[0.0], [2.0]])
    >>> kernel_covariance(u, torch.zeros(2))  # 2 x the variance 1 of {0, 2}
    tensor([[2.0000]], dtype=torch.float64)
    """
    x = u.double()
    w = torch.softmax(log_weights.double(), 0)
    centred = x - w @ x
    cov = (centred * w.unsqueeze(-1)).T @ centred
    if kind == "diagonal":
        cov = torch.diag(torch.diagonal(cov))
    elif kind != "full":
        raise ValueError(f"kind must be 'full' or 'diagonal', got {kind!r}")
    cov = scale * cov
    mean_var = float(torch.diagonal(cov).mean())
    ridge = _RIDGE * (mean_var if mean_var > 0 else 1.0)
    return cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype)


def _whiten(u: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """``L^{-1} u`` row-wise, so Euclidean distances become Mahalanobis distances."""
    return torch.linalg.solve_triangular(scale_tril, u.double().T, upper=False).T


def importance_log_weights(
    u: torch.Tensor,
    log_prior: torch.Tensor,
    ancestors: torch.Tensor,
    ancestor_log_weights: torch.Tensor,
    covariance: torch.Tensor,
) -> torch.Tensor:
    """ABC-SMC importance weights ``w_i propto p(u_i) / sum_j w_j N(u_i; u_j, Sigma)``.

    The Gaussian normaliser is the same for every term and cancels on normalisation.

    Parameters
    ----------
    u : Tensor ``[N, D]``
        Accepted proposals.
    log_prior : Tensor ``[N]``
        Their log prior densities (in the coordinates of ``u``).
    ancestors : Tensor ``[M, D]``
        The previous population.
    ancestor_log_weights : Tensor ``[M]``
        Its log weights (need not be normalised).
    covariance : Tensor ``[D, D]``
        The perturbation kernel's covariance ``Sigma`` (the one proposals were drawn with).

    Returns
    -------
    Tensor ``[N]`` (float64)
        Normalised log weights (they logsumexp to 0).

    Examples
    --------
    >>> anc = torch.tensor([[0.0], [1.0]])
    >>> lw = importance_log_weights(torch.tensor([[0.5], [0.5]]), torch.zeros(2), anc,
    ...                             torch.zeros(2), torch.eye(1))
    >>> lw.exp()
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    scale_tril = torch.linalg.cholesky(covariance.double())
    squared = torch.cdist(
        _whiten(u, scale_tril),
        _whiten(ancestors, scale_tril),
        compute_mode="donot_use_mm_for_euclid_dist",
    ).square()
    mixture = torch.logsumexp(torch.log_softmax(ancestor_log_weights.double(), 0) - 0.5 * squared, dim=1)
    log_w = log_prior.double() - mixture
    return log_w - torch.logsumexp(log_w, 0)


def weighted_quantile(values: torch.Tensor, log_weights: torch.Tensor, alpha: float) -> float:
    """The smallest value whose weighted cumulative share reaches ``alpha``.

    Parameters
    ----------
    values : Tensor ``[N]``
    log_weights : Tensor ``[N]``
        Log weights (need not be normalised).
    alpha : float
        In ``(0, 1]``.

    Examples
    --------
    >>> weighted_quantile(torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.zeros(4), 0.5)
    2.0
    >>> weighted_quantile(torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.0, 0.0, 0.0, 9.0]), 0.5)
    4.0
    """
    order = torch.argsort(values)
    cumulative = torch.cumsum(torch.softmax(log_weights.double()[order], 0), 0)
    index = int(torch.searchsorted(cumulative, torch.tensor([alpha - 1e-12], dtype=torch.float64)))
    return float(values[order][min(index, len(values) - 1)])


# ---------------------------------------------------------------------- state & engine
@dataclass(frozen=True)
class PartialPopulation:
    """The stage in progress: what its batches have accepted so far (immutable).

    Attributes
    ----------
    epsilon : float
        The stage's tolerance.
    covariance : Tensor ``[D, D]`` (float64)
        The perturbation kernel's covariance, fixed for the stage.
    u : Tensor ``[k, D]``
        Accepted proposals so far (``k < N``).
    log_prior : Tensor ``[k]``
        Their log prior densities.
    distances : Tensor ``[k]`` (float64)
        Their distances.
    proposals : int
        Proposals evaluated in this stage, accepted or not.
    batches : int
        Batches (black-box calls) of this stage.
    rejected_streak : int
        Consecutive batches, up to the last one, without an acceptance.
    """

    epsilon: float
    covariance: torch.Tensor
    u: torch.Tensor
    log_prior: torch.Tensor
    distances: torch.Tensor
    proposals: int
    batches: int
    rejected_streak: int

    @property
    def count(self) -> int:
        """Accepted proposals so far."""
        return int(self.u.shape[0])


@dataclass(frozen=True)
class ABCSMCState:
    """The last complete ABC-SMC population and the stage in progress (immutable).

    Attributes
    ----------
    u : Tensor ``[N, D]``
        Particles in unconstrained coordinates.
    log_prior : Tensor ``[N]``
        Their log prior densities.
    distances : Tensor ``[N]`` (float64)
        Their distances to the observed labels.
    log_weights : Tensor ``[N]`` (float64)
        Normalised log weights.
    epsilon : float
        Tolerance the population satisfies (``inf`` for the prior population 0).
    stage : int
        Population index (0 = prior draws).
    simulations : int
        Particles evaluated so far (prior batch and all proposals, accepted or not,
        those of the stage in progress included).
    stalled : bool
        The last stage found no accepted proposal in ``max_rejected_batches`` batches;
        the population is then the last complete one.
    rng_state : Tensor
        State of the engine's generator.
    partial : PartialPopulation or None
        The next population's accepted proposals so far; ``None`` between stages.
    """

    u: torch.Tensor
    log_prior: torch.Tensor
    distances: torch.Tensor
    log_weights: torch.Tensor
    epsilon: float
    stage: int
    simulations: int
    stalled: bool
    rng_state: torch.Tensor
    partial: PartialPopulation | None = None

    @property
    def num_particles(self) -> int:
        """Population size."""
        return int(self.u.shape[0])

    @property
    def ess(self) -> float:
        """Kish effective sample size of the weights."""
        return ess(self.log_weights)

    @property
    def mean_distance(self) -> float:
        """Weighted mean distance (e.g. the training error rate of the ensemble's members)."""
        return float(torch.softmax(self.log_weights, 0) @ self.distances)


class ABCSMC(Engine[ABCSMCState]):
    """Likelihood-free ABC-SMC on a model's simulated labels (see the module docstring).

    Parameters
    ----------
    observed : Tensor ``[B]``
        Observed labels (for prompt models: the training batch's ``labels``).
    num_particles : int
        Population size ``N``.
    distance : callable
        ``(simulated [P, B], observed [B]) -> [P]``; :func:`error_rate` (default) or
        :func:`one_minus_f1`.
    schedule : {"quantile", "paper"}
        Tolerance schedule.
    alpha : float
        Quantile of the ``"quantile"`` schedule, in ``(0, 1)``.
    step : float or None
        Tolerance decrement of the ``"paper"`` schedule and fallback of ``"quantile"``;
        default ``1 / B``.
    epsilon_min : float
        Final tolerance: the run finishes once a population at ``epsilon_min`` is complete.
    weighting : {"importance", "uniform"}
        Correct ABC-SMC importance weights, or Shen et al.'s uniform weights.
    kernel : {"auto", "full", "diagonal"}
        Covariance type of the Gaussian kernel; ``"auto"`` is full when the previous
        population has more particles than dimensions, else diagonal.
    kernel_scale : float
        Kernel covariance = ``kernel_scale`` x weighted population covariance.
    batch_size : int or None
        Proposals per black-box call; default ``num_particles``.
    initial_batch : int or None
        Size of population 0 (prior draws, one call); default ``num_particles``.
    max_rejected_batches : int
        Stop ``stalled`` after this many consecutive batches without an acceptance.
    max_stages : int or None
        Stop (``max_iterations``) after this many populations beyond the prior one.
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
    >>> engine = ABCSMC(observed, num_particles=200)
    >>> posterior = run(engine, Potential(model), seed=0, progress=False)
    >>> posterior.status, posterior.summary["epsilon"]
    ('finished', 0.0)
    >>> z = posterior.samples["z"]
    >>> bool(((z > 0) & (z <= 1)).all())
    True
    """

    name = "abc-smc"
    progress_keys = ("epsilon", "acceptance_rate", "ess")

    def __init__(
        self,
        observed: torch.Tensor,
        num_particles: int = 100,
        *,
        distance: Distance = error_rate,
        schedule: Schedule = "quantile",
        alpha: float = 0.5,
        step: float | None = None,
        epsilon_min: float = 0.0,
        weighting: Weighting = "importance",
        kernel: KernelKind = "auto",
        kernel_scale: float = 2.0,
        batch_size: int | None = None,
        initial_batch: int | None = None,
        max_rejected_batches: int = 20,
        max_stages: int | None = None,
        site: str = "y_pred",
    ) -> None:
        observed = torch.as_tensor(observed)
        if observed.ndim != 1 or observed.numel() == 0:
            raise ValueError(f"observed must be a non-empty 1-D tensor of labels, got {tuple(observed.shape)}")
        _check_choice("schedule", schedule, ("paper", "quantile"))
        _check_choice("weighting", weighting, ("importance", "uniform"))
        _check_choice("kernel", kernel, ("auto", "full", "diagonal"))
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        step = 1.0 / observed.numel() if step is None else float(step)
        for label, value in (("step", step), ("kernel_scale", kernel_scale)):
            if not value > 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        for label, value in (
            ("num_particles", num_particles),
            ("batch_size", batch_size),
            ("initial_batch", initial_batch),
            ("max_rejected_batches", max_rejected_batches),
            ("max_stages", max_stages),
        ):
            if value is not None and int(value) < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if not math.isfinite(epsilon_min) or epsilon_min < 0:
            raise ValueError(f"epsilon_min must be finite and >= 0, got {epsilon_min}")
        self.observed = observed
        self.num_particles = int(num_particles)
        self.distance = distance
        self.schedule = schedule
        self.alpha = float(alpha)
        self.step_size = step
        self.epsilon_min = float(epsilon_min)
        self.weighting = weighting
        self.kernel = kernel
        self.kernel_scale = float(kernel_scale)
        self.batch_size = int(batch_size or num_particles)
        self.initial_batch = int(initial_batch or num_particles)
        self.max_rejected_batches = int(max_rejected_batches)
        self.max_stages = max_stages
        self.site = site

    # ------------------------------------------------------------------ engine API
    def init(self, potential: Potential, seed: int) -> ABCSMCState:
        """Population 0: ``initial_batch`` prior draws, uniform weights, ``epsilon = inf``."""
        generator = make_generator(seed)
        evaluation = potential.init_population(self.initial_batch, generator)
        size = len(evaluation)
        return ABCSMCState(
            u=evaluation.u,
            log_prior=evaluation.log_prior,
            distances=self.distances(evaluation.outputs),
            log_weights=torch.full((size,), -math.log(size), dtype=torch.float64),
            epsilon=math.inf,
            stage=0,
            simulations=size,
            stalled=False,
            rng_state=generator.get_state(),
        )

    def step(self, potential: Potential, state: ABCSMCState) -> tuple[ABCSMCState, dict[str, Any]]:
        """One batch of proposals (one black-box call) towards the next population.

        The first batch of a stage fixes its tolerance and kernel. The batch that brings
        the accepted count to ``N`` turns them into the next population (info
        ``"complete": True``); the ``max_rejected_batches``-th batch in a row without an
        acceptance stops the run ``stalled`` on the last complete population.

        The info record holds ``stage`` (the population being built), ``epsilon``,
        ``batch`` (its index in the stage, from 1), ``proposals`` (this batch's, so their
        sum over a run is the API calls after population 0), ``accepted`` (this batch's,
        surplus beyond ``N`` included), ``stage_accepted`` (so far, at most ``N``),
        ``acceptance_rate`` (the stage's so far), ``simulations``, ``complete``, ``ess``
        and ``mean_distance`` (of the newest complete population), and ``stalled`` when
        the stage gave up.
        """
        generator = generator_from(state.rng_state)
        partial = state.partial if state.partial is not None else self._open_stage(state)
        partial = self._extend(potential, state, partial, generator)
        simulations = state.simulations + self.batch_size
        info = {
            "stage": state.stage + 1,
            "epsilon": partial.epsilon,
            "batch": partial.batches,
            "accepted": partial.count - (state.partial.count if state.partial is not None else 0),
            "stage_accepted": min(partial.count, self.num_particles),
            "acceptance_rate": partial.count / partial.proposals,
            "proposals": self.batch_size,
            "simulations": simulations,
        }
        if partial.count >= self.num_particles:
            new = self._population(state, partial, simulations, generator)
            return new, {**info, "complete": True, "ess": new.ess, "mean_distance": new.mean_distance}
        info = {**info, "complete": False, "ess": state.ess, "mean_distance": state.mean_distance}
        if partial.rejected_streak >= self.max_rejected_batches:
            stalled = replace(
                state, simulations=simulations, stalled=True, rng_state=generator.get_state(), partial=None
            )
            return stalled, {**info, "stalled": True}
        return replace(state, simulations=simulations, rng_state=generator.get_state(), partial=partial), info

    def _open_stage(self, state: ABCSMCState) -> PartialPopulation:
        """An empty stage after ``state``'s population: its tolerance and kernel."""
        covariance = kernel_covariance(state.u, state.log_weights, self.kernel_scale, self._kernel_kind(state))
        dim = state.u.shape[1]
        return PartialPopulation(
            epsilon=self.next_epsilon(state),
            covariance=covariance,
            u=state.u.new_empty((0, dim)),
            log_prior=state.log_prior.new_empty((0,)),
            distances=torch.empty(0, dtype=torch.float64),
            proposals=0,
            batches=0,
            rejected_streak=0,
        )

    def _extend(
        self,
        potential: Potential,
        state: ABCSMCState,
        partial: PartialPopulation,
        generator: torch.Generator,
    ) -> PartialPopulation:
        """``partial`` plus the accepted proposals of one more batch."""
        u = self._propose(state, torch.linalg.cholesky(partial.covariance), generator)
        with seeded(generator):  # stochastic simulators draw from the engine's generator
            evaluation = potential.evaluate(u)  # one black-box call for the whole batch
        distances = self.distances(evaluation.outputs)
        keep = (distances <= partial.epsilon + EPS_ATOL) & torch.isfinite(evaluation.log_prior)
        return replace(
            partial,
            u=torch.cat([partial.u, u[keep]]),
            log_prior=torch.cat([partial.log_prior, evaluation.log_prior[keep]]),
            distances=torch.cat([partial.distances, distances[keep]]),
            proposals=partial.proposals + int(u.shape[0]),
            batches=partial.batches + 1,
            rejected_streak=0 if bool(keep.any()) else partial.rejected_streak + 1,
        )

    def stop_reason(self, state: ABCSMCState) -> str | None:
        """``stalled``, ``finished`` (population at ``epsilon_min``) or ``max_iterations``."""
        if state.stalled:
            return Status.STALLED
        if state.epsilon <= self.epsilon_min + EPS_ATOL:
            return Status.FINISHED
        if self.max_stages is not None and state.stage >= self.max_stages:
            return Status.MAX_ITERATIONS
        return None

    def posterior(self, potential: Potential, state: ABCSMCState) -> Posterior:
        """The weighted population as constrained samples; summary holds its tolerance."""
        samples = {k: v.detach() for k, v in potential.unpack(state.u).items()}
        return Posterior(
            samples,
            state.log_weights,
            engine=self.name,
            summary={
                "epsilon": state.epsilon,
                "stage": state.stage,
                "mean_distance": state.mean_distance,
                "simulations": state.simulations,
            },
        )

    # ------------------------------------------------------------------ pieces
    def distances(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Distances ``[P]`` (float64) of the simulated labels in ``outputs`` to ``observed``."""
        if self.site not in outputs:
            raise KeyError(
                f"ABC-SMC needs the model's deterministic site {self.site!r} (simulated labels); "
                f"the model records {sorted(outputs)}"
            )
        simulated = outputs[self.site]
        distances = torch.as_tensor(self.distance(simulated, self.observed)).double()
        if distances.shape != simulated.shape[:1]:
            raise ValueError(f"distance returned shape {tuple(distances.shape)}, expected ({len(simulated)},)")
        return torch.where(torch.isnan(distances), math.inf, distances)

    def next_epsilon(self, state: ABCSMCState) -> float:
        """Tolerance of the population after ``state`` (see the module docstring)."""
        previous = state.epsilon
        if self.schedule == "paper":
            epsilon = float(state.distances.min()) if state.stage == 0 else previous - self.step_size
        else:
            epsilon = weighted_quantile(state.distances, state.log_weights, self.alpha)
            if epsilon >= previous - EPS_ATOL:
                below = state.distances[state.distances < previous - EPS_ATOL]
                epsilon = float(below.max()) if below.numel() else previous - self.step_size
        epsilon = round(epsilon, 12) if math.isfinite(epsilon) else epsilon  # 0.3 - 0.1 -> 0.2
        return max(epsilon, self.epsilon_min)

    def _kernel_kind(self, state: ABCSMCState) -> Literal["full", "diagonal"]:
        if self.kernel != "auto":
            return self.kernel
        return "full" if state.num_particles > state.u.shape[1] else "diagonal"

    def _propose(
        self, state: ABCSMCState, scale_tril: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        # i.i.d. ancestors, so that each proposal is a draw from the mixture sum_j w_j K(. | u_j)
        ancestors = multinomial(state.log_weights, self.batch_size, generator)
        noise = torch.randn(self.batch_size, scale_tril.shape[0], generator=generator, dtype=torch.float64)
        return (state.u[ancestors].double() + noise @ scale_tril.T).to(state.u.dtype)

    def _population(
        self, state: ABCSMCState, partial: PartialPopulation, simulations: int, generator: torch.Generator
    ) -> ABCSMCState:
        """The first ``N`` accepted proposals of a finished stage, weighted."""
        n = self.num_particles
        u, log_prior = partial.u[:n], partial.log_prior[:n]
        if self.weighting == "importance":
            log_weights = importance_log_weights(u, log_prior, state.u, state.log_weights, partial.covariance)
        else:
            log_weights = torch.full((n,), -math.log(n), dtype=torch.float64)
        return ABCSMCState(
            u=u,
            log_prior=log_prior,
            distances=partial.distances[:n],
            log_weights=log_weights,
            epsilon=partial.epsilon,
            stage=state.stage + 1,
            simulations=simulations,
            stalled=False,
            rng_state=generator.get_state(),
        )


def _check_choice(label: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{label} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------- population selection
def select_population(
    states: Iterable[ABCSMCState], score_fn: Callable[[ABCSMCState], float]
) -> tuple[int, ABCSMCState]:
    """The population with the highest ``score_fn`` (ties go to the later one, as in Shen et al.).

    Parameters
    ----------
    states : iterable of ABCSMCState
        Completed populations, e.g. a :class:`PopulationHistory`.
    score_fn : callable
        ``state -> float``, higher is better (e.g. the dev accuracy of the weighted
        ensemble ``engine.posterior(potential, state)``).

    Returns
    -------
    (index, state)

    Examples
    --------
    >>> def pop(stage):
    ...     return ABCSMCState(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, dtype=torch.float64),
    ...                        torch.zeros(1, dtype=torch.float64), 1.0 / stage, stage, 1, False,
    ...                        torch.Generator().get_state())
    >>> index, best = select_population([pop(1), pop(2), pop(3)], lambda s: -abs(s.stage - 2))
    >>> index, best.stage
    (1, 2)
    """
    best: tuple[int, ABCSMCState] | None = None
    best_score = -math.inf
    for index, state in enumerate(states):
        score = float(score_fn(state))
        if best is None or score >= best_score:
            best, best_score = (index, state), score
    if best is None:
        raise ValueError("select_population() needs at least one population")
    return best


class PopulationHistory:
    """A :func:`~bayesprompt.inference.base.run` callback that keeps each completed population.

    States are immutable, so keeping them costs only their memory (``N x D`` each).
    Of :class:`ABCSMC`'s steps (one batch each), only the one that completes a population
    stores it; the batches before it, and a stalled step, repeat the last population
    (``info["complete"]`` is false). Population 0 (the prior draws) is not passed to
    callbacks; add it with :meth:`record` if wanted.

    Parameters
    ----------
    maxlen : int or None
        Keep only the latest ``maxlen`` populations.

    Examples
    --------
    >>> history = PopulationHistory()
    >>> posterior = run(engine, potential, callback=history)        # doctest: +SKIP
    >>> best = history.best(lambda s: dev_accuracy(engine.posterior(potential, s)))  # doctest: +SKIP
    """

    def __init__(self, maxlen: int | None = None) -> None:
        self.states: deque[ABCSMCState] = deque(maxlen=maxlen)

    def __call__(self, state: ABCSMCState, info: dict[str, Any] | None = None) -> None:
        if info is None or info.get("complete", True):  # an ABCSMC batch that left its stage open: no
            self.record(state)

    def record(self, state: ABCSMCState) -> None:
        """Store ``state`` unless it is a repeat of the last stored population."""
        if self.states and self.states[-1].stage == state.stage:
            return
        self.states.append(state)

    def best(self, score_fn: Callable[[ABCSMCState], float]) -> ABCSMCState:
        """The stored population with the highest ``score_fn`` (see :func:`select_population`)."""
        return select_population(self.states, score_fn)[1]

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ABCSMCState]:
        return iter(self.states)

    def __getitem__(self, index: int) -> ABCSMCState:
        return self.states[index]
