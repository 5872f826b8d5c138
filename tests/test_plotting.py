"""Headless PNG plots: files exist, are valid PNGs of a sensible size, and leave no open figures."""

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib import pyplot

from bayesprompt import plotting
from bayesprompt.predict import EnsemblePredictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=8_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def _binary_predictions(samples=6, examples=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(examples, generator=g)
    positive = torch.sigmoid(logits + 0.5 * torch.randn(samples, examples, generator=g))
    labels = torch.bernoulli(torch.sigmoid(0.7 * logits), generator=g).long()
    return EnsemblePredictions(torch.stack([1 - positive, positive], -1), torch.full((samples,), 1 / samples), labels)


def test_pav_reliability_diagram(tmp_path):
    path = plotting.plot_pav_reliability(_binary_predictions(), tmp_path / "sub" / "pav.png", num_draws=100)
    assert path == tmp_path / "sub" / "pav.png"
    _assert_png(path)
    assert pyplot.get_fignums() == []


def test_pav_reliability_needs_a_binary_task(tmp_path):
    pred = EnsemblePredictions(torch.full((2, 3, 3), 1 / 3), torch.full((2,), 0.5), torch.zeros(3))
    with pytest.raises(ValueError, match="binary task"):
        plotting.plot_pav_reliability(pred, tmp_path / "pav.png")
    assert not (tmp_path / "pav.png").exists()


def test_top_label_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.full(4, 0.4), size=300))
    labels = torch.from_numpy(rng.integers(0, 4, 300))
    _assert_png(plotting.plot_reliability_diagram(probs, labels, tmp_path / "reliability.png"))
    binary = _binary_predictions().mean()
    path = plotting.plot_reliability_diagram(binary, _binary_predictions().labels, tmp_path / "binary.png", lower=0.5, num_bins=5)
    _assert_png(path)


def test_risk_coverage_and_uncertainty_histogram(tmp_path):
    pred = _binary_predictions()
    scores = pred.uncertainty()
    correct = pred.mean().argmax(-1) == pred.labels
    _assert_png(plotting.plot_risk_coverage(scores, correct, tmp_path / "risk_coverage.png"))
    _assert_png(plotting.plot_risk_coverage(scores["predictive_entropy"], correct, tmp_path / "single.png"))
    entropy = scores["predictive_entropy"]
    path = plotting.plot_uncertainty_histogram(entropy[:60], entropy[60:] + 0.3, tmp_path / "hist.png", name="entropy")
    _assert_png(path)
    # constant scores still plot
    _assert_png(plotting.plot_uncertainty_histogram(np.zeros(5), np.zeros(5), tmp_path / "flat.png"), min_bytes=5_000)
    with pytest.raises(ValueError, match="no scores"):
        plotting.plot_risk_coverage({}, correct, tmp_path / "none.png")
    with pytest.raises(ValueError, match="ood_scores must be finite"):
        plotting.plot_uncertainty_histogram(np.zeros(5), np.array([0.1, np.inf]), tmp_path / "inf.png")
