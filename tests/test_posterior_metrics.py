"""The Posterior result type and the metrics."""

import json

import pytest
import torch

from bayesprompt import metrics
from bayesprompt.inference.posterior import Posterior


def test_posterior_normalises_weights_and_computes_ess():
    post = Posterior({"z": torch.arange(4.0).unsqueeze(-1)}, torch.log(torch.tensor([1.0, 1.0, 2.0, 0.0])))
    torch.testing.assert_close(post.weights, torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=torch.float64))
    assert post.ess == pytest.approx(1 / (0.25**2 * 2 + 0.25))
    torch.testing.assert_close(post.mean("z"), torch.tensor([1.25], dtype=torch.float64))


def test_posterior_validation():
    with pytest.raises(ValueError, match="same number"):
        Posterior({"a": torch.zeros(3), "b": torch.zeros(2)}, torch.zeros(3))
    with pytest.raises(ValueError, match="log_weights has 2"):
        Posterior({"a": torch.zeros(3)}, torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        Posterior({"a": torch.zeros(2)}, torch.tensor([0.0, float("nan")]))


def test_posterior_save_load_roundtrip_and_errors(tmp_path):
    post = Posterior(
        {"z": torch.randn(5, 3), "scale": torch.rand(5)},
        torch.randn(5),
        diagnostics=[{"beta": 0.5, "ess": torch.tensor(3.0)}],
        api_calls={"calls": 10},
        status="budget_exhausted",
        engine="smc",
        summary={"log_evidence": -1.5},
    )
    post.save(tmp_path)
    loaded = Posterior.load(tmp_path)
    assert torch.equal(loaded.samples["z"], post.samples["z"])
    torch.testing.assert_close(loaded.log_weights, post.log_weights)
    assert loaded.status == "budget_exhausted" and loaded.summary == {"log_evidence": -1.5}
    assert loaded.diagnostics == [{"beta": 0.5, "ess": 3.0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posterior.json", "posterior.npz"]  # no temporaries
    archive = (tmp_path / "posterior.npz").read_bytes()
    (tmp_path / "posterior.npz").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(ValueError, match=r"posterior\.npz: not a readable \.npz archive \(BadZipFile"):
        Posterior.load(tmp_path)
    (tmp_path / "posterior.npz").write_bytes(archive)
    meta = json.loads((tmp_path / "posterior.json").read_text())
    (tmp_path / "posterior.json").write_text(json.dumps([meta]))
    with pytest.raises(ValueError, match=r"posterior\.json must hold a JSON object, got list"):
        Posterior.load(tmp_path)
    meta["format_version"] = 99
    (tmp_path / "posterior.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 99"):
        Posterior.load(tmp_path)
    (tmp_path / "posterior.npz").unlink()
    with pytest.raises(FileNotFoundError, match="posterior.npz"):
        Posterior.load(tmp_path)


def test_resample_gives_equal_weights_from_the_support():
    post = Posterior({"z": torch.tensor([0.0, 1.0, 2.0])}, torch.log(torch.tensor([0.0, 0.3, 0.7])))
    draws = post.resample(2000, torch.Generator().manual_seed(0))
    assert draws.ess == pytest.approx(2000)
    share = (draws.samples["z"] == 2.0).double().mean().item()
    assert abs(share - 0.7) < 4 * (0.7 * 0.3 / 2000) ** 0.5
    assert not (draws.samples["z"] == 0.0).any()


def test_subsample_thins_equal_weights_and_resamples_weighted_ones():
    weighted = Posterior({"z": torch.arange(100.0).unsqueeze(-1)}, torch.linspace(0, 5, 100))
    small = weighted.subsample(10, seed=0)
    assert small.num_samples == 10 and torch.allclose(small.weights, torch.full((10,), 0.1, dtype=torch.float64))
    # drawn toward the heavy weights: the weighted mean of z is 80.3, the plain mean 49.5
    assert small.samples["z"].mean() > 60
    assert torch.equal(weighted.subsample(10, seed=0).samples["z"], small.samples["z"])  # seeded
    chains = Posterior({"z": torch.arange(12.0).unsqueeze(-1)}, torch.zeros(12), num_chains=3)
    thinned = chains.subsample(4)
    assert thinned.samples["z"].flatten().tolist() == [0.0, 4.0, 7.0, 11.0] and thinned.num_chains == 1
    with pytest.raises(ValueError, match="max_samples"):
        chains.subsample(0)


def test_metrics_against_hand_computed_values():
    # float64, so that 0.8 and 0.6 sit exactly on bin edges (right-closed bins)
    probs = torch.tensor([[0.9, 0.1], [0.35, 0.65], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    assert metrics.accuracy(probs, labels) == 0.5
    expected_nll = -(torch.log(torch.tensor([0.9, 0.65, 0.4, 0.2]))).mean().item()
    assert metrics.nll(probs, labels) == pytest.approx(expected_nll)
    assert metrics.brier(probs, labels) == pytest.approx((0.02 + 0.245 + 0.72 + 1.28) / 4)
    # bins (0.8,0.9]: {0.9 right}; (0.7,0.8]: {0.8 wrong}; (0.6,0.7]: {0.65 right}; (0.5,0.6]: {0.6 wrong}
    expected_ece = 0.25 * (0.1 + 0.8 + 0.35 + 0.6)
    assert metrics.ece(probs, labels) == pytest.approx(expected_ece)
    # predicted positives {1, 3}; true positives {1}; gold positives {1, 2}
    assert metrics.binary_f1(probs, labels) == pytest.approx(2 * 1 / (2 + 2))


def test_metric_input_errors():
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.accuracy(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        metrics.nll(torch.ones(3), torch.zeros(3))
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    for bad in (float("nan"), float("inf"), -0.1):  # argmax would take NaN as the largest entry
        with pytest.raises(ValueError, match="finite and non-negative"):
            metrics.accuracy(torch.tensor([[bad, 0.2], [0.3, 0.7]]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="whole numbers"):
        metrics.accuracy(probs, torch.tensor([0.7, 0.0]))  # not truncated to class 0
    assert metrics.accuracy(probs, torch.tensor([1.0, 0.0])) == 1.0
    for positive in (2, -1):
        with pytest.raises(ValueError, match=r"positive must be a class index in \[0, 1\]"):
            metrics.binary_f1(probs, torch.tensor([1, 0]), positive=positive)
