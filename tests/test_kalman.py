"""Tests of the ensemble Kalman engines (EKI, EKS) and their Gaussian view of a model.

Tolerances are derived before looking at any output:

* **Tikhonov / least-squares EKI** (linear ``G``, ``J > D``). The stochastic EKI mean
  after algorithmic time ``T`` is the Kalman posterior mean of the initial ensemble's
  Gaussian under the (augmented) likelihood to the power ``T``: it differs from the
  minimiser ``u*`` by ``O(|m0_hat - u*| / T)`` plus the data perturbations of the last
  steps, ``O(sd_post / sqrt(T J))``. Deterministic EKI collapses its covariance like
  ``(2 t H)^-1`` instead of ``(t H)^-1`` (Schillings & Stuart 2017), so its mean error
  decays like ``|m0_hat - u*| / sqrt(2 T)``. With ``T = 1e8`` and ``|m0_hat - u*| < 3``
  all are below ``3e-4``; we check at ``ATOL_EKI = 1e-3``. That is 50 times below the
  Monte Carlo error ``sd_post / sqrt(J) ~ 0.05`` a J-member sampler would have, so the
  test sees convergence to the exact minimiser, not a Monte Carlo estimate.
* **EKS** (linear-Gaussian target). With the ``(D + 1)/J`` correction the posterior is
  invariant for finite ``J > D + 1`` (Nüsken & Reich 2019; Garbuno-Inigo, Nüsken & Reich
  2020). Near equilibrium ``C ~ Sigma_post``, so every member is an OU process with
  unit rate; the time average of a unit-rate OU over a window ``L`` has variance
  ``<= 2 sigma^2 / L``, i.e. ``L / 2`` effective draws per member, and the ensemble-mean
  fluctuation (variance ``Sigma / J``, rate 1) gives the same ``1/(J L/2)`` scaling. We
  pool the ensembles over ``t in (T_BURN, T_END]`` and take ``ESS = J L / (2 KAPPA)``
  with ``KAPPA = 2`` for the interaction and the discrete sampling. Checks are at ``Z = 4``
  standard errors: ``se(mean_i)^2 = Sigma_ii / ESS`` and
  ``se(S_ij)^2 = (Sigma_ii Sigma_jj + Sigma_ij^2) / ESS`` (Gaussian). The mean is
  unbiased (the scheme is affine, its fixed point is the posterior mean); the covariance
  has the Euler-Maruyama bias of the semi-implicit step, ``|bias| <= dt/2 Sigma`` to first
  order (stationary variance ``1 / (1 + dt (b - a) / 2)`` with data / prior precision
  fractions ``a + b = 1``), which we add as ``dt_max * sqrt(Sigma_ii Sigma_jj)``
  (factor 2 for higher orders). The burn-in ``T_BURN = 4`` leaves ``e^-4 < 2%`` of an
  initial offset of at most ``3`` posterior sd (rate >= 1 while ``C >= Sigma_post``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.base import InitialBudgetError, run
from bayesprompt.inference.kalman import (
    EKI,
    EKS,
    EKIState,
    EnsembleFailure,
    GaussianPrior,
    ObservationMap,
    ensemble_trace,
    gaussian_prior,
    kalman_increments,
)
from bayesprompt.inference.kalman.ensemble import anomalies, data_misfit_step, refill
from bayesprompt.inference.kalman.eks import eks_move
from bayesprompt.inference.posterior import Status
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import PromptModel
from bayesprompt.testing import FakeBlackBox, LinearGaussian

ATOL_EKI = 1e-3  # see the module docstring
Z = 4.0  # standard errors checked
KAPPA = 2.0  # ESS deflation for EKS (interaction, discrete sampling)
T_BURN, T_END = 4.0, 12.0  # EKS pooling window


@pytest.fixture(autouse=True)
def _one_thread():
    """The ensembles are tiny: one thread avoids oversubscribing the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def metered(problem: LinearGaussian) -> Potential:
    return Potential(problem.model, meter=problem.meter)


@pytest.mark.parametrize("engine", [EKI(num_ensemble=8), EKS(num_ensemble=8, num_iterations=3)], ids=["eki", "eks"])
@pytest.mark.parametrize("meter", [True, False], ids=["metered", "unmetered"])
def test_a_seed_gives_the_same_run_on_a_fresh_and_on_a_used_potential(engine, meter):
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=3)
    fresh, used = (Potential(problem.model, meter=problem.meter if meter else None) for _ in range(2))
    used.discover_sites()  # as after an earlier run: the sites are known
    fresh, again = (run(engine, p, seed=4, progress=False) for p in (fresh, used))
    assert torch.equal(again.samples["z"], fresh.samples["z"]) and again.diagnostics == fresh.diagnostics


# ---------------------------------------------------------------------------- linear algebra
def test_kalman_increments_match_the_observation_space_formula():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(7, 3, generator=g, dtype=torch.float64)
    forward = torch.randn(7, 11, generator=g, dtype=torch.float64)
    residuals = torch.randn(7, 11, generator=g, dtype=torch.float64)
    au, ag = anomalies(u, 1), anomalies(forward, 1)
    for ridge in (0.3, 1e-3):  # (a smaller ridge makes the naive M x M inverse itself inaccurate)
        # the textbook gain C^{uG} (C^{GG} + ridge I_M)^-1, with an M x M matrix
        gain = au.T @ ag @ torch.linalg.inv(ag.T @ ag + ridge * torch.eye(11, dtype=torch.float64))
        increments = kalman_increments(au, ag, residuals, ridge)
        torch.testing.assert_close(increments, residuals @ gain.T, rtol=1e-6, atol=1e-8)
    # ridge 0: the pseudo-inverse (C^{GG} is singular: rank J - 1 < M)
    gain = au.T @ ag @ torch.linalg.pinv(ag.T @ ag)
    torch.testing.assert_close(kalman_increments(au, ag, residuals, 0.0), residuals @ gain.T, rtol=1e-6, atol=1e-8)


def test_data_misfit_controller():
    phi = torch.tensor([3.0, 5.0, 10.0], dtype=torch.float64)
    expected = max(6 / (2 * 6.0), math.sqrt(6 / (2 * float(phi.var()))))
    assert data_misfit_step(phi, 6, 10.0, 1e12) == pytest.approx(expected)
    assert data_misfit_step(phi, 6, 0.1, 1e12) == 0.1  # capped by T - t
    assert data_misfit_step(torch.ones(3), 6, math.inf, 1e6) == 1e6  # Var = 0: capped by max_step


def test_refill_copies_survivors_with_jitter_from_their_spread():
    survivors = torch.tensor([[0.0, 0.0], [2.0, 4.0]], dtype=torch.float64)
    exact = refill(survivors, 5, torch.Generator().manual_seed(0), 0.0)
    assert all(any(torch.equal(row, s) for s in survivors) for row in exact)
    jittered = refill(survivors, 5, torch.Generator().manual_seed(0), 0.1)
    # the jitter lies along the survivors' anomalies (here the direction (1, 2)), scaled by 0.1
    offset = jittered - exact
    torch.testing.assert_close(offset[:, 1], 2 * offset[:, 0])
    assert float(offset.abs().max()) < 0.1 * 2 * 5  # |xi| < 5 sd with overwhelming probability


def test_eks_move_takes_an_implicit_prior_step():
    # no data, no noise, prior N(1, I): the implicit step contracts towards the prior mean
    prior = GaussianPrior.from_moments(torch.ones(2), torch.eye(2))
    u = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    zeros = torch.zeros(4, 4, dtype=torch.float64)
    moved = eks_move(u, zeros, prior, 0.5, zeros, correction=False)
    # C = I / 2 (1/J covariance), so (I + dt C) u' = u + dt C m0: u' = (u + 0.25) / 1.25
    torch.testing.assert_close(moved, (u + 0.25) / 1.25)
    # the (D + 1)/J correction pushes members away from the mean: + dt * 3/4 * (u - mean)
    corrected = eks_move(u, zeros, prior, 0.5, zeros, correction=True)
    torch.testing.assert_close(corrected, (u + 0.25 + 0.375 * (u - 1.0)) / 1.25)


# ---------------------------------------------------------------------------- Gaussian view
def test_gaussian_prior_reads_normal_and_multivariate_normal_sites():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def model():
        pyro.sample("a", dist.Normal(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), 3.0).to_event(1))
        pyro.sample("b", dist.MultivariateNormal(torch.tensor([0.5, 0.25], dtype=torch.float64), cov))
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    potential = Potential(model)
    potential.discover_sites()
    prior = gaussian_prior(ensemble_trace(potential, torch.zeros(4, 5, dtype=torch.float64)), potential)
    torch.testing.assert_close(prior.mean, torch.tensor([1.0, -1.0, 0.0, 0.5, 0.25], dtype=torch.float64))
    expected = torch.block_diag(9.0 * torch.eye(3, dtype=torch.float64), cov)
    torch.testing.assert_close(prior.cov, expected)


def _model_with(site: str, prior: dist.Distribution):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample(site, prior)
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    return model


@pytest.mark.parametrize("engine", [EKI(num_ensemble=4), EKS(num_ensemble=4)], ids=["eki", "eks"])
@pytest.mark.parametrize(
    "site, prior", [("scale", dist.HalfNormal(1.0)), ("w", dist.Laplace(0.0, 1.0)), ("v", dist.StudentT(3.0))]
)
def test_non_gaussian_prior_is_rejected_naming_the_site(engine, site, prior):
    with pytest.raises(ValueError, match=rf"Gaussian prior.*'{site}'"):
        engine.init(Potential(_model_with(site, prior)), seed=0)


def test_prior_depending_on_another_latent_is_rejected():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(ValueError, match=r"'z'.*differs across ensemble members"):
        EKI(num_ensemble=4).init(Potential(model), seed=0)


def test_unsupported_observed_site_is_rejected():
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("f", -(z**2))

    with pytest.raises(ValueError, match=r"observed site 'f'"):
        run(EKI(num_ensemble=4), Potential(model), seed=0, progress=False)


def test_normal_observation_map_is_the_linear_forward_map():
    problem = LinearGaussian.random(dim=3, num_obs=7, seed=0, noise_scale=0.5)
    potential = metered(problem)
    potential.discover_sites()
    u = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = problem.meter.snapshot()
    obs = ObservationMap()(potential, u)
    assert problem.meter.queries == before.queries + 1 and problem.meter.calls == before.calls + 5
    torch.testing.assert_close(obs.forward, u @ problem.design.T)
    torch.testing.assert_close(obs.data, problem.observations)
    torch.testing.assert_close(obs.noise_var, torch.full((7,), 0.25, dtype=torch.float64))
    assert obs.blocks == (("y", 7),)


# ---------------------------------------------------------------------------- prompt model
TASK3 = Task("toy3", ("a", "b", "c"), ("A.", "B.", "C."), "{text} {mask}", ("a", "b", "c"))
# imbalanced labels: a prompt (a shared bias of the fake scores) can fit them
EXAMPLES = [Example(f"text {i}", 2 if i % 8 else 0) for i in range(16)]


def prompt_problem(k: int = 4, n_tokens: int = 2) -> tuple[Potential, PromptModel, Meter]:
    meter = Meter()
    box = FakeBlackBox(TASK3, embed_dim=4, seed=0, meter=meter)
    # a unit-scale projection so that z ~ N(0, I) moves the scores by O(1)
    matrix = torch.randn(k, n_tokens * 4, generator=torch.Generator().manual_seed(1))
    model = PromptModel(box, RandomProjection(matrix, n_tokens, 4, seed=1, std=1.0))
    return Potential(model, (box.encode(EXAMPLES),), meter=meter), model, meter


@pytest.mark.parametrize("mode", ["probs", "clr"])
def test_categorical_observation_map_on_a_prompt_model(mode):
    potential, model, meter = prompt_problem()
    potential.discover_sites()
    assert meter.calls == 0  # discovery through the meter's probe is free
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    obs = ObservationMap(categorical=mode)(potential, z)
    assert (meter.queries, meter.calls) == (1, 6)  # one batched query for the ensemble
    num, classes = len(EXAMPLES), TASK3.num_classes
    assert obs.forward.shape == (6, num * classes) and obs.data.shape == (num * classes,)
    probs = torch.softmax(model.logits(z.unsqueeze(1), potential.model_args[0]), -1).double()
    labels = torch.nn.functional.one_hot(torch.tensor([e.label for e in EXAMPLES]), classes).double()
    rows = obs.forward.reshape(6, num, classes)
    if mode == "probs":
        assert bool(((rows >= 0) & (rows <= 1)).all())
        torch.testing.assert_close(rows.sum(-1), torch.ones(6, num, dtype=torch.float64))
        torch.testing.assert_close(rows, probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(obs.data.reshape(num, classes), labels)
        torch.testing.assert_close(obs.noise_var, torch.full((num * classes,), 1 / 3, dtype=torch.float64))
    else:
        torch.testing.assert_close(rows, probs.log() - probs.log().mean(-1, keepdim=True), rtol=1e-5, atol=1e-5)
        smoothed = (0.9 * labels + 0.1 / 3).log()
        torch.testing.assert_close(obs.data.reshape(num, classes), smoothed - smoothed.mean(-1, keepdim=True))
        torch.testing.assert_close(obs.noise_var, torch.full((num * classes,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize("tikhonov", [False, True])
def test_eki_improves_the_training_likelihood_of_a_prompt(tikhonov):
    potential, _, meter = prompt_problem()
    engine = EKI(num_ensemble=20, tikhonov=tikhonov)
    initial = engine.init(potential, seed=0).ensemble.float()
    post = run(engine, potential, seed=0, meter=meter, progress=False)
    assert post.status == Status.FINISHED
    final = potential.pack(post.samples)
    assert final.shape == (20, 4)
    before = potential.evaluate(initial).log_likelihood.mean()
    after = potential.evaluate(final).log_likelihood.mean()
    assert after > before


# ---------------------------------------------------------------------------- EKI on a linear problem
@pytest.mark.parametrize("perturb", [True, False])
def test_tikhonov_eki_converges_to_the_posterior_mean(perturb):
    problem = LinearGaussian.random(dim=3, num_obs=12, seed=1)
    engine = EKI(num_ensemble=30, tikhonov=True, perturb=perturb)
    post = run(engine, metered(problem), seed=0, progress=False)
    assert post.status == Status.FINISHED and post.summary["time"] == engine.final_time == 1e8
    # the regularised least-squares solution of a linear problem is the posterior mean
    torch.testing.assert_close(post.mean("z"), problem.posterior_mean(), atol=ATOL_EKI, rtol=0)


@pytest.mark.parametrize("perturb", [True, False])
def test_eki_without_regularisation_converges_to_least_squares(perturb):
    problem = LinearGaussian.random(dim=3, num_obs=12, seed=1)
    least_squares = torch.linalg.lstsq(problem.design, problem.observations.unsqueeze(-1)).solution.squeeze(-1)
    post = run(EKI(num_ensemble=30, final_time=1e8, perturb=perturb), metered(problem), seed=0, progress=False)
    assert post.status == Status.FINISHED
    torch.testing.assert_close(post.mean("z"), least_squares, atol=ATOL_EKI, rtol=0)


def test_eki_tempering_reaches_time_one_exactly():
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=2)
    post = run(EKI(num_ensemble=40), metered(problem), seed=0, meter=problem.meter, progress=False)
    steps = [d["dt"] for d in post.diagnostics]
    assert post.status == Status.FINISHED and post.summary["time"] == 1.0
    assert sum(steps) == pytest.approx(1.0, abs=1e-12) and all(0 < h <= 1 for h in steps)
    assert [d["iteration"] for d in post.diagnostics] == list(range(1, len(steps) + 1))
    assert {"t", "dt", "misfit", "spread", "failed", "api_calls"} <= set(post.diagnostics[-1])


@pytest.mark.parametrize("max_step", [None, 0.2])
def test_tempered_eki_recovers_the_linear_gaussian_posterior(max_step):
    """For a linear-Gaussian model, EKI tempered to t = 1 samples the posterior (J -> inf),
    in one step or in several (ES-MDA): the ensemble mean has Monte Carlo error of order
    sd / sqrt(J); the bound below allows twice the variance of J independent draws (the
    perturbed observations and the estimated gain add error of the same order)."""
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=2)
    num = 4000
    post = run(EKI(num_ensemble=num, max_step=max_step), metered(problem), seed=0, meter=problem.meter, progress=False)
    steps = [d["dt"] for d in post.diagnostics]
    if max_step is not None:
        assert len(steps) >= 5 and max(steps) <= max_step
    sigma = problem.posterior_cov()
    sd = sigma.diagonal().sqrt()
    mean_tol = Z * sd * math.sqrt(2 / num)
    assert bool(((post.mean("z") - problem.posterior_mean()).abs() <= mean_tol).all())
    cov_tol = Z * ((torch.outer(sd, sd) ** 2 + sigma**2) * 2 / num).sqrt()
    assert bool(((torch.cov(post.samples["z"].T.double()) - sigma).abs() <= cov_tol).all())


# ---------------------------------------------------------------------------- EKS
def test_eks_recovers_the_linear_gaussian_posterior():
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=1)
    num = 300
    pooled, steps = [], []

    def collect(state, info):
        if state.time > T_BURN:
            pooled.append(state.ensemble)
            steps.append(info["dt"])

    engine = EKS(num_ensemble=num, num_iterations=5000, final_time=T_END, step_scale=0.05)
    post = run(engine, metered(problem), seed=0, progress=False, callback=collect)
    assert post.status == Status.FINISHED and post.samples["z"].shape == (num, 2)
    samples = torch.cat(pooled)
    ess = num * (T_END - T_BURN) / (2 * KAPPA)
    sigma = problem.posterior_cov()
    sd = sigma.diagonal().sqrt()
    mean_tol = Z * sd / math.sqrt(ess)
    assert bool(((samples.mean(0) - problem.posterior_mean()).abs() <= mean_tol).all())
    cov_se = ((torch.outer(sd, sd) ** 2 + sigma**2) / ess).sqrt()
    cov_tol = Z * cov_se + max(steps) * torch.outer(sd, sd)
    assert bool(((torch.cov(samples.T) - sigma).abs() <= cov_tol).all())


def test_eks_with_fewer_members_than_dimensions_samples_the_posterior_on_its_span():
    """J <= D: the ensemble stays in the affine hull of its initial members (dimension
    J - 1), and with the correction sized to that hull EKS samples the posterior restricted
    to it (a Gaussian with precision V^T P V in hull coordinates). Whitened hull coordinates
    must be N(0, I): with ESS = J (T - T_burn) / (2 KAPPA) = 237 per coordinate, 4 standard
    errors are 0.26 for a mean and, averaged over the 4 coordinates, 0.18 for the variance
    (plus an O(dt) discretisation bias, hence 0.2). The D-dimensional correction
    (D + 1) / J over-disperses the same run by about 50 %."""
    dim, num, t_end, t_burn = 6, 5, 200.0, 10.0
    problem = LinearGaussian.random(dim=dim, num_obs=12, seed=5)
    potential = metered(problem)
    engine = EKS(num_ensemble=num, num_iterations=10**6, final_time=t_end, step_scale=0.1)
    state = engine.init(potential, 0)
    start = state.ensemble.double()
    origin, basis = start[0], (start[1:] - start[0]).T  # the hull: origin + basis @ w
    precision = basis.T @ torch.linalg.inv(problem.posterior_cov()) @ basis
    w_star = torch.linalg.solve(precision, basis.T @ torch.linalg.inv(problem.posterior_cov()) @ (problem.posterior_mean() - origin))
    pooled = []
    run(engine, potential, state=state, progress=False,
        callback=lambda s, info: pooled.append(s.ensemble.double()) if s.time > t_burn else None)
    samples = torch.cat(pooled)
    w = torch.linalg.lstsq(basis, (samples - origin).T).solution.T
    assert float((samples - origin - w @ basis.T).abs().max()) < 1e-8  # never leaves the hull
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    white = torch.linalg.solve_triangular(chol, (w - w_star).T, upper=False).T
    ess = num * (t_end - t_burn) / (2 * KAPPA)
    assert bool((white.mean(0).abs() <= Z / math.sqrt(ess)).all()), white.mean(0)
    assert abs(float(white.var(0).mean()) - 1.0) <= 0.2, white.var(0)


def test_eks_stops_after_num_iterations_without_final_time():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=3)
    post = run(EKS(num_ensemble=10, num_iterations=7), metered(problem), seed=0, progress=False)
    assert post.status == Status.FINISHED and len(post.diagnostics) == 7
    capped = run(EKS(num_ensemble=10, num_iterations=3, final_time=100.0), metered(problem), seed=0, progress=False)
    assert capped.status == Status.MAX_ITERATIONS


# ---------------------------------------------------------------------------- failures, budget, scale
def nan_region_model(meter: Meter, everywhere: bool = False):
    """A metered linear model whose forward output is NaN where ``z_0 > 1`` (or everywhere)."""
    g = torch.Generator().manual_seed(4)
    design = torch.randn(8, 2, generator=g, dtype=torch.float64)
    y = design @ torch.tensor([-0.5, 0.3], dtype=torch.float64) + 0.3 * torch.randn(8, generator=g, dtype=torch.float64)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        flat = z.reshape(-1, 2)
        meter.charge(calls=flat.shape[0], sequences=flat.shape[0], tokens=flat.shape[0])
        prediction = flat @ design.T
        bad = torch.ones_like(flat[:, :1], dtype=torch.bool) if everywhere else flat[:, :1] > 1.0
        prediction = torch.where(bad, torch.full_like(prediction, math.nan), prediction)
        with pyro.plate("data", 8, dim=-1):
            pyro.sample("y", dist.Normal(prediction.reshape(*z.shape[:-1], 8).squeeze(-2), 0.3), obs=y)

    return model


@pytest.mark.parametrize(
    "engine", [EKI(num_ensemble=40), EKS(num_ensemble=40, num_iterations=40)], ids=["eki", "eks"]
)
def test_failed_members_are_dropped_and_refilled(engine):
    meter = Meter()
    potential = Potential(nan_region_model(meter), meter=meter)
    post = run(engine, potential, seed=0, meter=meter, progress=False)
    failures = [d["failed"] for d in post.diagnostics]
    assert post.status == Status.FINISHED
    assert failures[0] > 0  # about 16% of the prior draws have z_0 > 1
    assert post.summary["failed_members"] == sum(failures)
    assert bool(torch.isfinite(post.samples["z"]).all()) and post.samples["z"].shape == (40, 2)


def test_too_few_survivors_raise_a_clear_error():
    meter = Meter()
    potential = Potential(nan_region_model(meter, everywhere=True), meter=meter)
    with pytest.raises(EnsembleFailure, match=r"only 0 of 10 ensemble members"):
        run(EKI(num_ensemble=10), potential, seed=0, meter=meter, progress=False)


@pytest.mark.parametrize(
    "engine", [EKI(num_ensemble=10, tikhonov=True), EKS(num_ensemble=10, num_iterations=100)], ids=["eki", "eks"]
)
def test_budget_stop_keeps_the_last_complete_step(engine):
    meter = Meter(budget=5 * 10 + 7)  # 5 steps of 10 calls, 3 short of a 6th (init is free)
    problem = LinearGaussian.random(dim=2, num_obs=6, seed=5, meter=meter)
    post = run(engine, metered(problem), seed=0, meter=meter, progress=False)
    assert post.status == Status.BUDGET_EXHAUSTED
    assert meter.calls == 5 * 10 <= meter.budget and post.api_calls["calls"] == meter.calls
    assert len(post.diagnostics) == 5 and post.summary["iterations"] == 5
    assert [d["api_calls"] for d in post.diagnostics] == [10 * i for i in range(1, 6)]
    assert post.samples["z"].shape == (10, 2)


def test_initial_budget_error_without_a_meter_in_the_potential():
    # without the meter, init draws its 2 prior samples through the model (2 calls)
    meter = Meter(budget=1)
    problem = LinearGaussian.random(dim=2, num_obs=6, seed=5, meter=meter)
    with pytest.raises(InitialBudgetError):
        run(EKI(num_ensemble=10), Potential(problem.model), seed=0, meter=meter, progress=False)


def test_many_observations_are_handled_in_ensemble_space():
    # M = 20000: an M x M matrix would take 3.2 GB; the ensemble-space update needs J x M
    problem = LinearGaussian.random(dim=3, num_obs=20_000, seed=6)
    post = run(EKI(num_ensemble=16, max_iterations=5), metered(problem), seed=0, progress=False)
    assert post.samples["z"].shape == (16, 3) and bool(torch.isfinite(post.samples["z"]).all())
    post = run(EKS(num_ensemble=16, num_iterations=3), metered(problem), seed=0, progress=False)
    assert bool(torch.isfinite(post.samples["z"]).all())


# ---------------------------------------------------------------------------- API
@pytest.mark.parametrize(
    "make", [lambda: EKI(num_ensemble=12, tikhonov=True), lambda: EKS(num_ensemble=12, num_iterations=8)]
)
def test_same_seed_same_result_and_resume(make):
    problem = LinearGaussian.random(dim=2, num_obs=6, seed=7)
    states = []
    a = run(make(), metered(problem), seed=3, progress=False, callback=lambda s, i: states.append(s))
    b = run(make(), metered(problem), seed=3, progress=False)
    c = run(make(), metered(problem), seed=4, progress=False)
    assert torch.equal(a.samples["z"], b.samples["z"]) and not torch.equal(a.samples["z"], c.samples["z"])
    resumed = run(make(), metered(problem), progress=False, state=states[2])
    assert torch.equal(resumed.samples["z"], a.samples["z"])


def test_posterior_has_every_latent_site():
    design = torch.randn(6, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
        with pyro.plate("data", 6, dim=-1):
            pyro.sample("y", dist.Normal((z @ design.T).squeeze(-2) + b, 1.0), obs=torch.ones(6, dtype=torch.float64))

    engine = EKI(num_ensemble=10)
    post = run(engine, Potential(model), seed=0, progress=False)
    assert post.samples["z"].shape == (10, 3) and post.samples["b"].shape == (10,)
    assert post.engine == "eki" and set(engine.progress_keys) <= set(post.diagnostics[0])
    assert {"time", "iterations", "misfit", "spread", "failed_members"} <= set(post.summary)
    state = EKI(num_ensemble=10).init(Potential(model), seed=0)
    assert isinstance(state, EKIState) and state.ensemble.shape == (10, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EKI(num_ensemble=1), "num_ensemble"),
        (lambda: EKI(final_time=0.0), "final_time"),
        (lambda: EKI(step_size=-1.0), "step_size"),
        (lambda: EKI(max_step=0.0), "max_step"),
        (lambda: EKI(step_size=0.1, max_step=0.5), "not both"),
        (lambda: EKS(step_scale=0.0), "step_scale"),
        (lambda: EKS(num_iterations=0), "num_iterations"),
        (lambda: ObservationMap(categorical="logits"), "categorical"),
        (lambda: ObservationMap(categorical_noise=0.0), "categorical_noise"),
    ],
)
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
