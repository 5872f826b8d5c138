"""The dev-set selection score of the CMA-ES engines (``bayesprompt.inference.selection``)."""

from __future__ import annotations

import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.inference.selection import TIE_BREAK_WEIGHT, dev_accuracy_score
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import PromptModel
from bayesprompt.testing import FakeBlackBox

TASK = Task("toy3", ("a", "b", "c"), ("A.", "B.", "C."), "{text} {mask}", ("a", "b", "c"))


def scored_problem():
    box = FakeBlackBox(TASK, embed_dim=6)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=5, n_tokens=2, seed=0)
    dev = box.encode([Example(f"x{i}", i % 3) for i in range(30)])
    potential = Potential(PromptModel(box, projection), (dev,))
    potential.discover_sites()
    return box, projection, dev, dev_accuracy_score(potential, dev)


def test_score_is_accuracy_plus_a_small_log_likelihood_even_where_probabilities_underflow():
    box, projection, dev, score = scored_problem()
    u = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)) * 3000.0  # logits in the thousands
    log_probs = torch.log_softmax(box.score(projection(u), dev).double(), -1)
    assert bool((log_probs.exp().float() == 0).any())  # float32 probabilities underflow here
    accuracy = (log_probs.argmax(-1) == dev.labels).double().mean(-1)
    log_lik = log_probs.gather(-1, dev.labels.expand(40, -1).unsqueeze(-1)).sum((-1, -2))
    scores = score(u)
    assert bool(torch.isfinite(scores).all())  # was -inf for every prompt before the fix
    torch.testing.assert_close(scores, accuracy + TIE_BREAK_WEIGHT * log_lik, rtol=0, atol=1e-9)


def test_likelihood_breaks_ties_but_never_outweighs_one_example():
    _, _, dev, score = scored_problem()
    u = torch.randn(400, 5, generator=torch.Generator().manual_seed(1)) * 20.0
    scores = score(u)
    accuracy = torch.round(scores * len(dev)) / len(dev)
    assert bool(((scores - accuracy).abs() < 0.5 / len(dev)).all())  # the tie-break stays inside one example
    order = torch.argsort(scores, descending=True)
    assert bool((accuracy[order][:-1] >= accuracy[order][1:]).all())  # sorted by accuracy first
