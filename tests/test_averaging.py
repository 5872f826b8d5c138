"""Bayesian model averaging of prompt models by their evidence: pure functions, runs, CLI.

The pipeline tests fit two tiny SMC runs on the fake black box (``fake_backend``,
conftest): the same split with and without a latent likelihood temperature.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from bayesprompt import cli, pipeline
from bayesprompt.averaging import mix_ensembles, posterior_model_probabilities
from bayesprompt.predict import EnsemblePredictions
from bayesprompt.runs import RunDirectory
from bayesprompt.testing import LinearGaussian

BASE = dict(task="sst2", budget=300, k=4, dev_k=2, test_size=10, intrinsic_dim=5, n_tokens=2, num_particles=8,
            engine_options={"max_moves": 2})


def _ensemble(seed: int, samples: int, examples: int = 6, classes: int = 3) -> EnsemblePredictions:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(samples, examples, classes, generator=generator, dtype=torch.float64).softmax(-1)
    weights = torch.rand(samples, generator=generator, dtype=torch.float64)
    return EnsemblePredictions(probs, weights / weights.sum(), torch.arange(examples) % classes)


# ---------------------------------------------------------------------------- pure functions
def test_model_probabilities_are_bayes_rule_on_exact_evidences():
    models = [LinearGaussian.random(dim=2, num_obs=6, seed=seed) for seed in (0, 1, 2)]
    log_z = [model.log_evidence() for model in models]  # closed form
    prior = [0.5, 0.3, 0.2]
    joint = [math.exp(z) * p for z, p in zip(log_z, prior)]
    expected = [j / sum(joint) for j in joint]
    np.testing.assert_allclose(posterior_model_probabilities(log_z, prior), expected, rtol=1e-12)
    assert posterior_model_probabilities([-1e4, -1e4 - math.log(4)]).tolist() == pytest.approx([0.8, 0.2])  # no underflow
    weights = posterior_model_probabilities(log_z, [5.0, 3.0, 2.0])  # prior weights are normalised
    np.testing.assert_allclose(weights, expected, rtol=1e-12)


@pytest.mark.parametrize("log_z, prior, message", [
    ([], None, "non-empty sequence"),
    ([0.0, math.nan], None, "must be finite"),
    ([0.0, -math.inf], None, "must be finite"),
    ([0.0, 1.0], [1.0], r"2 positive numbers \(one per model\)"),
    ([0.0, 1.0], [1.0, 0.0], r"2 positive numbers \(one per model\)"),
    ([0.0, 1.0], [1.0, math.nan], r"2 positive numbers \(one per model\)"),
])
def test_model_probabilities_reject_bad_input(log_z, prior, message):
    with pytest.raises(ValueError, match=message):
        posterior_model_probabilities(log_z, prior)


def test_mixture_is_the_model_average_of_means_and_of_expected_entropies():
    a, b = _ensemble(0, samples=4), _ensemble(1, samples=7)
    mixed = mix_ensembles([a, b], [0.3, 0.7])
    assert mixed.probs.shape == (11, 6, 3) and float(mixed.weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(mixed.mean(), 0.3 * a.mean() + 0.7 * b.mean())
    # the expected entropy is linear in the sample weights; the predictive entropy is not
    scores = {name: mixed.uncertainty()[name] for name in ("expected_entropy", "predictive_entropy")}
    torch.testing.assert_close(
        scores["expected_entropy"], 0.3 * a.uncertainty()["expected_entropy"] + 0.7 * b.uncertainty()["expected_entropy"]
    )
    entropy = torch.special.entr(0.3 * a.mean() + 0.7 * b.mean()).sum(-1)
    torch.testing.assert_close(scores["predictive_entropy"], entropy)
    alone = mix_ensembles([a, b], [1.0, 0.0])
    torch.testing.assert_close(alone.mean(), a.mean())
    assert alone.probs.shape[0] == a.probs.shape[0]  # the zero-probability model's samples are left out
    torch.testing.assert_close(alone.mean(1.0), a.mean(1.0))  # so the vote smoothing sees a's samples only
    unnormalised = EnsemblePredictions(a.probs, a.weights * 7.0, a.labels)  # each ensemble is normalised first
    torch.testing.assert_close(mix_ensembles([unnormalised, b], [0.3, 0.7]).mean(), mixed.mean())
    single = EnsemblePredictions(b.probs.float(), b.weights.float(), b.labels)
    assert mix_ensembles([single, a], [0.5, 0.5]).probs.dtype == torch.float64  # promoted, not truncated

def test_mixture_rejects_ensembles_of_other_examples():
    a = _ensemble(0, samples=2)
    with pytest.raises(ValueError, match=r"ensemble 1 predicts \[examples, classes\] = \[5, 3\]"):
        mix_ensembles([a, _ensemble(1, samples=2, examples=5)], [0.5, 0.5])
    other = EnsemblePredictions(a.probs, a.weights, a.labels.flip(0))
    with pytest.raises(ValueError, match="ensemble 1 has other labels"):
        mix_ensembles([a, other], [0.5, 0.5])
    with pytest.raises(ValueError, match="one model probability per ensemble"):
        mix_ensembles([a, a], [1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        mix_ensembles([a, a], [0.6, 0.6])


# ---------------------------------------------------------------------------- runs
@pytest.fixture
def two_runs(tmp_path, fake_backend):
    plain, tempered = tmp_path / "plain", tmp_path / "tempered"
    pipeline.fit(pipeline.FitConfig(out=str(plain), **BASE), progress=False)
    pipeline.fit(pipeline.FitConfig(out=str(tempered), temperature_prior_scale=0.5, **BASE), progress=False)
    return plain, tempered


def test_compare_weighs_runs_by_their_evidence_and_scores_the_average(two_runs):
    for run in two_runs:
        pipeline.evaluate_run(run, ood=["imdb"], ood_size=4)
    comparison = pipeline.compare_runs(two_runs)
    log_z = [RunDirectory(run).read_metrics()["summary"]["log_evidence"] for run in two_runs]
    first = 1.0 / (1.0 + math.exp(log_z[1] - log_z[0]))
    assert [row["log_evidence"] for row in comparison["runs"]] == log_z
    assert [row["probability"] for row in comparison["runs"]] == pytest.approx([first, 1.0 - first], rel=1e-9)
    assert 0.01 < first < 0.99  # both models carry weight, so the average differs from each run
    saved = [RunDirectory(run).read_predictions() for run in two_runs]
    for row, run in zip(comparison["runs"], two_runs):
        assert row["test"] == pytest.approx(RunDirectory(run).read_metrics()["test"])
    average = first * saved[0].test_probs.double() + (1.0 - first) * saved[1].test_probs.double()
    labels = saved[0].test.labels
    nll = -average[torch.arange(len(labels)), labels].log().mean()
    assert comparison["average"]["test"]["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert comparison["average"]["test"]["num_examples"] == 10
    assert set(comparison["average"]["ood"]) == {"imdb"} and comparison["average"]["ood"]["imdb"]["num_ood"] == 4
    prior = pipeline.compare_runs(two_runs, prior_probabilities=[0.9, 0.1])["runs"]
    assert prior[0]["probability"] > first  # the prior moves the weights


def test_compare_warns_when_runs_differ_only_in_how_they_sampled(tmp_path, fake_backend, two_runs):
    replicate = tmp_path / "replicate"
    pipeline.fit(pipeline.FitConfig(out=str(replicate), seed=1, **dict(BASE, num_particles=6)), progress=False)
    with pytest.warns(UserWarning, match=f"{replicate} and {two_runs[0]} fit the same prompt model "
                                         r"\(they differ only in seed, num_particles\)"):
        comparison = pipeline.compare_runs([*two_runs, replicate])
    assert len(comparison["runs"]) == 3
    devprior = dict(BASE, prior_centre="dev", budget=400)
    centred = [tmp_path / "centred0", tmp_path / "centred1"]
    for seed, out in enumerate(centred):  # the seed moves the dev-tuned centre, hence the prior: two models
        pipeline.fit(pipeline.FitConfig(out=str(out), seed=seed, **devprior), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.compare_runs(centred)


def test_compare_refuses_runs_of_other_data_or_without_evidence(tmp_path, fake_backend, two_runs):
    other_split = tmp_path / "other"
    pipeline.fit(pipeline.FitConfig(out=str(other_split), data_seed=1, **BASE), progress=False)
    with pytest.raises(ValueError, match=f"{other_split}: data_seed = 1 but .* has 0; evidences are comparable only"):
        pipeline.compare_runs([two_runs[0], other_split])
    with pytest.raises(ValueError, match="compare got the same run twice"):
        pipeline.compare_runs([two_runs[0], tmp_path / "plain" / ".." / "plain"])

    saved = [RunDirectory(run).read_metrics()["data"] for run in two_runs]  # the fit fingerprints its examples
    assert saved[0] == saved[1] and set(saved[0]) == {"train_sha256", "test_sha256"}
    assert RunDirectory(other_split).read_metrics()["data"]["train_sha256"] != saved[0]["train_sha256"]
    run_dir = RunDirectory(two_runs[1])
    metrics = run_dir.read_metrics()
    run_dir.write_metrics({**metrics, "data": {**metrics["data"], "train_sha256": "0" * 64}})  # e.g. another data dir
    with pytest.raises(ValueError, match=f"{two_runs[1]}: its training examples differ .* data.train_sha256"):
        pipeline.compare_runs(two_runs)
    run_dir.write_metrics(metrics)

    pipeline.evaluate_run(two_runs[0], ood=["imdb"], ood_size=4)
    pipeline.evaluate_run(two_runs[1], ood=["imdb"], ood_size=6)
    with pytest.raises(ValueError, match="its OOD imdb predictions cover other examples"):
        pipeline.compare_runs(two_runs)
    eki = tmp_path / "eki"
    pipeline.fit(pipeline.FitConfig(out=str(eki), **{**BASE, "engine": "eki", "engine_options": {}}), progress=False)
    with pytest.raises(ValueError, match="no finite summary.log_evidence \\(engine 'eki'"):
        pipeline.compare_runs([two_runs[0], eki])
    abc = tmp_path / "abc"
    pipeline.fit(pipeline.FitConfig(out=str(abc), **{**BASE, "engine": "abc-smc", "engine_options": {"max_stages": 2}}),
                 progress=False)
    with pytest.raises(ValueError, match="engine 'abc-smc' is likelihood-free and estimates no evidence"):
        pipeline.compare_runs([abc, two_runs[0]])
    with pytest.raises(ValueError, match="at least two runs, got 1"):
        pipeline.compare_runs([two_runs[0]])


def test_cli_compare_prints_the_table_and_json(two_runs, capsys):
    runs = [str(run) for run in two_runs]
    assert cli.main(["compare", *runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{runs[0]} (smc): log evidence=") and "p(M | y)=" in lines[0]
    assert lines[2].startswith("model average: test accuracy=")
    assert cli.main(["compare", *runs, "--json", "--prior", "0.25", "0.75"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert sum(row["probability"] for row in comparison["runs"]) == pytest.approx(1.0)
    assert cli.main(["compare", *runs, "--prior", "0.5"]) == 2
    assert "prior_probabilities must hold 2 positive numbers (one per model)" in capsys.readouterr().err


def test_mixed_posteriors_fill_the_fixed_site_and_weigh_by_model():
    from bayesprompt.averaging import mix_posteriors
    from bayesprompt.inference.posterior import Posterior

    plain = Posterior({"z": torch.randn(3, 2)}, torch.tensor([0.0, 1.0, 2.0]))
    tempered = Posterior({"z": torch.randn(2, 2, dtype=torch.float64),
                          "temperature": torch.tensor([[2.123456789], [3.0]], dtype=torch.float64)}, torch.zeros(2))
    mixed = mix_posteriors([plain, tempered], [0.4, 0.6], fixed={"temperature": 1.0})
    assert mixed.samples["temperature"].shape == (5, 1) and mixed.samples["temperature"][:3].eq(1.0).all()
    torch.testing.assert_close(mixed.weights[:3], 0.4 * plain.weights)
    torch.testing.assert_close(mixed.weights[3:], torch.full((2,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(mixed.samples["z"], torch.cat([plain.samples["z"].double(), tempered.samples["z"]]))
    assert mixed.samples["temperature"][3, 0].item() == 2.123456789  # float64 kept
    only_plain = mix_posteriors([plain, tempered], [1.0, 0.0], fixed={"temperature": 1.0})
    assert only_plain.num_samples == 3  # a model with probability 0 contributes no samples
    torch.testing.assert_close(only_plain.weights, plain.weights)
    with pytest.raises(ValueError, match=r"posterior 1 has sites \{'temperature': \[1\], 'z': \[2\]\}, posterior 0 "
                                         r"\{'z': \[2\]\}; pass the sites one model fixes"):
        mix_posteriors([plain, tempered], [0.5, 0.5])
    with pytest.raises(ValueError, match="fixed site 'scale' is in none of the posteriors"):
        mix_posteriors([plain, tempered], [0.5, 0.5], fixed={"scale": 1.0})
    with pytest.raises(ValueError, match="one model probability per posterior"):
        mix_posteriors([plain], [0.5, 0.5])
