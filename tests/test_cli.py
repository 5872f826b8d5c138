"""The ``bayesprompt`` command line: help, bad input, fit / evaluate / plot, kill and resume.

Fast tests swap the pipeline's backend for the fake black box. The ``slow`` tests run
the real embedded MiniLM, one thread per process: a subprocess ``python -m bayesprompt
fit`` is killed with SIGKILL after its first engine-step checkpoint while an
uninterrupted reference run of the same config runs in this process; the killed run is
then resumed from its run directory and must agree bitwise with the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesprompt import cli, pipeline, plotting
from bayesprompt.data import get_task
from bayesprompt.runs import RunDirectory, RunDirectoryError, StateCodec
from bayesprompt.testing import FakeBlackBox

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "projection.npz", "checkpoint.npz", "diagnostics.jsonl", "posterior.json",
             "posterior.npz", "meter.json", "metrics.json", "predictions.npz", "plots"}
#: A tiny SMC run on SST-2 with the real MiniLM: 4 stages of at most 2 moves (about 70 calls).
TINY = ["--task", "sst2", "--engine", "smc", "--particles", "8", "--intrinsic-dim", "20", "--n-tokens", "2",
        "--k", "2", "--dev-k", "2", "--test-size", "16", "--budget", "200",
        "--option", "target_ess=0.995", "--option", "max_moves=2", "--quiet"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


# ---------------------------------------------------------------------------- help & bad input
@pytest.mark.parametrize("command", ["", "fit", "evaluate", "predict", "plot", "compare"])
def test_help_documents_every_option(command, capsys):
    parser = subcommands()[command]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help, f"{command} {action.dest} has no help"
        for option in action.option_strings:
            assert option in text, f"{option} missing from `bayesprompt {command} --help`"
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            assert action.metavar in text
    if not command:
        assert all(name in text for name in ("fit", "evaluate", "predict", "plot"))


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("bayesprompt: error: ")
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    return captured.err


def test_unknown_task_exits_2_with_the_known_tasks(capsys):
    assert "unknown task 'nope'; known tasks: agnews, dbpedia" in _error(capsys, ["fit", "--task", "nope", "--quiet"])


def test_the_parser_and_the_engines_load_without_transformers():
    """`bayesprompt --help` and engine-only use skip the seconds that importing transformers takes."""
    code = ("import sys, bayesprompt.cli, bayesprompt.pipeline, bayesprompt.lm; bayesprompt.cli.build_parser(); "
            "print('transformers' in sys.modules, bayesprompt.lm.SentenceEncoderBlackBox.__name__, "
            "'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "SentenceEncoderBlackBox", "True"]  # imported on first use


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert "--option expects KEY=VALUE" in _error(capsys, ["fit", "--option", "oops", "--quiet"])
    assert "budget must be an integer >= 1" in _error(capsys, ["fit", "--budget", "0", "--quiet"])
    assert "needs at least 9" in _error(capsys, ["fit", "--engine", "rw-mcmc", "--budget", "8", "--quiet"])
    assert "no such run directory" in _error(capsys, ["evaluate", str(tmp_path / "missing")])
    assert "config.json: not a run directory" in _error(capsys, ["plot", str(tmp_path)])
    assert "unknown task 'mnist'" in _error(capsys, ["evaluate", str(tmp_path), "--ood", "mnist"])
    assert "ood_size must be >= 1" in _error(capsys, ["evaluate", str(tmp_path), "--ood-size", "0"])
    err = _error(capsys, ["fit", "--resume", str(tmp_path), "--task", "rte", "--k", "4"])
    assert "--resume reads the config from" in err and "--task, --k" in err
    for typed, flag in ((["--budget", "2000"], "--budget"), (["--bud", "2000"], "--budget"), (["--budget=2000"], "--budget"),
                        (["--option", "a=1"], "--option"), (["--bf16"], "--bf16")):
        err = _error(capsys, ["fit", "--resume", str(tmp_path), *typed])  # given, even at the default value
        assert f"do not pass {flag}" in err
    killed = RunDirectory.create(tmp_path / "killed", {"task": "sst2"})  # a fit stopped before its posterior
    assert "posterior.json: missing file (the run has not finished; resume it" in _error(capsys, ["plot", str(killed.path)])
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "is not a directory" in _error(capsys, ["fit", "--data-dir", str(afile), "--quiet"])  # an OSError
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--engine", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- fake black box end to end
@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.setattr(
        pipeline, "_backend",
        lambda config, task, meter: FakeBlackBox(task, embed_dim=8, seed=0, meter=meter, precision=config.precision),
    )


FAKE = ["--task", "sst2", "--particles", "8", "--intrinsic-dim", "4", "--n-tokens", "2", "--k", "4", "--dev-k", "2",
        "--test-size", "10", "--budget", "300", "--prior-scale", "30", "--quiet"]


def test_fit_evaluate_plot_with_a_fake_black_box(tmp_path, capsys, fake_backend):
    out = tmp_path / "run"
    assert cli.main(["fit", *FAKE, "--option", "max_moves=2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "engine=smc" in text and "test accuracy=" in text and f"run written to {out}" in text
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert cli.main(["evaluate", str(out), "--ood", "imdb", "--ood-size", "6"]) == 0
    text = capsys.readouterr().out
    assert "OOD imdb (n_in=10, n_ood=6)" in text and "mutual_information" in text
    assert set(RunDirectory(out).read_metrics()["ood"]) == {"imdb"}
    assert cli.main(["plot", str(out)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3 + 5  # printed paths
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"reliability.png", "reliability_pav.png", "risk_coverage.png",
            "uncertainty_imdb_mutual_information.png", "uncertainty_imdb_predictive_entropy.png"} <= names
    assert cli.main(["evaluate", str(out), "--json"]) == 0  # without --ood: the OOD report is dropped
    assert "ood" not in json.loads(capsys.readouterr().out)
    assert "ood" not in RunDirectory(out).read_metrics()


def test_bad_engine_options_fail_cleanly_before_touching_an_earlier_run(tmp_path, capsys, fake_backend):
    out = tmp_path / "run"
    assert cli.main(["fit", *FAKE, "--option", "max_moves=2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    for options, message in (
        (["--option", "max_moves=2x"], r"engine 'smc' refuses --option \{'max_moves': '2x'\}"),
        (["--option", "not_a_key=3"], "unexpected keyword argument 'not_a_key'"),
        (["--engine", "cmaes", "--option", "max_moves=2"], "engine 'cmaes' refuses --option"),
        (["--particles", "1"], "--particles must be >= 2"),  # the flag, not the config field num_particles
    ):
        assert cli.main(["fit", *FAKE, *options, "--out", str(out)]) == 2
        assert re.search(message, capsys.readouterr().err)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written or removed


def test_options_without_effect_are_warned_about():
    warned = lambda typed, **config: cli._unused_options(pipeline.FitConfig(**config), typed)  # noqa: E731
    assert warned(["--particles"], engine="rw-mcmc") == [
        "--particles has no effect on rw-mcmc (its chains: --option num_chains=N)"]
    assert warned(["--particles"], engine="ensemble-mcmc", num_particles=5) == [
        "ensemble-mcmc needs an even number of walkers: it runs 6"]
    assert warned(["--prior-centre-share"], prior_centre_share=0.3) == [
        "--prior-centre-share has no effect without --prior-centre dev"]
    assert warned(["--vote-smoothing"], engine="eki") == [
        "--vote-smoothing has no effect on eki, which sees scores (not votes)"]
    assert warned(["--particles", "--vote-smoothing"], engine="abc-smc", num_particles=5) == []
    assert warned(["--prior-centre-share"], prior_centre="dev", prior_centre_share=0.3) == []
    assert warned([], engine="rw-mcmc") == []  # the default population, not typed


def test_likelihood_free_runs_predict_with_votes(tmp_path, fake_backend):
    out = tmp_path / "abc"
    assert cli.main(["fit", *FAKE, "--engine", "abc-smc", "--option", "max_stages=2", "--out", str(out)]) == 0
    assert cli.main(["evaluate", str(out), "--ood", "imdb", "agnews", "--ood-size", "4"]) == 0
    saved = RunDirectory(out).read_predictions()
    assert list(saved.ood) == ["imdb", "agnews"] and sorted(saved.ood["agnews"].labels.tolist()) == [0, 1, 2, 3]
    assert RunDirectory(out).read_metrics()["ood"]["agnews"]["num_ood"] == 4
    for predictions in (saved.test, saved.ood["imdb"], saved.ood["agnews"]):  # label-only API: one-hot votes per sample
        assert set(predictions.probs.unique().tolist()) <= {0.0, 1.0}
    metrics, meter = RunDirectory(out).read_metrics(), RunDirectory(out).read_meter()
    alpha = metrics["vote_smoothing"]  # the default: fitted on the dev split, 8 calls kept back for it
    assert isinstance(alpha, float) and torch.allclose(saved.test_probs, saved.test.mean(alpha))
    assert meter["inference"]["calls"] <= 300


def test_plots_of_a_label_only_run_use_its_vote_smoothing(tmp_path, fake_backend, monkeypatch):
    out = tmp_path / "abc"
    args = ["fit", *FAKE, "--engine", "abc-smc", "--option", "max_stages=1", "--vote-smoothing", "2.5"]
    assert cli.main([*args, "--out", str(out)]) == 0
    assert cli.main(["evaluate", str(out), "--ood", "imdb", "--ood-size", "4"]) == 0
    drawn = {}
    monkeypatch.setattr(plotting, "plot_risk_coverage", lambda scores, correct, path: drawn.setdefault("test", scores))
    monkeypatch.setattr(
        plotting, "plot_uncertainty_histogram",
        lambda in_scores, ood_scores, path, name: drawn.setdefault(name, (in_scores, ood_scores)),
    )
    pipeline.plot_run(out)
    saved = RunDirectory(out).read_predictions()
    expected, unsmoothed = saved.test.uncertainty(2.5), saved.test.uncertainty()
    assert not torch.allclose(expected["predictive_entropy"], unsmoothed["predictive_entropy"])
    for name, scores in expected.items():
        torch.testing.assert_close(drawn["test"][name], scores)
        torch.testing.assert_close(drawn[name][0], scores)
        torch.testing.assert_close(drawn[name][1], saved.ood["imdb"].uncertainty(2.5)[name])


def test_vote_smoothing_fixed_value_and_bad_input(tmp_path, fake_backend, capsys):
    out = tmp_path / "abc"
    args = ["fit", *FAKE, "--engine", "abc-smc", "--option", "max_stages=1", "--out", str(out)]
    assert cli.main([*args, "--vote-smoothing", "2.5"]) == 0
    saved = RunDirectory(out).read_predictions()
    assert RunDirectory(out).read_metrics()["vote_smoothing"] == 2.5
    assert torch.allclose(saved.test_probs, saved.test.mean(2.5))
    with pytest.raises(SystemExit):
        cli.main([*args, "--vote-smoothing", "lots"])
    assert "--vote-smoothing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="leaves no calls"):
        pipeline.FitConfig(engine="abc-mcmc", budget=32, num_particles=32)


def _write_inputs(path: Path, examples, labelled: list[bool]) -> Path:
    rows = [{"text": e.text, **({"label": e.label} if keep else {})} for e, keep in zip(examples, labelled)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("engine", ["smc", "abc-smc"])
def test_predict_reproduces_the_runs_test_predictions(tmp_path, capsys, fake_backend, engine):
    """``predict`` on the run's own test inputs gives its saved test probabilities; labels are optional."""
    out = tmp_path / "run"
    option = "max_moves=2" if engine == "smc" else "max_stages=2"
    assert cli.main(["fit", *FAKE, "--engine", engine, "--option", option, "--out", str(out)]) == 0
    run = RunDirectory(out)
    config = pipeline.config_from_dict(run.read_config())
    test = pipeline._test_examples(get_task("sst2"), config)
    labelled = [i % 2 == 0 for i in range(len(test))]
    inputs = _write_inputs(tmp_path / "inputs.jsonl", test, labelled)
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", str(inputs), "--out", str(tmp_path / "pred.jsonl")]) == 0
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    saved = run.read_predictions().test_probs
    probs = torch.tensor([[row["probs"]["negative"], row["probs"]["positive"]] for row in rows])
    assert len(rows) == len(test) and torch.allclose(probs, saved.float(), atol=1e-6)
    assert [row["predicted"] for row in rows] == saved.argmax(-1).tolist()
    assert [row.get("label") for row in rows] == [e.label if keep else None for e, keep in zip(test, labelled)]
    assert {"predictive_entropy", "mutual_information", "predicted_name"} <= set(rows[0])
    posterior = run.read_posterior()
    samples = posterior.num_samples
    calls = len(torch.unique(torch.cat([v.reshape(samples, -1) for v in posterior.samples.values()], 1), dim=0))
    kept = torch.tensor(labelled)
    nll = -saved[kept].log().gather(1, torch.tensor([e.label for e in test])[kept, None]).mean()
    assert f"predicted {len(test)} inputs with {samples} posterior samples, {calls} API calls" in err  # distinct ones
    assert f"on the {sum(labelled)} labelled: accuracy=" in err and f"nll={nll:.4f}" in err  # labelled inputs only

    forecast = pipeline.predict_run(out, test[:3])  # Python API, to standard output through the CLI too
    assert forecast.probs.shape == (3, 2) and forecast.api_calls == calls and bool(forecast.labelled.all())
    assert cli.main(["predict", str(out), "--input", str(inputs)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(test)


def test_predict_a_pair_task_and_a_label_only_run_without_its_fitted_smoothing(tmp_path, capsys, fake_backend):
    out = tmp_path / "rte"
    pair = [a if a != "sst2" else "rte" for a in FAKE]
    assert cli.main(["fit", *pair, "--engine", "abc-smc", "--option", "max_stages=1", "--out", str(out)]) == 0
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text(json.dumps({"text": "A man sleeps.", "text_pair": "A man rests."}) + "\n"
                      + json.dumps({"text": "It rains.", "text_pair": "It is dry.", "label": 1}) + "\n")
    forecast = pipeline.predict_run(out, inputs)
    alpha = RunDirectory(out).read_metrics()["vote_smoothing"]
    assert forecast.predictions.labels.tolist() == [-1, 1] and forecast.label_names == get_task("rte").label_names
    assert torch.allclose(forecast.probs, forecast.predictions.mean(alpha))
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert "metrics.json: no fitted 'vote_smoothing'" in _error(capsys, ["predict", str(out), "--input", str(inputs)])


def test_predict_bad_input_names_the_file_and_line(tmp_path, capsys, fake_backend):
    out = tmp_path / "run"
    assert cli.main(["fit", *FAKE, "--option", "max_moves=1", "--out", str(out)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    assert f"{bad}, line 2: missing field 'text'" in _error(capsys, ["predict", str(out), "--input", str(bad)])
    bad.write_text(json.dumps({"text": "fine", "label": 7}) + "\n")
    assert "out of range" in _error(capsys, ["predict", str(out), "--input", str(bad)])
    assert "no such run directory" in _error(capsys, ["predict", str(tmp_path / "nope"), "--input", str(bad)])
    with pytest.raises(ValueError, match="no inputs to predict"):
        pipeline.predict_run(out, [])


# ---------------------------------------------------------------------------- real MiniLM, kill and resume
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("BAYESPROMPT_DATA", str(REPO.parent / "shared" / "data"))
    return env


def _bayesprompt(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bayesprompt", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_step_checkpoint(run: Path, process: subprocess.Popen, timeout: float = 90) -> int:
    """Poll until a checkpoint after at least one engine step exists; return its iteration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        try:
            iteration = RunDirectory(run).read_checkpoint(StateCodec()).iteration
        except RunDirectoryError:  # no checkpoint yet (the file appears atomically)
            iteration = 0
        if iteration >= 1:
            return iteration
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _kill_after_first_step(run: Path, process: subprocess.Popen, report: dict) -> None:
    """Thread body: SIGKILL ``process`` once ``run`` has a checkpoint after an engine step."""
    try:
        report["killed_at"] = _first_step_checkpoint(run, process)
        process.send_signal(signal.SIGKILL)
    except BaseException as err:  # reported to the test thread
        report["error"] = err
        process.kill()


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict:
    """A run killed after its first step and resumed, and an uninterrupted reference run.

    The victim runs in a subprocess (one thread) and is killed by a watcher thread while
    the reference runs in this process (one thread too, so both use the same kernels);
    the resume runs in this process, from nothing but the run directory.
    """
    root = tmp_path_factory.mktemp("real")
    ref, cut = root / "ref", root / "cut"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        victim = _bayesprompt("fit", *TINY, "--out", str(cut))
        report: dict = {}
        watcher = threading.Thread(target=_kill_after_first_step, args=(cut, victim, report), daemon=True)
        watcher.start()
        assert cli.main(["fit", *TINY, "--out", str(ref)]) == 0
        watcher.join(timeout=120)
        _, err = victim.communicate(timeout=30)
        assert "error" not in report, f"{report.get('error')!r}; the victim's stderr: {err[-2000:]}"
        assert victim.returncode == -signal.SIGKILL and not (cut / "posterior.json").exists()
        killed = RunDirectory(cut).read_checkpoint(StateCodec())
        assert cli.main(["fit", "--resume", str(cut), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"ref": ref, "cut": cut, "killed": killed}


@pytest.mark.slow
def test_fit_writes_the_full_run_directory(real_runs):
    run = RunDirectory(real_runs["ref"])
    assert {p.name for p in run.path.iterdir()} == RUN_FILES
    config = json.loads(run.file("config.json").read_text())
    assert config["format_version"] == 1 and config["config"]["num_particles"] == 8
    assert config["projection"]["intrinsic_dim"] == 20
    assert run.read_projection().matrix.shape == (20, 2 * 384)
    posterior = run.read_posterior()
    checkpoint = run.read_checkpoint(StateCodec())
    assert checkpoint.iteration == len(posterior.diagnostics) == len(run.read_diagnostics()) >= 3
    assert checkpoint.meter == posterior.api_calls == run.read_meter()["inference"]
    metrics = run.read_metrics()
    assert metrics["status"] == "finished" and metrics["test"]["num_examples"] == 16
    assert {"selective", "uncertainty", "arviz", "inference_api_calls"} <= set(metrics)
    assert metrics["selective"]["num_examples"] == 16 and "mutual_information/auroc" in metrics["selective"]
    assert metrics["arviz"]["method"] == "importance"
    assert {p.name for p in run.plots_dir.iterdir()} == {"reliability_pav.png", "reliability.png", "risk_coverage.png"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(real_runs):
    ref, cut = RunDirectory(real_runs["ref"]), RunDirectory(real_runs["cut"])
    total = len(ref.read_diagnostics())
    assert 1 <= real_runs["killed"].iteration < total  # killed part-way, after a step
    a, b = ref.read_posterior(), cut.read_posterior()
    assert set(a.samples) == set(b.samples)
    for site in a.samples:  # bitwise: same populations, same fp32 scores
        assert torch.equal(a.samples[site], b.samples[site])
    assert torch.equal(a.log_weights, b.log_weights)
    assert a.diagnostics == b.diagnostics and a.summary == b.summary and a.api_calls == b.api_calls
    assert ref.read_diagnostics() == cut.read_diagnostics()
    assert ref.read_meter() == cut.read_meter()
    drop = lambda m: {k: v for k, v in m.items() if k != "inference_seconds"}  # noqa: E731
    assert drop(ref.read_metrics()) == drop(cut.read_metrics())
    p, q = ref.read_predictions(), cut.read_predictions()
    assert torch.equal(p.test.probs, q.test.probs) and torch.equal(p.test_probs, q.test_probs)
    config_a, config_b = ref.read_config(), cut.read_config()
    assert {k: v for k, v in config_a.items() if k != "out"} == {k: v for k, v in config_b.items() if k != "out"}


@pytest.fixture(scope="module")
def evaluated(real_runs, tmp_path_factory) -> Path:
    """A copy of the reference run, evaluated with IMDB as OOD (in this process, one thread)."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(real_runs["ref"], run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["evaluate", str(run), "--ood", "imdb", "--ood-size", "4"]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.mark.slow
def test_evaluate_with_ood(real_runs, evaluated):
    run = RunDirectory(evaluated)
    fitted, metrics = RunDirectory(real_runs["ref"]).read_metrics(), run.read_metrics()
    for key, value in fitted["test"].items():  # the recomputed test predictions agree
        assert metrics["test"][key] == pytest.approx(value, abs=1e-6)
    report = metrics["ood"]["imdb"]
    assert report["num_in"] == 16 and report["num_ood"] == 4
    for score in ("predictive_entropy", "mutual_information", "one_minus_max_prob"):
        for key in ("auroc", "fpr95", "risk_rejection_aurc"):
            value = report[f"{score}/{key}"]
            assert isinstance(value, float) and (0.0 <= value <= 1.0 or np.isnan(value))
    assert metrics["evaluate_api_calls"]["calls"] == 2 * 8  # one call per sample and split (8 samples)
    saved = run.read_predictions()
    assert saved.ood["imdb"].probs.shape == (8, 4, 2) and saved.test.probs.shape == (8, 16, 2)


@pytest.mark.slow
def test_plot_writes_pngs(evaluated, capsys):
    assert cli.main(["plot", str(evaluated)]) == 0
    printed = capsys.readouterr().out.split()
    plots = sorted((evaluated / "plots").glob("*.png"))
    assert sorted(map(Path, printed)) == plots
    names = {p.name for p in plots}
    assert {"reliability_pav.png", "reliability.png", "risk_coverage.png"} <= names
    assert {f"uncertainty_imdb_{s}.png" for s in ("predictive_entropy", "mutual_information")} <= names
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
