"""Tests of the SMC subpackage: weights, resampling, tempering and TemperedSMC.

Statistical tolerances are derived from Monte Carlo error before looking at any output:

* Resampling: offspring counts averaged over ``R`` repetitions have standard error
  ``sd_i / sqrt(R)`` (``sd_i`` the empirical sd of particle ``i``'s count); we check at
  5 se (about 40 checks per scheme set, each failing with probability ~6e-7).
* SMC estimates: with ``N`` equally weighted particles the standard error of a posterior
  mean is ``sqrt(Var / N_eff)``. Resampling duplicates particles and a finite number of
  random-walk moves leaves them correlated, so we conservatively take
  ``N_eff = N / KAPPA`` with ``KAPPA = 4`` and check at ``Z = 4`` standard errors. The
  same inflation is applied to covariances (``se(S_ij)^2 = (S_ii S_jj + S_ij^2) / N_eff``
  for Gaussian targets, ``(mu_4 - sigma^4) / N_eff`` for a variance in general).
* Log evidence: for a tempered SMC with ideal moves the relative variance of each
  stage's incremental estimate is ``(N / ESS_t - 1) / N``, so
  ``Var(log Z_hat) ≈ sum_t (1 / ESS_t - 1 / N)`` (Chopin & Papaspiliopoulos 2020, ch. 17);
  we inflate by ``KAPPA`` and check at ``Z`` standard deviations, using the stage ESS
  values the run reports.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprompt.inference.base import InitialBudgetError, run
from bayesprompt.inference.posterior import Status
from bayesprompt.inference.smc import (
    SCHEMES,
    TemperedSMC,
    ess,
    incremental_log_weights,
    multinomial,
    next_beta,
    normalize,
    resample,
    residual,
    stratified,
    systematic,
)
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.runs import StateCodec
from bayesprompt.testing import LinearGaussian

KAPPA = 4.0  # conservative N / N_eff inflation for SMC particle correlation
Z = 4.0  # number of standard errors checked
INF = math.inf


def smc_se(variance: torch.Tensor | float, num_particles: int) -> torch.Tensor:
    """Conservative standard error of an SMC mean (see the module docstring)."""
    return torch.sqrt(torch.as_tensor(variance, dtype=torch.float64) * KAPPA / num_particles)


# ---------------------------------------------------------------------------- ess
def test_ess_uniform_and_degenerate():
    assert ess(torch.zeros(10)) == pytest.approx(10.0, rel=1e-12)
    assert ess(torch.tensor([0.0, -INF, -INF])) == pytest.approx(1.0, rel=1e-12)
    assert ess(torch.tensor([0.0, -INF, 0.0, -INF])) == pytest.approx(2.0, rel=1e-12)
    # two weights 1 : e^-1 -> (1 + a)^2 / (1 + a^2)
    a = math.exp(-1.0)
    assert ess(torch.tensor([0.0, -1.0])) == pytest.approx((1 + a) ** 2 / (1 + a**2), rel=1e-12)


def test_ess_is_stable_and_shift_invariant():
    log_w = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = ess(log_w)
    assert ess(log_w + 1e5) == pytest.approx(reference, rel=1e-9)
    assert ess(log_w - 1e5) == pytest.approx(reference, rel=1e-9)
    assert ess(torch.tensor([1e300, 1e300], dtype=torch.float64)) == pytest.approx(2.0)  # no overflow
    assert ess(log_w.float()) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((3,), -INF), "all log_weights are -inf"),
        (torch.tensor([0.0, math.nan]), "NaN"),
        (torch.tensor([0.0, INF]), r"\+inf"),
        (torch.zeros(0), "non-empty 1-D"),
        (torch.zeros(2, 2), "non-empty 1-D"),
    ],
)
def test_ess_and_normalize_reject_invalid_weights(bad, match):
    with pytest.raises(ValueError, match=match):
        ess(bad)
    with pytest.raises(ValueError, match=match):
        normalize(bad)


def test_normalize():
    log_w = torch.tensor([3.0, -INF, 1.0, 2.0])
    out = normalize(log_w)
    assert out.dtype == torch.float64
    assert float(torch.logsumexp(out, 0)) == pytest.approx(0.0, abs=1e-12)
    assert out[1] == -INF
    assert torch.allclose(out.exp(), torch.softmax(log_w.double(), 0))


# ---------------------------------------------------------------------------- resampling
WEIGHTS = torch.tensor([0.31, 0.02, 0.0, 0.17, 0.005, 0.125, 0.2, 0.17], dtype=torch.float64)
REPETITIONS = 2000


def offspring_counts(scheme: str, num_samples: int, seed: int = 0) -> torch.Tensor:
    """``[R, N]`` offspring counts of ``REPETITIONS`` independent resamplings."""
    generator = torch.Generator().manual_seed(seed)
    log_w = WEIGHTS.log()
    counts = [
        torch.bincount(resample(log_w, num_samples, generator, scheme), minlength=len(WEIGHTS))
        for _ in range(REPETITIONS)
    ]
    return torch.stack(counts).double()


@pytest.fixture(scope="module")
def counts_by_scheme():
    return {
        (scheme, m): offspring_counts(scheme, m, seed=i)
        for i, scheme in enumerate(SCHEMES)
        for m in (len(WEIGHTS), 13)
    }


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("num_samples", [len(WEIGHTS), 13])
def test_resampling_is_unbiased(counts_by_scheme, scheme, num_samples):
    counts = counts_by_scheme[scheme, num_samples]
    assert torch.all(counts.sum(1) == num_samples)
    assert torch.all(counts[:, 2] == 0), "a zero-weight particle was selected"
    expected = num_samples * WEIGHTS
    se = counts.std(0) / math.sqrt(REPETITIONS)
    error = (counts.mean(0) - expected).abs()
    assert torch.all(error <= 5 * se + 1e-9), (scheme, error, se)


@pytest.mark.parametrize("num_samples", [len(WEIGHTS), 13])
def test_resampling_variance_ordering(counts_by_scheme, num_samples):
    # T = sum_i (N_i - M w_i)^2 has mean sum_i Var(N_i): M (1 - sum w^2) for multinomial.
    expected = num_samples * WEIGHTS
    spread = {s: ((counts_by_scheme[s, num_samples] - expected) ** 2).sum(1) for s in SCHEMES}
    mean = {s: float(t.mean()) for s, t in spread.items()}
    se = {s: float(t.std()) / math.sqrt(REPETITIONS) for s, t in spread.items()}
    theory = num_samples * (1 - float((WEIGHTS**2).sum()))
    assert abs(mean["multinomial"] - theory) <= 5 * se["multinomial"]
    for scheme in ("systematic", "stratified", "residual"):
        assert mean[scheme] + 5 * se[scheme] < mean["multinomial"] - 5 * se["multinomial"], mean


def test_systematic_offspring_are_floor_or_ceil(counts_by_scheme):
    counts = counts_by_scheme["systematic", 13]
    expected = 13 * WEIGHTS
    assert torch.all((counts >= expected.floor()) & (counts <= expected.ceil()))


def test_resample_dispatch_and_errors():
    log_w = torch.randn(20, generator=torch.Generator().manual_seed(1))
    for name, function in zip(("systematic", "stratified", "multinomial", "residual"),
                              (systematic, stratified, multinomial, residual)):
        a = resample(log_w, 30, torch.Generator().manual_seed(5), scheme=name)
        b = function(log_w, 30, torch.Generator().manual_seed(5))
        assert a.dtype == torch.long and a.shape == (30,)
        assert torch.equal(a, b)
        assert int(a.min()) >= 0 and int(a.max()) < 20
    assert torch.equal(resample(log_w, 7, torch.Generator().manual_seed(2)),
                       systematic(log_w, 7, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'; choose one of 'systematic'"):
        resample(log_w, 5, torch.Generator(), scheme="bogus")
    with pytest.raises(ValueError, match="num_samples"):
        resample(log_w, 0, torch.Generator())
    with pytest.raises(ValueError, match="all log_weights are -inf"):
        resample(torch.full((4,), -INF), 4, torch.Generator())


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_resampling_never_selects_trailing_zero_weights(scheme):
    log_w = torch.tensor([0.0, 0.0, -INF, -INF])
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        assert int(resample(log_w, 5, generator, scheme).max()) <= 1


# ---------------------------------------------------------------------------- tempering
def peaked_log_likelihood(num: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -0.5 * (3.0 * torch.randn(num, generator=g, dtype=torch.float64)) ** 2 * 20


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.8])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.9])
def test_next_beta_hits_target_through_the_engine_update(beta, target):
    """The solved beta's weights, computed with the update the engine uses, have the target ESS."""
    ll = peaked_log_likelihood()
    tol = 1e-6
    new_beta = next_beta(ll, beta, target, tol=tol)
    assert beta < new_beta < 1.0
    increments = incremental_log_weights(ll, beta, new_beta)
    assert abs(ess(increments) / len(ll) - target) <= tol
    # sign convention: higher likelihood -> higher weight
    assert int(increments.argmax()) == int(ll.argmax())


def test_next_beta_flat_and_generous_likelihoods_jump_to_one():
    assert next_beta(torch.full((50,), -1234.5), 0.0) == 1.0
    assert next_beta(torch.tensor([-1.0, -1.0, -INF, -1.0]), 0.2) == 1.0
    # a nearly flat likelihood keeps ESS above the target even at beta = 1
    assert next_beta(-1e-3 * torch.arange(100.0), 0.0) == 1.0
    assert next_beta(peaked_log_likelihood(), 1.0) == 1.0


@pytest.mark.parametrize("bad", [-INF, math.nan])
def test_next_beta_with_zero_likelihood_particles(bad):
    ll = peaked_log_likelihood(400)
    ll[::2] = bad  # half the particles have zero likelihood
    new_beta = next_beta(ll, 0.0, 0.5, tol=1e-6)
    increments = incremental_log_weights(ll, 0.0, new_beta)
    assert torch.all(increments[::2] == -INF)
    assert torch.all(normalize(increments)[::2].exp() == 0)
    # the target is relative to the 200 survivors
    assert abs(ess(increments) / 200 - 0.5) <= 1e-6


def test_next_beta_min_step_and_errors():
    ll = torch.tensor([0.0, -1e9, -1e9, -1e9])  # any step leaves ESS ~ 1 < 2
    assert next_beta(ll, 0.0, min_step=1e-3) == pytest.approx(1e-3, abs=1e-15)
    assert next_beta(ll, 0.9995, min_step=1e-3) == 1.0  # capped at one
    with pytest.raises(ValueError, match="no particle has a finite log likelihood"):
        next_beta(torch.tensor([-INF, math.nan]), 0.0)
    with pytest.raises(ValueError, match=r"\+inf"):
        next_beta(torch.tensor([0.0, INF]), 0.0)
    with pytest.raises(ValueError, match="beta must be in"):
        next_beta(ll, 1.5)
    with pytest.raises(ValueError, match="target_ess_fraction"):
        next_beta(ll, 0.0, target_ess_fraction=1.0)
    with pytest.raises(ValueError, match="must not decrease"):
        incremental_log_weights(ll, 0.5, 0.4)


def test_incremental_log_weights_conventions():
    ll = torch.tensor([-3.0, -INF, math.nan], dtype=torch.float32)
    out = incremental_log_weights(ll, 0.2, 0.7)
    assert out.dtype == torch.float64
    assert out[0] == pytest.approx(-1.5) and out[1] == -INF and out[2] == -INF
    assert torch.all(incremental_log_weights(ll, 0.4, 0.4) == 0)  # L^0 = 1


# ---------------------------------------------------------------------------- engine: Gaussian
def linear_gaussian(meter: Meter | None = None) -> LinearGaussian:
    return LinearGaussian.random(dim=3, num_obs=15, seed=1, meter=meter)


@pytest.mark.parametrize("proposal, kernel", [("full", "rw"), ("diag", "rw"), ("auto", "pcn")])
def test_linear_gaussian_posterior_and_evidence(proposal, kernel):
    problem = linear_gaussian()
    num_particles = 2000
    engine = TemperedSMC(num_particles=num_particles, proposal=proposal, kernel=kernel)
    post = run(engine, Potential(problem.model), seed=11, meter=problem.meter, progress=False)
    assert post.status == Status.FINISHED and post.summary["final_beta"] == 1.0
    z = post.samples["z"]
    assert z.shape == (num_particles, 3)

    mean, cov = problem.posterior_mean(), problem.posterior_cov()
    mean_error = (post.mean("z") - mean).abs()
    mean_tol = Z * smc_se(cov.diagonal(), num_particles)
    assert torch.all(mean_error <= mean_tol), (mean_error, mean_tol)

    centred = z.double() - post.mean("z")
    cov_hat = centred.T @ centred / num_particles
    var = cov.diagonal()
    cov_tol = Z * smc_se(torch.outer(var, var) + cov**2, num_particles)
    cov_error = (cov_hat - cov).abs()
    assert torch.all(cov_error <= cov_tol), (cov_error, cov_tol)

    stage_ess = torch.tensor([d["ess"] for d in post.diagnostics], dtype=torch.float64)
    log_z_sd = math.sqrt(KAPPA * float((1 / stage_ess - 1 / num_particles).sum()))
    log_z_error = abs(post.summary["log_evidence"] - problem.log_evidence())
    assert log_z_error <= Z * log_z_sd, (log_z_error, Z * log_z_sd)
    assert Z * log_z_sd < 0.5  # the check is informative

    # The solver's target is what the engine's reweighting achieved, at every stage
    # that did not jump straight to beta = 1.
    for info in post.diagnostics[:-1]:
        assert abs(info["ess"] / num_particles - engine.target_ess) <= engine.tol
    for info in post.diagnostics:
        assert set(engine.progress_keys) <= set(info)
        assert {"stage", "beta", "ess", "acceptance", "moves", "log_evidence", "api_calls"} <= set(info)
        assert engine.min_moves <= info["moves"] <= engine.max_moves
    assert post.diagnostics[-1]["api_calls"] == problem.meter.calls
    moves = sum(d["moves"] for d in post.diagnostics)
    assert problem.meter.calls == num_particles * (1 + moves)  # one scoring of N per move


# ---------------------------------------------------------------------------- engine: constrained site
OBSERVATIONS = torch.tensor([0.3, -1.1, 1.6, 0.4])


def location_scale_model(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y), dim=-1):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def grid_moments(jacobian: bool = True) -> dict[str, float]:
    """Posterior moments of (mu, sigma) by quadrature on a fine 2-D grid.

    ``jacobian=False`` gives the moments a sampler would target if it forgot the
    log-Jacobian of ``sigma = exp(u)`` (density ``p(sigma) L(sigma) / sigma``).
    """
    mu = torch.linspace(-8, 8, 1601, dtype=torch.float64)[:, None]
    sigma = torch.linspace(1e-4, 8, 1600, dtype=torch.float64)[None, :]
    log_p = (
        dist.Normal(0.0, 2.0).log_prob(mu)
        + dist.HalfNormal(1.0).log_prob(sigma)
        + dist.Normal(mu[..., None], sigma[..., None]).log_prob(OBSERVATIONS.double()).sum(-1)
    )
    if not jacobian:
        log_p = log_p - sigma.log()
    w = torch.softmax(log_p.flatten(), 0).reshape(log_p.shape)
    e_sigma = float((w * sigma).sum())
    central = sigma - e_sigma
    e_mu = float((w * mu).sum())
    return {
        "e_mu": e_mu,
        "var_mu": float((w * (mu - e_mu) ** 2).sum()),
        "e_sigma": e_sigma,
        "var_sigma": float((w * central**2).sum()),
        "mu4_sigma": float((w * central**4).sum()),
    }


def test_constrained_site_matches_quadrature():
    num_particles = 3000
    potential = Potential(location_scale_model, (OBSERVATIONS,))
    post = run(TemperedSMC(num_particles=num_particles), potential, seed=5, progress=False)
    assert post.status == Status.FINISHED
    sigma, mu = post.samples["sigma"].double(), post.samples["mu"].double()
    assert sigma.shape == (num_particles,) and bool((sigma > 0).all())

    truth = grid_moments()
    sigma_tol = Z * float(smc_se(truth["var_sigma"], num_particles))
    mu_tol = Z * float(smc_se(truth["var_mu"], num_particles))
    assert abs(float(sigma.mean()) - truth["e_sigma"]) <= sigma_tol
    assert abs(float(mu.mean()) - truth["e_mu"]) <= mu_tol
    # se of a sample variance: sqrt((mu_4 - sigma^4) / N_eff)
    var_tol = Z * float(smc_se(truth["mu4_sigma"] - truth["var_sigma"] ** 2, num_particles))
    assert abs(float(sigma.var()) - truth["var_sigma"]) <= var_tol
    # The check has power against a missing log-Jacobian.
    assert abs(grid_moments(jacobian=False)["e_sigma"] - truth["e_sigma"]) > sigma_tol


def raw_factor(name: str, log_factor: torch.Tensor) -> None:
    """``pyro.factor`` without argument validation, so that it may be NaN (a broken black box)."""
    unit = dist.Unit(log_factor, validate_args=False)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True})


def truncated_model(bad_value: float) -> None:
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    raw_factor("positive", torch.where(z > 0, torch.zeros_like(z), torch.full_like(z, bad_value)))
    pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(-0.5))


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's warning for the NaN case
@pytest.mark.parametrize("bad_value", [-INF, math.nan])
def test_zero_likelihood_region_truncates_the_posterior(bad_value):
    # z ~ N(0, 1), y | z ~ N(z, 1), y = -0.5, restricted to z > 0: a normal N(m, s^2)
    # with m = y / 2, s^2 = 1 / 2 truncated to (0, inf).
    num_particles = 1000
    post = run(
        TemperedSMC(num_particles=num_particles),
        Potential(truncated_model, (bad_value,)),
        seed=2,
        progress=False,
    )
    z = post.samples["z"].double()
    assert post.status == Status.FINISHED and bool((z > 0).all())
    m, s = -0.25, math.sqrt(0.5)
    normal = torch.distributions.Normal(0.0, 1.0)
    alpha = torch.tensor(-m / s, dtype=torch.float64)
    hazard = float(normal.log_prob(alpha).exp() / (1 - normal.cdf(alpha)))
    mean = m + s * hazard
    variance = s**2 * (1 + float(alpha) * hazard - hazard**2)
    assert abs(float(z.mean()) - mean) <= Z * float(smc_se(variance, num_particles))


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("bad_value", [-INF, math.nan])
def test_all_zero_likelihood_raises_clear_error(bad_value):
    def model() -> None:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        raw_factor("nothing", torch.full_like(z, bad_value))

    with pytest.raises(ValueError, match="all 32 initial particles have a -inf or NaN log likelihood"):
        run(TemperedSMC(num_particles=32), Potential(model), progress=False)


# ---------------------------------------------------------------------------- engine: control
def peaked_problem(meter: Meter | None = None) -> LinearGaussian:
    """Informative data: about eight tempering stages with 100 particles."""
    return LinearGaussian.random(dim=2, num_obs=30, seed=2, noise_scale=0.1, meter=meter)


def _stage_records(engine: TemperedSMC, problem_factory, seed: int = 0) -> list[dict]:
    """The info records of an unbudgeted run (the reference for budgeted reruns)."""
    problem = problem_factory(Meter())
    return run(engine, Potential(problem.model), seed=seed, meter=problem.meter, progress=False).diagnostics


def test_budget_refusing_a_stage_first_move_keeps_the_reweighted_population():
    """The stage's tempering and evidence update are free: they are kept, unresampled."""
    engine = TemperedSMC(num_particles=100)
    records = _stage_records(engine, peaked_problem)
    # the budget pays for stage 2 and refuses stage 3 before its first move
    budget = 100 * (1 + records[0]["moves"] + records[1]["moves"]) + 99
    problem = peaked_problem(Meter(budget=budget))
    potential = Potential(problem.model)
    states = []
    post = run(
        engine,
        potential,
        seed=0,
        meter=problem.meter,
        progress=False,
        callback=lambda state, info: states.append(state),
    )
    assert post.status == Status.BUDGET_EXHAUSTED
    assert problem.meter.calls == budget - 99 == post.api_calls["calls"] == post.summary["evaluations"]
    assert len(states) == 3 == len(post.diagnostics) and states[-1].interrupted and not states[1].interrupted
    assert post.diagnostics[-1]["moves"] == 0 and math.isnan(post.diagnostics[-1]["acceptance"])
    assert post.summary["final_beta"] == states[-1].beta == records[2]["beta"] < 1.0
    # before beta = 1 the estimate is log Z_beta, never reported as the evidence
    assert math.isnan(post.summary["log_evidence"])
    assert post.summary["log_normalizer"] == pytest.approx(records[2]["log_evidence"], abs=1e-12)
    # the previous stage's particles, weighted by L^(beta' - beta) at the ESS the solver chose
    assert torch.equal(post.samples["z"], potential.unpack(states[1].particles.u)["z"])
    assert post.ess == pytest.approx(records[2]["ess"], rel=1e-9)
    increments = incremental_log_weights(states[1].particles.log_likelihood, states[1].beta, states[-1].beta)
    torch.testing.assert_close(post.log_weights, normalize(increments))
    # a checkpoint of the weighted state keeps its weights, and resuming from it ends at once
    codec = StateCodec()
    restored, _ = codec.loads(codec.dumps(states[-1]))
    assert torch.equal(restored.log_weights, states[-1].log_weights)
    resumed = run(engine, potential, progress=False, state=restored)
    assert torch.equal(resumed.log_weights, post.log_weights) and resumed.status == Status.BUDGET_EXHAUSTED
    with pytest.raises(ValueError, match="cannot step a weighted state"):
        engine.step(potential, restored)


def test_budget_refusing_the_last_stage_first_move_returns_the_weighted_posterior_and_evidence():
    """At ``beta' = 1`` the reweighted population is an importance sample of the posterior.

    Its weighted mean and variance are checked against the Gaussian posterior with
    ``N_eff = ESS / KAPPA``, and the log evidence as in the finished run's test.
    """
    num_particles = 1000
    engine = TemperedSMC(num_particles=num_particles)
    records = _stage_records(engine, peaked_problem)
    assert records[-1]["beta"] == 1.0 and len(records) >= 3
    paid = num_particles * (1 + sum(record["moves"] for record in records[:-1]))
    problem = peaked_problem(Meter(budget=paid + num_particles - 1))
    post = run(engine, Potential(problem.model), seed=0, meter=problem.meter, progress=False)
    assert post.status == Status.BUDGET_EXHAUSTED and problem.meter.calls == paid
    assert post.summary["final_beta"] == 1.0 and post.diagnostics[-1]["moves"] == 0
    assert post.summary["log_evidence"] == pytest.approx(records[-1]["log_evidence"], abs=1e-12)

    weights = post.log_weights.exp()
    z = post.samples["z"].double()
    mean_hat = weights @ z
    var_hat = weights @ (z - mean_hat) ** 2
    effective = post.ess
    mean, var = problem.posterior_mean(), problem.posterior_cov().diagonal()
    assert torch.all((mean_hat - mean).abs() <= Z * smc_se(var, effective))
    var_tol = Z * smc_se(2 * var**2, effective)
    assert torch.all((var_hat - var).abs() <= var_tol), (var_hat, var, var_tol)
    # the check tells the posterior from the previous stage's target
    noise = problem.noise_scale / math.sqrt(records[-2]["beta"])
    previous = LinearGaussian(problem.design, problem.observations, problem.prior_scale, noise)
    assert torch.any((var_hat - previous.posterior_cov().diagonal()).abs() > var_tol)

    stage_ess = torch.tensor([d["ess"] for d in post.diagnostics], dtype=torch.float64)
    log_z_sd = math.sqrt(KAPPA * float((1 / stage_ess - 1 / num_particles).sum()))
    log_z_error = abs(post.summary["log_evidence"] - problem.log_evidence())
    assert log_z_error <= Z * log_z_sd, (log_z_error, Z * log_z_sd)


def test_budget_cutting_a_stage_moves_keeps_the_moves_made():
    """The queries of an unfinished stage are not lost, and the population targets ``p_beta``.

    ``p_beta ∝ p(z) N(y; G z, sigma^2)^beta`` is the posterior of the same problem with
    noise scale ``sigma / sqrt(beta)``, so the moved population's mean is checked against
    that Gaussian at the SMC tolerance of the module docstring.
    """
    num_particles = 1000
    engine = TemperedSMC(num_particles=num_particles)
    records = _stage_records(engine, peaked_problem)
    stage = len(records) // 2  # beta about 0.06 of about eight stages
    assert 0 < stage and records[stage]["moves"] >= 2
    made = records[stage]["moves"] - 1  # one move short of the plan
    paid = num_particles * (1 + sum(record["moves"] for record in records[:stage]) + made)
    problem = peaked_problem(Meter(budget=paid + num_particles - 1))
    states = []
    post = run(
        engine,
        Potential(problem.model),
        seed=0,
        meter=problem.meter,
        progress=False,
        callback=lambda state, info: states.append(state),
    )
    assert post.status == Status.BUDGET_EXHAUSTED
    assert problem.meter.calls == paid == post.summary["evaluations"] == post.api_calls["calls"]
    assert len(post.diagnostics) == stage + 1 and states[-1].interrupted
    last = post.diagnostics[-1]
    assert last["interrupted"] and last["moves"] == made
    beta = last["beta"]
    assert post.summary["final_beta"] == beta == records[stage]["beta"] < 1.0
    assert math.isnan(post.summary["log_evidence"])
    assert post.summary["log_normalizer"] == pytest.approx(records[stage]["log_evidence"], abs=1e-12)

    def target(temperature: float) -> LinearGaussian:
        noise = problem.noise_scale / math.sqrt(temperature)
        return LinearGaussian(problem.design, problem.observations, problem.prior_scale, noise)

    z = post.samples["z"].double()
    mean, var = target(beta).posterior_mean(), target(beta).posterior_cov().diagonal()
    mean_error = (z.mean(0) - mean).abs()
    mean_tol = Z * smc_se(var, num_particles)
    assert torch.all(mean_error <= mean_tol), (mean_error, mean_tol)
    var_error = (z.var(0, unbiased=False) - var).abs()
    var_tol = Z * smc_se(2 * var**2, num_particles)
    assert torch.all(var_error <= var_tol), (var_error, var_tol)
    # the check tells p_beta from the last complete stage's target and from the posterior
    for other in (records[stage - 1]["beta"], 1.0):
        wrong = target(other).posterior_cov().diagonal()
        assert torch.any((z.var(0, unbiased=False) - wrong).abs() > Z * smc_se(2 * wrong**2, num_particles))


def test_budget_below_initial_population():
    problem = peaked_problem(Meter(budget=50))
    with pytest.raises(InitialBudgetError):
        run(TemperedSMC(num_particles=100), Potential(problem.model), meter=problem.meter, progress=False)


def test_max_stages():
    problem = peaked_problem()
    post = run(TemperedSMC(num_particles=50, max_stages=2), Potential(problem.model), progress=False)
    assert post.status == Status.MAX_ITERATIONS
    assert len(post.diagnostics) == 2 and post.summary["final_beta"] < 1.0


@pytest.mark.parametrize("kernel", ["rw", "pcn"])
def test_determinism_and_resume(kernel):
    problem = peaked_problem()
    potential = Potential(problem.model)
    engine = TemperedSMC(num_particles=64, resampling="residual", kernel=kernel)
    states = []
    first = run(engine, potential, seed=3, progress=False, callback=lambda s, i: states.append(s))
    second = run(engine, potential, seed=3, progress=False)
    assert torch.equal(first.samples["z"], second.samples["z"])
    assert first.summary == second.summary
    assert first.diagnostics == second.diagnostics
    other = run(engine, potential, seed=4, progress=False)
    assert not torch.equal(first.samples["z"], other.samples["z"])
    # resuming from a saved state replays the rest of the run exactly
    resumed = run(engine, potential, progress=False, state=states[2])
    assert torch.equal(resumed.samples["z"], first.samples["z"])
    assert resumed.summary == first.summary
    assert resumed.diagnostics == first.diagnostics[3:]


def test_states_are_immutable_and_steps_pure():
    problem = peaked_problem()
    potential = Potential(problem.model)
    engine = TemperedSMC(num_particles=32)
    state = engine.init(potential, seed=0)
    a, info_a = engine.step(potential, state)
    b, info_b = engine.step(potential, state)  # stepping does not consume the input state
    assert torch.equal(a.particles.u, b.particles.u) and info_a == info_b
    assert a.stage == 1 and state.stage == 0 and a.beta > state.beta == 0.0
    with pytest.raises(AttributeError):
        a.beta = 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_particles": 1}, "num_particles"),
        ({"target_ess": 1.0}, "target_ess"),
        ({"resampling": "bogus"}, "unknown resampling scheme"),
        ({"proposal": "cholesky"}, "proposal"),
        ({"min_moves": 3, "max_moves": 2}, "min_moves"),
        ({"move_probability": 1.0}, "move_probability"),
        ({"target_acceptance": 0.0}, "target_acceptance"),
        ({"max_stages": 0}, "max_stages"),
        ({"kernel": "hmc"}, "kernel must be 'rw' or 'pcn', got 'hmc'"),
        ({"kernel": "pcn", "target_acceptance": None}, "kernel='pcn' adapts its step"),
    ],
)
def test_engine_validates_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperedSMC(**kwargs)


def test_progress_bar_follows_every_query_and_is_detached_after_the_run(capsys):
    problem = linear_gaussian()
    post = run(TemperedSMC(num_particles=64, max_stages=2), Potential(problem.model), seed=0, meter=problem.meter, progress=True)
    assert post.api_calls["calls"] == problem.meter.calls > 0
    assert problem.meter._listeners == []  # the bar's listener lives only as long as the run
    err = capsys.readouterr().err
    assert f"{problem.meter.calls}" in err and "smc" in err
