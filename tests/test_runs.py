"""Run directories, checkpoints and the engine-state serialiser (``bayesprompt.runs``).

Fast tests: no language model. Engine states come from short runs on a fake black box
(:class:`bayesprompt.testing.FakeBlackBox`) or the linear-Gaussian target; pipeline-level
resume tests swap the pipeline's backend for the fake black box and interrupt ``fit``
by raising from the checkpoint writer.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesprompt import pipeline
from bayesprompt.data import get_task
from bayesprompt.data.task import Example
from bayesprompt.inference.cma import CMAES, CMAState
from bayesprompt.inference.posterior import Posterior
from bayesprompt.inference.smc import ABCSMC, TemperedSMC, TemperedSMCState
from bayesprompt.inference.smc.abc import ABCSMCState
from bayesprompt.lm import LabelOnly, Meter
from bayesprompt.models.potential import Evaluation, Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel, PromptModel
from bayesprompt.predict import EnsemblePredictions
from bayesprompt.runs import (
    RUN_FORMAT_VERSION,
    Checkpoint,
    RunDirectory,
    RunDirectoryError,
    RunPredictions,
    StateCodec,
    StateSerializationError,
    atomic_write_bytes,
    config_digest,
    run_with_checkpoints,
)
from bayesprompt.testing import FakeBlackBox, LinearGaussian

TASK = get_task("sst2")


# ---------------------------------------------------------------------------- helpers
def prompt_potential(likelihood_free: bool = False, meter: Meter | None = None) -> tuple[Potential, torch.Tensor]:
    """A prompt model on the fake black box with 6 labelled examples."""
    box = FakeBlackBox(TASK, embed_dim=4, seed=0, meter=meter)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    examples = [Example(f"text {i}", i % 2) for i in range(6)]
    batch = box.encode(examples)
    if likelihood_free:
        model = LikelihoodFreePromptModel(LabelOnly(box), projection)
    else:
        model = PromptModel(box, projection)
    return Potential(model, (batch,), meter=box.meter), batch.labels


def states_after(engine, potential: Potential, steps: int, seed: int = 0) -> list:
    """The engine's states after init and each of ``steps`` steps."""
    states = [engine.init(potential, seed)]
    for _ in range(steps):
        states.append(engine.step(potential, states[-1])[0])
    return states


def assert_same(a, b, path: str = "state") -> None:
    """Recursive bitwise equality of states (tensors: values, dtype and shape)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), path
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    elif type(a).__module__.startswith("cma"):
        assert np.array_equal(a.mean, b.mean) and a.sigma == b.sigma and a.countiter == b.countiter, path
    else:
        assert type(a) is type(b) and a == b, path


def roundtrip(state, codec: StateCodec | None = None):
    codec = codec or StateCodec()
    return codec.loads(codec.dumps(state))[0]


# ---------------------------------------------------------------------------- serialiser
def test_tempered_smc_state_roundtrip_continues_identically():
    potential, _ = prompt_potential()
    engine = TemperedSMC(num_particles=8, target_ess=0.9, max_moves=2)
    state = states_after(engine, potential, 2)[-1]
    assert isinstance(state, TemperedSMCState) and isinstance(state.particles, Evaluation)
    restored = roundtrip(state)
    assert_same(state, restored)
    assert_same(engine.step(potential, state), engine.step(potential, restored))


def test_abc_smc_state_roundtrip_continues_identically():
    potential, labels = prompt_potential(likelihood_free=True)
    engine = ABCSMC(labels, num_particles=8)
    state = states_after(engine, potential, 2)[-1]
    assert isinstance(state, ABCSMCState)
    restored = roundtrip(state)
    assert_same(state, restored)
    assert_same(engine.step(potential, state), engine.step(potential, restored))


def test_cma_state_roundtrip_continues_identically():
    problem = LinearGaussian.random(dim=3, num_obs=6, seed=0)
    potential = Potential(problem.model)
    engine = CMAES(popsize=6)
    states = states_after(engine, potential, 3)
    assert isinstance(states[-1], CMAState) and math.isinf(states[0].best_score)
    for state in (states[0], states[-1]):
        restored = roundtrip(state)
        assert_same(state, restored)
        a, b = state, restored
        for _ in range(3):  # the restored strategy (RNG included) asks the same candidates
            (a, info_a), (b, info_b) = engine.step(potential, a), engine.step(potential, b)
            assert info_a == info_b
        assert_same(a, b)


def test_nested_evaluation_and_plain_values_roundtrip():
    evaluation = Evaluation(
        torch.randn(3, 2, dtype=torch.float64),
        torch.tensor([0.0, -math.inf, 1.0]),
        torch.tensor([math.nan, 1.0, 2.0]),
        {"y_pred": torch.tensor([[0, 1], [1, 1], [0, 0]]), "score": torch.randn(3).to(torch.bfloat16)},
    )
    codec = StateCodec()
    value = (evaluation, [None, True, 3, 2**70, -math.inf, "s"], {"arr": np.arange(4, dtype=np.int16)})
    restored = roundtrip(value, codec)
    assert_same(value[:2], restored[:2])
    assert restored[2]["arr"].dtype == np.int16 and np.array_equal(restored[2]["arr"], np.arange(4))
    tree, arrays = codec.encode(evaluation)
    assert tree["class"] == "bayesprompt.models.potential.Evaluation"
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())


@dataclasses.dataclass(frozen=True)
class UnregisteredState:
    x: torch.Tensor


def test_unregistered_dataclass_is_refused_on_write_and_read():
    state = UnregisteredState(torch.zeros(2))
    with pytest.raises(StateSerializationError, match="not on the state allow-list.*STATE_CLASSES"):
        StateCodec().dumps(state)
    data = StateCodec(extra_classes=[UnregisteredState]).dumps(state)
    assert torch.equal(StateCodec(extra_classes=[UnregisteredState]).loads(data)[0].x, state.x)
    with pytest.raises(StateSerializationError, match="UnregisteredState.*not on the state allow-list"):
        StateCodec().loads(data)


def test_unsupported_values_name_their_path():
    with pytest.raises(StateSerializationError, match=r"state\[1\]\['k'\] of type set"):
        StateCodec().dumps((1, {"k": {1, 2}}))
    with pytest.raises(StateSerializationError, match="keys must be strings"):
        StateCodec().dumps({1: 2})


def test_changed_class_fields_are_reported():
    potential, _ = prompt_potential()
    codec = StateCodec()
    tree, arrays = codec.encode(TemperedSMC(num_particles=4).init(potential, 0))
    del tree["fields"]["scale"]
    with pytest.raises(StateSerializationError, match="written by another version of the class"):
        codec.decode(tree, arrays)
    tree["fields"]["scale"], tree["fields"]["unknown"] = tree["fields"]["stage"], tree["fields"]["stage"]
    with pytest.raises(StateSerializationError, match="written by another version of the class"):
        codec.decode(tree, arrays)


def test_a_state_written_before_a_field_with_a_default_was_added_loads_with_the_default():
    """Checkpoints from before ``TemperedSMCState.interrupted`` / ``AdaptiveABCSMCState.interrupted`` resume."""
    potential, _ = prompt_potential()
    codec = StateCodec()
    state = TemperedSMC(num_particles=4).init(potential, 0)
    tree, arrays = codec.encode(state)
    del tree["fields"]["interrupted"]
    restored = codec.decode(tree, arrays)
    assert restored.interrupted is False and restored.stage == state.stage
    assert torch.equal(restored.particles.u, state.particles.u)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pycma_unpickler_refuses_foreign_globals():
    codec = StateCodec()
    tree, arrays = codec.encode(CMAES(popsize=4).init(Potential(LinearGaussian.random(2, 3, seed=0).model), 0))
    key = tree["fields"]["strategy"]["array"]
    arrays[key] = np.frombuffer(pickle.dumps(_Evil()), dtype=np.uint8)
    with pytest.raises(StateSerializationError, match="refusing to unpickle"):
        codec.decode(tree, arrays)


def test_a_pycma_strategy_that_would_not_restore_fails_when_written():
    class Strategy:  # passes for a pycma strategy whose pickle needs a global the unpickler refuses
        __module__ = "cma.evolution_strategy"

        def pickle_dumps(self):
            return pickle.dumps(_Evil())

    with pytest.raises(StateSerializationError, match=r"state\['strategy'\]: refusing to unpickle \w+\.system"):
        StateCodec().encode({"strategy": Strategy()})


# ---------------------------------------------------------------------------- atomic writes
def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.npz"
    atomic_write_bytes(target, b"old")

    def killed(*args):
        raise KeyboardInterrupt  # like a signal arriving mid-write

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temporary left behind


def test_checkpoint_roundtrip(tmp_path):
    potential, _ = prompt_potential()
    state = TemperedSMC(num_particles=4).init(potential, 0)
    run_dir = RunDirectory.create(tmp_path / "run", {"task": "sst2"})
    diagnostics = [{"stage": 1, "ess": math.inf, "api_calls": 8}]
    checkpoint = Checkpoint(state, "smc", 1, diagnostics, {"calls": 8}, 1.5, config_digest({"task": "sst2"}))
    run_dir.write_checkpoint(checkpoint, StateCodec())
    back = run_dir.read_checkpoint(StateCodec())
    assert_same(back.state, state)
    assert (back.engine, back.iteration, back.diagnostics, back.meter, back.elapsed_seconds) == (
        "smc", 1, diagnostics, {"calls": 8}, 1.5)
    assert run_dir.read_diagnostics() == [{"stage": 1, "ess": "inf", "api_calls": 8}]  # strict JSON on disk


# ---------------------------------------------------------------------------- corrupted run directories
@pytest.fixture
def run_dir(tmp_path) -> RunDirectory:
    """A complete small run directory (no language model)."""
    potential, labels = prompt_potential()
    projection = potential.model.projection
    state = TemperedSMC(num_particles=4).init(potential, 0)
    config = {"task": "sst2", "engine": "smc"}
    run = RunDirectory.create(tmp_path / "run", config, projection.metadata())
    run.write_projection(projection)
    run.write_checkpoint(Checkpoint(state, "smc", 0, [], {"calls": 4}, 0.0, config_digest(config)), StateCodec())
    posterior = Posterior({"z": torch.randn(4, 3)}, torch.zeros(4), engine="smc")
    run.write_posterior(posterior)
    run.write_metrics({"test": {"accuracy": 0.5}})
    predictions = EnsemblePredictions(torch.full((4, 6, 2), 0.5), posterior.weights.float(), labels)
    run.write_predictions(RunPredictions(predictions, predictions.mean(), {"imdb": predictions}, "sst2"))
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _read_all(run: RunDirectory) -> None:
    run = RunDirectory.open(run.path)
    run.read_config()
    run.read_projection()
    run.read_checkpoint(StateCodec())
    run.read_posterior()
    run.read_metrics()
    run.read_predictions()


def test_complete_run_directory_reads(run_dir):
    _read_all(run_dir)
    saved = run_dir.read_predictions()
    assert list(saved.ood) == ["imdb"] and saved.test.probs.shape == (4, 6, 2)
    assert json.loads(run_dir.file("config.json").read_text())["format_version"] == RUN_FORMAT_VERSION


@pytest.mark.parametrize("name", ["config.json", "projection.npz", "checkpoint.npz", "posterior.npz",
                                  "posterior.json", "metrics.json", "predictions.npz"])
def test_missing_file_is_named(run_dir, name):
    run_dir.file(name).unlink()
    with pytest.raises(RunDirectoryError, match=rf"{name}: (missing file|not a run directory)"):
        _read_all(run_dir)


@pytest.mark.parametrize("name", ["projection.npz", "checkpoint.npz", "posterior.npz", "predictions.npz"])
def test_truncated_archive_is_named(run_dir, name):
    _truncate(run_dir.file(name))
    with pytest.raises(RunDirectoryError, match=rf"{name}") as info:
        _read_all(run_dir)
    assert "truncated or corrupt" in str(info.value) or "not a readable .npz" in str(info.value)


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "posterior.json"])
def test_bad_json_is_named(run_dir, name):
    run_dir.file(name).write_text('{"format_version": 1, "config": {')
    with pytest.raises(RunDirectoryError, match=rf"{name}.*(not valid JSON|cannot read)"):
        _read_all(run_dir)


def test_bad_checkpoint_header_is_named(run_dir):
    path = run_dir.file("checkpoint.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["__header__"] = np.frombuffer(b"{not json", dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(RunDirectoryError, match="checkpoint.npz: the archive header is not valid JSON"):
        run_dir.read_checkpoint(StateCodec())


def test_missing_checkpoint_array_is_named(run_dir):
    path = run_dir.file("checkpoint.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "a0"}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(RunDirectoryError, match=r"checkpoint.npz: state\..*array 'a0' is missing"):
        run_dir.read_checkpoint(StateCodec())


def _set_version(path: Path, version: int) -> None:
    data = json.loads(path.read_text())
    data["format_version"] = version
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "posterior.json"])
def test_other_format_version_is_refused(run_dir, name):
    _set_version(run_dir.file(name), 99)
    with pytest.raises(RunDirectoryError, match=rf"{name}.*format_version 99.*reads (format_)?version 1"):
        _read_all(run_dir)


def test_other_checkpoint_version_is_refused(run_dir):
    codec = StateCodec()
    path = run_dir.file("checkpoint.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["__header__"].tobytes())
    header["format_version"] = 2
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(RunDirectoryError, match="checkpoint.npz: the state archive has format_version 2"):
        run_dir.read_checkpoint(codec)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirectoryError, match="no such run directory"):
        RunDirectory.open(tmp_path / "nope")
    with pytest.raises(RunDirectoryError, match="config.json: not a run directory"):
        RunDirectory.open(tmp_path)


def test_fresh_run_replaces_only_run_files(run_dir):
    (run_dir.path / "notes.txt").write_text("keep me")
    (run_dir.plots_dir).mkdir()
    (run_dir.plots_dir / "old.png").write_bytes(b"png")
    fresh = RunDirectory.create(run_dir.path, {"task": "rte"})
    assert sorted(p.name for p in fresh.path.iterdir()) == ["config.json", "notes.txt", "plots"]
    assert not list(fresh.plots_dir.iterdir())


# ---------------------------------------------------------------------------- pipeline resume (fake black box)
class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def _interrupt_after(monkeypatch, checkpoints: int) -> None:
    original = RunDirectory.write_checkpoint
    written = []

    def write_then_die(self, checkpoint, codec):
        path = original(self, checkpoint, codec)
        written.append(checkpoint.iteration)
        if len(written) == checkpoints:
            raise Interrupted
        return path

    monkeypatch.setattr(RunDirectory, "write_checkpoint", write_then_die)


ENGINE_CASES = {
    "smc": {"engine_options": {"target_ess": 0.9, "max_moves": 2}},
    "abc-smc": {"engine_options": {"max_stages": 4}},
    "abc-mcmc": {"engine_options": {"max_stages": 4}},
    "cmaes": {"engine_options": {"max_iterations": 6, "dev_every": 2}},
    "ensembles": {"engine_options": {"num_members": 2, "max_iterations": 3, "dev_every": 2}},
    # cut after two members finished: their strategies are released, the third is built on resume
    "ensembles-one-iteration-members": {"engine": "ensembles",
                                        "engine_options": {"num_members": 3, "max_iterations": 1}},
    "cma-elbo": {"engine_options": {"max_iterations": 5, "num_mc_samples": 2, "dev_every": 2}},
    "eki": {"engine_options": {"tikhonov": True, "max_iterations": 5}},
    "eks": {"engine_options": {"num_iterations": 5}},
    "ensemble-mcmc": {"engine_options": {"num_iterations": 6, "burn_in": 2}},
    "rw-mcmc": {"engine_options": {"warmup_steps": 3, "num_samples": 5, "num_chains": 2}},
    # pycma samples mirrored pairs below a population of 6, and its state then holds a range
    "cmaes-popsize4": {"engine": "cmaes", "num_particles": 4, "engine_options": {"max_iterations": 6}},
    "cma-elbo-popsize4": {"engine": "cma-elbo", "num_particles": 4,
                          "engine_options": {"max_iterations": 5, "num_mc_samples": 2}},
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_resume_matches_an_uninterrupted_run(case, tmp_path, monkeypatch, fake_backend):
    options = {"engine": case, "num_particles": 8, **ENGINE_CASES[case]}
    base = dict(task="sst2", budget=400, k=4, dev_k=2, test_size=10, intrinsic_dim=5, n_tokens=2, prior_scale=30.0,
                **options)
    reference = pipeline.fit(pipeline.FitConfig(out=str(tmp_path / "ref"), **base), progress=False)
    assert len(reference.posterior.diagnostics) >= 3
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 3)  # after init and two steps
        with pytest.raises(Interrupted):
            pipeline.fit(pipeline.FitConfig(out=str(tmp_path / "cut"), **base), progress=False)
    (tmp_path / "cut").rename(tmp_path / "moved")  # a run resumes wherever it lies, however its path is spelt
    cut = RunDirectory.open(tmp_path / "moved")
    assert cut.read_checkpoint(StateCodec()).iteration == 2 and not cut.file("posterior.json").exists()
    resumed = pipeline.resume(f"{tmp_path / 'moved'}/", progress=False)
    assert_same(reference.posterior.samples, resumed.posterior.samples)
    assert torch.equal(reference.posterior.log_weights, resumed.posterior.log_weights)
    assert reference.posterior.diagnostics == resumed.posterior.diagnostics
    assert cut.read_diagnostics() == RunDirectory(tmp_path / "ref").read_diagnostics()
    assert torch.equal(reference.predictions.probs, resumed.predictions.probs)
    drop = lambda m: {k: v for k, v in m.items() if k != "inference_seconds"}  # noqa: E731
    assert json.dumps(drop(reference.metrics), default=str) == json.dumps(drop(resumed.metrics), default=str)
    assert cut.read_meter() == RunDirectory(tmp_path / "ref").read_meter()


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, monkeypatch, fake_backend):
    config = pipeline.FitConfig(task="sst2", budget=60, k=2, dev_k=2, test_size=4, intrinsic_dim=3, n_tokens=1,
                                num_particles=4, out=str(tmp_path / "run"))
    pipeline.fit(config, progress=False)
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(RunDirectoryError, match=r"the run has finished \(predictions.npz is written\); `bayesprompt evaluate`"):
        pipeline.resume(run.path, progress=False)  # it would predict again and drop what `evaluate` added
    run.file("predictions.npz").unlink()  # as if killed before its predictions were written
    saved = run.read_config()
    run.write_config({**saved, "seed": 1}, None)
    with pytest.raises(RunDirectoryError, match="checkpoint.npz: written for another config"):
        pipeline.resume(run.path, progress=False)


def test_unregistered_engine_state_fails_at_the_first_checkpoint(tmp_path, fake_backend):
    class Custom(TemperedSMC):
        def init(self, potential, seed):
            return UnregisteredState(super().init(potential, seed).particles.u)

    config = pipeline.FitConfig(task="sst2", budget=60, k=2, dev_k=2, test_size=4, intrinsic_dim=3, n_tokens=1,
                                num_particles=4, out=str(tmp_path / "run"))
    with pytest.raises(StateSerializationError, match="UnregisteredState is not on the state allow-list"):
        pipeline.fit(config, progress=False, engine=Custom(num_particles=4))


def test_a_checkpoint_does_not_continue_another_engine_or_config(tmp_path):
    problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    potential = Potential(problem.model, meter=problem.meter)
    run_dir = RunDirectory(tmp_path)
    run_with_checkpoints(TemperedSMC(num_particles=16), potential, run_dir, seed=0, meter=problem.meter,
                         config_sha256="abc", progress=False)
    start = run_dir.read_checkpoint(StateCodec())
    with pytest.raises(RunDirectoryError, match="engine 'smc'.*cannot continue engine 'smc' \\(config other"):
        run_with_checkpoints(TemperedSMC(num_particles=16), potential, None, seed=0, meter=Meter(),
                             config_sha256="other", start=start, progress=False)
    with pytest.raises(RunDirectoryError, match="cannot continue engine 'cmaes'"):
        run_with_checkpoints(CMAES(), potential, None, seed=0, meter=Meter(), config_sha256="abc", start=start,
                             progress=False)
    with pytest.raises(RunDirectoryError, match="checkpoint.npz: checkpoint .* delete the checkpoint to start afresh"):
        run_with_checkpoints(CMAES(), potential, run_dir, seed=0, meter=Meter(), config_sha256="abc", start=start,
                             progress=False)
