"""BBT's CMA-ES engine on analytic targets and under a budget."""

import torch

from bayesprompt.inference.base import run
from bayesprompt.inference.cma import CMAES
from bayesprompt.inference.posterior import Status
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.testing import LinearGaussian


def test_map_objective_finds_the_posterior_mode():
    problem = LinearGaussian.random(dim=3, num_obs=12, seed=1)
    posterior = run(CMAES(popsize=10, max_iterations=150, map_objective=True), Potential(problem.model), seed=0, progress=False)
    # the Gaussian posterior's mode is its mean; CMA-ES converges far below this tolerance
    torch.testing.assert_close(posterior.samples["z"][0].double(), problem.posterior_mean(), atol=1e-3, rtol=0)


def test_likelihood_objective_finds_least_squares():
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=2)
    posterior = run(CMAES(popsize=8, max_iterations=150), Potential(problem.model), seed=0, progress=False)
    least_squares = torch.linalg.lstsq(problem.design, problem.observations.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(posterior.samples["z"][0].double(), least_squares, atol=1e-3, rtol=0)


def test_stops_at_the_budget_with_the_best_prompt_so_far():
    meter = Meter(budget=205)
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=3, meter=meter)
    posterior = run(CMAES(popsize=10), Potential(problem.model), seed=0, meter=meter, progress=False)
    assert posterior.status == Status.BUDGET_EXHAUSTED
    # 1 call discovers the sites, then 20 iterations of 10 calls; the 21st does not fit
    assert meter.calls == 201 and posterior.api_calls["calls"] == 201
    assert len(posterior.diagnostics) == 20
    assert posterior.summary["best_train_loss"] == min(d["train_loss"] for d in posterior.diagnostics)


def test_dev_selection_keeps_the_best_dev_mean():
    problem = LinearGaussian.random(dim=2, num_obs=10, seed=4)
    target = torch.tensor([3.0, -3.0])
    dev_score = lambda u: -((u - target) ** 2).sum(-1)  # noqa: E731
    posterior = run(CMAES(popsize=8, max_iterations=40, dev_score=dev_score, dev_every=2), Potential(problem.model), progress=False)
    scores = [d["dev_score"] for d in posterior.diagnostics if "dev_score" in d]
    assert len(scores) == 21  # iteration 1 and every 2nd
    assert posterior.summary["best_score"] == max(scores)
    chosen = posterior.samples["z"][0]
    assert float(dev_score(chosen.unsqueeze(0))) == max(scores)


def test_same_seed_same_result():
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=5)
    a = run(CMAES(popsize=6, max_iterations=10), Potential(problem.model), seed=3, progress=False)
    b = run(CMAES(popsize=6, max_iterations=10), Potential(problem.model), seed=3, progress=False)
    assert torch.equal(a.samples["z"], b.samples["z"])
