"""Engines on the real embedded MiniLM black box (small budgets)."""

import pytest
import torch

from bayesprompt.data import few_shot_split, get_task, load_split
from bayesprompt.inference import Status, run
from bayesprompt.inference.cma import CMAES
from bayesprompt.inference.smc import AdaptiveABCSMC, TemperedSMC
from bayesprompt.lm import LabelOnly, Meter, SentenceEncoderBlackBox
from bayesprompt.models import LikelihoodFreePromptModel, Potential, PromptModel, RandomProjection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    task = get_task("sst2")
    train, _ = few_shot_split(load_split(task, "train"), task.num_classes, k=8, dev_k=1, seed=0)
    meter = Meter()
    box = SentenceEncoderBlackBox(task, meter=meter)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=20, n_tokens=3, seed=0)
    return box, projection, box.encode(train)


def test_cmaes_raises_the_training_likelihood_on_minilm(setup):
    box, projection, batch = setup
    potential = Potential(PromptModel(box, projection), (batch,), meter=box.meter)
    box.meter.budget = box.meter.calls + 160
    posterior = run(CMAES(popsize=8), potential, seed=0, meter=box.meter, progress=False)
    box.meter.budget = None
    assert posterior.status == Status.BUDGET_EXHAUSTED
    losses = [d["train_loss"] for d in posterior.diagnostics]
    # the best prompt found beats the start of the search and the prompt-free zero point
    zero = -float(potential.evaluate(torch.zeros(1, potential.dim)).log_likelihood[0])
    assert min(losses) < losses[0] and min(losses) < zero


def test_tempered_smc_reaches_the_posterior_on_minilm(setup):
    box, projection, batch = setup
    potential = Potential(PromptModel(box, projection), (batch,), meter=box.meter)
    posterior = run(TemperedSMC(num_particles=16, max_moves=2), potential, seed=0, progress=False)
    assert posterior.status == Status.FINISHED and posterior.summary["final_beta"] == 1.0
    assert torch.isfinite(torch.tensor(posterior.summary["log_evidence"]))
    # the posterior fits the training labels better than the prior draws it started from
    prior = potential.init_population(16, torch.Generator().manual_seed(1))
    fitted = potential.evaluate(potential.pack(posterior.samples))
    assert fitted.log_likelihood.mean() > prior.log_likelihood.mean()


def test_likelihood_free_abc_lowers_the_training_error_on_minilm(setup):
    box, projection, batch = setup
    view = LabelOnly(box)
    potential = Potential(LikelihoodFreePromptModel(view, projection), (batch,), meter=box.meter)
    engine = AdaptiveABCSMC(observed=batch.labels, num_particles=16, max_stages=3, max_moves=2)
    posterior = run(engine, potential, seed=0, progress=False)
    errors = [d["mean_distance"] for d in posterior.diagnostics]
    assert errors[-1] < errors[0] or errors[-1] == 0.0
