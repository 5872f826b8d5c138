"""The benchmark harness (``benchmarks/``): suite runner, cache, failures, report, white-box, throughput."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.testing import FakeBlackBox

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks.estimate import EMULATED_BF16, estimate_cost  # noqa: E402
from benchmarks.methods import MethodSpec, default_registry  # noqa: E402
from benchmarks.report import (  # noqa: E402
    format_mean_sd, markdown_report, markdown_table, overview_table, plot_budget_sweep, replace_between_markers,
)
from benchmarks.run import (  # noqa: E402
    BenchmarkConfig, Cell, cached_main_records, cell_hash, code_revision, config_from_args, main, main_cells, parse_args, preset,
    reserved_calls, reusable_record, run_suite, sweep_cells, write_overview,
)
from benchmarks.throughput import measure, write_throughput  # noqa: E402
from benchmarks.whitebox import WhiteBoxConfig, differentiable_scores, train_prompt  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
TOY = Task("toy", ("a", "b"), ("A.", "B."), "{text} {mask}", ("a", "b"))


@pytest.fixture(scope="module")
def data_dir() -> str:
    path = Path(os.environ.get("BAYESPROMPT_DATA", SHARED_DATA))
    if not (path / "sst2" / "train.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {path} (set BAYESPROMPT_DATA)")
    return str(path)


def fake_config(data_dir: str, **changes) -> BenchmarkConfig:
    """The smoke configuration on the fake black box (no language model: fast)."""
    return dataclasses.replace(preset("smoke"), backend="fake", data_dir=data_dir, **changes)


def sst2_context(resources, budget: int, options: dict, **changes):
    """A method context on the fake box's SST-2 seed-0 split, 8 particles, a fresh meter of ``budget`` calls.

    The resources cache one backend per task and rebind it to each new meter: read a
    context's ``meter.calls`` before building the next one.
    """
    from benchmarks.methods import MethodContext
    from bayesprompt.data import get_task
    from bayesprompt.lm import Meter

    task = get_task("sst2")
    backend = resources.backend(task, Meter(budget))
    train, dev = resources.few_shot(task, 0)
    return MethodContext(task, backend, resources.projection(task, backend), backend.encode(train), backend.encode(dev),
                         budget, 0, num_particles=8, options=options, **changes)


@pytest.fixture
def chunk_sizes(monkeypatch) -> list[int]:
    """The number of examples in each forward pass of every :class:`FakeBlackBox`, in order."""
    sizes: list[int] = []
    score_chunk = FakeBlackBox._score_chunk

    def spy_chunk(self, prompts, batch):
        sizes.append(len(batch))
        return score_chunk(self, prompts, batch)

    monkeypatch.setattr(FakeBlackBox, "_score_chunk", spy_chunk)
    return sizes


# ---------------------------------------------------------------------- doctests


@pytest.mark.parametrize("name", ["methods", "run", "checkpoint", "report", "whitebox", "throughput", "point_vs_posterior", "cma_elbo_drift", "length_buckets", "engine_defaults", "ood_confidence"])
def test_module_doctests(name):
    module = importlib.import_module(f"benchmarks.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


# ---------------------------------------------------------------------- suite, cache, failures


@pytest.mark.slow
def test_smoke_config_end_to_end_and_cache(tmp_path, data_dir):
    config = dataclasses.replace(preset("smoke"), data_dir=data_dir)
    first = run_suite(config, tmp_path, log=None)
    assert (first.ran, first.cache_hits, first.errors) == (2, 0, 0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["status"]) for r in saved["records"]] == [("zero-shot", "ok"), ("smc", "ok")]
    smc = saved["records"][1]
    assert 0 < smc["api_calls"] <= 32 and smc["api_usage"]["budget"] == 32
    assert 0.0 <= smc["accuracy"] <= 1.0 and smc["nll"] > 0 and smc["ood"]["rte"]["size"] == 8
    markdown = (tmp_path / "results.md").read_text()
    assert "Zero-shot (no prompt)" in markdown and "Tempered SMC" in markdown
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2

    second = run_suite(config, tmp_path, log=None)
    assert (second.ran, second.cache_hits) == (0, 2)
    assert [r["metric"] for r in second.records] == [r["metric"] for r in saved["records"]]


def test_cached_only_reports_what_is_cached_and_runs_nothing(tmp_path, data_dir):
    config = fake_config(data_dir, methods=("zero-shot",))
    assert run_suite(config, tmp_path, log=None).ran == 1
    wider = dataclasses.replace(config, methods=("zero-shot", "smc"), seeds=(0, 1))
    lines = []
    report = run_suite(wider, tmp_path, log=lines.append, cached_only=True)
    assert (report.ran, report.cache_hits, report.not_run) == (0, 1, 3)
    assert [(r["method"], r["seed"]) for r in report.records] == [("zero-shot", 0)]
    assert len(list((tmp_path / "cells").glob("*.json"))) == 1  # nothing new was run or written
    assert sum("not run" in line for line in lines) == 3
    assert "Zero-shot" in (tmp_path / "results.md").read_text()
    # each cell not run gets a cost estimate from the cached timings: zero-shot seed 1 as seed 0 took; smc none,
    # since no cached cell on the task made an API call to time
    zero_shot = report.records[0]
    assert report.not_run_seconds == pytest.approx(zero_shot["fit_seconds"] + zero_shot["evaluation_seconds"])
    assert report.not_run_unestimated == 2 and sum(line.endswith("no estimate") for line in lines) == 2
    assert sum("min (as 1 sst2 zero-shot cells)" in line for line in lines) == 1


def test_cost_estimates_use_the_task_s_seconds_per_call_and_the_method_s_calls():
    def record(method, calls, fit, evaluation=60.0, **extra):
        return {"task": "agnews", "method": method, "budget": 2000, "api_calls": calls, "fit_seconds": fit,
                "evaluation_seconds": evaluation, "engine_status": "finished", **extra}

    records = [
        record("smc", 500, 1000.0, 600.0),  # 2 s per call
        record("bbt", 2000, 4000.0, 30.0, engine_status="budget_exhausted"),
        record("eki", 32, 64.0, 600.0),
        record("bbt", 2000, 40000.0, 3000.0, bf16_arithmetic=EMULATED_BF16),  # slow machine: left out
        record("smc", 500, 1.0, budget=4000, reused_from_budget=2000),  # a copy of another run's timings: left out
        {**record("bbt", 2000, 1.0), "task": "sst2"},  # another task
    ]
    smc = estimate_cost("agnews", "smc", 2000, budget_free=True, records=records)
    assert (smc.fit_seconds, smc.evaluation_seconds) == (1000.0, 600.0)  # its other seed's 500 calls x 2 s
    assert estimate_cost("agnews", "smc", 250, budget_free=True, records=records).fit_seconds == 500.0
    assert estimate_cost("agnews", "smc", 8000, budget_free=True, records=records).fit_seconds == 1000.0
    bbt = estimate_cost("agnews", "bbt", 8000, budget_free=False, records=records)
    assert (bbt.fit_seconds, bbt.evaluation_seconds) == (16000.0, 30.0)
    ensembles = estimate_cost("agnews", "ensembles", 2000, budget_free=False, records=records)
    assert ensembles.evaluation_seconds == 600.0 and "the task's median" in ensembles.basis
    assert estimate_cost("agnews", "whitebox", None, budget_free=False, records=records) is None
    assert estimate_cost("rte", "smc", 2000, budget_free=True, records=records) is None


def _comparable(record):
    """A record without what legitimately differs between two runs of the same fit."""
    volatile = ("budget", "config", "fit_seconds", "evaluation_seconds", "wall_seconds", "api_usage", "reused_from_budget")
    return {k: v for k, v in record.items() if k not in volatile}


def test_a_budget_free_run_that_stopped_by_itself_serves_every_budget_it_fits(tmp_path, data_dir):
    config = fake_config(data_dir, methods=("smc", "eki", "bbt"), budgets=(2000,))
    first = run_suite(config, tmp_path / "suite", log=None)
    used = {r["method"]: r["api_calls"] for r in first.records}
    assert all(r["torch_threads"] == torch.get_num_threads() for r in first.records)
    assert all(r["code_revision"] == code_revision() for r in first.records)
    assert used["smc"] < 2000 and used["eki"] < 2000 and used["bbt"] == 2000  # SMC and EKI stop by themselves
    smaller = max(used["smc"], used["eki"])
    lines = []
    again = run_suite(dataclasses.replace(config, budgets=(smaller,)), tmp_path / "suite", log=lines.append)
    assert (again.reused, again.ran) == (2, 1)  # BBT reads its budget: it is rerun
    reused = {r["method"]: r for r in again.records if "reused_from_budget" in r}
    assert set(reused) == {"smc", "eki"} and all(r["reused_from_budget"] == 2000 for r in reused.values())
    assert all(r["budget"] == smaller for r in reused.values()) and sum("same run as budget 2000" in x for x in lines) == 2

    # the claim behind the reuse: running afresh at the smaller budget gives the same record
    fresh = run_suite(dataclasses.replace(config, methods=("smc", "eki"), budgets=(smaller,)), tmp_path / "fresh", log=None)
    assert fresh.ran == 2
    for record in fresh.records:
        assert _comparable(record) == _comparable(reused[record["method"]])

    # a budget below the calls the run used is not the same run
    tight = run_suite(dataclasses.replace(config, methods=("smc",), budgets=(used["smc"] - 1,)), tmp_path / "suite", log=None)
    assert (tight.reused, tight.ran) == (0, 1)


def test_calls_kept_back_for_dev_votes_must_fit_the_budget_of_a_reused_record_too():
    """abc-smc runs its engine under budget - 32 (dev votes), and may spend fewer than 32 on the votes."""
    config, spec = preset("full"), default_registry()["abc-smc"]
    assert reserved_calls(config, Cell("sst2", "abc-smc", 0, 1000)) == 32
    assert reserved_calls(config, Cell("sst2", "smc", 0, 1000)) == 0 and reserved_calls(config, Cell("sst2", "bbt", 0, 1000)) == 0
    stalled = {"budget": 2000, "engine_status": "stalled", "api_calls": 990, "status": "ok"}  # e.g. 970 engine + 20 votes
    assert reusable_record(Cell("sst2", "abc-smc", 0, 1000), spec, [stalled], reserved_calls=32) is None  # 990 + 32 > 1000
    assert reusable_record(Cell("sst2", "abc-smc", 0, 1022), spec, [stalled], reserved_calls=32)["reused_from_budget"] == 2000


def test_a_cell_killed_during_evaluation_resumes_from_its_fit(tmp_path, data_dir, monkeypatch):
    import benchmarks.run as bench_run

    methods = ("zero-shot", "whitebox", "smc", "smc-temp", "smc-average", "abc-mcmc")  # fixed prompts, scores (two
    # with a latent temperature: the reloaded model must have that site), and votes with dev smoothing
    fits: list[str] = []
    registry = default_registry()
    for name in methods:
        spec = registry[name]
        registry[name] = dataclasses.replace(spec, fit=lambda ctx, fit=spec.fit, name=name: fits.append(name) or fit(ctx))
    config = fake_config(data_dir, methods=methods, budgets=(400,))  # smc-average needs both runs at beta = 1
    real_evaluate = bench_run.evaluate

    def dies(*args, **kwargs):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(bench_run, "evaluate", dies)
    killed = run_suite(config, tmp_path / "suite", registry, log=None)
    assert killed.errors == len(methods) and fits == list(methods)
    assert len(list((tmp_path / "suite" / "cells").glob("*.fit/outcome.json"))) == len(methods)

    monkeypatch.setattr(bench_run, "evaluate", real_evaluate)
    lines: list[str] = []
    resumed = run_suite(config, tmp_path / "suite", registry, log=lines.append)
    assert resumed.ran == len(methods) and fits == list(methods)  # evaluated without fitting again
    assert all(r["resumed_fit"] for r in resumed.records) and sum("fit from checkpoint" in x for x in lines) == len(methods)
    assert sum(": continuing (fitted, not yet evaluated)" in x for x in lines) == len(methods)
    assert not list((tmp_path / "suite" / "cells").glob("*.fit"))  # removed once the records are saved

    fresh = run_suite(config, tmp_path / "fresh", registry, log=None)
    for before, after in zip(fresh.records, resumed.records, strict=True):
        assert "resumed_fit" not in before and after["api_calls"] == before["api_calls"]
        assert _comparable(after) == {**_comparable(before), "resumed_fit": True}
    assert min(r["api_calls"] for r in resumed.records if r["method"] in ("smc", "abc-mcmc")) > 0


def _dies_at_step_three(real_write, step=3):
    """A ``RunDirectory.write_checkpoint`` that kills the fit when step 3 (or ``step``) would be saved."""
    def write(self, checkpoint, codec):
        if checkpoint.iteration == step:
            raise RuntimeError("killed during the fit")
        return real_write(self, checkpoint, codec)

    return write


def test_a_cell_killed_during_its_fit_continues_from_its_last_engine_step(tmp_path, data_dir, monkeypatch):
    from bayesprompt.runs import RunDirectory

    methods = ("bbt", "ensembles", "smc-temp", "abc-mcmc", "eks", "ensemble-mcmc", "rw-mcmc", "cma-elbo")  # CMA
    # states (pycma pickles), particles with a latent temperature, votes with dev smoothing (calls kept back), Kalman,
    # MCMC and Pyro's kernel
    config = fake_config(data_dir, methods=methods, budgets=(400,))
    real_write = RunDirectory.write_checkpoint
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_at_step_three(real_write))
    killed = run_suite(config, tmp_path / "suite", log=None)
    assert killed.errors == len(methods) and all("killed during the fit" in r["error"] for r in killed.records)
    assert len(list((tmp_path / "suite" / "cells").glob("*.fit/steps/checkpoint.npz"))) == len(methods)

    monkeypatch.setattr(RunDirectory, "write_checkpoint", real_write)
    listed: list[str] = []
    run_suite(config, tmp_path / "suite", log=listed.append, cached_only=True)
    assert sum("not run (--cached-only); fit at call" in line for line in listed) == len(methods)
    lines: list[str] = []
    resumed = run_suite(config, tmp_path / "suite", log=lines.append)
    assert resumed.ran == len(methods) and not list((tmp_path / "suite" / "cells").glob("*.fit"))
    assert sum(": continuing (fit at call" in line for line in lines) == len(methods)
    fresh = run_suite(config, tmp_path / "fresh", log=None)
    for before, after in zip(fresh.records, resumed.records, strict=True):
        assert "resumed_fit_at_calls" not in before and 0 < after["resumed_fit_at_calls"] < after["api_calls"]
        assert after["api_usage"] == before["api_usage"]
        assert _comparable(after) == {**_comparable(before), "resumed_fit_at_calls": after["resumed_fit_at_calls"]}


def _dies_in_stage(real_write, stage: str, step: int):
    """A ``RunDirectory.write_checkpoint`` that kills the fit when ``stage``'s step ``step`` would be saved."""
    def write(self, checkpoint, codec):
        if self.path.name == stage and checkpoint.iteration == step:
            raise RuntimeError(f"killed in stage {stage}")
        return real_write(self, checkpoint, codec)

    return write


@pytest.mark.parametrize("method, stage, step, logged", [
    ("smc-devprior", "dev_centre", 2, "dev_centre"), ("smc-devprior", "smc", 1, "smc"),
    ("smc-devprior", "smc", 0, "dev_centre"),  # killed before the second stage's first checkpoint
    ("smc-average", "plain", 1, "plain"), ("smc-average", "tempered", 1, "tempered")])
def test_a_chained_fit_killed_in_either_stage_continues_to_the_uninterrupted_result(tmp_path, data_dir, monkeypatch,
                                                                                    method, stage, step, logged):
    """FitStages: finished stages are replayed from their last checkpoint (no query), the killed one continues."""
    from bayesprompt.lm.meter import Meter
    from bayesprompt.runs import RunDirectory

    config = fake_config(data_dir, methods=(method,), budgets=(400,))
    real_write = RunDirectory.write_checkpoint
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_in_stage(real_write, stage, step))
    killed = run_suite(config, tmp_path / "suite", log=None)
    assert killed.errors == 1 and f"killed in stage {stage}" in killed.records[0]["error"]
    monkeypatch.setattr(RunDirectory, "write_checkpoint", real_write)
    charged_at: list[int] = []  # the meter's count before each query made (a refused one is not)
    real_charge = Meter.charge

    def charge(self, calls, sequences, tokens):
        before = self.calls
        real_charge(self, calls=calls, sequences=sequences, tokens=tokens)
        charged_at.append(before)

    lines: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(Meter, "charge", charge)
        resumed = run_suite(config, tmp_path / "suite", log=lines.append)
    assert resumed.ran == 1 and any(f": continuing (fit at call" in line and f"stage {logged})" in line for line in lines)
    fresh = run_suite(config, tmp_path / "fresh", log=None)
    before, after = fresh.records[0], resumed.records[0]
    assert 0 < after["resumed_fit_at_calls"] < after["api_calls"] and after["api_usage"] == before["api_usage"]
    assert min(charged_at) == after["resumed_fit_at_calls"]  # nothing before the last checkpoint is queried again
    assert _comparable(after) == {**_comparable(before), "resumed_fit_at_calls": after["resumed_fit_at_calls"]}


def test_a_fit_resumed_under_another_length_bucket_records_both(tmp_path, data_dir, monkeypatch):
    """The bucket a fit began under survives a kill, in step checkpoints and in a saved fit."""
    import benchmarks.run as bench_run
    from bayesprompt.runs import RunDirectory

    monkeypatch.setattr("bayesprompt.lm.precision.native_bf16", lambda device: True)  # the same marks on every CPU
    config = fake_config(data_dir, methods=("smc-temp",), budgets=(400,), length_bucket=3)
    real_write, real_evaluate = RunDirectory.write_checkpoint, bench_run.evaluate
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_at_step_three(real_write))
    for out in ("same", "other"):
        assert run_suite(config, tmp_path / out, log=None).errors == 1
    monkeypatch.setattr(RunDirectory, "write_checkpoint", real_write)
    same = run_suite(config, tmp_path / "same", log=None).records[0]
    assert same["resumed_fit_at_calls"] > 0 and same["fit_length_bucket"] == 3
    assert "fit_length_bucket_before_resume" not in same
    other = run_suite(dataclasses.replace(config, length_bucket=None), tmp_path / "other", log=None).records[0]
    assert other["fit_length_bucket"] is None and other["fit_length_bucket_before_resume"] == 3
    assert other["resumed_fit_at_calls"] == same["resumed_fit_at_calls"]
    table = markdown_table([same, other, {**same, "fit_length_bucket_before_resume": None}], "sst2")
    assert "| 3 (3 bucketed, 1 fit in chunks, 2 partly in chunks) |" in table
    assert "(k partly in chunks): k of the seeds were resumed" in table

    monkeypatch.setattr(bench_run, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert run_suite(config, tmp_path / "saved", log=None).errors == 1  # fitted under 3, then killed
    monkeypatch.setattr(bench_run, "evaluate", real_evaluate)
    saved = run_suite(dataclasses.replace(config, length_bucket=None), tmp_path / "saved", log=None).records[0]
    assert saved["resumed_fit"] and saved["fit_length_bucket"] == 3  # the fit's bucket, not the evaluation run's


def test_records_say_what_a_resumed_or_saved_fit_ran_under(tmp_path, data_dir, monkeypatch):
    """bf16 arithmetic and code revision of a fit's first part survive a kill, in both checkpoints."""
    import benchmarks.run as bench_run
    from bayesprompt.runs import RunDirectory

    def machine(native, revision):
        monkeypatch.setattr("bayesprompt.lm.precision.native_bf16", lambda device: native)
        monkeypatch.setattr(bench_run, "code_revision", lambda: revision)

    config = fake_config(data_dir, methods=("ensemble-mcmc",), budgets=(400,), precision="bf16")  # 11 steps
    real_write, real_evaluate = RunDirectory.write_checkpoint, bench_run.evaluate
    machine(True, "aaaa")
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_at_step_three(real_write))
    for out in ("same", "moved"):
        assert run_suite(config, tmp_path / out, log=None).errors == 1
    monkeypatch.setattr(RunDirectory, "write_checkpoint", real_write)
    same = run_suite(config, tmp_path / "same", log=None).records[0]
    assert same["resumed_fit_at_calls"] > 0 and same["code_revision"] == "aaaa"
    assert not [key for key in same if key.endswith(("_before_resume", "_of_fit"))]
    machine(False, "bbbb")
    moved = run_suite(config, tmp_path / "moved", log=None).records[0]
    assert (moved["bf16_arithmetic"], moved["code_revision"]) == ("fp32-accumulate emulation", "bbbb")
    assert moved["bf16_arithmetic_before_resume"] == "native" and moved["code_revision_before_resume"] == "aaaa"
    assert not [key for key in moved if key.endswith("_of_fit")]

    # begun on a machine, continued on another, finished on the first: the middle part shows
    machine(True, "aaaa")
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_at_step_three(real_write))
    assert run_suite(config, tmp_path / "back", log=None).errors == 1
    machine(False, "bbbb")
    monkeypatch.setattr(RunDirectory, "write_checkpoint", _dies_at_step_three(real_write, step=6))
    assert run_suite(config, tmp_path / "back", log=None).errors == 1
    monkeypatch.setattr(RunDirectory, "write_checkpoint", real_write)
    machine(True, "aaaa")
    back = run_suite(config, tmp_path / "back", log=None).records[0]
    assert back["resumed_fit_at_calls"] > same["resumed_fit_at_calls"] and back["code_revision"] == "aaaa"
    assert back["bf16_arithmetic_before_resume"] == "fp32-accumulate emulation" and back["code_revision_before_resume"] == "bbbb"
    assert "fit_length_bucket_before_resume" not in back

    machine(True, "aaaa")
    monkeypatch.setattr(bench_run, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert run_suite(config, tmp_path / "saved", log=None).errors == 1  # fitted, then killed
    monkeypatch.setattr(bench_run, "evaluate", real_evaluate)
    machine(False, "bbbb")
    saved = run_suite(config, tmp_path / "saved", log=None).records[0]
    assert saved["resumed_fit"] and saved["code_revision"] == "bbbb"
    assert saved["code_revision_of_fit"] == "aaaa" and saved["bf16_arithmetic_of_fit"] == "native"


def test_a_corrupt_fit_checkpoint_is_reported_by_file(tmp_path, data_dir):
    config = fake_config(data_dir, methods=("smc",))
    cell = main_cells(config, default_registry())[0]
    folder = tmp_path / "cells" / f"{cell.filename(cell_hash(config, cell)).removesuffix('.json')}.fit"
    folder.mkdir(parents=True)
    (folder / "outcome.json").write_text("{not json")
    result = run_suite(config, tmp_path, log=None)
    assert result.errors == 1 and "outcome.json is not valid JSON" in result.records[0]["error"]


def boom(ctx):
    raise RuntimeError("boom in fit")


def test_failing_and_unavailable_methods_are_recorded_not_fatal(tmp_path, data_dir):
    registry = default_registry()
    registry["boom"] = MethodSpec("boom", "Boom", "ours", "always fails", boom)
    registry["missing"] = MethodSpec("missing", "Missing", "ours", "engine not there", boom, requires=("no_such_engine_module:X",))
    config = fake_config(data_dir, methods=("boom", "missing", "zero-shot", "smc"))
    result = run_suite(config, tmp_path, registry, log=None)
    status = {r["method"]: r["status"] for r in result.records}
    assert status == {"boom": "error", "missing": "unavailable", "zero-shot": "ok", "smc": "ok"}
    failed = next(r for r in result.records if r["method"] == "boom")
    assert failed["error"] == "RuntimeError: boom in fit" and "boom" in failed["traceback"]
    assert (result.errors, result.unavailable, result.ran) == (1, 1, 2)
    markdown = (tmp_path / "results.md").read_text()
    assert "error: RuntimeError: boom in fit" in markdown and "| Missing | 32 | unavailable |" in markdown

    # a rerun loads the finished cells and retries only the failed one
    again = run_suite(config, tmp_path, registry, log=None)
    assert (again.cache_hits, again.ran, again.errors, again.unavailable) == (2, 0, 1, 1)


def test_budget_exhausted_before_init_is_an_error_record(tmp_path, data_dir):
    config = fake_config(data_dir, methods=("smc",), budgets=(2,))  # 4 particles need 4 calls
    (record,) = run_suite(config, tmp_path, log=None).records
    assert record["status"] == "error" and "budget" in record["error"]


def test_grid_and_cache_keys():
    registry = default_registry()
    config = dataclasses.replace(preset("full"), tasks=("sst2",), methods=("zero-shot", "bbt-8000", "smc"), seeds=(0, 1))
    cells = main_cells(config, registry)
    assert cells == [
        Cell("sst2", "zero-shot", 0, None), Cell("sst2", "zero-shot", 1, None),
        Cell("sst2", "bbt-8000", 0, 8000), Cell("sst2", "bbt-8000", 1, 8000),
        Cell("sst2", "smc", 0, 2000), Cell("sst2", "smc", 1, 2000),
    ]
    sweep = sweep_cells(config, registry)
    assert {c.method for c in sweep} == {"smc"} and sorted({c.budget for c in sweep}) == [250, 500, 1000, 2000, 4000, 8000]
    cell = Cell("sst2", "smc", 0, 2000)
    other_method = dataclasses.replace(config, method_options=(("bbt", {"popsize": 10}),))
    own_option = dataclasses.replace(config, method_options=(("smc", {"target_ess": 0.7}),))
    assert cell_hash(other_method, cell) == cell_hash(config, cell)  # other methods' options do not matter
    assert cell_hash(own_option, cell) != cell_hash(config, cell)
    assert cell_hash(dataclasses.replace(config, precision="fp32"), cell) != cell_hash(config, cell)
    assert cell_hash(dataclasses.replace(config, seeds=(5,), data_dir="/elsewhere"), cell) == cell_hash(config, cell)
    assert cell_hash(dataclasses.replace(config, length_bucket=None), cell) == cell_hash(config, cell)
    assert cell_hash(dataclasses.replace(config, evaluation_length_bucket=None), cell) == cell_hash(config, cell)


def test_evaluation_length_bucket_changes_chunks_not_results_or_keys(tmp_path, data_dir, monkeypatch):
    """Test sets scored in length buckets, training batches not; results as with contiguous chunks."""
    import benchmarks.run as bench

    chunks: list[tuple[bool, int]] = []  # (evaluating, examples in the chunk)
    evaluating = [False]
    score_chunk, evaluate = FakeBlackBox._score_chunk, bench.evaluate

    def spy_chunk(self, prompts, batch):
        chunks.append((evaluating[0], len(batch)))
        return score_chunk(self, prompts, batch)

    def spy_evaluate(*args, **kwargs):
        evaluating[0] = True
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating[0] = False

    monkeypatch.setattr(FakeBlackBox, "_score_chunk", spy_chunk)
    monkeypatch.setattr(bench, "evaluate", spy_evaluate)
    config = fake_config(data_dir, methods=("smc",), test_size=40, length_bucket=None, evaluation_length_bucket=None)
    plain = run_suite(config, tmp_path / "plain", log=None).records[0]
    plain_chunks, chunks[:] = list(chunks), []
    bucketed = run_suite(dataclasses.replace(config, evaluation_length_bucket=4), tmp_path / "bucketed", log=None).records[0]
    training = 2 * config.k  # the smoke task is binary
    assert {n for e, n in plain_chunks if not e} == {n for e, n in chunks if not e} == {training}  # fit: whole batch
    assert max(n for e, n in plain_chunks if e) == 40 and max(n for e, n in chunks if e) == 4
    assert (plain["evaluation_length_bucket"], bucketed["evaluation_length_bucket"]) == (None, 4)
    assert bucketed["config_hash"] == plain["config_hash"]
    assert [p.name for p in (tmp_path / "plain" / "cells").glob("*.json")] == [
        p.name for p in (tmp_path / "bucketed" / "cells").glob("*.json")]
    for key in ("accuracy", "nll", "brier", "ece", "misclassification_auroc", "ood_auroc"):
        assert bucketed[key] == pytest.approx(plain[key], abs=1e-5), key
    assert bucketed["api_calls"] == plain["api_calls"]


def test_fit_length_bucket_chunks_the_training_batch_keeps_the_key_and_is_recorded(tmp_path, data_dir, chunk_sizes):
    """Fitting in length buckets: same cache file, same results to float rounding, bucket recorded."""
    config = fake_config(data_dir, methods=("eki",), test_size=40, length_bucket=None, evaluation_length_bucket=40)
    plain = run_suite(config, tmp_path / "plain", log=None).records[0]
    training = 2 * config.k
    assert chunk_sizes[0] == training and plain["fit_length_bucket"] is None  # EKI's one query, whole
    chunk_sizes.clear()
    chunked = run_suite(dataclasses.replace(config, length_bucket=3), tmp_path / "chunked", log=None).records[0]
    assert chunked["fit_length_bucket"] == 3 and chunk_sizes[:3] == [3, 3, 2]  # EKI's one query, sorted into 3s
    assert [p.name for p in (tmp_path / "plain" / "cells").glob("*.json")] == [
        p.name for p in (tmp_path / "chunked" / "cells").glob("*.json")]
    for key in ("accuracy", "nll", "brier", "ece"):
        assert chunked[key] == pytest.approx(plain[key], abs=1e-4), key  # fp32 rounding alone


def test_scoring_length_bucket_is_restored_even_on_error():
    from benchmarks.run import scoring_length_bucket

    backend = FakeBlackBox(TOY, embed_dim=4, length_bucket=None)
    with pytest.raises(RuntimeError):
        with scoring_length_bucket(backend, 8):
            assert backend.length_bucket == 8
            raise RuntimeError("evaluation failed")
    assert backend.length_bucket is None
    for bad in (0, 64.5, True):
        with pytest.raises(ValueError, match="evaluation_length_bucket must be None or an int >= 1"):
            dataclasses.replace(preset("full"), evaluation_length_bucket=bad)


def test_ood_confidence_profiles_the_zero_shot_predictions():
    from benchmarks.methods import prompt_predictor
    from benchmarks.ood_confidence import confidence_profile

    backend = FakeBlackBox(TOY, embed_dim=4, seed=3)
    batch = backend.encode([Example(text="a b " * i, label=i % 2) for i in range(1, 9)])
    probs = prompt_predictor(backend, torch.zeros(1, 0, 4))(batch).mean().float()
    profile = confidence_profile(probs)
    assert profile["predicted_share"] == pytest.approx([(probs.argmax(-1) == c).float().mean().item() for c in (0, 1)])
    assert profile["max_prob"] == pytest.approx(probs.max(-1).values.mean().item())
    entropy = -(probs * probs.log()).sum(-1).mean().item()
    assert profile["entropy"] == pytest.approx(entropy, rel=1e-5)


def test_the_committed_cells_are_found_by_the_current_cache_keys():
    """Every committed cell is keyed by the ``full`` preset as the code computes it today.

    Fails when a code change moves the keys (a new config field in the key, a
    ``BENCHMARK_VERSION`` bump): the committed results would silently stop being used.
    """
    committed = sorted((REPO / "benchmarks" / "results" / "cells").glob("*.json"))
    if not committed:
        pytest.skip("no committed benchmark cells")
    config = preset("full")
    for path in committed:
        task, method, seed, budget, digest = path.stem.split("__")
        cell = Cell(task, method, int(seed.removeprefix("seed")), None if budget == "budgetnone" else int(budget.removeprefix("budget")))
        assert cell.filename(cell_hash(config, cell)) == path.name


def test_the_readme_overview_is_the_committed_cells_table():
    """README.md's overview table is what the committed cells give today (regenerate with ``--readme``)."""
    cells = REPO / "benchmarks" / "results" / "cells"
    if not any(cells.glob("*.json")):
        pytest.skip("no committed benchmark cells")
    registry = default_registry()
    table = overview_table(cached_main_records(preset("full"), cells, registry), list(registry))
    readme = (REPO / "README.md").read_text()
    assert replace_between_markers(readme, table) == readme, (
        "README.md's overview is stale: run `python -m benchmarks.run --cached-only --readme README.md`")


def test_cached_main_records_are_what_a_cached_only_run_reports(tmp_path, data_dir, capsys):
    config = fake_config(data_dir, methods=("zero-shot", "smc", "eki"), budgets=(200,))
    run_suite(config, tmp_path, log=None)
    wider = dataclasses.replace(config, methods=("zero-shot", "smc", "eki", "bbt"), budgets=(300,))  # SMC and EKI reusable
    found = cached_main_records(wider, tmp_path / "cells")
    assert [(r["method"], r["budget"]) for r in found] == [("zero-shot", None), ("smc", 300), ("eki", 300)]
    assert len(list((tmp_path / "cells").glob("*.json"))) == 3  # read only: the reusable records were not saved
    assert found == run_suite(wider, tmp_path, log=None, cached_only=True, include_sweep=False).records

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- overview:begin -->\nold\n<!-- overview:end -->\nafter\n")
    write_overview(readme, wider, tmp_path / "cells", default_registry())
    lines = readme.read_text().splitlines()
    assert lines[:3] == ["# x", "<!-- overview:begin -->", "| Method | sst2 |"] and lines[-2:] == ["<!-- overview:end -->", "after"]
    assert [line.split(" | ")[0] for line in lines[4:-2]] == ["| Zero-shot (no prompt)", "| Tempered SMC", "| EKI"]

    readme.write_text("no markers\n")
    assert main(["--config", "smoke", "--cached-only", "--data-dir", data_dir, "--out", str(tmp_path / "cli"), "--readme", str(readme)]) == 2
    assert "README.md: markers '<!-- overview:begin -->' and '<!-- overview:end -->' not found" in capsys.readouterr().err


def test_command_line_lists_methods_and_rejects_bad_options(capsys, tmp_path):
    assert main(["--list-methods"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in default_registry())
    out = ["--out", str(tmp_path)]  # were a check to let a run through, it must not write into the repository
    assert main(["--config", "smoke", "--precision", "fp32", "--budgets", "0", *out]) == 2
    assert "budgets must be positive" in capsys.readouterr().err
    assert main(["--config", "smoke", "--length-bucket", "-1", *out]) == 2
    assert "length_bucket must be None or an int >= 1, got -1" in capsys.readouterr().err
    args = parse_args(["--length-bucket", "0", "--evaluation-length-bucket", "0"])
    assert (config_from_args(args).length_bucket, config_from_args(args).evaluation_length_bucket) == (None, None)


# ---------------------------------------------------------------------- report


def synthetic(task, method, seed, metric, budget=2000, policy="common", **extra):
    record = {
        "task": task, "method": method, "method_label": method.upper(), "seed": seed, "budget": budget,
        "budget_policy": policy, "status": "ok", "metric_name": "f1" if task == "mrpc" else "accuracy",
        "metric": metric, "nll": 0.5 + seed / 10, "brier": 0.3, "ece": 0.05, "misclassification_auroc": 0.7,
        "ood_auroc": 0.6, "api_calls": budget or 0, "fit_seconds": 10.0 + seed,
        "test": {"split": "proxy_test" if task == "dbpedia" else "test", "size": 1000, "total": 7600, "subsample_seed": 0},
        "ood": {"mrpc": {"auroc": 0.6, "size": 408}},
    }
    record.update(extra)
    return record


def test_markdown_table_formatting_on_synthetic_records():
    records = [
        synthetic("agnews", "smc", 0, 0.80), synthetic("agnews", "smc", 1, 0.84),
        synthetic("agnews", "zero", 0, 0.70, budget=None, policy="none"),
        {**synthetic("agnews", "eki", 0, 0.0), "status": "error", "error": "ValueError: bad | thing\nmore"},
        {**synthetic("agnews", "eks", 0, 0.0), "status": "unavailable", "error": "cannot import"},
        {**synthetic("agnews", "smc", 2, 0.0), "status": "error", "error": "x"},
    ]
    table = markdown_table(records, "agnews", method_order=["zero", "smc", "eki", "eks"]).splitlines()
    assert table[0] == ("### agnews — test set: 1000 of 7600 examples (class-balanced subsample, seed 0); OOD: mrpc (408)")
    assert table[2].startswith("| Method | Budget | Accuracy | NLL | Brier | ECE | Misclass. AUROC | OOD AUROC | Calls |")
    assert table[4] == "| ZERO | — | 0.700 | 0.500 | 0.300 | 0.050 | 0.700 | 0.600 | 0 | 10.0 | 1 |"
    assert table[5] == "| SMC | 2000 | 0.820 ± 0.028 | 0.550 ± 0.071 | 0.300 ± 0.000 | 0.050 ± 0.000 | 0.700 ± 0.000 | 0.600 ± 0.000 | 2000 | 10.5 | 2 (1 failed) |"
    assert table[6].startswith("| EKI | 2000 | error: ValueError: bad / thing |")
    assert table[7].startswith("| EKS | 2000 | unavailable |")
    assert all(line.count("|") == table[2].count("|") for line in table[2:])

    mrpc = markdown_table([synthetic("mrpc", "smc", 0, 0.81)], "mrpc")
    assert "| F1 |" in mrpc and "| Accuracy |" not in mrpc
    assert markdown_table([synthetic("dbpedia", "smc", 0, 0.9)]).startswith("### dbpedia (proxy test) — proxy test set")
    official = {"split": "test", "size": 1000, "total": 70000, "subsample_seed": 0}
    assert markdown_table([synthetic("dbpedia", "smc", 0, 0.9, test=official)]).startswith("### dbpedia — test set")
    assert overview_table([synthetic("dbpedia", "smc", 0, 0.9, test=official)]).startswith("| Method | dbpedia |")
    assert format_mean_sd([0.1, float("nan"), None, 0.3]) == "0.200 ± 0.141"


@pytest.mark.parametrize("native", [True, False])
def test_records_say_how_bf16_was_computed(monkeypatch, native):
    from benchmarks.run import Cell, _base_record

    monkeypatch.setattr("bayesprompt.lm.precision.native_bf16", lambda device: native)
    cell, spec = Cell("sst2", "smc", 0, 2000), default_registry()["smc"]
    bf16 = _base_record(dataclasses.replace(preset("full"), precision="bf16"), cell, spec, "digest")
    assert bf16["bf16_arithmetic"] == ("native" if native else "fp32-accumulate emulation")
    assert "bf16_arithmetic" not in _base_record(dataclasses.replace(preset("full"), precision="fp32"), cell, spec, "digest")


def test_records_name_the_code_revision(tmp_path, monkeypatch):
    from benchmarks.run import _base_record

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if the temp dir is in a checkout

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)

    assert code_revision(tmp_path) is None  # not a checkout
    (tmp_path / "bayesprompt").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "bayesprompt" / "engine.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    assert code_revision(tmp_path) == head[:12]
    (tmp_path / "benchmarks" / "results" / "cell.json").write_text("{}")  # new results are not code
    (tmp_path / "notes.md").write_text("elsewhere")
    assert code_revision(tmp_path) == head[:12]
    (tmp_path / "bayesprompt" / "engine.py").write_text("x = 2\n")
    assert code_revision(tmp_path) == head[:12] + "+dirty"

    cell, spec = Cell("sst2", "smc", 0, 2000), default_registry()["smc"]
    assert _base_record(preset("full"), cell, spec, "digest", "abc")["code_revision"] == "abc"


def test_markdown_table_marks_seeds_run_with_emulated_bf16():
    records = [synthetic("sst2", "smc", 0, 0.7, precision="bf16"),  # before the field existed: bf16 units
               synthetic("sst2", "smc", 1, 0.7, precision="bf16", bf16_arithmetic="native"),
               synthetic("sst2", "smc", 2, 0.7, precision="bf16", bf16_arithmetic="fp32-accumulate emulation")]
    table = markdown_table(records, "sst2")
    assert "| 3 (1 emulated bf16) |" in table and "(k emulated bf16): k of the seeds ran on a CPU without bf16 units" in table
    assert "emulated" not in markdown_table(records[:2], "sst2")
    emulation = "fp32-accumulate emulation"
    mixed = [synthetic("sst2", "smc", 0, 0.7, precision="bf16", bf16_arithmetic=emulation, bf16_arithmetic_before_resume="native"),
             synthetic("sst2", "smc", 1, 0.7, precision="bf16", bf16_arithmetic="native", bf16_arithmetic_of_fit=emulation),
             synthetic("sst2", "smc", 2, 0.7, precision="bf16", bf16_arithmetic=emulation, bf16_arithmetic_of_fit=emulation)]
    table = markdown_table(mixed, "sst2")
    assert "| 3 (1 emulated bf16, 2 partly emulated bf16) |" in table
    assert "(k partly emulated bf16): k of the seeds were fitted or evaluated partly on bf16 units" in table


def test_overview_table_ranks_black_box_methods_over_equal_seeds():
    white_box = {"summary": {"backward_passes": 70}}
    records = [
        *(synthetic("mrpc", "white", s, 0.9, budget=None, policy="none", nll=0.1, **white_box) for s in (0, 1, 2)),
        *(synthetic("mrpc", "bbt", s, 0.6, nll=0.70) for s in (0, 1)),
        *(synthetic("mrpc", "smc", s, 0.5, nll=0.7001) for s in (0, 1)),  # ties BBT to three digits
        synthetic("mrpc", "eki", 0, 0.4, nll=0.2),  # lower, but one seed
        *(synthetic("mrpc", "smc", s, 0.55, budget=500, nll=0.8) for s in (0, 1)),
        synthetic("dbpedia", "bbt", 0, 0.8, nll=0.4),
        {**synthetic("dbpedia", "smc", 0, 0.0), "status": "error", "error": "x"},
    ]
    lines = overview_table(records, method_order=["white", "bbt", "smc", "eki"]).splitlines()
    assert lines[:2] == ["| Method | mrpc (F1) | dbpedia (proxy test) |", "| --- | ---: | ---: |"]
    assert lines[2:] == [
        "| WHITE | 0.900 / 0.100 (3) | — |",  # white-box: more seeds and lower NLL, but not ranked
        "| BBT | 0.600 / **0.700** (2) | 0.800 / **0.400** (1) |",
        "| SMC (500 calls) | 0.550 / 0.800 (2) | — |",  # one row per budget, failed cells left out
        "| SMC (2000 calls) | 0.500 / **0.700** (2) | — |",
        "| EKI | 0.400 / 0.200 (1) | — |",
    ]
    assert overview_table([{**records[0], "status": "error"}]) == "_no records_\n"


def test_markdown_table_marks_seeds_scored_in_length_buckets():
    plain = [synthetic("sst2", "smc", 0, 0.7), synthetic("sst2", "smc", 1, 0.8, evaluation_length_bucket=None)]
    table = markdown_table(plain, "sst2")
    assert "bucketed" not in table and table.splitlines()[-1].endswith("| 2 |")
    mixed = [*plain, synthetic("sst2", "smc", 2, 0.9, evaluation_length_bucket=64),
             {**synthetic("sst2", "smc", 3, 0.0), "status": "error", "error": "x"}]
    lines = markdown_table(mixed, "sst2").splitlines()
    assert lines[4].endswith("| 3 (1 bucketed, 1 failed) |")
    assert lines[-1].startswith("(k bucketed): k of the seeds") and "chunks of 64 (" in lines[-1]
    chunked = [*plain, {**synthetic("sst2", "smc", 2, 0.9), "fit_length_bucket": 16}]
    lines = markdown_table(chunked, "sst2").splitlines()
    assert lines[4].endswith("| 3 (1 fit in chunks) |")
    assert lines[-1].startswith("(k fit in chunks): k of the seeds scored their training") and "chunks of 16 while" in lines[-1]


def test_markdown_report_separates_main_table_and_sweep(tmp_path):
    records = [synthetic("sst2", "smc", s, 0.7 + b / 1e5, budget=b) for s in (0, 1) for b in (250, 2000)]
    records.append(synthetic("sst2", "bbt8k", 0, 0.75, budget=8000, policy="fixed"))
    config = dataclasses.replace(preset("full"), tasks=("sst2",))
    report = markdown_report(records, config)
    main_part = report.split("### Budget sweep")[0]
    assert "| SMC | 2000 |" in main_part and "| SMC | 250 |" not in main_part and "| BBT8K | 8000 |" in main_part
    assert "| SMC | 0.702 / 0.500 | 0.720 / 0.500 |" in report and "### Budget sweep: sst2 (accuracy / NLL, seed 0)" in report
    assert "sst2 → mrpc" in report and "stopped by itself" not in report
    coverage = report.split("### Coverage")[1].split("###")[0]
    assert "| Method | sst2 |" in coverage and "| SMC | 2 |" in coverage and "| BBT8K | 1 |" in coverage
    failed = {**synthetic("agnews", "smc", 0, 0.0), "status": "error", "error": "x"}
    coverage = markdown_report([*records, failed], config).split("### Coverage")[1].split("###")[0]
    assert "| Method | sst2 | agnews |" in coverage and "| SMC | 2 | — |" in coverage and "| BBT8K | 1 | — |" in coverage
    same = [{**r, "budget": 4000, "reused_from_budget": 2000} for r in records if r["budget"] == 2000]
    swept = markdown_report(records + same, config)
    assert "| SMC | 0.702 / 0.500 | 0.720 / 0.500 | 0.720 / 0.500 * |" in swept and "stopped by itself" in swept
    other_seed = markdown_report(records + same[1:], config)  # seed 1 alone stopped early: not mixed into seed 0's row
    sweep = other_seed.split("### Budget sweep")[1]
    assert "| SMC | 0.702 / 0.500 | 0.720 / 0.500 |" in sweep and "4000 calls" not in sweep
    path = plot_budget_sweep(records + [synthetic("sst2", "zero", 0, 0.6, budget=None, policy="none")], tmp_path / "sweep.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_budget_sweep_plot_shows_one_seed_at_every_budget():
    from benchmarks.report import budget_sweep_figure

    records = [synthetic("sst2", "smc", s, 0.7 + s / 10, budget=b) for s in (1, 2) for b in (250, 2000)]
    records.append({**synthetic("sst2", "smc", 2, 0.9, budget=4000), "reused_from_budget": 2000})
    figure = budget_sweep_figure(records)
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [250, 2000] and list(line.get_ydata()) == [0.7 + 1 / 10] * 2  # seed 1 only
    assert "(seed 1)" in figure.texts[0].get_text()


@pytest.mark.parametrize("num_methods", [3, 22])
def test_budget_sweep_legend_stays_inside_the_figure(num_methods):
    """However many methods, the legend below the axes is drawn whole, and repeated colours get new markers."""
    from benchmarks.report import budget_sweep_figure

    label = "Tempered SMC, model average over a latent temperature"  # the longest label in the suite
    records = [{**synthetic("sst2", f"m{index}", 0, 0.7, budget=2000), "method_label": f"{label} {index}"}
               for index in range(num_methods)]
    figure = budget_sweep_figure(records)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    page = figure.bbox
    assert page.x0 <= legend.x0 and legend.x1 <= page.x1 and page.y0 <= legend.y0
    axes_bottom = min(ax.get_tightbbox(renderer).y0 for ax in figure.axes)
    assert legend.y1 <= axes_bottom  # below the axes and their labels, not over them
    styles = {(line.get_color(), line.get_marker()) for line in figure.axes[1].get_lines() if line.get_marker() in ("o", "s", "^", "D")}
    assert len(styles) == num_methods


# ---------------------------------------------------------------------- pieces


def test_whitebox_reduces_training_loss_on_fake_box():
    box = FakeBlackBox(TOY, embed_dim=6, seed=1)
    # the fake box's prompt only shifts every example alike, so skewed labels give it something to learn
    batch = box.encode([Example(f"text {i}", int(i % 8 != 0)) for i in range(16)])
    result = train_prompt(box, batch, batch, WhiteBoxConfig(n_tokens=3, max_steps=30, lr=0.05, eval_every=5, patience=100))
    assert result.steps == 30 and result.status == "finished"
    assert result.train_losses[-1] < 0.8 * result.train_losses[0]
    assert box.meter.calls == 0  # white-box training is not metered
    assert result.forward_passes == 31 + 7 and result.backward_passes == 30

def test_whitebox_takes_the_backends_length_buckets_with_the_same_gradients(chunk_sizes):
    """Training forwards follow ``example_chunks`` (padding alike), and the sum is unchanged."""
    config = WhiteBoxConfig(n_tokens=3, max_steps=4, lr=0.05, eval_every=2, patience=100)
    results = {}
    for bucket in (None, 3):
        box = FakeBlackBox(TOY, embed_dim=6, seed=1, length_bucket=bucket)
        batch = box.encode([Example(f"text {i}", int(i % 8 != 0)) for i in range(8)])
        chunk_sizes.clear()
        results[bucket] = train_prompt(box, batch, batch, config)
        assert chunk_sizes[:4] == ([8, 8, 8, 8] if bucket is None else [3, 3, 2, 3])  # dev, then train
    assert results[3].train_losses == pytest.approx(results[None].train_losses, abs=1e-6)
    torch.testing.assert_close(results[3].prompt, results[None].prompt, atol=1e-5, rtol=0)



def _killed_after_saves(monkeypatch, saves: int) -> None:
    """Make white-box training die right after its ``saves``-th checkpoint is written."""
    import benchmarks.whitebox as whitebox

    real_save, written = whitebox._save, []

    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        written.append(args[2])
        if len(written) == saves:
            raise RuntimeError("killed during the fit")

    monkeypatch.setattr(whitebox, "_save", save)


@pytest.mark.parametrize(("saves", "patience"), [(1, 100), (3, 100), (11, 100), (1, 4), (5, 4), (6, 4)])
def test_whitebox_killed_mid_training_continues_to_the_uninterrupted_result(tmp_path, monkeypatch, saves, patience):
    box = FakeBlackBox(TOY, embed_dim=6, seed=1)
    batch = box.encode([Example(f"text {i}", int(i % 8 != 0)) for i in range(16)])
    dev = box.encode([Example(f"dev {i}", int(i % 3 != 0)) for i in range(12)])
    config = WhiteBoxConfig(n_tokens=3, max_steps=60, lr=0.05, eval_every=5, patience=patience)
    whole = train_prompt(box, batch, dev, config)
    assert whole.status == ("finished" if patience == 100 else "early_stopped") and whole.resumed_from is None
    # with patience 4 the run stops at step 35 (best at 15): saves 5 and 6 (steps 25, 30) hold a stale count > 0

    path = tmp_path / "whitebox.pt"
    with monkeypatch.context() as patch:
        _killed_after_saves(patch, saves)
        with pytest.raises(RuntimeError, match="killed"):
            train_prompt(box, batch, dev, config, checkpoint=path)
    resumed = train_prompt(box, batch, dev, config, checkpoint=path)
    assert resumed.resumed_from["step"] == 5 * saves and resumed.resumed_from["fit_seconds"] >= 0
    assert torch.equal(resumed.prompt, whole.prompt)
    for name in ("train_losses", "dev_history", "best_step", "best_dev_score", "steps", "status", "forward_passes",
                 "backward_passes"):
        assert getattr(resumed, name) == getattr(whole, name), name


def test_whitebox_refuses_a_checkpoint_of_other_settings(tmp_path, monkeypatch):
    box = FakeBlackBox(TOY, embed_dim=4)
    batch = box.encode([Example(f"x{i}", i % 2) for i in range(4)])
    path = tmp_path / "whitebox.pt"
    config = WhiteBoxConfig(n_tokens=2, max_steps=10, eval_every=2, patience=100)
    with monkeypatch.context() as patch:
        _killed_after_saves(patch, 1)
        with pytest.raises(RuntimeError, match="killed"):
            train_prompt(box, batch, batch, config, checkpoint=path)
    with pytest.raises(ValueError, match=r"whitebox\.pt: written under WhiteBoxConfig .*'lr': 0\.003"):
        train_prompt(box, batch, batch, dataclasses.replace(config, lr=0.1), checkpoint=path)


def test_a_whitebox_cell_killed_during_its_fit_continues_from_its_checkpoint(tmp_path, data_dir, monkeypatch):
    config = fake_config(data_dir, methods=("whitebox",), budgets=(400,),
                         method_options=(("whitebox", {"max_steps": 12, "eval_every": 3, "patience": 100}),))
    with monkeypatch.context() as patch:
        _killed_after_saves(patch, 2)
        killed = run_suite(config, tmp_path / "suite", log=None)
    assert killed.errors == 1 and "killed during the fit" in killed.records[0]["error"]
    listed: list[str] = []
    run_suite(config, tmp_path / "suite", log=listed.append, cached_only=True)
    assert sum("not run (--cached-only); white-box fit at step 6" in line for line in listed) == 1
    resumed = run_suite(config, tmp_path / "suite", log=None)
    assert resumed.ran == 1 and not list((tmp_path / "suite" / "cells").glob("*.fit"))
    fresh = run_suite(config, tmp_path / "fresh", log=None)
    (before,), (after,) = fresh.records, resumed.records
    assert "resumed_fit_at_calls" not in before and after["resumed_fit_at_calls"] == 0
    assert _comparable(after) == {**_comparable(before), "resumed_fit_at_calls": 0}


def test_whitebox_rejects_bad_settings():
    with pytest.raises(ValueError, match="parametrisation"):
        WhiteBoxConfig(parametrisation="weights")
    box = FakeBlackBox(TOY, embed_dim=4)
    batch = box.encode([Example("x", 0)])
    with pytest.raises(ValueError, match="needs the random projection"):
        train_prompt(box, batch, batch, WhiteBoxConfig(parametrisation="z", max_steps=1))
    with pytest.raises(ValueError, match="prompts must be"):
        differentiable_scores(box, torch.zeros(2, 4), batch)


@pytest.mark.slow
def test_whitebox_reduces_training_loss_on_minilm():
    from bayesprompt.lm import SentenceEncoderBlackBox

    box = SentenceEncoderBlackBox(TOY)
    texts = ["a gorgeous , witty movie", "bleak and desperate", "boilerplate clichés , flat acting", "a charming journey"]
    batch = box.encode([Example(t, y) for t, y in zip(texts, (1, 0, 0, 1))])
    result = train_prompt(box, batch, batch, WhiteBoxConfig(n_tokens=4, max_steps=6, lr=0.05, eval_every=3, patience=10))
    assert result.train_losses[-1] < result.train_losses[0]
    assert all(p.grad is None for p in box.model.parameters())  # gradients only w.r.t. the prompt


def test_throughput_on_fake_box(tmp_path, data_dir):
    rows = measure("sst2", budget=24, num_particles=4, n_tokens=2, intrinsic_dim=4, k=2, data_dir=data_dir, backend="fake", repeats=2)
    assert [r.precision for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert row.engine_calls <= 24 and row.engine_sequences == row.engine_calls * 4
        assert 0.0 <= row.overhead <= 1.0 and row.flagged == (row.overhead > 0.1)
        assert row.bare_seq_per_s > 0 and row.engine_seq_per_s > 0
    text = write_throughput(rows, tmp_path).read_text()
    assert "| sst2 | bf16 | 4 x 4 |" in text and (tmp_path / "throughput.json").is_file()


def test_every_registered_method_runs_on_fake_box(tmp_path, data_dir):
    """Every available method runs end to end on the fake box with a small budget."""
    methods = tuple(name for name in default_registry() if name != "bbt-8000")
    config = fake_config(data_dir, methods=methods, budgets=(96,), num_particles=8, method_options=(
        ("bbt", {"popsize": 8}), ("ensembles", {"num_members": 2, "popsize": 8}),
        ("cma-elbo", {"popsize": 6, "num_mc_samples": 2}), ("whitebox", {"max_steps": 5}),
        ("cma-elbo-iso", {"popsize": 6, "num_mc_samples": 2, "scale": "isotropic", "kl_weight": 1.0}),
        ("abc-mcmc", {"vote_smoothing": "dev"}), ("smc-average", {"temperature_prior_scale": 1.0}),
    ))
    result = run_suite(config, tmp_path, log=None)
    bad = {r["method"]: r.get("error") for r in result.records if r["status"] == "error"}
    assert not bad
    elbo = {r["method"]: r["summary"] for r in result.records if r["method"].startswith("cma-elbo")}
    assert (elbo["cma-elbo"]["scale"], elbo["cma-elbo"]["kl_weight"]) == ("diagonal", 1e-3)
    assert (elbo["cma-elbo-iso"]["scale"], elbo["cma-elbo-iso"]["kl_weight"]) == ("isotropic", 1.0)
    for record in result.records:
        if record["status"] == "ok" and record["budget"] is not None:
            assert record["api_calls"] <= 96


def test_smc_dev_conditions_on_the_train_and_dev_examples(tmp_path, data_dir):
    config = fake_config(data_dir, methods=("smc", "smc-dev"), budgets=(200,), num_particles=8)
    records = {r["method"]: r for r in run_suite(config, tmp_path, log=None).records}
    examples_per_call = {m: r["api_usage"]["sequences"] / r["api_usage"]["calls"] for m, r in records.items()}
    classes = 2  # the smoke task, sst2
    assert examples_per_call == {"smc": config.k * classes, "smc-dev": (config.k + config.dev_k) * classes}
    assert records["smc-dev"]["config_hash"] != records["smc"]["config_hash"]


def test_eki_mda_takes_at_least_its_steps_to_reach_the_posterior(tmp_path, data_dir):
    from benchmarks.methods import EKI_MDA_STEPS

    config = fake_config(data_dir, methods=("eki", "eki-mda"), budgets=(2000,), num_particles=8)
    summary = {r["method"]: r["summary"] for r in run_suite(config, tmp_path, log=None).records}
    assert summary["eki-mda"]["time"] == pytest.approx(1.0) and summary["eki"]["time"] == pytest.approx(1.0)
    assert summary["eki-mda"]["iterations"] >= EKI_MDA_STEPS > summary["eki"]["iterations"]
    assert summary["eki-mda"]["evaluations"] == 8 * summary["eki-mda"]["iterations"]


def test_smc_temp_predicts_with_each_sample_s_own_temperature(data_dir):
    from benchmarks.methods import make_potential
    from benchmarks.run import Resources

    config = fake_config(data_dir)
    spec, options = default_registry()["smc-temp"], config.options_for("smc-temp")
    assert options == {"temperature_prior_scale": 1.0}
    resources = Resources(config)
    ctx = sst2_context(resources, 400, options)
    outcome = spec.fit(ctx)
    samples = outcome.fitted.samples
    temperature, z = samples["temperature"].reshape(-1), samples["z"].reshape(outcome.fitted.num_samples, -1)
    assert bool((temperature > 0).all()) and temperature.unique().numel() > 1
    weights = outcome.fitted.log_weights.softmax(0)
    assert outcome.summary["temperature_mean"] == pytest.approx(float(weights @ temperature.double()), rel=1e-6)
    assert outcome.summary["temperature_sd"] > 0
    predicted = outcome.predictor(ctx.dev).probs
    expected = (ctx.backend.score(ctx.projection(z), ctx.dev) / temperature[:, None, None]).softmax(-1)
    torch.testing.assert_close(predicted.float(), expected.float(), rtol=1e-4, atol=1e-5)
    for bad, match in [({"temperature_prior_scale": 0.0}, "must be a number > 0"),
                       ({"temperature_prior_scale": "1"}, "must be a number > 0")]:
        with pytest.raises(ValueError, match=match):
            make_potential(dataclasses.replace(ctx, options=bad), likelihood_free=False)
    with pytest.raises(ValueError, match="label-only model has no likelihood"):
        make_potential(ctx, likelihood_free=True)


def test_smc_average_mixes_both_models_by_their_evidence(data_dir, monkeypatch):
    import benchmarks.methods as methods_module
    from benchmarks.run import Resources

    config = fake_config(data_dir)
    registry, options = default_registry(), config.options_for("smc-average")
    assert options == {"temperature_prior_scale": 1.0}
    resources = Resources(config)

    ctx = sst2_context(resources, 2000, options)
    outcome = registry["smc-average"].fit(ctx)
    calls = ctx.meter.calls  # read now: the resources rebind the cached backend to the next context's meter
    plain = registry["smc"].fit(sst2_context(resources, 2000, {}))  # the same seed: the plain half is the smc method's run
    tempered = registry["smc-temp"].fit(sst2_context(resources, 2000, options))
    summary = outcome.summary
    assert summary["log_evidence_plain"] == plain.summary["log_evidence"]
    assert summary["log_evidence_tempered"] == tempered.summary["log_evidence"]
    log_odds = summary["log_evidence_tempered"] - summary["log_evidence_plain"]
    p_tempered = 1.0 / (1.0 + math.exp(-log_odds))
    assert summary["probability_tempered"] == pytest.approx(p_tempered, rel=1e-9)
    assert summary["tempered_temperature_mean"] == pytest.approx(tempered.summary["temperature_mean"])
    assert calls == plain.summary["evaluations"] + tempered.summary["evaluations"]

    assert float(outcome.fitted.weights[8:].sum()) == pytest.approx(p_tempered, rel=1e-6)

    # The fake box's evidence all but rules out the plain model (log odds ~19). To see that its
    # particles, given temperature 1, predict as the plain model does, fix the weights at 0.3 / 0.7.
    monkeypatch.setattr(methods_module, "_evidence_probabilities", lambda log_z: [0.3, 0.7])
    ctx = sst2_context(resources, 2000, options)
    outcome = registry["smc-average"].fit(ctx)
    temperature = outcome.fitted.samples["temperature"].reshape(-1)
    assert outcome.fitted.num_samples == 16 and bool((temperature[:8] == 1.0).all())
    assert float(outcome.fitted.weights[8:].sum()) == pytest.approx(0.7, rel=1e-6)
    expected = 0.3 * plain.predictor(ctx.dev).mean() + 0.7 * tempered.predictor(ctx.dev).mean()
    torch.testing.assert_close(outcome.predictor(ctx.dev).mean().float(), expected.float(), rtol=1e-4, atol=1e-5)


def test_smc_average_keeps_the_plain_model_when_the_budget_leaves_no_tempered_run(data_dir):
    """At a budget the plain SMC spends whole, the tempered model cannot draw its first population.

    The cell then keeps the plain run alone (temperature 1, probability 0 for the tempered
    model, status ``budget_exhausted``) instead of failing with InitialBudgetError.
    """
    from bayesprompt.inference.posterior import Status
    from benchmarks.run import Resources
    from bayesprompt.data import get_task
    from bayesprompt.lm import Meter

    config = fake_config(data_dir)
    registry, options = default_registry(), config.options_for("smc-average")
    resources, task = Resources(config), get_task("sst2")
    budget = 24  # the initial population and two moves of 8 particles: too few to reach beta = 1

    ctx = sst2_context(resources, budget, options)
    outcome = registry["smc-average"].fit(ctx)
    calls = ctx.meter.calls
    plain = registry["smc"].fit(sst2_context(resources, budget, {}))
    assert plain.status == Status.BUDGET_EXHAUSTED and calls == plain.summary["evaluations"] == budget
    assert outcome.status == Status.BUDGET_EXHAUSTED
    assert outcome.summary["probability_tempered"] == 0.0 and outcome.summary["tempered_status"] == "not_started"
    assert outcome.summary["log_evidence_tempered"] == "nan"  # non-finite floats are kept as strings (JSON)
    assert not any(key.startswith("tempered_temperature") for key in outcome.summary)
    assert outcome.fitted.num_samples == plain.fitted.num_samples
    assert bool((outcome.fitted.samples["temperature"] == 1.0).all())
    torch.testing.assert_close(outcome.fitted.samples["z"], plain.fitted.samples["z"])
    resources.backend(task, Meter(10_000))  # fresh calls for the predictions of both
    torch.testing.assert_close(outcome.predictor(ctx.dev).mean().float(), plain.predictor(ctx.dev).mean().float(),
                               rtol=1e-5, atol=1e-6)


def test_smc_average_keeps_a_finished_plain_run_that_leaves_too_few_calls(data_dir):
    """The plain SMC reaches beta = 1, but fewer than N calls remain for the tempered model.

    The plain model's evidence is finite and its particles are kept whole (probability 1);
    the tempered model never starts, so the record says ``budget_exhausted``.
    """
    from bayesprompt.inference.posterior import Status
    from benchmarks.run import Resources

    config = fake_config(data_dir)
    registry, options = default_registry(), config.options_for("smc-average")
    resources = Resources(config)

    plain = registry["smc"].fit(sst2_context(resources, 2000, {}))
    assert plain.status == Status.FINISHED
    budget = plain.summary["evaluations"] + 7  # one call short of the tempered model's first population
    ctx = sst2_context(resources, budget, options)
    outcome = registry["smc-average"].fit(ctx)
    assert ctx.meter.calls == plain.summary["evaluations"]
    assert outcome.status == Status.BUDGET_EXHAUSTED and outcome.summary["tempered_status"] == "not_started"
    assert outcome.summary["log_evidence_plain"] == plain.summary["log_evidence"]
    assert math.isfinite(outcome.summary["log_evidence_plain"])
    assert outcome.summary["probability_tempered"] == 0.0
    assert bool((outcome.fitted.samples["temperature"] == 1.0).all())
    torch.testing.assert_close(outcome.fitted.samples["z"], plain.fitted.samples["z"])
    torch.testing.assert_close(outcome.fitted.weights, plain.fitted.weights)


def test_smc_devprior_centres_the_prior_on_a_prompt_tuned_on_dev(data_dir):
    """With a tight prior the particles sit at the dev-tuned centre, not at 0; both stages share the budget."""
    from benchmarks.methods import fit_smc_dev_prior
    from benchmarks.run import Resources

    config = fake_config(data_dir)
    resources = Resources(config)
    ctx = sst2_context(resources, 160, {"popsize": 8}, prior_scale=0.01)
    outcome = fit_smc_dev_prior(ctx)
    z = outcome.fitted.samples["z"].reshape(outcome.fitted.num_samples, -1)
    centre_norm = outcome.summary["point_norm"]
    assert centre_norm > 0.5  # CMA-ES moved away from its start at 0
    assert z.norm(dim=-1).sub(centre_norm).abs().max() < 0.1  # prior sd 0.01 in 8 dimensions
    assert 0 < outcome.summary["point_calls"] <= 80 and ctx.meter.calls <= 160
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="point_share"):
            fit_smc_dev_prior(dataclasses.replace(ctx, options={"point_share": share}))
    with pytest.raises(ValueError, match="CMA-ES population"):
        fit_smc_dev_prior(dataclasses.replace(ctx, budget=10))  # 5 calls < popsize 8


def test_label_only_method_fits_its_vote_smoothing_on_dev_within_the_budget(tmp_path, data_dir):
    """``vote_smoothing="dev"``: the engine leaves one call per prediction sample for the dev votes."""
    base = fake_config(data_dir, methods=("abc-mcmc", "abc-uniform"), budgets=(96,), num_particles=8)
    (fitted, fixed) = run_suite(base, tmp_path, log=None).records
    assert fitted["status"] == fixed["status"] == "ok"
    assert fixed["vote_smoothing"] == base.vote_smoothing  # the paper's ABC keeps the fixed smoothing
    assert fitted["vote_smoothing"] != base.vote_smoothing and 0 < fitted["vote_smoothing"]
    assert fitted["api_calls"] <= 96  # the engine's calls plus the 8 dev votes stay within the budget
    with pytest.raises(ValueError, match="vote_smoothing"):
        from benchmarks.methods import MethodContext, fit_engine

        ctx = MethodContext(TOY, FakeBlackBox(TOY, embed_dim=4), None, None, None, 10, 0, options={"vote_smoothing": 2.0})
        fit_engine(ctx, lambda ctx, potential: None, likelihood_free=True)


# ---------------------------------------------------------------------- point-vs-posterior diagnostic


def test_point_vs_posterior_rows_on_fake_box(data_dir):
    from benchmarks.point_vs_posterior import compare, format_table

    config = fake_config(data_dir)
    rows = compare(config, "sst2", 0, point_budget=40, posterior_budget=64, noise_scales=(0.5, 1.0), ray_scales=(2.0,), num_noise=3)
    names = [r.name for r in rows]
    assert names[0].startswith("z = 0") and names[1].startswith("BBT, ") and names[2].startswith("SMC particles")
    assert names[3:] == ["SMC posterior mean of z", "BBT z + N(0, 0.5^2 I)", "BBT z + N(0, 1^2 I)", "2 x BBT z"]
    assert [r.size for r in rows] == [1, 1, config.num_particles, 1, 3, 3, 1]
    k = config.intrinsic_dim
    normaliser = -0.5 * k * math.log(2 * math.pi)  # prior N(0, I) on z (prior_scale 1)
    zero, bbt, ray = rows[0], rows[1], rows[-1]
    assert zero.norm == 0.0 and zero.log_prior == pytest.approx(normaliser, abs=1e-4)
    for single in (bbt, ray):
        assert single.log_prior == pytest.approx(normaliser - 0.5 * single.norm**2, rel=1e-4)
        assert single.log_likelihood_range == (pytest.approx(single.log_likelihood),) * 2
    assert ray.norm == pytest.approx(2 * bbt.norm, rel=1e-5)
    for r in rows:
        low, high = r.log_likelihood_range
        assert low <= r.log_likelihood + 1e-9 and r.log_likelihood <= high + 1e-9 and r.log_likelihood < 0
        assert 0.0 <= r.test_accuracy <= 1.0 and r.test_nll > 0
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[3].startswith("| BBT, ")
    with pytest.raises(ValueError, match="point_budget"):
        compare(config, "sst2", 0, point_budget=0)
    with pytest.raises(ValueError, match="num_noise"):
        compare(config, "sst2", 0, num_noise=0)


def test_point_vs_posterior_dev_centre_rows_on_fake_box(data_dir):
    from benchmarks.point_vs_posterior import compare

    config = dataclasses.replace(fake_config(data_dir), prior_scale=0.01)
    rows = compare(config, "sst2", 0, point_budget=40, posterior_budget=64, noise_scales=(), ray_scales=(),
                   dev_centre_budget=60)
    assert [r.name.split(" (")[0] for r in rows[4:]] == ["dev-tuned z", "SMC particles, prior N(z_dev, I)"]
    centre, around = rows[4], rows[5]
    assert centre.size == 1 and around.size == config.num_particles
    assert centre.norm > 0.5 and around.norm == pytest.approx(centre.norm, abs=0.1)  # prior sd 0.01 pins them
    assert rows[2].norm < 0.1  # the N(0, 0.01^2 I) posterior stays at 0
    with pytest.raises(ValueError, match="dev_centre_budget"):
        compare(config, "sst2", 0, dev_centre_budget=-1)


@pytest.mark.slow
def test_point_vs_posterior_command_on_minilm(tmp_path, data_dir, capsys):
    from benchmarks.point_vs_posterior import main as diagnose

    out = tmp_path / "rows.json"
    argv = ["--task", "sst2", "--config", "smoke", "--point-budget", "40", "--posterior-budget", "40",
            "--test-size", "16", "--data-dir", data_dir, "--json", str(out)]
    assert diagnose(argv) == 0
    printed = capsys.readouterr().out
    assert "| SMC particles" in printed and "| 0.5 x BBT z |" in printed
    saved = json.loads(out.read_text())
    assert saved["task"] == "sst2" and len(saved["rows"]) == 9


def test_smc_average_requires_its_temperature_option_and_a_reload_checks_the_sites(tmp_path, data_dir):
    from benchmarks.checkpoint import load_fit, save_fit
    from benchmarks.run import Resources

    config = fake_config(data_dir)
    resources = Resources(config)
    ctx = sst2_context(resources, 2000, {})
    with pytest.raises(ValueError, match="smc-average needs the option temperature_prior_scale"):
        default_registry()["smc-average"].fit(ctx)
    tempered = default_registry()["smc-temp"].fit(dataclasses.replace(ctx, options={"temperature_prior_scale": 1.0}))
    save_fit(tempered, tmp_path / "fit", {})
    with pytest.raises(ValueError, match=r"has sites \['temperature'\] that the method's model .* lacks"):
        load_fit(ctx, tmp_path / "fit")


@pytest.mark.parametrize("log_z, expected", [
    ([-10.0, -10.0 + math.log(3)], [0.25, 0.75]),
    ([-10.0, math.nan], [1.0, 0.0]),  # the tempered run stopped before beta = 1: no evidence, weight 0
    ([math.nan, -12.0], [0.0, 1.0]),
    ([math.nan, math.nan], [1.0, 0.0]),  # neither finished: the plain run's particles, as `smc` returns them
])
def test_smc_average_weighs_only_the_runs_that_reached_the_posterior(log_z, expected):
    from benchmarks.methods import _evidence_probabilities

    assert _evidence_probabilities(log_z) == pytest.approx(expected)


# ---------------------------------------------------------------------- CMA-ELBO drift diagnostic


def test_cma_elbo_drift_reads_the_implied_spread_of_log_s_from_a_cell(tmp_path):
    from benchmarks.cma_elbo_drift import cell_rows, format_table

    summary = {"iterations": 24, "q_mean_norm": 2.0 * math.sqrt(8), "q_std_norm": math.sqrt(8) * math.exp(0.25)}
    record = {"task": "sst2", "seed": 1, "summary": summary}
    (tmp_path / "sst2__cma-elbo__seed1__budget2000__abc.json").write_text(json.dumps(record))
    (tmp_path / "sst2__smc__seed1__budget2000__abc.json").write_text(json.dumps(record))  # not cma-elbo: ignored
    [row] = cell_rows(tmp_path, dim=8)
    assert row["cell"] == "sst2 seed 1" and row["iterations"] == 24
    assert row["mean_rms"] == pytest.approx(2.0) and row["log_std_spread"] == pytest.approx(0.5)
    narrow = dict(record, summary=dict(summary, q_std_norm=1.0))  # ||s|| < sqrt(D): no real spread
    (tmp_path / "sst2__cma-elbo__seed1__budget2000__abc.json").write_text(json.dumps(narrow))
    assert math.isnan(cell_rows(tmp_path, dim=8)[0]["log_std_spread"])
    assert "| sst2 seed 1 | 24 | 2.00 | - | 1.0 |" in format_table("t", cell_rows(tmp_path, dim=8))


def test_cma_es_told_noise_walks_both_halves_of_theta_equally_far():
    from benchmarks.cma_elbo_drift import noise_rows

    rows = noise_rows(dim=50, popsize=8, sigma0=1.0, iterations=20, seeds=range(4))
    final = [r for r in rows if r["iterations"] == 20]
    first = [r for r in rows if r["iterations"] == 5]
    assert len(final) == len(first) == 4
    mean_walk = sum(r["mean_rms"] for r in final) / 4
    log_std_walk = sum(r["log_std_spread"] for r in final) / 4
    assert log_std_walk == pytest.approx(mean_walk, rel=0.25)  # 50 coordinates per half and seed; seeds differ by up to 20%
    for early, late in zip(first, final):
        assert late["mean_rms"] > early["mean_rms"] and late["std_norm"] > math.sqrt(50)


def test_cma_elbo_reaches_the_mean_field_optimum_only_with_a_long_run_but_one_scale_fast():
    from benchmarks.cma_elbo_drift import linear_gaussian_rows

    runs = [(1.0, 5, "diagonal"), (1.0, 300, "diagonal"), (1.0, 40, "isotropic")]
    optimum, isotropic_optimum, short, long, isotropic = linear_gaussian_rows(dim=20, num_obs=16, noise_scale=2.0, popsize=8, runs=runs)
    assert optimum["std_norm"] < math.sqrt(20)  # the data shrink the posterior
    assert abs(long["std_norm"] - optimum["std_norm"]) < abs(short["std_norm"] - optimum["std_norm"])
    assert long["std_norm"] == pytest.approx(optimum["std_norm"], rel=0.15)
    assert isotropic["cell"] == "isotropic, kl_weight 1" and isotropic_optimum["std_norm"] < math.sqrt(20)
    assert isotropic["std_norm"] == pytest.approx(isotropic_optimum["std_norm"], rel=0.15)  # one scale: fast
