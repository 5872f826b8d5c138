"""Tests of the likelihood-free ABC-SMC engine (``bayesprompt.inference.smc.abc``).

The main target is a toy with a closed-form ABC posterior: ``z ~ N(0, 1)`` and the
simulated label ``b`` is ``1[z > c_b]`` for fixed sorted thresholds ``c``. The error
rate of ``z`` is the fraction of thresholds lying between ``z`` and the true ``z*``, so

    {z : error_rate(z) <= m / B} = (c[k - m], c[k + 1 + m]]    (k: c[k] < z* <= c[k + 1])

and the ABC posterior at tolerance ``m / B`` is the prior truncated to that interval:
a truncated normal with known mean and variance.

Monte Carlo tolerances: for a weighted population the standard error of the mean is
taken as ``sd / sqrt(ESS)`` and that of the variance as ``sqrt((mu4 - sd^4) / ESS)``
(mu4: the target's fourth central moment). These ignore the correlation between
particles that share ancestors, so the bounds are generous: over seeds 0-9 (N = 1000,
every population of each run) the importance-weighted engine's errors were at most
1.3 SE (mean) and 1.8 SE (variance), and the assertions use 4 SE and 5 SE. The uniform
variant's final mean was 20.7-23.2 SE too large over the same seeds; the test asserts
more than 10 SE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.base import run
from bayesprompt.inference.posterior import Status
from bayesprompt.inference.smc.abc import (
    ABCSMC,
    ABCSMCState,
    PartialPopulation,
    PopulationHistory,
    error_rate,
    importance_log_weights,
    kernel_covariance,
    one_minus_f1,
    select_population,
    weighted_quantile,
)
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.lm.label_only import LabelOnly
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel
from bayesprompt.runs import StateCodec

THRESHOLDS = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 3.5, 4.0])
Z_TRUE = 1.7  # between THRESHOLDS[5] = 1.0 and THRESHOLDS[6] = 2.5, well right of the prior mode
K_TRUE = 5


class ThresholdToy:
    """``z ~ N(0, 1)``, ``y_pred[b] = 1[z > c_b]``; one metered call per particle."""

    def __init__(self, observed: torch.Tensor | None = None, meter: Meter | None = None) -> None:
        self.meter = meter if meter is not None else Meter()
        self.observed = (Z_TRUE > THRESHOLDS).long() if observed is None else observed

    def model(self) -> None:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))  # [P, 1] inside the particle plate
        self.meter.charge(calls=z.numel(), sequences=z.numel(), tokens=z.numel())
        pyro.deterministic("y_pred", (z.unsqueeze(-1) > THRESHOLDS).long(), event_dim=1)

    def potential(self) -> Potential:
        return Potential(self.model)


def abc_target(epsilon: float) -> stats.rv_continuous:
    """The exact ABC posterior of the toy at tolerance ``epsilon``: a truncated N(0, 1)."""
    m = int(round(epsilon * len(THRESHOLDS)))
    lower = THRESHOLDS[K_TRUE - m].item() if K_TRUE - m >= 0 else -math.inf
    upper = THRESHOLDS[K_TRUE + 1 + m].item() if K_TRUE + 1 + m < len(THRESHOLDS) else math.inf
    return stats.truncnorm(lower, upper)


def weighted_moments(u: torch.Tensor, log_weights: torch.Tensor) -> tuple[float, float]:
    w = torch.softmax(log_weights.double(), 0)
    z = u[:, 0].double()
    mean = float(w @ z)
    return mean, float(w @ (z - mean) ** 2)


def standard_errors(target: stats.rv_continuous, ess: float) -> tuple[float, float]:
    """Standard errors of the weighted mean and variance of ``ess`` effective draws."""
    mean, var = target.mean(), target.var()
    mu4 = target.expect(lambda x: (x - mean) ** 4)
    return math.sqrt(var / ess), math.sqrt((mu4 - var**2) / ess)


def run_toy(seed: int = 0, **options):
    toy = ThresholdToy()
    history = PopulationHistory()
    engine = ABCSMC(toy.observed, **{"num_particles": 1000, **options})
    posterior = run(engine, toy.potential(), seed=seed, progress=False, callback=history)
    return posterior, history


def next_population(engine: ABCSMC, potential: Potential, state: ABCSMCState) -> ABCSMCState:
    """Step batch by batch until the next population is complete."""
    while True:
        state, info = engine.step(potential, state)
        assert not info.get("stalled")
        if info["complete"]:
            return state


# ---------------------------------------------------------------------- correctness
def test_importance_weighted_populations_match_the_truncated_prior():
    posterior, history = run_toy(weighting="importance", schedule="quantile")
    assert posterior.status == Status.FINISHED and posterior.summary["epsilon"] == 0.0
    assert len(history) >= 3
    final_target = abc_target(0.0)
    gaps = []
    for state in history:  # every population matches the ABC posterior at its own tolerance
        target = abc_target(state.epsilon)
        mean, var = weighted_moments(state.u, state.log_weights)
        se_mean, se_var = standard_errors(target, state.ess)
        assert abs(mean - target.mean()) < 4 * se_mean, (state.epsilon, mean, target.mean(), se_mean)
        assert abs(var - target.var()) < 5 * se_var, (state.epsilon, var, target.var(), se_var)
        gaps.append(abs(mean - final_target.mean()))
    # ... and so gets closer to the exact (eps = 0) posterior as the tolerance shrinks.
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert all(b < a for a, b in zip([s.epsilon for s in history], [s.epsilon for s in list(history)[1:]]))
    z = posterior.samples["z"]
    assert bool(((z > 1.0) & (z <= 2.5)).all())


def test_uniform_weighting_is_biased():
    """Shen et al.'s uniform weights ignore prior / proposal: the mean is off by many SE."""
    posterior, _ = run_toy(weighting="uniform", schedule="quantile")
    target = abc_target(0.0)
    assert posterior.status == Status.FINISHED
    assert posterior.ess == pytest.approx(1000)
    se_mean, _ = standard_errors(target, posterior.ess)
    error = float(posterior.mean("z")) - target.mean()
    assert error > 10 * se_mean, (error, se_mean)  # measured ~ +22 SE: too far right


def test_two_dimensional_target_with_a_full_covariance_kernel():
    """z ~ N(0, I_2), labels from thresholds on each coordinate: at eps = 0 the ABC posterior
    is a product of truncated normals (measured over seeds 0-3: <= 1.9 SE, variances within 7 %)."""
    second = torch.tensor([-3.0, -2.0, -1.2, -0.3, 0.5, 1.0])

    def simulate(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([(z[..., :1] > THRESHOLDS).long(), (z[..., 1:] > second).long()], -1)

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.deterministic("y_pred", simulate(z), event_dim=1)

    observed = simulate(torch.tensor([Z_TRUE, -0.8]))
    posterior = run(ABCSMC(observed, num_particles=1000), Potential(model), seed=0, progress=False)
    assert posterior.status == Status.FINISHED
    z, w = posterior.samples["z"].double(), posterior.weights
    mean = w @ z
    for i, target in enumerate((stats.truncnorm(1.0, 2.5), stats.truncnorm(-1.2, -0.3))):
        se_mean, se_var = standard_errors(target, posterior.ess)
        assert abs(float(mean[i]) - target.mean()) < 4 * se_mean
        assert abs(float(w @ (z[:, i] - mean[i]) ** 2) - target.var()) < 5 * se_var


def test_paper_schedule_tightens_by_one_example():
    """eps_1 = best prior distance, then eps_t = eps_{t-1} - 1/B; every population is exact."""
    # A small prior batch (3 draws) keeps the best prior distance above 0 (0.2 for seed 5),
    # so there are several stages.
    posterior, history = run_toy(seed=5, schedule="paper", num_particles=400, initial_batch=3)
    epsilons = [state.epsilon for state in history]
    assert epsilons[0] > 0 and epsilons[-1] == 0.0 and posterior.status == Status.FINISHED
    assert epsilons == pytest.approx([epsilons[0] - t / len(THRESHOLDS) for t in range(len(epsilons))])
    for state in history:
        target = abc_target(state.epsilon)
        mean, _ = weighted_moments(state.u, state.log_weights)
        assert abs(mean - target.mean()) < 4 * standard_errors(target, state.ess)[0]
        assert bool((state.distances <= state.epsilon + 1e-9).all())


def direct_weights(u, prior_density, ancestors, ancestor_weights, cov) -> torch.Tensor:
    """``w_i = p(u_i) / sum_j w_j N(u_i; u_j, cov)``, normalised: a plain loop with scipy."""
    raw = []
    for x, density in zip(u, prior_density):
        mixture = 0.0
        for weight, ancestor in zip(ancestor_weights, ancestors):
            mixture += weight * stats.multivariate_normal(ancestor, cov).pdf(x)
        raw.append(density / mixture)
    raw = torch.tensor(raw, dtype=torch.float64)
    return raw / raw.sum()


def test_engine_weights_equal_a_direct_computation():
    """One engine step recomputed with a plain loop over scipy's multivariate normal pdf."""
    toy = ThresholdToy()
    potential = toy.potential()
    engine = ABCSMC(toy.observed, num_particles=50)
    state0 = engine.init(potential, seed=0)
    state1 = next_population(engine, potential, state0)
    u1 = state1.u.double().numpy()
    expected = direct_weights(
        u1,
        stats.norm(0.0, 1.0).pdf(u1[:, 0]),
        state0.u.double().numpy(),
        torch.softmax(state0.log_weights, 0).numpy(),
        kernel_covariance(state0.u, state0.log_weights, 2.0, "full").numpy(),  # Beaumont: 2 x cov
    )
    torch.testing.assert_close(state1.log_weights.exp(), expected, rtol=1e-6, atol=0)


def test_importance_log_weights_in_several_dimensions():
    g = torch.Generator().manual_seed(0)
    ancestors, u = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    ancestor_log_w, log_prior = torch.randn(7, generator=g), torch.randn(5, generator=g)
    a = torch.randn(3, 3, generator=g)
    cov = (a @ a.T + 0.5 * torch.eye(3)).double()
    got = importance_log_weights(u, log_prior, ancestors, ancestor_log_w, cov)
    expected = direct_weights(
        u.double().numpy(),
        log_prior.double().exp().numpy(),
        ancestors.double().numpy(),
        torch.softmax(ancestor_log_w.double(), 0).numpy(),
        cov.numpy(),
    )
    torch.testing.assert_close(got.exp(), expected, rtol=1e-9, atol=0)
    assert float(torch.logsumexp(got, 0)) == pytest.approx(0.0, abs=1e-12)


def test_kernel_covariance_is_twice_the_weighted_covariance():
    u = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    log_w = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    mean = torch.tensor([0.5, 1.0])
    centred = u - mean
    expected = 2 * (centred.T * torch.tensor([0.5, 0.25, 0.25])) @ centred
    torch.testing.assert_close(kernel_covariance(u, log_w).float(), expected, rtol=1e-6, atol=1e-6)
    diagonal = kernel_covariance(u, log_w, kind="diagonal").float()
    torch.testing.assert_close(diagonal, torch.diag(torch.diagonal(expected)), rtol=1e-6, atol=1e-6)


def test_weighted_quantile():
    values = torch.tensor([0.4, 0.1, 0.3, 0.2])
    assert weighted_quantile(values, torch.zeros(4), 0.5) == pytest.approx(0.2)
    assert weighted_quantile(values, torch.zeros(4), 0.51) == pytest.approx(0.3)
    assert weighted_quantile(values, torch.log(torch.tensor([0.0, 0.9, 0.05, 0.05])), 0.5) == pytest.approx(0.1)


# ---------------------------------------------------------------------- distances
def test_error_rate():
    observed = torch.tensor([0, 1, 2, 1])
    simulated = torch.tensor([[0, 1, 2, 1], [2, 1, 0, 1], [1, 0, 1, 0]])
    expected = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(error_rate(simulated, observed), expected)


@pytest.mark.parametrize(
    "simulated, observed, expected",
    [
        ([1, 0, 1, 0], [1, 0, 1, 0], 0.0),  # perfect
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # no positives anywhere: identical labels, distance 0
        ([0, 0, 0, 0], [1, 0, 0, 0], 1.0),  # a positive missed, none predicted: F1 = 0
        ([1, 1, 1, 1], [0, 0, 0, 0], 1.0),  # only false positives: F1 = 0
        ([1, 1, 0, 0], [1, 0, 0, 0], 1 - 2 / 3),  # TP = 1, FP = 1: F1 = 2/3
        ([1, 1, 1, 0], [1, 1, 0, 1], 1 - 4 / 6),  # TP = 2, FP = 1, FN = 1
        ([0, 1, 0, 1], [1, 0, 1, 0], 1.0),  # every positive wrong
    ],
)
def test_one_minus_f1(simulated: Sequence[int], observed: Sequence[int], expected: float):
    got = one_minus_f1(torch.tensor([simulated]), torch.tensor(observed))
    assert got.shape == (1,) and got.dtype == torch.float64
    assert float(got[0]) == pytest.approx(expected)


def test_one_minus_f1_negates_true_negatives():
    """F1 ignores true negatives: adding them never changes the distance."""
    a = one_minus_f1(torch.tensor([[1, 1, 0]]), torch.tensor([1, 0, 1]))
    b = one_minus_f1(torch.tensor([[1, 1, 0, 0, 0]]), torch.tensor([1, 0, 1, 0, 0]))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("distance", [error_rate, one_minus_f1])
def test_distances_reject_bad_shapes(distance):
    with pytest.raises(ValueError, match=r"\[P, B\]"):
        distance(torch.zeros(3, 4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[P, B\]"):
        distance(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------- stopping
def test_stalls_on_an_impossible_tolerance():
    """Labels alternating 0/1 cannot come from thresholds (best error 0.5): stop, keep eps=0.5."""
    meter = Meter()
    toy = ThresholdToy(observed=torch.tensor([0, 1] * 5), meter=meter)
    history = PopulationHistory()
    engine = ABCSMC(toy.observed, num_particles=100, schedule="paper", max_rejected_batches=3, batch_size=50)
    posterior = run(engine, toy.potential(), seed=0, progress=False, callback=history)
    assert posterior.status == Status.STALLED
    last = history[-1]
    assert last.epsilon == pytest.approx(0.5) and posterior.summary["epsilon"] == last.epsilon
    torch.testing.assert_close(posterior.samples["z"], last.u[:, 0])
    stalled_info = posterior.diagnostics[-1]
    assert stalled_info["stalled"] and stalled_info["epsilon"] == pytest.approx(0.4)
    assert stalled_info["batch"] == 3 and stalled_info["acceptance_rate"] == 0.0
    assert [info["accepted"] for info in posterior.diagnostics[-3:]] == [0, 0, 0]
    assert meter.calls == 100 + sum(info["proposals"] for info in posterior.diagnostics)
    assert posterior.summary["simulations"] == meter.calls  # the stalled stage's proposals count


def test_budget_exhausted_mid_population_returns_the_last_complete_one():
    # Populations complete at 600 and 1000 calls (seed 0); the third needs 4 batches of 100,
    # so a budget of 1150 pays for one of them and refuses the second.
    meter = Meter(budget=1150)
    toy = ThresholdToy(meter=meter)
    history = PopulationHistory()
    engine = ABCSMC(toy.observed, num_particles=200, batch_size=100)
    posterior = run(engine, toy.potential(), seed=0, meter=meter, progress=False, callback=history)
    assert posterior.status == Status.BUDGET_EXHAUSTED
    assert meter.calls <= 1150
    last = history[-1]
    assert meter.calls > last.simulations  # some proposals of an unfinished population were paid for
    torch.testing.assert_close(posterior.samples["z"], last.u[:, 0])
    torch.testing.assert_close(posterior.log_weights, last.log_weights)
    assert posterior.summary["epsilon"] == last.epsilon > 0.0
    assert bool((last.distances <= last.epsilon + 1e-9).all())
    assert posterior.summary["simulations"] == meter.calls  # every paid batch, the unfinished stage's too
    assert not posterior.diagnostics[-1]["complete"]


def test_one_step_is_one_batch_and_a_checkpoint_mid_stage_resumes_identically():
    """A stage spans several steps; a state saved between two of them continues bit-equal."""
    meter = Meter()
    toy = ThresholdToy(meter=meter)
    engine = ABCSMC(toy.observed, num_particles=200, batch_size=100, max_stages=3)
    potential = toy.potential()
    state, infos = engine.init(potential, seed=0), []
    calls = meter.calls
    while engine.stop_reason(state) is None:
        state, info = engine.step(potential, state)
        assert meter.calls - calls == 100 and info["proposals"] == 100  # one batch, one call
        calls = meter.calls
        infos.append((info, state))
    mid = [s for info, s in infos if s.partial is not None and s.partial.batches >= 2]
    assert mid, "no stage took three batches"
    saved = mid[0]
    codec = StateCodec()
    restored = codec.loads(codec.dumps(saved))[0]
    assert isinstance(restored.partial, PartialPopulation) and restored.partial.count == saved.partial.count
    assert bool((restored.partial.distances <= restored.partial.epsilon + 1e-9).all())
    resumed = restored
    while engine.stop_reason(resumed) is None:
        resumed, _ = engine.step(potential, resumed)
    for name in ("u", "log_weights", "distances"):
        assert torch.equal(getattr(resumed, name), getattr(state, name)), name
    assert (resumed.stage, resumed.simulations, resumed.epsilon) == (state.stage, state.simulations, state.epsilon)
    complete = [info for info, _ in infos if info["complete"]]
    assert [info["stage"] for info in complete] == [1, 2, 3]
    assert all(info["stage_accepted"] == 200 for info in complete)


def test_max_stages_and_initial_batch():
    toy = ThresholdToy()
    engine = ABCSMC(toy.observed, num_particles=50, initial_batch=80, max_stages=1)
    potential = toy.potential()
    state = engine.init(potential, seed=1)
    assert state.num_particles == 80 and state.epsilon == math.inf
    posterior = run(engine, potential, state=state, progress=False)
    assert posterior.status == Status.MAX_ITERATIONS and posterior.num_samples == 50


def test_missing_site_and_bad_options():
    toy = ThresholdToy()
    with pytest.raises(KeyError, match="y_sim"):
        ABCSMC(toy.observed, site="y_sim").init(toy.potential(), seed=0)
    for bad in (
        {"schedule": "fast"},
        {"weighting": "none"},
        {"alpha": 1.0},
        {"num_particles": 0},
        {"epsilon_min": -0.1},
        {"kernel_scale": 0.0},
    ):
        with pytest.raises(ValueError):
            ABCSMC(toy.observed, **bad)


# ---------------------------------------------------------------------- determinism & selection
def test_fixed_seed_is_deterministic():
    a, _ = run_toy(seed=5, num_particles=200)
    b, _ = run_toy(seed=5, num_particles=200)
    c, _ = run_toy(seed=6, num_particles=200)
    torch.testing.assert_close(a.samples["z"], b.samples["z"], rtol=0, atol=0)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)
    assert a.diagnostics == b.diagnostics
    assert not torch.equal(a.samples["z"], c.samples["z"])


def test_population_history_and_selection():
    _, history = run_toy(num_particles=200)
    stages = [state.stage for state in history]
    assert stages == list(range(1, len(history) + 1))
    index, best = select_population(history, lambda s: -abs(s.epsilon - 0.1))
    assert best.epsilon == pytest.approx(0.1) and history[index] is best
    assert history.best(lambda s: 1.0) is history[-1]  # ties go to the later population
    with pytest.raises(ValueError):
        select_population([], lambda s: 0.0)


# ---------------------------------------------------------------------- label-only prompt path
class LinearBlackBox(PromptBlackBox):
    """A fake LM: class-1 score ``x_b . (mean prompt vector @ R)`` with a fixed random ``R``."""

    embed_dim = 6

    def __init__(self, task: Task, features: torch.Tensor, meter: Meter) -> None:
        super().__init__(task, meter)
        self.features = features
        self.readout = torch.randn(self.embed_dim, self.embed_dim, generator=torch.Generator().manual_seed(1))

    def encode(self, examples: Sequence[Example], template=None) -> EncodedBatch:
        index = torch.tensor([int(e.text) for e in examples])
        return EncodedBatch(
            input_ids=index.unsqueeze(-1),
            attention_mask=torch.ones(len(examples), 1, dtype=torch.long),
            labels=torch.tensor([e.label for e in examples]),
            extras={"features": self.features[index]},
        )

    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        direction = prompts.mean(1) @ self.readout  # [p, d]
        positive = direction @ batch.extras["features"].T  # [p, b]
        return torch.stack([torch.zeros_like(positive), positive], -1)


def test_label_only_prompt_model_end_to_end():
    task = Task("toy", ("neg", "pos"), ("no", "yes"), "{text} {mask}", ("no", "yes"))
    g = torch.Generator().manual_seed(0)
    features = torch.randn(32, LinearBlackBox.embed_dim, generator=g)
    meter = Meter()
    backend = LinearBlackBox(task, features, meter)
    embeddings = torch.randn(50, LinearBlackBox.embed_dim, generator=g)
    projection = RandomProjection.from_embeddings(embeddings, intrinsic_dim=4, n_tokens=2, seed=0)
    z_true = torch.randn(1, 4, generator=g)
    unlabelled = backend.encode([Example(str(i), 0) for i in range(32)])
    gold = backend.score(projection(z_true), unlabelled).argmax(-1)[0]  # labels a true prompt predicts
    batch = backend.encode([Example(str(i), int(y)) for i, y in enumerate(gold)])
    meter.restore({"calls": 0, "sequences": 0, "tokens": 0, "queries": 0})

    model = LikelihoodFreePromptModel(LabelOnly(backend), projection)
    engine = ABCSMC(batch.labels, num_particles=100, max_stages=5)
    posterior = run(engine, Potential(model, (batch,)), seed=0, meter=meter, progress=False)

    errors = [info["mean_distance"] for info in posterior.diagnostics if info["complete"]]
    assert len(errors) == 5 and posterior.status in (Status.MAX_ITERATIONS, Status.FINISHED)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.15 and posterior.summary["mean_distance"] == errors[-1]
    assert posterior.samples["z"].shape == (100, 4)
    # one black-box query per batch (plus the prior batch), one API call per particle
    assert meter.queries == 1 + len(posterior.diagnostics)
    assert meter.calls == 100 + sum(info["proposals"] for info in posterior.diagnostics)
    assert posterior.api_calls["calls"] == meter.calls
