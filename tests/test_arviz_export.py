"""ArviZ export (DataTree layout, values, resampling) and convergence summaries."""

import math

import numpy as np
import pytest
import torch
import xarray as xr

from bayesprompt.arviz import predictive_datatree, summarize, to_datatree
from bayesprompt.inference.posterior import Posterior
from bayesprompt.predict import EnsemblePredictions


def _mcmc(num_chains=3, draws=5, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    samples = {"z": torch.randn(num_chains * draws, 4, generator=g), "scale": torch.rand(num_chains * draws, generator=g)}
    return Posterior(samples, torch.zeros(num_chains * draws), num_chains=num_chains, engine="mcmc", **kwargs)


def _predictions(posterior, examples=6, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(posterior.num_samples, examples, classes, generator=g), -1)
    return EnsemblePredictions(probs, posterior.weights, torch.arange(examples) % classes)


def test_mcmc_posterior_is_chain_major():
    post = _mcmc()
    tree = to_datatree(post)
    z = tree["posterior"]["z"]
    assert z.dims == ("chain", "draw", "z_dim_0") and z.shape == (3, 5, 4)
    assert tree["posterior"]["scale"].dims == ("chain", "draw")
    # draw d of chain c is sample c * draws + d
    np.testing.assert_array_equal(z.sel(chain=2, draw=1).values, post.samples["z"][2 * 5 + 1].numpy())
    np.testing.assert_array_equal(z.values.reshape(15, 4), post.samples["z"].numpy())
    np.testing.assert_allclose(tree["sample_stats"]["log_weight"].values, np.full((3, 5), -math.log(15)))
    assert set(tree.children) == {"posterior", "sample_stats"}


def test_posterior_predictive_and_observed_data_round_trip():
    post = _mcmc()
    pred = _predictions(post)
    tree = to_datatree(post, pred)
    probs = tree["posterior_predictive"]["probs"]
    assert probs.dims == ("chain", "draw", "example", "class") and probs.shape == (3, 5, 6, 3)
    np.testing.assert_array_equal(probs.values.reshape(15, 6, 3), pred.probs.numpy())
    y = tree["posterior_predictive"]["y"]
    assert y.dims == ("chain", "draw", "example") and set(np.unique(y.values)) <= {0, 1, 2}
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, pred.labels.numpy())
    assert tree["observed_data"]["y"].dims == ("example",)
    # the same seed gives the same draws; explicit labels override predictions.labels
    again = to_datatree(post, pred, observed_labels=torch.zeros(6), label_var="label")
    np.testing.assert_array_equal(again["posterior_predictive"]["label"].values, y.values)
    assert again["observed_data"]["label"].values.tolist() == [0] * 6


def test_predictive_label_draws_follow_one_hot_probabilities():
    post = _mcmc(num_chains=2, draws=3)
    votes = torch.nn.functional.one_hot(torch.randint(0, 3, (6, 4), generator=torch.Generator().manual_seed(0)), 3).float()
    tree = to_datatree(post, EnsemblePredictions(votes, post.weights, torch.zeros(4, dtype=torch.long)))
    np.testing.assert_array_equal(tree["posterior_predictive"]["y"].values.reshape(6, 4), votes.argmax(-1).numpy())


def test_weighted_particles_store_weights_or_resample():
    weights = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.125])
    post = Posterior({"z": torch.arange(5.0).unsqueeze(-1)}, weights.log(), engine="smc")
    tree = to_datatree(post)
    assert tree["posterior"]["z"].shape == (1, 5, 1)
    np.testing.assert_allclose(np.exp(tree["sample_stats"]["log_weight"].values[0]), weights.numpy())
    resampled = to_datatree(post, resample=True, num_draws=8, seed=3)
    assert "sample_stats" not in resampled.children and resampled.attrs["resampled"] == 1
    values = resampled["posterior"]["z"].values.reshape(-1)
    assert values.shape == (8,)
    # systematic resampling: particle i gets floor or ceil of 8 w_i copies, never a zero-weight one
    counts = np.bincount(values.astype(int), minlength=5)
    assert counts.tolist() == [4, 0, 2, 1, 1]
    same = to_datatree(post, resample=True, num_draws=8, seed=3)
    np.testing.assert_array_equal(same["posterior"]["z"].values, resampled["posterior"]["z"].values)


def test_resampling_carries_the_predictions_along():
    post = Posterior({"z": torch.arange(4.0)}, torch.tensor([0.0, -math.inf, 0.0, -math.inf]))
    probs = torch.stack([torch.tensor([[i / 10, 1 - i / 10]] * 2) for i in range(4)])  # one row per sample
    pred = EnsemblePredictions(probs, post.weights, torch.zeros(2))
    tree = to_datatree(post, pred, resample=True, num_draws=6)
    kept = tree["posterior"]["z"].values.reshape(-1)
    assert set(kept.tolist()) <= {0.0, 2.0}
    np.testing.assert_array_equal(tree["posterior_predictive"]["probs"].values.reshape(6, 2, 2), pred.probs[kept.astype(int)].numpy())


def test_export_errors():
    post = _mcmc()
    with pytest.raises(ValueError, match="MCMC chains"):
        to_datatree(post, resample=True)
    with pytest.raises(ValueError, match="only used with resample"):
        to_datatree(post, num_draws=4)
    with pytest.raises(ValueError, match="predictions have 4 samples"):
        to_datatree(post, EnsemblePredictions(torch.full((4, 2, 2), 0.5), torch.full((4,), 0.25), torch.zeros(2)))
    with pytest.raises(ValueError, match="weights differ"):
        wrong = torch.linspace(1, 2, 15)
        to_datatree(post, EnsemblePredictions(torch.full((15, 2, 2), 0.5), wrong / wrong.sum(), torch.zeros(2)))
    with pytest.raises(ValueError, match="3 observed labels for 6"):
        to_datatree(post, _predictions(post), observed_labels=torch.zeros(3))
    with pytest.raises(ValueError, match="label_var must not be 'probs'"):
        to_datatree(post, _predictions(post), label_var="probs")
    particles = Posterior({"z": torch.randn(4, 2)}, torch.zeros(4))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_draws must be a positive int or None"):
            to_datatree(particles, resample=True, num_draws=bad)


def test_bf16_predictions_are_exported_as_float32():
    post = _mcmc()
    predictions = _predictions(post)
    half = EnsemblePredictions(predictions.probs.bfloat16(), predictions.weights, predictions.labels)
    probs = to_datatree(post, half)["posterior_predictive"]["probs"]
    assert probs.dtype == np.float32
    np.testing.assert_array_equal(probs.values.reshape(15, 6, 3), predictions.probs.bfloat16().float().numpy())


def test_engine_stats_group_and_root_attrs(tmp_path):
    diagnostics = [
        {"stage": 1, "beta": 0.1, "ess": 90.0, "acceptance": 0.5, "epsilon": math.inf, "note": "start"},
        {"stage": 2, "beta": 0.4, "ess": 70.0, "acceptance": 0.3, "epsilon": 2.0, "stalled": True},
        {"stage": 3, "beta": 1.0, "ess": 80.0, "acceptance": None, "epsilon": 1.0, "rates": [0.1, 0.2]},
    ]
    post = _mcmc(
        num_chains=1,
        diagnostics=diagnostics,
        summary={"log_evidence": -3.5, "stages": 3},
        api_calls={"calls": 120, "tokens": 4000},
        status="budget_exhausted",
    )
    post.save(tmp_path)  # JSON turns inf into "inf": the export reads it back as a float
    tree = to_datatree(Posterior.load(tmp_path))
    stats = tree["engine_stats"]
    assert stats["beta"].dims == ("iteration",)
    assert stats["beta"].values.tolist() == [0.1, 0.4, 1.0] and stats["ess"].values.tolist() == [90.0, 70.0, 80.0]
    assert stats["epsilon"].values.tolist() == [math.inf, 2.0, 1.0]
    acceptance = stats["acceptance"].values
    assert acceptance[:2].tolist() == [0.5, 0.3] and math.isnan(acceptance[2])
    assert np.isnan(stats["stalled"].values[[0, 2]]).all() and stats["stalled"].values[1] == 1.0
    assert stats["rates"].dims == ("iteration", "rates_dim_0")
    assert stats.attrs["skipped"] == "note"
    assert tree["engine_stats"].to_dataset().sizes["iteration"] == 3
    attrs = tree.attrs
    assert attrs["engine"] == "mcmc" and attrs["status"] == "budget_exhausted" and attrs["num_samples"] == 5
    assert attrs["summary.log_evidence"] == -3.5 and attrs["api_calls.calls"] == 120


def test_engine_stats_uses_an_integer_iteration_key_as_coordinate():
    post = _mcmc(num_chains=1, diagnostics=[{"iteration": 4, "sigma": 1.0}, {"iteration": 5, "sigma": 0.5}])
    stats = to_datatree(post)["engine_stats"]
    assert stats["iteration"].values.tolist() == [4, 5] and list(stats.data_vars) == ["sigma"]
    assert isinstance(stats, xr.DataTree)


def test_predictive_datatree_draws_by_weight():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # sample 0 says 0, sample 1 says 1
    pred = EnsemblePredictions(probs, torch.tensor([0.2, 0.8]), torch.tensor([1]))
    tree = predictive_datatree(pred, num_draws=2000, seed=0)
    draws = tree["posterior_predictive"]["y"]
    assert draws.dims == ("chain", "draw", "example") and draws.shape == (1, 2000, 1)
    assert abs(draws.values.mean() - 0.8) < 4 * math.sqrt(0.16 / 2000)
    assert tree["observed_data"]["y"].values.tolist() == [1]
    with pytest.raises(ValueError, match="num_draws"):
        predictive_datatree(pred, num_draws=0)


def test_summarize_rhat_and_ess_for_mcmc():
    g = torch.Generator().manual_seed(0)
    chains, draws = 4, 400
    mixed = _posterior_from_chains(torch.randn(chains, draws, 2, generator=g))
    summary = summarize(mixed)
    assert summary["method"] == "mcmc" and summary["num_chains"] == 4 and summary["num_draws"] == 400
    assert summary["rhat"]["z"].shape == (2,)
    assert summary["max_rhat"] < 1.01
    assert 0.7 * chains * draws < summary["min_ess_bulk"] < 1.3 * chains * draws
    shifted = torch.randn(chains, draws, 2, generator=g) + torch.tensor([0.0, 0.0, 3.0, 3.0]).reshape(4, 1, 1)
    stuck = summarize(_posterior_from_chains(shifted))
    assert (stuck["rhat"]["z"] > 1.1).all() and stuck["max_rhat"] > 1.1
    assert stuck["min_ess_bulk"] < 0.2 * chains * draws


def test_summarize_constant_component_is_nan_and_ignored_by_the_worst_values():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(3, 50, 2, generator=g)
    values[..., 1] = 0.5  # e.g. a fixed parameter
    summary = summarize(_posterior_from_chains(values))
    assert math.isnan(summary["rhat"]["z"][1]) and summary["rhat"]["z"][0] < 1.1
    assert summary["max_rhat"] == summary["rhat"]["z"][0]


def _posterior_from_chains(values):
    chains, draws = values.shape[:2]
    return Posterior({"z": values.reshape(chains * draws, -1)}, torch.zeros(chains * draws), num_chains=chains)


def test_summarize_one_autocorrelated_chain_counts_its_autocorrelation(tmp_path):
    """An AR(1) chain with rho = 0.9 holds about S (1 - rho) / (1 + rho) = S / 19 independent draws."""
    g = torch.Generator().manual_seed(0)
    draws, rho = 4000, 0.9
    x = torch.zeros(draws, 2, dtype=torch.float64)
    noise = torch.randn(draws, 2, generator=g, dtype=torch.float64) * math.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[t] = rho * x[t - 1] + noise[t]
    chain = Posterior({"z": x}, torch.zeros(draws), engine="rw-mcmc", mcmc=True)
    summary = summarize(chain)
    assert summary["method"] == "mcmc" and summary["num_chains"] == 1 and summary["num_draws"] == draws
    expected = draws * (1 - rho) / (1 + rho)  # 211; the estimate's spread at this length is about 15%
    assert 0.6 * expected < summary["min_ess_bulk"] < 1.4 * expected
    assert math.isnan(summary["max_rhat"])  # R-hat needs two chains
    assert summarize(Posterior({"z": x}, torch.zeros(draws)))["ess"] == pytest.approx(draws)  # particles: Kish
    chain.save(tmp_path)
    assert Posterior.load(tmp_path).mcmc and not chain.subsample(10).mcmc  # thinned for prediction: no chain


def test_summarize_weighted_particles_uses_kish_ess():
    weights = torch.tensor([0.5, 0.25, 0.25, 0.0])
    summary = summarize(Posterior({"z": torch.randn(4)}, weights.log()))
    assert summary["method"] == "importance" and summary["num_samples"] == 4
    assert summary["ess"] == pytest.approx(1 / (0.25 + 2 * 0.0625))
    assert summary["ess_fraction"] == pytest.approx(summary["ess"] / 4)
