"""MCMC engines: Pyro's random-walk kernel and the batched ensemble sampler.

Statistical checks use fixed seeds and tolerances from the Monte Carlo error, never
from printed values. For ``n = N * C`` draws (``N`` per chain, ``C`` chains or walkers)
with integrated autocorrelation time ``tau`` (estimated from the same draws with emcee's
estimator, averaging the autocorrelation over chains), the standard error of

* a mean is ``se = sqrt(Var(x) * tau_x / n)`` with ``Var(x)`` the exact posterior
  variance;
* a covariance entry is ``se = sqrt(Var(y) * tau_y / n)`` for the product series
  ``y = (x_i - mu_i)(x_j - mu_j)``, with ``Var(y) = S_ii S_jj + S_ij^2`` for a Gaussian.

Each error is checked at ``K = 5`` standard errors: about a 6e-7 two-sided chance per
check for a correct sampler, leaving room for the noise of the ``tau`` estimate
(relative sd ``~ sqrt(2 (2M + 1) / n)``, M the window: below 20% here).
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC
from pyro.infer.autoguide.initialization import InitMessenger, init_to_sample, init_to_value
from pyro.infer.mcmc import RandomWalkKernel
from scipy import stats
from scipy.signal import lfilter

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.base import InitialBudgetError, make_generator, run
from bayesprompt.inference.mcmc import (
    DEMove,
    EnsembleSampler,
    PyroRandomWalk,
    StretchMove,
    WarmupBudgetError,
    autocorr_function,
    autocorr_reliable,
    integrated_time,
    run_random_walk,
)
from bayesprompt.inference.mcmc.random_walk import PotentialEnergy, latent_transforms
from bayesprompt.lm.meter import BudgetExhausted, Meter
from bayesprompt.models.potential import Potential, seeded
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import PromptModel
from bayesprompt.runs import RunDirectory, StateCodec, run_with_checkpoints
from bayesprompt.testing import FakeBlackBox, LinearGaussian

K = 5.0  # standard errors allowed per check (see the module docstring)
TASK = Task("toy", ("neg", "pos"), ("Bad.", "Good."), "{text} {mask}", ("bad", "good"))
EXAMPLES = [Example(f"text {i}", i % 2) for i in range(6)]
#: Pyro's set-up queries per chain: plate-nesting guess, prototype trace, initial-point
#: check, initial energy (one prompt each).
RW_SETUP_CALLS = 4


# ---------------------------------------------------------------------- helpers
def chains_of(post, site="z") -> torch.Tensor:
    """Chain-major posterior samples as ``[draws, chains, D]``."""
    x = post.samples[site].double()
    return x.reshape(post.num_chains, -1, x.shape[-1]).transpose(0, 1)


def moment_errors(
    chains: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors of the sample mean ``[D]`` and covariance ``[D, D]``, in standard errors."""
    num_draws, num_chains, dim = chains.shape
    n = num_draws * num_chains
    variance = cov.diagonal()
    tau_x = integrated_time(chains)
    mean_z = (chains.mean((0, 1)) - mean) / (variance * tau_x / n).sqrt()
    centred = chains - mean
    products = (centred.unsqueeze(-1) * centred.unsqueeze(-2)).reshape(num_draws, num_chains, dim * dim)
    tau_y = integrated_time(products).reshape(dim, dim)
    var_y = variance.unsqueeze(1) * variance.unsqueeze(0) + cov.square()
    sample_cov = torch.cov(chains.reshape(n, dim).T)
    cov_z = (sample_cov - cov) / (var_y * tau_y / n).sqrt()
    return mean_z, cov_z


def ar1(phi: float, num_steps: int, num_chains: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains ``x_t = phi x_{t-1} + e_t`` as ``[num_steps, num_chains]``."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(num_chains) / math.sqrt(1.0 - phi**2)  # stationary start
    noise = rng.standard_normal((num_steps, num_chains))
    return lfilter([1.0], [1.0, -phi], noise, axis=0, zi=phi * start[None, :])[0]


def prompt_problem(meter: Meter | None = None) -> tuple[FakeBlackBox, Potential]:
    box = FakeBlackBox(TASK, embed_dim=4, seed=0, meter=meter)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    return box, Potential(PromptModel(box, projection), (box.encode(EXAMPLES),), meter=box.meter)


def half_normal_scale_model(y):
    """A model with a constrained latent site (``scale > 0``), so a non-identity transform."""
    scale = pyro.sample("scale", dist.HalfNormal(2.0))
    with pyro.plate("data", len(y), dim=-1):
        pyro.sample("y", dist.Normal(0.0, scale), obs=y)


SCALE_DATA = torch.tensor([0.3, -1.2, 2.0, 0.7])



# ---------------------------------------------------------------------- autocorrelation
def test_integrated_time_of_ar1_matches_theory():
    phi, steps, walkers = 0.9, 20_000, 32
    tau = float(integrated_time(ar1(phi, steps, walkers, seed=0))[0])
    exact = (1 + phi) / (1 - phi)  # 19
    # Sokal: Var(tau_hat) ~ 2 (2M + 1) / n tau^2 with window M ~ 5 tau and n = steps * walkers;
    # the truncation bias 2 phi^(M+1) / (1 - phi) ~ 1e-3 is negligible.
    rel_se = math.sqrt(2 * (2 * 5 * exact + 1) / (steps * walkers))
    assert abs(tau / exact - 1) < K * rel_se


def test_integrated_time_of_white_noise_is_one_and_shapes():
    x = np.random.default_rng(1).standard_normal(100_000)
    tau = integrated_time(x)
    assert tau.shape == (1,) and tau.dtype == torch.float64
    # window M ~ 5: relative se sqrt(2 (2M + 1) / n) ~ 0.015
    assert abs(float(tau[0]) - 1.0) < K * math.sqrt(2 * 11 / len(x))
    # 2-D input: walkers by default, coordinates with has_walkers=False; 3-D: [N, W, D]
    y = torch.from_numpy(x.reshape(1000, 100))
    assert integrated_time(y).shape == (1,)
    assert integrated_time(y, has_walkers=False).shape == (100,)
    assert integrated_time(y.reshape(1000, 25, 4)).shape == (4,)
    with pytest.raises(ValueError, match="1 to 3 dimensions"):
        integrated_time(torch.zeros(2, 2, 2, 2))


def test_autocorr_function_of_ar1_and_constant_chain():
    phi, steps, walkers = 0.5, 20_000, 8
    rho = autocorr_function(ar1(phi, steps, walkers, seed=2)).mean(1)
    assert rho[0] == pytest.approx(1.0)
    # Bartlett: Var(r_1) ~ (1 - phi^2) / n for AR(1), averaged over independent walkers
    assert abs(float(rho[1]) - phi) < K * math.sqrt((1 - phi**2) / (steps * walkers))
    assert torch.isnan(integrated_time(torch.ones(50, 3))).all()  # constant: undefined, as emcee
    taus = torch.tensor([1.0, 2.0])
    assert autocorr_reliable(taus, 101) and not autocorr_reliable(taus, 100)
    assert not autocorr_reliable(torch.tensor([math.nan]), 10**6)


# ---------------------------------------------------------------------- ensemble: statistics
def test_ensemble_recovers_linear_gaussian_posterior():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    moves = [("stretch", 0.8), ("de", 0.2)]
    sampler = EnsembleSampler(num_iterations=400, num_walkers=64, burn_in=100, moves=moves)
    post = run(sampler, Potential(problem.model), seed=0, progress=False)
    assert post.status == "finished" and post.num_chains == 64 and post.mcmc and post.num_samples == 64 * 300
    assert torch.allclose(post.log_weights, torch.full((64 * 300,), -math.log(64 * 300), dtype=torch.float64))
    chains = chains_of(post)
    mean_z, cov_z = moment_errors(chains, problem.posterior_mean(), problem.posterior_cov())
    assert mean_z.abs().max() < K and cov_z.abs().max() < K, (mean_z, cov_z)
    # the summary's tau is the same estimator on the same draws
    assert post.summary["autocorr_time_max"] == pytest.approx(float(integrated_time(chains).max()))
    assert post.summary["autocorr_reliable"] == (300 > 50 * post.summary["autocorr_time_max"])
    # a 2-D Gaussian with the stretch move (a = 2) accepts about 0.5-0.75: a sane band
    assert 0.2 < post.summary["acceptance_rate"] < 0.8
    assert {d["move"] for d in post.diagnostics} == {"stretch", "de"}
    assert len(post.diagnostics) == 400 and post.diagnostics[-1]["draws"] == 300


@pytest.mark.parametrize("move", ["stretch", "de"])
def test_ensemble_move_alone_targets_the_posterior(move):
    problem = LinearGaussian.random(dim=1, num_obs=3, seed=1)
    mu, sd = float(problem.posterior_mean()[0]), float(problem.posterior_cov()[0, 0].sqrt())
    sampler = EnsembleSampler(num_iterations=350, num_walkers=32, burn_in=50, moves=[(move, 1.0)])
    post = run(sampler, Potential(problem.model), seed=3, progress=False)
    assert 0.2 < post.summary["acceptance_rate"] < 0.9
    chains = chains_of(post)  # [300, 32, 1]
    mean_z, cov_z = moment_errors(chains, problem.posterior_mean(), problem.posterior_cov())
    assert mean_z.abs().max() < K and cov_z.abs().max() < K, (mean_z, cov_z)
    # KS on near-independent draws: each walker thinned by ceil(tau) iterations
    step = math.ceil(float(integrated_time(chains)[0]))
    thinned = chains[::step].reshape(-1).numpy()
    assert len(thinned) >= 300
    assert stats.kstest(thinned, "norm", args=(mu, sd)).pvalue > 0.01


def test_moves_validate_and_match_emcee_formulas():
    g = torch.Generator().manual_seed(0)
    walkers = torch.zeros(5, 3, dtype=torch.float64)
    complement = torch.randn(4, 3, generator=g, dtype=torch.float64)
    q, log_factor = StretchMove(a=2.0).propose(walkers, complement, torch.Generator().manual_seed(1))
    # q = c + Z (u - c) = (1 - Z) c for u = 0: recover Z and check it lies in [1/a, a]
    z = torch.exp(log_factor / 2)  # factor (D - 1) log Z with D = 3
    assert ((z >= 0.5 - 1e-12) & (z <= 2.0 + 1e-12)).all()
    partner = q / (1 - z).unsqueeze(1)
    assert all(any(torch.allclose(p, c) for c in complement) for p in partner)
    q, log_factor = DEMove(sigma=0.0, gamma0=1.0).propose(walkers, complement, g)
    differences = {tuple((a - b).tolist()) for a in complement for b in complement if not torch.equal(a, b)}
    assert all(any(torch.allclose(p, torch.tensor(d, dtype=torch.float64)) for d in differences) for p in q)
    assert (log_factor == 0).all()
    with pytest.raises(ValueError, match="a must be > 1"):
        StretchMove(a=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        DEMove().propose(walkers, complement[:1], g)
    with pytest.raises(ValueError, match="even number >= 4"):
        EnsembleSampler(num_walkers=5)
    with pytest.raises(ValueError, match="unknown move"):
        EnsembleSampler(moves=[("walk", 1.0)])
    with pytest.raises(ValueError, match="weights"):
        EnsembleSampler(moves=[("de", 0.0)])
    with pytest.raises(ValueError, match="no draw would be kept"):
        EnsembleSampler(num_iterations=10, burn_in=10)


# ---------------------------------------------------------------------- ensemble: batching, budget, state
def test_ensemble_queries_once_per_half_step(monkeypatch):
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    potential = Potential(problem.model, meter=problem.meter)
    sizes = []
    evaluate = potential.evaluate
    monkeypatch.setattr(potential, "evaluate", lambda u: sizes.append(len(u)) or evaluate(u))
    sampler = EnsembleSampler(num_iterations=7, num_walkers=10)
    post = run(sampler, potential, seed=0, meter=problem.meter, progress=False)
    assert sizes == [5] * 14  # two half-steps of W / 2 per iteration, each one evaluate call
    assert problem.meter.queries == 1 + 2 * 7 and problem.meter.calls == 10 + 7 * 10
    assert post.api_calls["calls"] == 80 and post.diagnostics[-1]["evaluations"] == 80


def test_ensemble_default_walkers_and_prompt_model():
    box, potential = prompt_problem()
    sampler = EnsembleSampler(num_iterations=3)
    post = run(sampler, potential, seed=0, progress=False)
    assert sampler.walkers_for(3) == 32 and sampler.walkers_for(20) == 42
    # discovery by probing is free: 32 initial calls, then 32 per iteration in 2 queries
    assert box.meter.calls == 32 * 4 and box.meter.queries == 1 + 2 * 3
    assert post.samples["z"].shape == (32 * 3, 3) and post.samples["z"].dtype == torch.float32


def test_ensemble_stops_at_budget_and_keeps_completed_draws():
    meter = Meter(budget=8 + 8 * 10 + 4)  # init + 10 iterations + the first half of the 11th
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0, meter=meter)
    sampler = EnsembleSampler(num_iterations=100, num_walkers=8, burn_in=2)
    post = run(sampler, Potential(problem.model), seed=0, meter=meter, progress=False)
    assert post.status == "budget_exhausted"
    assert meter.calls <= meter.budget and post.api_calls["calls"] == meter.calls == 92
    assert len(post.diagnostics) == 10 and post.summary["iterations"] == 10
    assert post.num_chains == 8 and post.samples["z"].shape == (8 * 8, 2)
    # the budget also bounds the initial population and burn-in
    with pytest.raises(InitialBudgetError):
        run(EnsembleSampler(num_walkers=8), Potential(LinearGaussian.random(meter=Meter(budget=7)).model),
            progress=False)
    small = LinearGaussian.random(meter=Meter(budget=8 + 16))
    with pytest.raises(RuntimeError, match="no post-burn-in draws"):
        run(EnsembleSampler(num_walkers=8, burn_in=5), Potential(small.model), progress=False)


def test_ensemble_is_deterministic_resumable_and_leaves_global_rng_alone():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    moves = [("stretch", 0.5), ("de", 0.5)]
    sampler = EnsembleSampler(num_iterations=12, num_walkers=8, burn_in=3, thin=2, moves=moves)
    saved = {}
    rng_before = torch.get_rng_state()
    first = run(sampler, Potential(problem.model), seed=5, progress=False,
                callback=lambda state, info: saved.setdefault(state.iteration, state))
    assert torch.equal(torch.get_rng_state(), rng_before)
    again = run(sampler, Potential(problem.model), seed=5, progress=False)
    fresh = Potential(problem.model, meter=problem.meter)
    fresh.discover_sites()  # a resumed run needs the sites (free with a meter)
    resumed = run(sampler, fresh, progress=False, state=saved[6])
    other = run(sampler, Potential(problem.model), seed=6, progress=False)
    assert first.samples["z"].shape == (8 * 4, 2)  # kept iterations 5, 7, 9, 11
    assert torch.equal(first.samples["z"], again.samples["z"])
    assert torch.equal(first.samples["z"], resumed.samples["z"])
    assert not torch.equal(first.samples["z"], other.samples["z"])
    assert saved[6].walkers.u.shape == (8, 2) and len(saved[6].draws) == 1


def test_constrained_sites_come_back_constrained():
    model, data = half_normal_scale_model, SCALE_DATA
    ens = run(EnsembleSampler(num_iterations=20, num_walkers=8), Potential(model, (data,)), progress=False)
    rw = run_random_walk(model, (data,), num_samples=20, warmup_steps=10, progress=False)
    for post in (ens, rw):
        assert (post.samples["scale"] > 0).all() and post.samples["scale"].ndim == 1


# ---------------------------------------------------------------------- Pyro random walk
def test_random_walk_recovers_linear_gaussian_posterior():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    sampler = PyroRandomWalk(num_samples=2000, warmup_steps=300, num_chains=2, init_step_size=0.3)
    post = sampler.run(Potential(problem.model), seed=0, progress=False)
    assert post.status == "finished" and post.engine == "rw-mcmc" and post.num_chains == 2 and post.mcmc
    mean_z, cov_z = moment_errors(chains_of(post), problem.posterior_mean(), problem.posterior_cov())
    assert mean_z.abs().max() < K and cov_z.abs().max() < K, (mean_z, cov_z)
    summary = post.summary
    assert 0.05 < summary["acceptance_rate"] < 0.95 and len(summary["acceptance_per_chain"]) == 2
    assert summary["dropped_draws"] == 0 and summary["draws_per_chain"] == 2000
    # diagnostics: one record per engine step (warmup, sampling and chain 1's set-up), in order
    stages = [(d["chain"], d["stage"]) for d in post.diagnostics]
    assert stages == [*[(0, "warmup")] * 300, *[(0, "sample")] * 2000, (1, "setup"), *[(1, "warmup")] * 300,
                      *[(1, "sample")] * 2000]
    accepted = sum(d["accepted"] for d in post.diagnostics[300:2300]) / 2000
    assert accepted == pytest.approx(summary["acceptance_per_chain"][0])


def test_random_walk_chain_major_and_deterministic():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    rng_before = torch.get_rng_state()
    options = dict(num_samples=30, warmup_steps=10, seed=4, progress=False)
    two = run_random_walk(problem.model, num_chains=2, **options)
    assert torch.equal(torch.get_rng_state(), rng_before)
    one = run_random_walk(problem.model, num_chains=1, **options)
    again = run_random_walk(problem.model, num_chains=2, **options)
    chains = two.samples["z"].reshape(2, 30, 2)
    assert torch.equal(chains[0], one.samples["z"])  # chain 0 first, then chain 1
    assert not torch.equal(chains[0], chains[1])
    assert torch.equal(two.samples["z"], again.samples["z"])
    assert two.summary["num_chains"] == 2 and len(two.summary["step_size_per_chain"]) == 2


def location_scale_model(y):
    """Two latent sites, one constrained (``scale > 0``)."""
    loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
    scale = pyro.sample("scale", dist.HalfNormal(2.0))
    with pyro.plate("data", len(y), dim=-1):
        pyro.sample("y", dist.Normal(loc, scale), obs=y)


@pytest.mark.parametrize("init_strategy", [None, init_to_sample], ids=["pyro-default-init", "init-to-sample"])
def test_random_walk_draws_what_pyro_mcmc_draws(init_strategy):
    """Each chain equals ``pyro.infer.MCMC(RandomWalkKernel(model))`` run under that chain's seed, bit for bit."""
    sampler = PyroRandomWalk(num_samples=40, warmup_steps=15, num_chains=2, init_step_size=0.3,
                             init_strategy=init_strategy)
    post = sampler.run(Potential(location_scale_model, (SCALE_DATA,)), seed=7, progress=False)
    model = location_scale_model if init_strategy is None else InitMessenger(init_strategy)(location_scale_model)
    generator = make_generator(7)  # the engine seeds its chains from it, in order
    for chain in range(2):
        with seeded(generator):
            mcmc = MCMC(RandomWalkKernel(model, init_step_size=0.3), num_samples=40, warmup_steps=15,
                        disable_progbar=True)
            mcmc.run(SCALE_DATA)
        for site, draws in mcmc.get_samples().items():
            assert torch.equal(post.samples[site].reshape(2, 40)[chain], draws), (chain, site)
        rate = mcmc.diagnostics()["acceptance rate"]["chain 0"]
        assert post.summary["acceptance_per_chain"][chain] == pytest.approx(rate)


def test_potential_energy_equals_pyros():
    kernel = RandomWalkKernel(half_normal_scale_model)
    with seeded(make_generator(0)), pyro.validation_enabled(False):
        kernel.setup(0, SCALE_DATA)
    ours = PotentialEnergy(half_normal_scale_model, (SCALE_DATA,), {},
                           latent_transforms(half_normal_scale_model, (SCALE_DATA,), {}, None))
    for value in (-2.0, 0.1, 1.5):
        params = {"scale": torch.tensor(value)}
        assert torch.equal(ours(params), kernel.potential_fn(params))


class Killed(Exception):
    """Stands in for a kill right after a checkpoint."""


RESUME_CASES = [  # (budget of a metered prompt model, or False: an unmetered constrained model; steps before the kill)
    *[(200, cut) for cut in (0, 2, 9, 13, 14, 20, 27)],
    *[(32, cut) for cut in (0, 20, 25)],  # budget 32 ends the run after step 25 (chain 1's fourth draw)
    *[(False, cut) for cut in (0, 9, 14, 27)],
]


@pytest.mark.parametrize(("metered", "cut"), RESUME_CASES, ids=[f"budget-{m}-after-{c}-steps" for m, c in RESUME_CASES])
def test_random_walk_continues_from_a_checkpoint_exactly(metered, cut, tmp_path, monkeypatch):
    """Killed after ``cut`` steps (warmup, sampling, at and after chain 1's set-up, the last), a fresh engine
    on a fresh potential continues from the checkpoint to the uninterrupted run's draws, calls and records."""
    sampler = dict(num_samples=6, warmup_steps=7, num_chains=2, init_step_size=0.5)  # chain 1's set-up: step 14

    def fit(run_dir=None, start=None):
        if metered:
            box, potential = prompt_problem(Meter(budget=metered))
            meter = box.meter
        else:
            potential, meter = Potential(half_normal_scale_model, (SCALE_DATA,)), Meter()
        return run_with_checkpoints(PyroRandomWalk(**sampler), potential, run_dir, seed=5, meter=meter,
                                    config_sha256="x", start=start, progress=False)[0]

    reference = fit()
    write = RunDirectory.write_checkpoint

    def write_then_die(self, checkpoint, codec):
        write(self, checkpoint, codec)
        if checkpoint.iteration == cut:
            raise Killed

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(RunDirectory, "write_checkpoint", write_then_die)
        fit(RunDirectory(tmp_path))
    start = RunDirectory(tmp_path).read_checkpoint(StateCodec())
    assert start.iteration == cut
    resumed = fit(start=start)
    assert_samples_equal(reference, resumed)
    assert resumed.diagnostics == reference.diagnostics and resumed.summary == reference.summary
    assert resumed.api_calls == reference.api_calls and resumed.status == reference.status
    if metered == 200:  # the continued run spent no call on a new set-up
        assert resumed.api_calls["calls"] == 2 * (RW_SETUP_CALLS + 7 + 6)
    if metered == 32:  # chain 1 stops after 4 of its 6 draws, and chain 0 is cut to match
        assert reference.status == "budget_exhausted" and reference.api_calls["calls"] == 32
        assert (reference.summary["draws_per_chain"], reference.summary["dropped_draws"]) == (4, 2)


def test_random_walk_refuses_to_continue_a_model_with_a_site_after_its_first_query(tmp_path):
    meter = Meter()

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        meter.charge(1, 1, 1)  # the black-box query
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        pyro.sample("y", dist.Normal(loc, scale), obs=torch.tensor(0.5))

    engine = PyroRandomWalk(num_samples=3, warmup_steps=2)
    state = engine.init(Potential(model, meter=meter), seed=0)
    with pytest.raises(RuntimeError, match=r"latent site\(s\) \['scale'\] only after its first black-box query"):
        PyroRandomWalk(num_samples=3, warmup_steps=2).step(Potential(model, meter=meter), roundtrip(state))


def test_random_walk_refuses_discrete_latent_sites():
    def model():
        pyro.sample("k", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        run_random_walk(model, num_samples=2, warmup_steps=1, progress=False)


def test_random_walk_engine_pickles_without_its_kernels():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    engine, potential = PyroRandomWalk(num_samples=3, warmup_steps=2), Potential(problem.model)
    engine.run(potential, progress=False)
    assert len(engine._kernels) == 1  # the cache holds the model and its black box ...
    for copied in (pickle.loads(pickle.dumps(engine)), copy.deepcopy(engine)):
        assert copied == engine and len(copied._kernels) == 0  # ... which copies leave behind
        assert torch.equal(copied.run(Potential(problem.model), progress=False).samples["z"],
                           engine.run(Potential(problem.model), progress=False).samples["z"])


def roundtrip(state):
    codec = StateCodec()
    return codec.loads(codec.dumps(state))[0]


def assert_samples_equal(a, b) -> None:
    assert a.samples.keys() == b.samples.keys()
    for name in a.samples:
        assert torch.equal(a.samples[name], b.samples[name]), name


def test_random_walk_init_strategy_is_used():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    start = torch.tensor([5.0, -5.0], dtype=torch.float64)
    post = run_random_walk(problem.model, num_samples=1, warmup_steps=0, init_step_size=1e-3,
                           init_strategy=init_to_value(values={"z": start}), progress=False)
    assert torch.allclose(post.samples["z"][0], start, atol=0.05)


def test_random_walk_black_box_sees_only_detached_prompts(monkeypatch):
    box, potential = prompt_problem()
    latent_grad, prompt_grad = [], []

    class SpyModel(PromptModel):
        def observe(self, z, batch, temperature=1.0):
            latent_grad.append(z.requires_grad)
            return super().observe(z, batch, temperature)

    score = box.score
    def spy_score(prompts, batch):
        prompt_grad.append(prompts.requires_grad)
        return score(prompts, batch)

    monkeypatch.setattr(box, "score", spy_score)
    model = SpyModel(box, potential.model.projection)
    sampler = PyroRandomWalk(num_samples=5, warmup_steps=3)
    post = sampler.run(Potential(model, potential.model_args), progress=False)
    assert any(latent_grad)  # Pyro does hand the model a z that requires grad ...
    assert prompt_grad and not any(prompt_grad)  # ... and the black box never sees it
    assert len(prompt_grad) == RW_SETUP_CALLS + 3 + 5 == box.meter.calls  # one prompt per query
    assert post.samples["z"].shape == (5, 3)


@pytest.mark.parametrize(
    ("chain1_draws", "kept_chains", "kept_draws", "dropped"),
    [(10, 1, 40, 10), (30, 2, 30, 10), (0, 1, 40, 0)],
)
def test_random_walk_stops_at_budget_and_keeps_completed_draws(
    chain1_draws, kept_chains, kept_draws, dropped
):
    warmup, samples = 5, 40
    per_chain = RW_SETUP_CALLS + warmup + samples
    # chain 0 completes; chain 1 makes chain1_draws post-warmup draws (0: stops in warmup)
    budget = per_chain + RW_SETUP_CALLS + warmup + chain1_draws - (1 if chain1_draws == 0 else 0)
    meter = Meter(budget=budget)
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0, meter=meter)
    post = PyroRandomWalk(num_samples=samples, warmup_steps=warmup, num_chains=3).run(
        Potential(problem.model, meter=meter), seed=0, progress=False
    )
    assert post.status == "budget_exhausted" and meter.calls <= budget
    assert post.api_calls["calls"] == meter.calls == budget
    assert post.num_chains == kept_chains and post.samples["z"].shape == (kept_chains * kept_draws, 2)
    assert post.summary["dropped_draws"] == dropped
    assert sum(d["stage"] == "sample" for d in post.diagnostics) == samples + chain1_draws


def test_random_walk_budget_below_set_up_raises_a_clear_error():
    meter = Meter(budget=RW_SETUP_CALLS - 2)
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0, meter=meter)
    with pytest.raises(WarmupBudgetError, match=r"budget \(2 calls\) ran out before the first post-warmup draw"):
        run_random_walk(problem.model, num_samples=5, warmup_steps=20, meter=meter, progress=False)


def test_random_walk_budget_in_warmup_raises_a_clear_error():
    meter = Meter(budget=RW_SETUP_CALLS + 10)
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0, meter=meter)
    with pytest.raises(WarmupBudgetError, match="before the first post-warmup draw") as info:
        run_random_walk(problem.model, num_samples=5, warmup_steps=20, meter=meter, progress=False)
    assert isinstance(info.value, BudgetExhausted) and meter.calls == meter.budget


def test_random_walk_setup_cost_and_validation():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    run_random_walk(problem.model, num_samples=7, warmup_steps=3, num_chains=2, progress=False)
    assert problem.meter.calls == 2 * (RW_SETUP_CALLS + 3 + 7)
    with pytest.raises(ValueError, match="target_accept_prob"):
        PyroRandomWalk(target_accept_prob=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        PyroRandomWalk(num_samples=0)
