"""Ensemble predictions: streaming in chunks, sub-sampling the posterior, metered calls."""

import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.posterior import Posterior
from bayesprompt.lm import LabelOnly, Meter
from bayesprompt.models import LikelihoodFreePromptModel, Potential, PromptModel, RandomProjection
from bayesprompt.predict import distinct_rows, predict, predict_votes
from bayesprompt.testing import FakeBlackBox

TOY = Task("toy", ("a", "b", "c"), ("A.", "B.", "C."), "{text} {mask}", ("a", "b", "c"))


def _setup(likelihood_free: bool = False):
    meter = Meter()
    box = FakeBlackBox(TOY, embed_dim=6, seed=2, meter=meter)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    model = LikelihoodFreePromptModel(LabelOnly(box), projection) if likelihood_free else PromptModel(box, projection)
    batch = box.encode([Example(f"text {i}", i % 3) for i in range(10)])
    potential = Potential(model, (batch,), meter=meter)
    potential.discover_sites()
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 3
    return meter, potential, batch, z


def test_chunking_does_not_change_predictions_and_costs_one_call_per_sample_and_chunk():
    meter, potential, batch, z = _setup()
    posterior = Posterior({"z": z[:8]}, torch.zeros(8))
    whole = predict(posterior, potential, batch)
    assert meter.calls == 8
    chunked = predict(posterior, potential, batch, chunk_size=3)  # 4 chunks
    assert meter.calls == 8 + 8 * 4
    assert torch.allclose(whole.probs, chunked.probs, atol=1e-6)
    assert whole.probs.shape == (8, 10, 3) and torch.equal(whole.labels, batch.labels)


def test_num_samples_predicts_with_the_subsampled_posterior():
    meter, potential, batch, z = _setup()
    weighted = Posterior({"z": z}, torch.linspace(0, 3, 40))
    small = predict(weighted, potential, batch, num_samples=5, seed=7)
    distinct = torch.unique(weighted.subsample(5, seed=7).samples["z"], dim=0).shape[0]
    assert meter.calls == distinct and small.probs.shape[0] == 5
    reference = predict(weighted.subsample(5, seed=7), potential, batch)
    assert torch.equal(small.probs, reference.probs)
    equal = Posterior({"z": z}, torch.zeros(40))
    assert torch.equal(predict(equal, potential, batch, num_samples=4).probs, predict(equal.subsample(4), potential, batch).probs)


def test_votes_are_one_hot_argmax_of_the_scores_and_subsample_too():
    _, potential, batch, z = _setup(likelihood_free=True)
    _, score_potential, _, _ = _setup()
    posterior = Posterior({"z": z}, torch.zeros(40))
    votes = predict_votes(posterior, potential, batch, num_classes=3, num_samples=6)
    probs = predict(posterior, score_potential, batch, num_samples=6).probs
    assert votes.probs.shape == (6, 10, 3)
    assert torch.equal(votes.probs.argmax(-1), probs.argmax(-1)) and torch.equal(votes.probs.sum(-1), torch.ones(6, 10))


def test_repeated_samples_are_queried_once_and_get_the_same_predictions():
    meter, potential, batch, z = _setup()
    order = torch.tensor([2, 0, 2, 1, 0, 2])  # three distinct prompts, six samples
    repeated = Posterior({"z": z[order]}, torch.linspace(0, 1, 6))
    probs = predict(repeated, potential, batch, chunk_size=4).probs  # 3 chunks
    assert meter.calls == 3 * 3
    distinct = predict(Posterior({"z": z[:3]}, torch.zeros(3)), potential, batch, chunk_size=4).probs
    assert torch.equal(probs, distinct[order])
    torch.testing.assert_close(predict(repeated, potential, batch).weights, repeated.weights)  # each sample keeps its own


def test_repeated_samples_vote_once_each_and_keep_their_votes():
    meter, potential, batch, z = _setup(likelihood_free=True)
    order = torch.tensor([1, 1, 0, 1])
    votes = predict_votes(Posterior({"z": z[order]}, torch.zeros(4)), potential, batch, num_classes=3)
    assert meter.calls == 2
    single = predict_votes(Posterior({"z": z[:2]}, torch.zeros(2)), potential, batch, num_classes=3)
    assert torch.equal(votes.probs, single.probs[order])


def test_samples_without_repeats_are_run_as_given():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    distinct, inverse = distinct_rows(z)
    assert torch.equal(distinct, z) and inverse.tolist() == [0, 1, 2, 3, 4]
