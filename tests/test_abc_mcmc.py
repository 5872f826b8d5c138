"""Tests of adaptive ABC-SMC with MCMC moves (``bayesprompt.inference.smc.abc_mcmc``).

Targets with a closed-form ABC posterior. In the threshold toy ``z ~ N(0, 1)`` and the
simulated label ``b`` is ``1[z > c_b]``; the error rate of ``z`` counts the thresholds
between ``z`` and ``z*``, so the ABC posterior at tolerance ``m / B`` is the prior
truncated to ``(c[k - m], c[k + 1 + m]]`` (``c[k] < z* <= c[k + 1]``). In the ``D = 50``
toy the labels read two coordinates through such thresholds, so at ``eps = 0`` the
posterior is a product of two truncated normals and 48 untouched ``N(0, 1)`` marginals.

Monte Carlo tolerances. A final population has ``N`` equally weighted particles; they
are correlated because resampling copies survivors and a finite number of moves only
partly separates the copies. As in ``tests/test_smc.py`` we take ``N_eff = N / KAPPA``
with ``KAPPA = 4`` and check at ``Z = 4`` standard errors: a mean has standard error
``sqrt(var / N_eff)``, a variance ``sqrt((mu4 - var^2) / N_eff)`` (``mu4`` the target's
fourth central moment). Why 4 suffices: one stage keeps ``alive >= alpha N = N / 2``
particles except at tie fallbacks, and resampling them makes ``N / alive`` copies; with
no move at all that alone would give ``KAPPA = N / alive`` (about 2-3 here), and moves
only decorrelate. Check (replicates, not used to set the tolerance): over 20 seeds of
the 1-D toy at ``N = 1000`` the spread of the final mean and variance corresponded to
``KAPPA`` of 1.0 and 0.6; over 10 seeds of the ``D = 50`` toy at ``N = 400``,
``N * mean_j(mean_j^2)`` over the 48 free coordinates (an estimate of ``KAPPA``) was
1.1-2.0, and their average sample variance 0.987-1.003.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.base import InitialBudgetError, run
from bayesprompt.inference.posterior import Status
from bayesprompt.inference.smc import ABCSMC, AdaptiveABCSMC, AdaptiveABCSMCState
from bayesprompt.inference.smc.abc import PopulationHistory
from bayesprompt.inference.smc.moves import crank_nicolson, gaussian_log_density, metropolis
from bayesprompt.lm.label_only import LabelOnly
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Evaluation, Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel
from bayesprompt.testing import FakeBlackBox

KAPPA = 4.0  # N / N_eff inflation for SMC particle correlation (see the module docstring)
Z = 4.0  # standard errors checked
THRESHOLDS = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 3.5, 4.0])
SECOND = torch.tensor([-3.0, -2.0, -1.2, -0.3, 0.5, 1.0])  # thresholds on z[1] in the D = 50 toy
Z_TRUE, K_TRUE = 1.7, 5  # THRESHOLDS[5] = 1.0 < 1.7 <= THRESHOLDS[6] = 2.5


def threshold_model(meter: Meter | None = None):
    """``z ~ N(0, 1)``, ``y_pred[b] = 1[z > c_b]``; one metered call per particle."""

    def model() -> None:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))  # [P, 1] inside the particle plate
        if meter is not None:
            meter.charge(calls=z.numel(), sequences=z.numel(), tokens=z.numel())
        pyro.deterministic("y_pred", (z.unsqueeze(-1) > THRESHOLDS).long(), event_dim=1)

    return model


OBSERVED = (Z_TRUE > THRESHOLDS).long()


def abc_target(epsilon: float) -> stats.rv_continuous:
    """The exact ABC posterior of the threshold toy at ``epsilon``: a truncated N(0, 1)."""
    m = int(round(epsilon * len(THRESHOLDS)))
    lower = THRESHOLDS[K_TRUE - m].item() if K_TRUE - m >= 0 else -math.inf
    upper = THRESHOLDS[K_TRUE + 1 + m].item() if K_TRUE + 1 + m < len(THRESHOLDS) else math.inf
    return stats.truncnorm(lower, upper)


def assert_matches(x: torch.Tensor, target: stats.rv_continuous, label: object = "") -> None:
    """Mean and variance of the equally weighted sample ``x`` within ``Z`` SE of ``target``."""
    x = x.double()
    n_eff = x.numel() / KAPPA
    mean, var = target.mean(), target.var()
    mu4 = target.expect(lambda v: (v - mean) ** 4)
    se_mean, se_var = math.sqrt(var / n_eff), math.sqrt((mu4 - var**2) / n_eff)
    assert abs(float(x.mean()) - mean) < Z * se_mean, (label, float(x.mean()), mean, se_mean)
    assert abs(float(x.var(unbiased=False)) - var) < Z * se_var, (label, float(x.var()), var, se_var)


# ---------------------------------------------------------------------- 1-D exact answer
@pytest.mark.parametrize(
    "options",
    [
        {},  # pCN with the reference fitted to population 0
        {"reference": (0.5, 2.0)},  # a wrong reference: still exact through the MH correction
        {"kernel": "rw"},
    ],
    ids=["pcn", "pcn-mismatched-reference", "rw"],
)
def test_every_population_matches_the_truncated_prior(options):
    history = PopulationHistory()
    engine = AdaptiveABCSMC(OBSERVED, num_particles=1000, **options)
    posterior = run(engine, Potential(threshold_model()), seed=0, progress=False, callback=history)
    assert posterior.status == Status.FINISHED and posterior.summary["epsilon"] == 0.0
    epsilons = [state.epsilon for state in history]
    assert len(history) >= 3 and all(b < a for a, b in zip(epsilons, epsilons[1:])), epsilons
    for state in history:  # each stage is a sample of the ABC posterior at its own tolerance
        assert_matches(state.particles.u[:, 0], abc_target(state.epsilon), state.epsilon)
        assert bool((state.distances <= state.epsilon + 1e-9).all())
    z = posterior.samples["z"]
    assert bool(((z > 1.0) & (z <= 2.5)).all()) and posterior.ess == pytest.approx(1000)
    for info in posterior.diagnostics:
        assert info["ess"] == pytest.approx(info["alive"]) and info["alive"] >= engine.min_alive * 1000
        assert info["unique"] > 900  # resampled copies were moved apart


# ---------------------------------------------------------------------- high dimension
def fifty_dimensional_model(dim: int = 50):
    def simulate(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([(z[..., :1] > THRESHOLDS).long(), (z[..., 1:2] > SECOND).long()], -1)

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        pyro.deterministic("y_pred", simulate(z), event_dim=1)

    return model, simulate(torch.tensor([Z_TRUE, -0.8]))


def test_fifty_dimensions_where_importance_weights_collapse():
    """ABCSMC's weights degenerate in D = 50; the MCMC engine keeps its particles and is exact.

    Only z[0] and z[1] reach the labels: at eps = 0 they are truncated normals on
    (1, 2.5] and (-1.2, -0.3], and the 48 other coordinates must stay N(0, 1).
    """
    model, observed = fifty_dimensional_model()
    num = 400
    abc = run(ABCSMC(observed, num_particles=num, max_stages=1), Potential(model), seed=0, progress=False)
    assert abc.diagnostics[-1]["complete"] and abc.diagnostics[-1]["ess"] < num / 20  # measured 1.0-3.6, seeds 0-9

    engine = AdaptiveABCSMC(observed, num_particles=num)
    posterior = run(engine, Potential(model), seed=0, progress=False)
    assert posterior.status == Status.FINISHED and posterior.summary["epsilon"] == 0.0
    assert all(info["ess"] >= engine.min_alive * num for info in posterior.diagnostics)
    z = posterior.samples["z"].double()
    assert_matches(z[:, 0], stats.truncnorm(1.0, 2.5), "z0")
    assert_matches(z[:, 1], stats.truncnorm(-1.2, -0.3), "z1")
    free = z[:, 2:]
    # Each free coordinate: mean 0 and variance 1 within a Bonferroni bound over 48 pairs
    # (two-sided 1e-4 overall: z = 4.6; variance SE sqrt(2 / N_eff) for N(0, 1)).
    z48 = 4.6
    assert float(free.mean(0).abs().max()) < z48 * math.sqrt(KAPPA / num)
    assert float((free.var(0, unbiased=False) - 1).abs().max()) < z48 * math.sqrt(2 * KAPPA / num)
    # Pooled over the 48 coordinates (independent given the genealogy), which catches a
    # common shrinkage: E[s^2] = 1 - KAPPA / N under correlation, SE sqrt(2 KAPPA / (48 N)).
    pooled = float(free.var(0, unbiased=False).mean())
    assert abs(pooled - 1.0) < KAPPA / num + Z * math.sqrt(2 * KAPPA / (48 * num)), pooled
    assert float(free.mean(0).square().mean()) < KAPPA / num * (1 + Z * math.sqrt(2 / 48))


# ---------------------------------------------------------------------- label-only prompt path
def prompt_problem(dim: int, meter: Meter):
    """A 3-class FakeBlackBox task whose 32 gold labels come from a random true prompt."""
    task = Task("toy3", ("a", "b", "c"), ("A.", "B.", "C."), "{text} {mask}", ("a", "b", "c"))
    box = FakeBlackBox(task, embed_dim=8, seed=0, meter=meter)
    g = torch.Generator().manual_seed(0)
    projection = RandomProjection.from_embeddings(torch.randn(50, 8, generator=g), dim, n_tokens=2, seed=0)
    examples = [Example(f"x{i}", 0) for i in range(32)]
    gold = box.score(projection(torch.randn(1, dim, generator=g)), box.encode(examples)).argmax(-1)[0]
    batch = box.encode([Example(f"x{i}", int(y)) for i, y in enumerate(gold)])
    meter.restore({"calls": 0, "sequences": 0, "tokens": 0, "queries": 0})
    return LikelihoodFreePromptModel(LabelOnly(box), projection), batch


def test_label_only_prompt_model_end_to_end_in_100_dimensions():
    meter = Meter()
    model, batch = prompt_problem(100, meter)
    potential = Potential(model, (batch,))
    num = 64
    abc = run(ABCSMC(batch.labels, num_particles=num, max_stages=1), potential, seed=0, progress=False)
    assert abc.diagnostics[-1]["complete"] and abc.diagnostics[-1]["ess"] < num / 4  # they collapse here too (1.0)

    meter.restore({"calls": 0, "sequences": 0, "tokens": 0, "queries": 0})
    engine = AdaptiveABCSMC(batch.labels, num_particles=num)
    posterior = run(engine, potential, seed=0, meter=meter, progress=False)
    info = posterior.diagnostics
    errors = [record["mean_distance"] for record in info]
    # The gold labels come from a prompt, so error 0 is attainable and reached.
    assert posterior.status == Status.FINISHED and posterior.summary["mean_distance"] == 0.0
    assert len(info) >= 3 and all(b < a for a, b in zip(errors, errors[1:])), errors
    assert all(record["mean_distance"] <= record["epsilon"] + 1e-9 for record in info)
    # Each reweighting keeps alpha N = N / 2 particles or more, except where ties force
    # the fallback, which keeps >= min_alive N; on this task ties bite only at the last
    # step 1/32 -> 0 (11-17 of 64 alive over seeds 0-5). The moves then separate the
    # resampled copies again.
    assert all(record["ess"] >= engine.min_alive * num for record in info)
    assert sum(record["ess"] <= num / 4 for record in info) <= 1, [record["ess"] for record in info]
    assert all(record["unique"] >= 3 * num / 4 for record in info)
    # The labels see z only through the 2-D shift of the 3 class scores, so 98 of the 100
    # coordinates keep their N(0, 1) prior: the mean variance is >= 0.98 (1 - KAPPA / N)
    # = 0.92, with SE sqrt(2 KAPPA / (100 N)) = 0.035; 0.75 is below it by > 4 SE.
    z = posterior.samples["z"]
    assert z.shape == (num, 100) and float(z.var(0, unbiased=False).mean()) > 0.75
    # One black-box query per move (plus the prior batch), one API call per particle.
    moves = sum(record["moves"] for record in info)
    assert meter.queries == 1 + moves and meter.calls == num * (1 + moves)
    assert posterior.api_calls["calls"] == meter.calls == posterior.summary["simulations"]


# ---------------------------------------------------------------------- stopping
def test_budget_exhausted_keeps_the_moves_of_the_unfinished_stage():
    meter = Meter(budget=1050)
    history = PopulationHistory()
    engine = AdaptiveABCSMC(OBSERVED, num_particles=100)
    potential = Potential(threshold_model(meter))
    posterior = run(engine, potential, seed=0, meter=meter, progress=False, callback=history)
    assert posterior.status == Status.BUDGET_EXHAUSTED
    last = history[-1]
    # the 9 paid moves after the prior batch are all in the returned population; the 10th was refused
    assert last.interrupted and posterior.diagnostics[-1]["interrupted"]
    assert last.simulations == meter.calls == posterior.summary["simulations"] == 1000
    unfinished = posterior.diagnostics[-1]["moves"]
    assert 1 <= unfinished < engine.max_moves
    torch.testing.assert_close(posterior.samples["z"], last.particles.u[:, 0], rtol=0, atol=0)
    assert posterior.summary["epsilon"] == last.epsilon > 0.0
    assert bool((last.distances <= last.epsilon + 1e-9).all())  # the moves kept pi_eps's support
    with pytest.raises(InitialBudgetError):
        run(engine, Potential(threshold_model(Meter(budget=50))), seed=0, progress=False)


def test_stalls_when_the_tolerance_cannot_decrease():
    """Alternating labels cannot come from thresholds (best error 0.5): hold, then stop."""
    meter = Meter()
    observed = torch.tensor([0, 1] * 5)
    engine = AdaptiveABCSMC(observed, num_particles=100, patience=2, max_stages=50)
    posterior = run(engine, Potential(threshold_model(meter)), seed=0, progress=False)
    assert posterior.status == Status.STALLED
    assert posterior.summary["epsilon"] == pytest.approx(0.5)
    held = [info["held"] for info in posterior.diagnostics]
    assert held[-2:] == [1, 2] and len(held) < 50
    assert all(info["epsilon"] == pytest.approx(0.5) for info in posterior.diagnostics[-3:])
    moves = sum(info["moves"] for info in posterior.diagnostics)
    assert meter.calls == 100 * (1 + moves) == posterior.summary["simulations"]


def population(distances: list[float], epsilon: float) -> AdaptiveABCSMCState:
    size = len(distances)
    particles = Evaluation(torch.zeros(size, 1), torch.zeros(size), torch.zeros(size), {})
    return AdaptiveABCSMCState(
        particles=particles,
        distances=torch.tensor(distances, dtype=torch.float64),
        epsilon=epsilon,
        scale=1.0,
        reference=(0.0, 1.0),
        stage=3,
        held=0,
        simulations=size,
        rng_state=torch.Generator().get_state(),
    )


def test_next_epsilon_handles_ties():
    engine = AdaptiveABCSMC(torch.zeros(4, dtype=torch.long), num_particles=10)  # alpha 0.5, min_alive 0.1
    assert engine.next_epsilon(population([0.25] * 4 + [0.5] * 6, 0.75)) == 0.5  # the 0.5-quantile
    # The quantile ties with the current tolerance: the largest distance below it
    assert engine.next_epsilon(population([0.25] * 3 + [0.5] * 7, 0.5)) == 0.25
    strict = AdaptiveABCSMC(torch.zeros(4, dtype=torch.long), num_particles=10, min_alive=0.4)
    assert strict.next_epsilon(population([0.25] * 3 + [0.5] * 7, 0.5)) == 0.5  # 3 < 4 alive: hold
    assert engine.next_epsilon(population([0.5] * 10, 0.5)) == 0.5  # nothing below: hold
    assert engine.next_epsilon(population([0.0] * 10, 0.25)) == 0.0


# ---------------------------------------------------------------------- determinism & moves
def test_fixed_seed_is_deterministic_and_states_are_immutable():
    potential = Potential(threshold_model())
    engine = AdaptiveABCSMC(OBSERVED, num_particles=200)
    a = run(engine, potential, seed=5, progress=False)
    b = run(engine, potential, seed=5, progress=False)
    c = run(engine, potential, seed=6, progress=False)
    torch.testing.assert_close(a.samples["z"], b.samples["z"], rtol=0, atol=0)
    assert a.diagnostics == b.diagnostics
    assert not torch.equal(a.samples["z"], c.samples["z"])
    state = engine.init(potential, seed=1)
    before = state.particles.u.clone()
    first, info1 = engine.step(potential, state)
    second, info2 = engine.step(potential, state)  # same state, same step
    assert torch.equal(first.particles.u, second.particles.u) and info1 == info2
    assert torch.equal(state.particles.u, before) and state.stage == 0


def test_pcn_with_the_prior_as_reference_always_accepts():
    """pCN is reversible w.r.t. its reference: with reference = prior the MH ratio is 1."""
    potential = Potential(lambda: pyro.sample("x", dist.Normal(torch.full((30,), 0.5), 2.0).to_event(1)))
    generator = torch.Generator().manual_seed(0)
    particles = potential.init_population(64, generator)

    def log_target(evaluation: Evaluation) -> torch.Tensor:
        return evaluation.log_prior.double() - gaussian_log_density(evaluation.u, 0.5, 2.0)

    moved, rate = metropolis(potential, particles, crank_nicolson(0.9, 0.5, 2.0), generator, log_target)
    assert rate == 1.0 and not torch.equal(moved.u, particles.u)


def test_bad_options_and_missing_site():
    with pytest.raises(KeyError, match="y_sim"):
        AdaptiveABCSMC(OBSERVED, site="y_sim").init(Potential(threshold_model()), seed=0)
    for bad in (
        {"kernel": "hmc"},
        {"reference": (0.0, 0.0)},
        {"min_alive": 0.6},
        {"patience": 0},
        {"proposal": "block"},
        {"num_particles": 1},
        {"alpha": 1.0},
        {"max_moves": 0},
        {"epsilon_min": -1.0},
    ):
        with pytest.raises(ValueError):
            AdaptiveABCSMC(OBSERVED, **bad)
