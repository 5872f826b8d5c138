"""A latent likelihood temperature through the pipeline: fit, resume-free reload, predict, CLI.

Fast tests on the fake black box (the ``fake_backend`` fixture, conftest). The model
itself and its posterior against quadrature are tested in ``test_models.py``.
"""

from __future__ import annotations

import pytest
import torch

from bayesprompt import cli, pipeline
from bayesprompt.runs import RunDirectory

BASE = dict(task="sst2", budget=300, k=4, dev_k=2, test_size=10, intrinsic_dim=5, n_tokens=2, num_particles=8,
            engine_options={"max_moves": 2})


def test_fit_samples_a_temperature_and_a_reloaded_run_predicts_with_it(tmp_path, fake_backend):
    out = tmp_path / "run"
    result = pipeline.fit(pipeline.FitConfig(out=str(out), temperature_prior_scale=0.5, **BASE), progress=False)
    temperature = result.posterior.samples["temperature"].reshape(-1)
    assert temperature.shape == (result.posterior.num_samples,) and bool((temperature > 0).all())
    assert temperature.unique().numel() > 1
    assert RunDirectory(out).read_config()["temperature_prior_scale"] == 0.5

    evaluated = pipeline.evaluate_run(out)  # rebuilds the model from config.json: it must have the site
    for key, value in result.metrics["test"].items():
        if isinstance(value, float):
            assert evaluated["test"][key] == pytest.approx(value, abs=1e-6), key
    flat = (result.predictions.probs.log() * temperature[:, None, None]).softmax(-1)  # each sample's tau undone
    plain = pipeline.fit(pipeline.FitConfig(**BASE), progress=False)
    assert "temperature" not in plain.posterior.samples
    assert not torch.allclose(flat, result.predictions.probs, atol=1e-3)  # the temperatures were applied
    from bayesprompt.arviz import to_datatree

    tree = to_datatree(result.posterior, resample=True, num_draws=16)  # the site reaches ArviZ with the rest
    assert {"z", "temperature"} <= set(tree["posterior"].data_vars)
    drawn = tree["posterior"]["temperature"].values.reshape(-1)
    assert drawn.shape == (16,) and set(drawn.round(6)) <= set(temperature.numpy().round(6))


@pytest.mark.parametrize("overrides, message", [
    ({"temperature_prior_scale": 0.0}, "temperature_prior_scale must be a number > 0 or None, got 0.0"),
    ({"temperature_prior_scale": True}, "temperature_prior_scale must be a number > 0 or None, got True"),
    ({"temperature_prior_scale": "1"}, "temperature_prior_scale must be a number > 0 or None, got '1'"),
    ({"temperature_prior_scale": 1.0, "engine": "abc-smc"}, "engine 'abc-smc' is likelihood-free"),
])
def test_config_rejects_bad_temperature_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.FitConfig(**{**BASE, **overrides})


def test_cli_passes_the_latent_temperature(tmp_path, fake_backend):
    out = tmp_path / "run"
    args = ["fit", "--task", "sst2", "--particles", "8", "--intrinsic-dim", "4", "--n-tokens", "2", "--k", "4",
            "--dev-k", "2", "--test-size", "10", "--budget", "200", "--option", "max_moves=2", "--quiet",
            "--latent-temperature", "0.7", "--out", str(out)]
    assert cli.main(args) == 0
    assert RunDirectory(out).read_config()["temperature_prior_scale"] == 0.7
    assert "temperature" in RunDirectory(out).read_posterior().samples
