"""Fitting the Dirichlet smoothing of label-only votes on held-out labels.

Checks against closed forms: for unanimous votes on two classes the maximum-likelihood
confidence equals the held-out accuracy, so alpha = S (1 - q) / (2 q - 1); for mixed votes
the grid optimum is compared with a continuous optimiser (scipy) on log alpha.
"""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

from bayesprompt.predict import EnsemblePredictions, fit_vote_smoothing


def _unanimous(samples: int, labels: list[int], voted: int = 0, classes: int = 2) -> EnsemblePredictions:
    onehot = torch.nn.functional.one_hot(torch.full((samples, len(labels)), voted), classes).float()
    return EnsemblePredictions(onehot, torch.full((samples,), 1.0 / samples), torch.tensor(labels))


@pytest.mark.parametrize("samples,right,total", [(32, 24, 32), (16, 9, 10), (64, 29, 32)])
def test_unanimous_binary_votes_get_the_held_out_accuracy_as_confidence(samples, right, total):
    q = right / total
    votes = _unanimous(samples, [0] * right + [1] * (total - right))
    alpha = fit_vote_smoothing(votes)
    exact = samples * (1 - q) / (2 * q - 1)
    assert alpha == pytest.approx(exact, rel=0.01)  # grid spacing: 10 ** (6 / 2000) - 1 = 0.7 %
    assert votes.mean(alpha)[0, 0].item() == pytest.approx(q, abs=1e-3)


def test_matches_a_continuous_optimiser_on_mixed_weighted_votes():
    generator = torch.Generator().manual_seed(3)
    samples, examples, classes = 24, 40, 3
    labels = torch.randint(0, classes, (examples,), generator=generator)
    # voters agree with the label 60 % of the time, otherwise vote at random
    agree = torch.rand(samples, examples, generator=generator) < 0.6
    random_votes = torch.randint(0, classes, (samples, examples), generator=generator)
    votes_idx = torch.where(agree, labels.expand(samples, -1), random_votes)
    weights = torch.rand(samples, generator=generator, dtype=torch.float64) + 0.5
    votes = EnsemblePredictions(
        torch.nn.functional.one_hot(votes_idx, classes).float(), weights / weights.sum(), labels
    )

    def nll(log_alpha: float) -> float:
        p = votes.mean(math.exp(log_alpha)).double()
        return -p.gather(-1, labels.unsqueeze(-1)).log().sum().item()

    best = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e4)), method="bounded", options={"xatol": 1e-6})
    alpha = fit_vote_smoothing(votes)
    assert math.log(alpha) == pytest.approx(best.x, abs=0.01)
    assert nll(math.log(alpha)) <= best.fun + 1e-3


def test_all_right_stops_at_the_lower_bound_and_all_wrong_at_the_upper():
    assert fit_vote_smoothing(_unanimous(8, [0] * 5), min_alpha=0.05) == pytest.approx(0.05)
    assert fit_vote_smoothing(_unanimous(8, [1] * 5), max_alpha=500.0) == pytest.approx(500.0)


def test_input_errors_name_the_argument():
    votes = _unanimous(4, [0, 1])
    with pytest.raises(ValueError, match="min_alpha"):
        fit_vote_smoothing(votes, min_alpha=0.0)
    with pytest.raises(ValueError, match="grid_size"):
        fit_vote_smoothing(votes, grid_size=1)
    empty = EnsemblePredictions(torch.zeros(4, 0, 2), torch.full((4,), 0.25), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="held-out"):
        fit_vote_smoothing(empty)


def test_uncertainty_of_smoothed_votes_uses_the_smoothed_average():
    votes = EnsemblePredictions(
        torch.nn.functional.one_hot(torch.tensor([[0, 1], [0, 1], [0, 0], [1, 1]]), 2).float(),
        torch.full((4,), 0.25),
        torch.tensor([0, 1]),
    )
    alpha = 2.0
    p = votes.mean(alpha).double()  # example 0: (3 + 2) / (4 + 4) = 0.625 for class 0
    assert p[0, 0].item() == pytest.approx(0.625)
    scores, raw = votes.uncertainty(alpha), votes.uncertainty()
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(scores["predictive_entropy"], entropy)
    assert torch.allclose(scores["mutual_information"], entropy)  # one-hot votes: expected entropy 0
    assert torch.allclose(scores["one_minus_max_prob"], 1 - p.max(-1).values)
    assert torch.equal(scores["one_minus_vote_margin"], raw["one_minus_vote_margin"])
    assert not torch.allclose(scores["predictive_entropy"], raw["predictive_entropy"])
