"""Empirical-Bayes prior centre: ``fit_dev_centre`` and ``FitConfig(prior_centre="dev")``.

Fast tests on the fake black box (:class:`bayesprompt.testing.FakeBlackBox`); the
pipeline's backend is swapped for it by the ``fake_backend`` fixture (conftest).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bayesprompt import cli, pipeline
from bayesprompt.data import get_task
from bayesprompt.data.task import Example
from bayesprompt.inference.empirical_bayes import DevCentre, fit_dev_centre
from bayesprompt.lm import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import PromptModel
from bayesprompt.runs import RunDirectory, RunDirectoryError
from bayesprompt.testing import FakeBlackBox

TASK = get_task("sst2")


def _dev_problem(budget: int | None):
    box = FakeBlackBox(TASK, embed_dim=4, seed=0, meter=Meter(budget))
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    dev = box.encode([Example(f"dev text {i}", i % 2) for i in range(8)])
    return box, PromptModel(box, projection), dev


def test_dev_centre_raises_the_dev_likelihood_within_its_share():
    box, model, dev = _dev_problem(budget=200)
    centre = fit_dev_centre(model, dev, 60, meter=box.meter, popsize=6, seed=0, progress=False)
    assert 0 < centre.api_calls <= 60 and box.meter.calls == centre.api_calls
    assert box.meter.budget == 200  # the overall budget is restored after the stage
    potential = Potential(model, (dev,))
    potential.discover_sites()
    at_zero, at_centre = potential.evaluate(torch.stack([torch.zeros(3), centre.z])).log_likelihood.tolist()
    assert at_centre == pytest.approx(centre.dev_log_likelihood, abs=1e-4)
    assert at_centre > at_zero + 0.1  # CMA-ES improved on its start at z = 0
    prior = centre.prior(0.5)
    assert torch.equal(prior.mean, centre.z) and torch.allclose(prior.stddev, torch.full((3,), 0.5))


def test_dev_centre_rejects_bad_input():
    box, model, dev = _dev_problem(budget=None)
    with pytest.raises(ValueError, match="less than one CMA-ES population"):
        fit_dev_centre(model, dev, 5, meter=box.meter, popsize=6, progress=False)
    with pytest.raises(ValueError, match="scale must be > 0"):
        DevCentre(torch.zeros(3), 0, 0.0, 0).prior(0.0)


# ---------------------------------------------------------------------------- the pipeline
BASE = dict(task="sst2", budget=300, k=4, dev_k=2, test_size=10, intrinsic_dim=5, n_tokens=2, num_particles=8,
            prior_centre="dev", engine_options={"max_moves": 2})


def test_dev_centred_prior_pins_the_particles_to_the_saved_centre(tmp_path, fake_backend):
    config = pipeline.FitConfig(out=str(tmp_path / "run"), prior_scale=0.01, **BASE)
    result = pipeline.fit(config, progress=False)
    run = RunDirectory(tmp_path / "run")
    centre = run.read_prior_centre()
    z = result.posterior.samples["z"].reshape(result.posterior.num_samples, -1)
    assert centre.norm > 0.1  # moved off 0 on the dev split
    assert (z - centre.z).norm(dim=-1).max() < 0.1  # prior sd 0.01 in 5 dimensions: the prior wins
    info = result.metrics["prior_centre"]
    assert info["api_calls"] == centre.api_calls and 0 < info["api_calls"] <= config.dev_centre_budget == 150
    assert info["norm"] == pytest.approx(centre.norm)
    assert result.metrics["inference_api_calls"]["calls"] <= 300  # dev stage and engine share one budget
    assert json.loads(run.file("config.json").read_text())["config"]["prior_centre"] == "dev"


def test_zero_centre_writes_no_centre_file(tmp_path, fake_backend):
    config = pipeline.FitConfig(out=str(tmp_path / "run"), **{**BASE, "prior_centre": "zero"})
    result = pipeline.fit(config, progress=False)
    assert "prior_centre" not in result.metrics and not (tmp_path / "run" / "prior_centre.npz").exists()


def test_resume_reads_the_centre_and_refuses_a_missing_one(tmp_path, fake_backend, monkeypatch):
    config = pipeline.FitConfig(out=str(tmp_path / "ref"), **BASE)
    reference = pipeline.fit(config, progress=False)
    original = RunDirectory.write_checkpoint
    written = []

    def write_then_die(self, checkpoint, codec):
        original(self, checkpoint, codec)
        written.append(checkpoint.iteration)
        if len(written) == 2:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "write_checkpoint", write_then_die)
        with pytest.raises(Interrupted):
            pipeline.fit(pipeline.FitConfig(out=str(tmp_path / "cut"), **BASE), progress=False)
    resumed = pipeline.resume(tmp_path / "cut", progress=False)
    assert torch.equal(reference.posterior.samples["z"], resumed.posterior.samples["z"])
    assert reference.metrics["prior_centre"] == resumed.metrics["prior_centre"]
    assert RunDirectory(tmp_path / "cut").read_meter() == RunDirectory(tmp_path / "ref").read_meter()
    (tmp_path / "cut" / "prior_centre.npz").unlink()
    (tmp_path / "cut" / "predictions.npz").unlink()  # as if killed before its predictions were written
    with pytest.raises(RunDirectoryError, match="prior_centre.npz: missing file"):
        pipeline.resume(tmp_path / "cut", progress=False)


class Interrupted(Exception):
    """Stands for a kill of the fitting process."""


def _killed(monkeypatch, dies, run) -> None:
    """Run ``run()`` with a checkpoint writer that raises :class:`Interrupted` where ``dies(run_dir, checkpoint)``."""
    original = RunDirectory.write_checkpoint

    def write(self, checkpoint, codec):
        if dies(self, checkpoint):
            raise Interrupted
        original(self, checkpoint, codec)

    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "write_checkpoint", write)
        with pytest.raises(Interrupted):
            run()


def _resume_counting_queries(monkeypatch, directory) -> tuple[pipeline.FitResult, list[int]]:
    """Resume ``directory``; also the meter's count before each query it made."""
    queries: list[int] = []
    real_charge = Meter.charge
    with monkeypatch.context() as patch:
        patch.setattr(Meter, "charge", lambda self, **counts: queries.append(self.calls) or real_charge(self, **counts))
        return pipeline.resume(directory, progress=False), queries


def _fit_into(directory):
    return lambda: pipeline.fit(pipeline.FitConfig(out=str(directory), **BASE), progress=False)


def test_a_run_killed_in_its_dev_stage_resumes_it_from_the_last_cma_es_step(tmp_path, fake_backend, monkeypatch):
    """dev_centre/ holds the dev stage's step checkpoints; resume continues them, then runs the engine."""
    reference = _fit_into(tmp_path / "ref")()
    _killed(monkeypatch, lambda run, checkpoint: run.path.name == "dev_centre" and checkpoint.iteration == 3,
            _fit_into(tmp_path / "cut"))
    cut = RunDirectory(tmp_path / "cut")
    assert not cut.has_checkpoint() and not cut.file("prior_centre.npz").exists()
    saved_steps = RunDirectory(cut.file("dev_centre")).read_diagnostics()
    assert len(saved_steps) == 2
    resumed, queries = _resume_counting_queries(monkeypatch, tmp_path / "cut")
    assert min(queries) == saved_steps[-1]["api_calls"] > 0  # continued after the last saved step
    assert torch.equal(reference.posterior.samples["z"], resumed.posterior.samples["z"])
    assert reference.metrics["prior_centre"] == resumed.metrics["prior_centre"]
    assert cut.read_meter() == RunDirectory(tmp_path / "ref").read_meter()


def test_resume_after_the_dev_stage_replays_it_without_a_query(tmp_path, fake_backend, monkeypatch):
    """Killed between the saved centre and the engine's first checkpoint: the finished dev stage
    is replayed from its last checkpoint (the meter as it ended), and a fresh fit clears it."""
    reference = _fit_into(tmp_path / "ref")()
    _killed(monkeypatch, lambda run, checkpoint: run.path.name != "dev_centre", _fit_into(tmp_path / "cut"))
    assert (tmp_path / "cut" / "prior_centre.npz").is_file() and not RunDirectory(tmp_path / "cut").has_checkpoint()
    resumed, queries = _resume_counting_queries(monkeypatch, tmp_path / "cut")
    assert min(queries) == reference.metrics["prior_centre"]["api_calls"]  # no dev-stage query is repeated
    assert torch.equal(reference.posterior.samples["z"], resumed.posterior.samples["z"])
    assert RunDirectory(tmp_path / "cut").read_meter() == RunDirectory(tmp_path / "ref").read_meter()
    pipeline.fit(pipeline.FitConfig(out=str(tmp_path / "cut"), **{**BASE, "seed": 1}), progress=False)  # a new run there
    assert len(RunDirectory(tmp_path / "cut" / "dev_centre").read_diagnostics()) == reference.metrics["prior_centre"]["iterations"]


def test_an_engine_started_on_resume_under_another_spelling_resumes_again(tmp_path, fake_backend, monkeypatch):
    """The engine's first checkpoint, written by a resume, carries the digest of the saved config.json."""
    reference = _fit_into(tmp_path / "ref")()

    def engine_step(step):
        return lambda run, checkpoint: run.path.name != "dev_centre" and checkpoint.iteration == step

    (tmp_path / "other").mkdir()
    _killed(monkeypatch, engine_step(0), _fit_into(tmp_path / "cut"))
    _killed(monkeypatch, engine_step(1), lambda: pipeline.resume(tmp_path / "other" / ".." / "cut", progress=False))
    assert RunDirectory(tmp_path / "cut").read_checkpoint(pipeline.StateCodec()).iteration == 0
    resumed = pipeline.resume(tmp_path / "cut", progress=False)
    assert torch.equal(reference.posterior.samples["z"], resumed.posterior.samples["z"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prior_centre": "mean"}, "prior_centre must be one of"),
        ({"prior_centre_share": 1.0}, "prior_centre_share must be in"),
        ({"engine": "abc-smc"}, "likelihood-free"),
        ({"budget": None}, "needs a budget"),
        ({"budget": 30}, "less than one CMA-ES population"),
        ({"prior_scale": 0.0}, "prior_scale must be a finite number > 0"),
        ({"prior_scale": math.nan}, "prior_scale must be a finite number > 0, got nan"),
        ({"prior_scale": math.inf}, "prior_scale must be a finite number > 0, got inf"),
        ({"vote_smoothing": True}, "vote_smoothing must be a finite number >= 0 or 'dev', got True"),
        ({"vote_smoothing": math.inf}, "vote_smoothing must be a finite number >= 0 or 'dev'"),
        ({"budget": 2.5}, r"budget must be an integer >= 1 or None, got 2.5"),
        ({"test_size": 2.5}, r"test_size must be an integer >= 1 or None, got 2.5"),
        ({"k": True}, "k must be an integer >= 1, got True"),
        ({"prior_scale": np.bool_(True)}, "prior_scale must be a finite number > 0"),
    ],
)
def test_config_rejects_bad_prior_centre_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.FitConfig(**{**BASE, **overrides})


def test_config_takes_numpy_numbers_and_the_smallest_rw_mcmc_budget():
    config = pipeline.FitConfig(**{**BASE, "budget": np.int64(300), "k": np.int64(4), "prior_scale": np.float32(2.0)})
    assert config.budget == 300 and config.prior_scale == 2.0
    smallest = dict(task="sst2", engine="rw-mcmc", vote_smoothing=1.0, prior_centre="zero")
    assert pipeline.FitConfig(**smallest, budget=9).engine_budget == 9  # 8 for Pyro's set-up and one sample
    with pytest.raises(ValueError, match="needs at least 9"):
        pipeline.FitConfig(**smallest, budget=8)
    pipeline.FitConfig(**smallest, budget=8, engine_options={"num_samples": 1, "warmup_steps": 0})  # sized by hand


def test_engine_budget_leaves_the_dev_stage_out():
    config = pipeline.FitConfig(**{**BASE, "engine": "ensemble-mcmc", "engine_options": {}})
    assert (config.dev_centre_budget, config.engine_budget) == (150, 150)
    assert pipeline.FitConfig(**{**BASE, "prior_centre": "zero"}).engine_budget == 300


def test_cli_passes_the_prior_centre(tmp_path, fake_backend, capsys):
    out = tmp_path / "run"
    args = ["fit", "--task", "sst2", "--particles", "8", "--intrinsic-dim", "4", "--n-tokens", "2", "--k", "4",
            "--dev-k", "2", "--test-size", "10", "--budget", "200", "--option", "max_moves=2", "--quiet",
            "--prior-centre", "dev", "--prior-centre-share", "0.3", "--out", str(out)]
    assert cli.main(args) == 0
    saved = RunDirectory(out).read_config()
    assert (saved["prior_centre"], saved["prior_centre_share"]) == ("dev", 0.3)
    assert 0 < RunDirectory(out).read_metrics()["prior_centre"]["api_calls"] <= 60


def test_cma_family_starts_at_the_prior_mean():
    """BBT starts at u = 0, the default prior's mean; under a centred prior it starts at the centre."""
    from bayesprompt.inference.cma import CMAELBO, CMAES

    box, _, dev = _dev_problem(budget=None)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    centre = torch.tensor([1.5, -2.0, 0.5])
    for prior, expected in ((None, torch.zeros(3)), (DevCentre(centre, 0, 0.0, 0).prior(0.3), centre)):
        potential = Potential(PromptModel(box, projection, prior=prior), (dev,), meter=box.meter)
        state = CMAES(popsize=4).init(potential, 0)
        assert torch.equal(state.best_u, expected) and torch.allclose(torch.as_tensor(state.strategy.mean).float(), expected)
        elbo = CMAELBO(popsize=4).init(potential, 0)
        assert torch.allclose(elbo.best_params[:3].float(), expected)
        assert torch.allclose(elbo.prior.mean.float(), expected)
    assert box.meter.calls == 0  # starting costs no query
