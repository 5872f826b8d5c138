"""Run the benchmark suite: ``python -m benchmarks.run [--config smoke|full] [...]``.

The suite is a grid of **cells** ``(task, method, seed, budget)``; each cell fits one
method on one few-shot split and evaluates it on the task's test set and OOD sets.
A cell's record is written to ``<out>/cells/<task>__<method>__seed<s>__budget<b>__<hash>.json``
as soon as it finishes, where ``<hash>`` covers every setting the cell's result depends
on (see :func:`cell_hash`); a rerun loads finished cells from there instead of running
them, so a long suite can span several sittings, and changing a setting only reruns
the cells it affects. A method that never reads its budget (``budget_free``) and stopped
by itself after ``c`` calls made the same run under every budget of at least ``c``, so
its record is reused for those budgets (:func:`reusable_record`). A cell that raises is
recorded with its error (and retried on the next run); a method whose engine cannot be
imported is recorded as ``unavailable``.

After the grid, ``<out>/results.json`` (every record), ``<out>/results.md`` (mean ± sd
over seeds per task × method, plus the budget sweep) and ``<out>/budget_sweep_<task>.png``
are written from all records of the selected cells.

Seeds: seed ``s`` sets the few-shot split (``k`` train + ``dev_k`` dev examples per
class) and the engine. The random projection (``projection_seed``) and the test
subsample (``test_seed``) are the same for every seed.

Examples
--------
>>> config = preset("smoke")
>>> [(c.task, c.method, c.seed, c.budget) for c in main_cells(config, default_registry())]
[('sst2', 'zero-shot', 0, None), ('sst2', 'smc', 0, 32)]
>>> cell_hash(config, Cell("sst2", "smc", 0, 32)) == cell_hash(config, Cell("sst2", "smc", 1, 32))
True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import engine_defaults
from benchmarks.checkpoint import STEP_CHECKPOINTS, load_fit, save_fit
from benchmarks.estimate import STOPPED_BY_BUDGET, estimate_cost
from benchmarks.report import BEFORE_RESUME, OF_FIT
from benchmarks.methods import (
    SHARED_REQUIREMENTS, MethodContext, MethodOutcome, MethodSpec, availability, default_registry, dev_vote_reserve,
    effective_budget, fit_bucket_in_effect,
)
from bayesprompt.data import TASKS, balanced_subsample, few_shot_split, get_task, load_jsonl, load_split, split_path
from bayesprompt.data.task import Example, Task
from bayesprompt.lm import Meter, bf16_arithmetic, load_backend
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.metrics import classification_report, misclassification_auroc, ood_auroc
from bayesprompt.models.projection import RandomProjection
from bayesprompt.runs import CHECKPOINT_FILE as CHECKPOINT_NPZ, RunDirectory, RunDirectoryError, StateCodec

__all__ = [
    "BENCHMARK_VERSION",
    "OOD_PAIRS",
    "PROVENANCE_KEYS",
    "SUITE_TASKS",
    "BenchmarkConfig",
    "Cell",
    "CellCache",
    "Resources",
    "SuiteResult",
    "cached_main_records",
    "cell_hash",
    "code_revision",
    "engine_defaults_warnings",
    "evaluate",
    "main",
    "main_cells",
    "preset",
    "reusable_record",
    "run_cell",
    "run_suite",
    "sweep_cells",
    "write_overview",
]

#: Bump when a code change alters results, so cached cells are not reused (engine
#: constructor defaults are checked against a record: :mod:`benchmarks.engine_defaults`).
BENCHMARK_VERSION = 1

#: The few-shot suite (DBPedia is evaluated on its proxy test set).
SUITE_TASKS: tuple[str, ...] = ("sst2", "agnews", "snli", "rte", "mrpc", "dbpedia")

#: In-distribution task -> OOD tasks (rendered with their own template, scored with the
#: in-distribution verbalizers).
OOD_PAIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sst2", ("imdb", "rte")),
    ("agnews", ("mrpc",)),
    ("snli", ("mrpc",)),
    ("rte", ("mrpc",)),
    ("mrpc", ("rte",)),
    ("dbpedia", ("agnews",)),
)

#: The uncertainty score of the headline misclassification and OOD AUROCs.
UNCERTAINTY_SCORE = "predictive_entropy"


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark configuration (see :func:`preset` for ``smoke`` and ``full``).

    Parameters
    ----------
    name : str
        Configuration name (recorded; not part of the cache key).
    tasks, methods, seeds, budgets : tuples
        The main grid; ``budgets`` are common API budgets (methods with a fixed budget or
        none run once per task and seed).
    sweep_tasks, sweep_budgets : tuples
        The budget sweep: every selected common-budget method on the selected sweep
        tasks at each sweep budget (empty: no sweep).
    k, dev_k : int
        Training and dev examples per class.
    n_tokens, intrinsic_dim : int
        Prompt length and dimension of z.
    prior_scale : float
        Prior scale of z.
    num_particles : int
        Population / ensemble / walker count of the engines.
    precision : {"fp32", "bf16"}
        Forward precision of every method.
    test_size : int or None
        Class-balanced test subsample (``None``: whole test set); seeded by ``test_seed``.
    ood_size : int or None
        Class-balanced subsample of each OOD set; seeded by ``test_seed``.
    projection_seed : int
        Seed of the random projection.
    max_prediction_samples : int
        Posterior samples used for prediction (thinned / resampled beyond it).
    vote_smoothing : float
        Dirichlet smoothing of the vote distribution of label-only methods.
    backend : {"encoder", "fake"}
        The embedded MiniLM encoder, or :class:`bayesprompt.testing.FakeBlackBox` (tests).
    model : str or None
        Model path for the encoder (``None``: the embedded all-MiniLM-L6-v2).
    ood_pairs : tuple
        ``((task, (ood_task, ...)), ...)``.
    method_options : tuple
        ``((method, {option: value}), ...)``: engine constructor overrides, or white-box
        settings for ``"whitebox"``; ``vote_smoothing="dev"`` makes a label-only method fit
        its vote smoothing on the dev split (the default for our ABC engines; the paper's
        uniform ABC keeps the fixed ``vote_smoothing``).
    data_dir : str or None
        Data root (default ``$BAYESPROMPT_DATA``); not part of the cache key.
    length_bucket : int or None
        The backends' ``length_bucket`` while fitting (see
        :class:`~bayesprompt.lm.base.PromptBlackBox`): a training or dev batch of more
        than this many examples is sorted by length and scored in chunks of that many,
        each padded only to its own longest example. Default 16: on seed 0's training
        batch (bf16, one thread) it cut one call from 12.2 s to 3.8 s on DBPedia (224
        examples), 2.1 s to 1.0 s on AG News (64) and 0.44 s to 0.25 s on SST-2 (32)
        (``python -m benchmarks.length_buckets``, 2026-11-28, four processes on two cores).
        ``None`` scores contiguous chunks, as every cell fitted before 2026-11-28 did.
        The attended tokens are the same, so only float rounding changes (in bf16 up to
        about 0.03 in the logits), which can send an adaptive engine down another, equally
        valid trajectory: a different realisation of the same cell, not a different
        experiment. So it is not in the cache key; records store the bucket that was in
        effect (``fit_length_bucket``, ``None`` when every batch fitted in one chunk).
    evaluation_length_bucket : int or None
        The ``length_bucket`` used to score the test and OOD sets, whatever the fit used
        (``None``: the fit's). Default 16 (1,000 AG News test examples, two prompts: 33 s
        against 43 s with 64). Bucketing changes only the padding of each chunk, not the
        attended tokens, so it changes scores by float rounding alone, and it is not in
        the cache key: cells evaluated before it existed (contiguous chunks) keep their
        keys. Records store the value used.
    """

    name: str = "full"
    tasks: tuple[str, ...] = SUITE_TASKS
    methods: tuple[str, ...] = tuple(default_registry())
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[int, ...] = (2000,)
    sweep_tasks: tuple[str, ...] = ("sst2", "agnews")
    sweep_budgets: tuple[int, ...] = (250, 500, 1000, 2000, 4000, 8000)
    k: int = 16
    dev_k: int = 16
    n_tokens: int = 10
    intrinsic_dim: int = 500
    prior_scale: float = 1.0
    num_particles: int = 32
    precision: str = "bf16"
    test_size: int | None = 1000
    ood_size: int | None = 500
    test_seed: int = 0
    projection_seed: int = 0
    max_prediction_samples: int = 64
    vote_smoothing: float = 1.0
    backend: str = "encoder"
    model: str | None = None
    ood_pairs: tuple[tuple[str, tuple[str, ...]], ...] = OOD_PAIRS
    method_options: tuple[tuple[str, Mapping[str, Any]], ...] = (
        ("abc-smc", {"vote_smoothing": "dev"}),
        ("abc-mcmc", {"vote_smoothing": "dev"}),
        ("smc-temp", {"temperature_prior_scale": 1.0}),
        ("smc-average", {"temperature_prior_scale": 1.0}),
        ("cma-elbo-iso", {"scale": "isotropic", "kl_weight": 1.0}),
    )
    data_dir: str | None = None
    length_bucket: int | None = 16
    evaluation_length_bucket: int | None = 16

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.backend not in ("encoder", "fake"):
            raise ValueError(f"backend must be 'encoder' or 'fake', got {self.backend!r}")
        for name in ("k", "dev_k", "n_tokens", "intrinsic_dim", "num_particles", "max_prediction_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for budget in (*self.budgets, *self.sweep_budgets):
            if int(budget) < 1:
                raise ValueError(f"budgets must be positive numbers of API calls, got {budget}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        for name in ("length_bucket", "evaluation_length_bucket"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")

    def options_for(self, method: str) -> dict[str, Any]:
        """The configured overrides of ``method`` (empty if none)."""
        return dict(dict(self.method_options).get(method, {}))

    def ood_for(self, task: str) -> tuple[str, ...]:
        """OOD tasks of ``task`` (empty if none)."""
        return tuple(dict(self.ood_pairs).get(task, ()))


def preset(name: str) -> BenchmarkConfig:
    """The named configuration: ``"full"`` (the suite) or ``"smoke"`` (CI, well under a minute).

    Examples
    --------
    >>> preset("smoke").tasks, preset("full").budgets
    (('sst2',), (2000,))
    """
    if name == "full":
        return BenchmarkConfig()
    if name == "smoke":
        return BenchmarkConfig(
            name="smoke",
            tasks=("sst2",),
            methods=("zero-shot", "smc"),
            seeds=(0,),
            budgets=(32,),
            sweep_budgets=(),
            k=4,
            dev_k=2,
            n_tokens=4,
            intrinsic_dim=8,
            num_particles=4,
            test_size=32,
            ood_size=8,
            max_prediction_samples=4,
            ood_pairs=(("sst2", ("rte",)),),
        )
    raise ValueError(f"unknown configuration {name!r}; choose 'smoke' or 'full'")


@dataclass(frozen=True)
class Cell:
    """One fit-and-evaluate unit of the grid (``budget`` is the method's effective budget)."""

    task: str
    method: str
    seed: int
    budget: int | None

    def filename(self, digest: str) -> str:
        """Cache file name of this cell under a configuration digest."""
        budget = "none" if self.budget is None else str(self.budget)
        return f"{self.task}__{self.method}__seed{self.seed}__budget{budget}__{digest[:12]}.json"


def cell_hash(config: BenchmarkConfig, cell: Cell) -> str:
    """SHA-256 of every setting ``cell``'s result depends on (seed and budget are in the name).

    Covers the shared data / model / engine settings, the cell's method options and its
    task's OOD sets, and :data:`BENCHMARK_VERSION`; not the grid lists, name or data path,
    nor the length buckets, which change scores by float rounding alone (records store them).
    """
    shared = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("name", "tasks", "methods", "seeds", "budgets", "sweep_tasks", "sweep_budgets", "ood_pairs", "method_options", "data_dir",
                     "length_bucket", "evaluation_length_bucket")
    }
    payload = {
        "version": BENCHMARK_VERSION,
        "shared": shared,
        "method_options": config.options_for(cell.method),
        "ood": config.ood_for(cell.task),
        "task": cell.task,
        "method": cell.method,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def main_cells(config: BenchmarkConfig, registry: Mapping[str, MethodSpec]) -> list[Cell]:
    """The main grid: tasks x methods x seeds x budgets, fixed-budget methods once."""
    cells: dict[Cell, None] = {}
    for task in config.tasks:
        for method in config.methods:
            spec = registry.get(method)
            for seed in config.seeds:
                for budget in config.budgets:
                    cells[Cell(task, method, seed, effective_budget(spec, budget) if spec else budget)] = None
    return list(cells)


def sweep_cells(config: BenchmarkConfig, registry: Mapping[str, MethodSpec]) -> list[Cell]:
    """The budget sweep: common-budget methods on the selected sweep tasks at each sweep budget."""
    methods = [m for m in config.methods if m in registry and registry[m].budget == "common"]
    tasks = [t for t in config.sweep_tasks if t in config.tasks]
    return [Cell(t, m, s, b) for t in tasks for m in methods for s in config.seeds for b in config.sweep_budgets]


# ---------------------------------------------------------------------- data and models


class Resources:
    """Per-run caches of loaded data, backends, projections and encoded batches.

    One backend is loaded per task and reused by every cell of that task (each cell gets
    a fresh :class:`Meter`), which saves reloading the model for every cell.
    """

    def __init__(self, config: BenchmarkConfig) -> None:
        self.config = config
        self._backends: dict[str, PromptBlackBox] = {}
        self._projections: dict[str, RandomProjection] = {}
        self._pools: dict[str, list[Example]] = {}
        self._batches: dict[tuple[str, str], tuple[EncodedBatch, dict[str, Any]]] = {}

    def backend(self, task: Task, meter: Meter) -> PromptBlackBox:
        """The task's backend, with ``meter`` installed."""
        if task.name not in self._backends:
            self._backends[task.name] = self._load_backend(task)
        backend = self._backends[task.name]
        backend.meter = meter
        return backend

    def projection(self, task: Task, backend: PromptBlackBox) -> RandomProjection:
        """The task's random projection (seeded by ``projection_seed``)."""
        if task.name not in self._projections:
            self._projections[task.name] = RandomProjection.from_embeddings(
                backend.embedding_table(),
                intrinsic_dim=self.config.intrinsic_dim,
                n_tokens=self.config.n_tokens,
                seed=self.config.projection_seed,
            )
        return self._projections[task.name]

    def few_shot(self, task: Task, seed: int) -> tuple[list[Example], list[Example]]:
        """Training and dev examples of split ``seed``."""
        if task.name not in self._pools:
            self._pools[task.name] = load_split(task, "train", self.config.data_dir)
        return few_shot_split(self._pools[task.name], task.num_classes, k=self.config.k, dev_k=self.config.dev_k, seed=seed)

    def evaluation_batch(self, task: Task, backend: PromptBlackBox, source: str | None = None) -> tuple[EncodedBatch, dict[str, Any]]:
        """The (sub-sampled) test set of ``task``, or of OOD task ``source`` rendered with its own template.

        Returns the encoded batch and a description (split, sizes, subsample seed).
        """
        name = source or task.name
        if (task.name, name) not in self._batches:
            other = get_task(name)
            path = split_path(other, "test", self.config.data_dir, allow_proxy=True)
            examples = load_jsonl(path, other)
            size = self.config.test_size if source is None else self.config.ood_size
            chosen = examples if size is None else balanced_subsample(examples, other.num_classes, size, seed=self.config.test_seed)
            info = {
                "task": name,
                "split": path.stem,
                "size": len(chosen),
                "total": len(examples),
                "subsample_seed": self.config.test_seed if len(chosen) < len(examples) else None,
            }
            batch = backend.encode(chosen) if source is None else backend.encode(chosen, template=other)
            self._batches[(task.name, name)] = (batch, info)
        return self._batches[(task.name, name)]

    def _load_backend(self, task: Task) -> PromptBlackBox:
        if self.config.backend == "fake":
            from bayesprompt.testing import FakeBlackBox

            return FakeBlackBox(task, embed_dim=16, precision=self.config.precision, length_bucket=self.config.length_bucket)
        return load_backend(
            "encoder", task, model_path=self.config.model, precision=self.config.precision, length_bucket=self.config.length_bucket
        )


# ---------------------------------------------------------------------- one cell


def run_cell(
    config: BenchmarkConfig,
    cell: Cell,
    spec: MethodSpec,
    resources: Resources,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ``spec`` in ``cell`` and evaluate it; return the cell's record (raises on failure).

    With ``checkpoint`` (a folder) the fitted method is saved there before evaluation
    (:mod:`benchmarks.checkpoint`); if that folder already holds a finished fit, it is
    evaluated without fitting again and the record says ``resumed_fit``. The caller
    removes the folder once the record is saved.

    ``provenance`` (``bf16_arithmetic``, ``code_revision``: what this process runs under,
    as in the record) is kept with the step checkpoints and the saved fit. Where a part of
    the cell ran under other values, the record says so (:func:`_provenance_changes`).
    """
    provenance = dict(provenance or {})
    started = time.perf_counter()
    task = get_task(cell.task)
    meter = Meter(cell.budget)
    backend = resources.backend(task, meter)
    train_examples, dev_examples = resources.few_shot(task, cell.seed)
    for source in (None, *config.ood_for(task.name)):  # load (and cache) every evaluation set before the fit
        resources.evaluation_batch(task, backend, source)
    ctx = MethodContext(
        task=task,
        backend=backend,
        projection=resources.projection(task, backend),
        train=backend.encode([*train_examples, *dev_examples] if spec.conditions_on_dev else train_examples),
        dev=backend.encode(dev_examples),
        budget=cell.budget,
        seed=cell.seed,
        num_particles=config.num_particles,
        prior_scale=config.prior_scale,
        max_prediction_samples=config.max_prediction_samples,
        vote_smoothing=config.vote_smoothing,
        options=config.options_for(cell.method),
        progress=progress,
        run_directory=None if checkpoint is None else Path(checkpoint) / STEP_CHECKPOINTS,
        provenance=provenance,
    )
    restored = load_fit(ctx, checkpoint) if checkpoint is not None else None
    if restored is not None:
        outcome, fit_info = restored
        inference_calls, fit_seconds, resumed_from = fit_info["api_usage"], fit_info["fit_seconds"], fit_info.get("resumed_from")
        fit_bucket = fit_info.get("fit_length_bucket", fit_bucket_in_effect(backend.length_bucket, ctx))
        fitted_under = fit_info.get("provenance", {})  # absent in fits saved before it: unknown
    else:
        with torch.random.fork_rng(devices=[]):  # engines use their own generators; this pins anything else
            torch.manual_seed(cell.seed)
            fit_started = time.perf_counter()
            outcome = spec.fit(ctx)
            fit_seconds = time.perf_counter() - fit_started
        resumed_from = outcome.resumed_from
        fit_seconds += 0.0 if resumed_from is None else resumed_from["fit_seconds"]
        inference_calls = meter.snapshot().to_dict()
        fit_bucket = fit_bucket_in_effect(backend.length_bucket, ctx)
        fitted_under = provenance
        if checkpoint is not None and outcome.fitted is not None:
            save_fit(outcome, checkpoint, {"api_usage": inference_calls, "fit_seconds": fit_seconds,
                                           "resumed_from": resumed_from, "fit_length_bucket": fit_bucket,
                                           "provenance": provenance})
    meter.budget = None  # evaluation is metered, not budgeted
    calls_before_evaluation = meter.calls
    eval_started = time.perf_counter()
    evaluation_bucket = config.evaluation_length_bucket or backend.length_bucket
    with scoring_length_bucket(backend, evaluation_bucket):
        evaluation = evaluate(config, task, outcome, resources, backend)
    eval_seconds = time.perf_counter() - eval_started
    return {
        "status": "ok",
        "engine_status": outcome.status,
        **evaluation,
        "api_calls": inference_calls["calls"],
        "api_usage": inference_calls,
        "evaluation_calls": meter.calls - calls_before_evaluation,
        "fit_seconds": fit_seconds,
        "evaluation_seconds": eval_seconds,
        "evaluation_length_bucket": evaluation_bucket,
        "fit_length_bucket": fit_bucket,
        **_provenance_changes(provenance, {"fit_length_bucket": fit_bucket, **fitted_under}, resumed_from),
        "wall_seconds": time.perf_counter() - started,
        "num_samples": outcome.num_samples,
        "prediction_samples": outcome.prediction_samples,
        "ess": outcome.ess,
        "likelihood_free": outcome.likelihood_free,
        "vote_smoothing": vote_smoothing(config, outcome) if outcome.likelihood_free else None,
        "summary": outcome.summary,
        **({"resumed_fit": True} if restored is not None else {}),
        **({"resumed_fit_at_calls": resumed_from["calls"]} if resumed_from is not None else {}),
    }


def _provenance_changes(
    evaluated_under: Mapping[str, Any], fitted_under: Mapping[str, Any], resumed_from: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Record entries for the parts of a cell that ran under other settings than the record says.

    Parameters
    ----------
    evaluated_under : mapping
        This process's provenance (``bf16_arithmetic``, ``code_revision``), as in the record.
    fitted_under : mapping
        What the fit ended under: ``fit_length_bucket`` and the provenance of the process
        that finished it (only the bucket for a fit saved before provenance was kept).
    resumed_from : mapping or None
        The step checkpoint the fit continued from, with ``fit_parts``: what each earlier
        part of the fit ran under (:attr:`~benchmarks.methods.MethodOutcome.resumed_from`).

    Returns
    -------
    dict
        ``"<key>_before_resume"``: the first value an earlier part of the fit ran under that
        differs from the end's (``fit_length_bucket_before_resume``: part of the fit ran in
        chunks, part as one batch); ``"<key>_of_fit"``: a provenance entry of a saved fit
        that differs from this process's (a fit made on one machine, evaluated on another).

    Examples
    --------
    >>> native = {"bf16_arithmetic": "native"}
    >>> _provenance_changes(native, {"fit_length_bucket": 16, **native},
    ...                     {"calls": 64, "fit_parts": [{"fit_length_bucket": None, **native}]})
    {'fit_length_bucket_before_resume': None}
    >>> _provenance_changes({"code_revision": "b"}, {"fit_length_bucket": None, "code_revision": "a"}, None)
    {'code_revision_of_fit': 'a'}
    """
    parts = _earlier_parts(resumed_from)
    changes: dict[str, Any] = {}
    for key, value in fitted_under.items():
        other = [part[key] for part in parts if key in part and part[key] != value]
        if other:
            changes[f"{key}{BEFORE_RESUME}"] = other[0]
    changes |= {f"{key}{OF_FIT}": value for key, value in fitted_under.items()
                if key in evaluated_under and evaluated_under[key] != value}
    return changes


def _earlier_parts(resumed_from: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """``resumed_from["fit_parts"]``; a saved fit of older code kept only the starting bucket."""
    if resumed_from is None:
        return []
    if "fit_parts" in resumed_from:
        return list(resumed_from["fit_parts"])
    return [{"fit_length_bucket": resumed_from["fit_length_bucket"]}] if "fit_length_bucket" in resumed_from else []


@contextlib.contextmanager
def scoring_length_bucket(backend: PromptBlackBox, length_bucket: int | None) -> Iterator[None]:
    """Score with ``backend.length_bucket = length_bucket`` inside the block (restored after)."""
    previous = backend.length_bucket
    backend.length_bucket = length_bucket
    try:
        yield
    finally:
        backend.length_bucket = previous


def evaluate(
    config: BenchmarkConfig, task: Task, outcome: MethodOutcome, resources: Resources, backend: PromptBlackBox
) -> dict[str, Any]:
    """Test metrics, misclassification AUROC and OOD AUROCs of a fitted method.

    The headline uncertainty score is :data:`UNCERTAINTY_SCORE` computed from the same
    model-average probabilities as the NLL; the AUROCs of every score of
    :meth:`~bayesprompt.predict.EnsemblePredictions.uncertainty` are kept too.
    """
    smoothing = vote_smoothing(config, outcome)
    test_batch, test_info = resources.evaluation_batch(task, backend)
    predictions = outcome.predictor(test_batch)
    probs = predictions.mean(smoothing)
    report = classification_report(probs, test_batch.labels, task.metric)
    scores = predictions.uncertainty(smoothing)
    correct = (probs.argmax(-1) == test_batch.labels).numpy()
    ood: dict[str, Any] = {}
    for name in config.ood_for(task.name):
        ood_batch, ood_info = resources.evaluation_batch(task, backend, source=name)
        ood_predictions = outcome.predictor(ood_batch)
        ood_scores = ood_predictions.uncertainty(smoothing)
        ood[name] = {
            **ood_info,
            "auroc": ood_auroc(scores[UNCERTAINTY_SCORE], ood_scores[UNCERTAINTY_SCORE]),
            "auroc_by_score": {k: ood_auroc(scores[k], ood_scores[k]) for k in scores},
        }
    metric_name = "f1" if task.metric == "f1" else "accuracy"
    ood_values = [v["auroc"] for v in ood.values()]  # never NaN: both sets are non-empty
    return {
        "metric_name": metric_name,
        "metric": report[metric_name],
        **{key: report[key] for key in ("accuracy", "nll", "brier", "ece", "mce")},
        "f1": report.get("f1"),
        "ece_binary": report.get("ece_binary"),
        "misclassification_auroc": misclassification_auroc(scores[UNCERTAINTY_SCORE], correct),
        "misclassification_auroc_by_score": {k: misclassification_auroc(v, correct) for k, v in scores.items()},
        "uncertainty_score": UNCERTAINTY_SCORE,
        "ood_auroc": sum(ood_values) / len(ood_values) if ood_values else None,
        "ood": ood,
        "test": test_info,
    }


def vote_smoothing(config: BenchmarkConfig, outcome: MethodOutcome) -> float:
    """The Dirichlet smoothing of ``outcome``'s votes: fitted on dev, else the config's (0 for scores)."""
    if not outcome.likelihood_free:
        return 0.0
    return config.vote_smoothing if outcome.vote_smoothing is None else outcome.vote_smoothing


# ---------------------------------------------------------------------- cache and suite
def _checkpoint_calls(steps: RunDirectory) -> int | None:
    """The meter's calls at the checkpoint in ``steps`` (``None``: unreadable)."""
    try:
        return int(steps.read_checkpoint(StateCodec()).meter["calls"])
    except (RunDirectoryError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SavedWork:
    """What a killed run of a cell left in its ``.fit`` folder; ``str()`` says it in words.

    ``"fitted, not yet evaluated"`` (the fit is saved), ``"white-box fit at step N"``, ``"fit at call N"`` (the
    meter's calls at the engine's last checkpoint, ``?`` if unreadable) or ``"fit at call N, stage S"`` for a fit
    of several engine runs (:class:`~benchmarks.methods.FitStages`), at the stage checkpointed furthest on.
    """

    fitted: bool = False
    calls: int | None = None
    whitebox_step: int | None = None
    stage: str | None = None

    def __str__(self) -> str:
        if self.fitted:
            return "fitted, not yet evaluated"
        if self.whitebox_step is not None:
            return f"white-box fit at step {self.whitebox_step}"
        calls = "?" if self.calls is None else self.calls
        return f"fit at call {calls}" + ("" if self.stage is None else f", stage {self.stage}")


def _ok_record(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` if it is readable and ``ok``; else ``None``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "ok" else None


class CellCache:
    """One JSON file per finished cell under ``<out>/cells``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, cell: Cell, digest: str) -> Path:
        """Where ``cell``'s record lives."""
        return self.directory / cell.filename(digest)

    def load(self, cell: Cell, digest: str) -> dict[str, Any] | None:
        """The cached record of ``cell`` if it exists, is readable and is not an error."""
        return _ok_record(self.path(cell, digest))

    def checkpoint(self, cell: Cell, digest: str) -> Path:
        """The folder where ``cell``'s fit waits for its evaluation (see :mod:`benchmarks.checkpoint`)."""
        return self.directory / f"{cell.filename(digest).removesuffix('.json')}.fit"

    def saved_work(self, cell: Cell, digest: str) -> SavedWork | None:
        """What a killed run of ``cell`` left behind (``None``: nothing); see :class:`SavedWork`."""
        folder = self.checkpoint(cell, digest)
        if (folder / "outcome.json").is_file():
            return SavedWork(fitted=True)
        from benchmarks.whitebox import CHECKPOINT_FILE, checkpoint_step

        whitebox = folder / STEP_CHECKPOINTS / CHECKPOINT_FILE
        if whitebox.is_file():
            return SavedWork(whitebox_step=checkpoint_step(whitebox))
        steps = RunDirectory(folder / STEP_CHECKPOINTS)
        if steps.has_checkpoint():
            return SavedWork(calls=_checkpoint_calls(steps))
        stages = {path.parent.name: _checkpoint_calls(RunDirectory(path.parent))
                  for path in sorted((folder / STEP_CHECKPOINTS).glob(f"*/{CHECKPOINT_NPZ}"))}
        if not stages:
            return None
        stage = max(stages, key=lambda name: -1 if stages[name] is None else stages[name])  # calls grow stage by stage
        return SavedWork(calls=stages[stage], stage=stage)

    def records(self) -> list[dict[str, Any]]:
        """Every readable ``ok`` record in the folder, whatever its settings."""
        return [record for path in sorted(self.directory.glob("*.json")) if (record := _ok_record(path)) is not None]

    def siblings(self, cell: Cell, digest: str) -> list[dict[str, Any]]:
        """The cached ``ok`` records of ``cell``'s task, method, seed and settings at other budgets."""
        pattern = Cell(cell.task, cell.method, cell.seed, None).filename(digest).replace("__budgetnone__", "__budget*__")
        records = (_ok_record(path) for path in sorted(self.directory.glob(pattern)))
        return [record for record in records if record is not None and record.get("budget") != cell.budget]

    def lookup(
        self, cell: Cell, digest: str, spec: MethodSpec, reserved_calls: int = 0
    ) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, "cached")``, ``(record, "reused")`` (:func:`reusable_record`, not saved) or ``(None, None)``."""
        cached = self.load(cell, digest)
        if cached is not None:
            return cached, "cached"
        reused = reusable_record(cell, spec, self.siblings(cell, digest), reserved_calls)
        return (reused, "reused") if reused is not None else (None, None)

    def save(self, record: dict[str, Any], cell: Cell, digest: str) -> None:
        """Write ``record`` atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(cell, digest)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=_json_default, allow_nan=False))
        tmp.replace(path)


def reserved_calls(config: BenchmarkConfig, cell: Cell) -> int:
    """Calls ``cell``'s method keeps back from its engine's budget (:func:`~benchmarks.methods.dev_vote_reserve`)."""
    return dev_vote_reserve(config.options_for(cell.method), config.num_particles, config.max_prediction_samples)


def reusable_record(
    cell: Cell, spec: MethodSpec, siblings: Sequence[Mapping[str, Any]], reserved_calls: int = 0
) -> dict[str, Any] | None:
    """A sibling's record that is also ``cell``'s result, relabelled with ``cell.budget``; else ``None``.

    A :attr:`~benchmarks.methods.MethodSpec.budget_free` method that stopped for its own
    reasons (any engine status but ``budget_exhausted``) after ``c`` API calls made the
    same queries, in the same order, as it would under any budget of at least ``c``
    calls: the meter refused none of them, and nothing else read the budget. Its record
    (same task, method, seed and settings) is then the record of every such budget. The
    copy keeps the sibling's numbers and timings and names the budget it was run under
    in ``"reused_from_budget"``.

    A method that keeps ``reserved_calls`` back from its engine's budget
    (:func:`~benchmarks.methods.dev_vote_reserve`) and may spend fewer of them ran its
    engine under ``budget - reserved_calls``; its record is reused only where
    ``c + reserved_calls`` fits, which bounds the engine's calls without knowing how many
    of the ``c`` went to the reserve.

    Examples
    --------
    >>> from benchmarks.methods import default_registry
    >>> smc = default_registry()["smc"]
    >>> ran = {"budget": 2000, "engine_status": "finished", "api_calls": 576, "accuracy": 0.73}
    >>> reusable_record(Cell("sst2", "smc", 0, 1000), smc, [ran])["reused_from_budget"]
    2000
    >>> reusable_record(Cell("sst2", "smc", 0, 500), smc, [ran]) is None  # 576 calls do not fit in 500
    True
    >>> reusable_record(Cell("sst2", "smc", 0, 600), smc, [ran], reserved_calls=32) is None  # 576 + 32 > 600
    True
    """
    if not spec.budget_free or cell.budget is None:
        return None
    for record in siblings:
        stopped_by_budget = record.get("engine_status") in STOPPED_BY_BUDGET
        calls = record.get("api_calls")
        fits = isinstance(calls, int) and calls + reserved_calls <= cell.budget
        if not stopped_by_budget and fits and record.get("budget") is not None:
            origin = record.get("reused_from_budget", record["budget"])
            return {**record, "budget": cell.budget, "reused_from_budget": origin}
    return None


@dataclass
class SuiteResult:
    """Records of a suite run and what happened to each cell."""

    records: list[dict[str, Any]]
    cache_hits: int = 0
    reused: int = 0
    ran: int = 0
    errors: int = 0
    unavailable: int = 0
    not_run: int = 0
    #: One-core seconds the cells not run would take (:func:`~benchmarks.estimate.estimate_cost`), and how
    #: many of them have no estimate; filled by ``cached_only`` runs.
    not_run_seconds: float = 0.0
    not_run_unestimated: int = 0
    outputs: dict[str, str] = field(default_factory=dict)


def run_suite(
    config: BenchmarkConfig,
    out: str | Path,
    registry: Mapping[str, MethodSpec] | None = None,
    *,
    include_main: bool = True,
    include_sweep: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    cached_only: bool = False,
) -> SuiteResult:
    """Run (or load from the cache) every selected cell, then write results, table and plots.

    Parameters
    ----------
    config : BenchmarkConfig
        What to run.
    out : path
        Output directory (``cells/``, ``results.json``, ``results.md``, plots).
    registry : mapping or None
        Methods by name (default :func:`~benchmarks.methods.default_registry`).
    include_main, include_sweep : bool
        Which parts of the grid to run.
    progress : bool
        Engine progress bars.
    log : callable or None
        Receives one line per cell.
    cached_only : bool
        Run nothing: write the results and the report from the cached cells, and count
        (and log) the others as not run, each with its estimated one-core cost
        (:func:`~benchmarks.estimate.estimate_cost`, summed in ``not_run_seconds``). Records that :func:`reusable_record` derives
        from cached cells are still filled in (and saved), since that runs nothing.
    """
    from benchmarks.report import plot_budget_sweep, write_markdown

    registry = dict(default_registry() if registry is None else registry)
    unknown = [m for m in config.methods if m not in registry]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(registry)}")
    bad_tasks = [t for t in (*config.tasks, *(o for _, oods in config.ood_pairs for o in oods)) if t not in TASKS]
    if bad_tasks:
        raise ValueError(f"unknown tasks {bad_tasks}; choose from {sorted(TASKS)}")
    out = Path(out)
    cache = CellCache(out / "cells")
    resources = Resources(config)
    cells = (main_cells(config, registry) if include_main else []) + (sweep_cells(config, registry) if include_sweep else [])
    cells = list(dict.fromkeys(cells))
    result = SuiteResult(records=[])
    say = log if log is not None else (lambda line: None)
    revision = code_revision()
    timings: list[dict[str, Any]] | None = None  # every cached record, read at the first cell not run
    for index, cell in enumerate(cells, 1):
        spec = registry[cell.method]
        digest = cell_hash(config, cell)
        base = _base_record(config, cell, spec, digest, revision)
        found, how = cache.lookup(cell, digest, spec, reserved_calls(config, cell))
        if how == "cached":
            result.cache_hits += 1
            result.records.append(found)
            say(f"[{index}/{len(cells)}] {_name(cell)}: cached")
            continue
        if how == "reused":
            cache.save(found, cell, digest)
            result.reused += 1
            result.records.append(found)
            say(f"[{index}/{len(cells)}] {_name(cell)}: same run as budget {found['reused_from_budget']} "
                f"(stopped by itself at {found['api_calls']} calls)")
            continue
        saved = cache.saved_work(cell, digest)
        if cached_only:
            result.not_run += 1
            if timings is None:
                timings = cache.records()
            estimate = estimate_cost(cell.task, cell.method, cell.budget, budget_free=spec.budget_free, records=timings)
            if estimate is not None and saved is not None:
                estimate = estimate.after(saved.calls or 0, fitted=saved.fitted)
            if estimate is None:
                result.not_run_unestimated += 1
            else:
                result.not_run_seconds += estimate.seconds
            cost = "no estimate" if estimate is None else estimate.describe()
            say(f"[{index}/{len(cells)}] {_name(cell)}: not run (--cached-only); " + (f"{saved}; " if saved else "") + cost)
            continue
        ok, reason = availability(spec)
        if not ok:
            result.unavailable += 1
            result.records.append({**base, "status": "unavailable", "error": reason})
            say(f"[{index}/{len(cells)}] {_name(cell)}: unavailable ({reason})")
            continue
        if saved:
            say(f"[{index}/{len(cells)}] {_name(cell)}: continuing ({saved})")
        try:
            provenance = {key: base[key] for key in PROVENANCE_KEYS if key in base}
            record = {**base, **run_cell(config, cell, spec, resources, progress, checkpoint=cache.checkpoint(cell, digest),
                                         provenance=provenance)}
            result.ran += 1
            resumed = " (fit from checkpoint)" if record.get("resumed_fit") else ""
            say(f"[{index}/{len(cells)}] {_name(cell)}: {record['metric_name']} {record['metric']:.4f}, "
                f"NLL {record['nll']:.4f}, {record['api_calls']} calls, {record['wall_seconds']:.1f}s{resumed}")
        except Exception as err:  # noqa: BLE001 - a failing cell must not stop the suite
            result.errors += 1
            record = {**base, "status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
            say(f"[{index}/{len(cells)}] {_name(cell)}: ERROR {record['error']}")
        record = _finite(record)
        cache.save(record, cell, digest)
        if record["status"] == "ok":  # a failed evaluation keeps its fit for the next run
            shutil.rmtree(cache.checkpoint(cell, digest), ignore_errors=True)
        result.records.append(record)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.write_text(json.dumps({"config": _config_dict(config), "records": result.records}, indent=1, default=_json_default))
    result.outputs["results"] = str(results_path)
    result.outputs["markdown"] = str(write_markdown(result.records, out / "results.md", config=config, method_order=list(registry)))
    for task in dict.fromkeys(r["task"] for r in result.records):
        sweep = [r for r in result.records if r["task"] == task]
        if task in config.sweep_tasks and len({r["budget"] for r in sweep if r.get("budget_policy") == "common"}) > 1:
            result.outputs[f"sweep_{task}"] = str(plot_budget_sweep(sweep, out / f"budget_sweep_{task}.png", task=task))
    return result


def cached_main_records(config: BenchmarkConfig, cells: str | Path, registry: Mapping[str, MethodSpec] | None = None) -> list[dict[str, Any]]:
    """The records of ``config``'s main grid found in the folder ``cells`` (cached or reusable), in grid order.

    Reads only; what :func:`run_suite` with ``cached_only=True`` reports for the main grid.
    """
    registry = dict(default_registry() if registry is None else registry)
    cache = CellCache(cells)
    found = (cache.lookup(cell, cell_hash(config, cell), registry[cell.method], reserved_calls(config, cell))
             for cell in main_cells(config, registry))
    return [record for record, _ in found if record is not None]


#: Record entries that say what a cell ran under beside its settings; kept through resumed fits.
PROVENANCE_KEYS = ("bf16_arithmetic", "code_revision")


def code_revision(root: str | Path | None = None) -> str | None:
    """The git commit the suite's code comes from, to tell later which code made a cell.

    ``<12 hex digits>``, with ``+dirty`` when ``bayesprompt/`` or ``benchmarks/`` (its
    ``results/`` left out) have uncommitted changes; ``None`` outside a git checkout or
    without git. ``root`` defaults to the repository holding this module.

    Cell hashes do not cover the engines' code, so a record made before an engine change
    looks current; its ``code_revision`` says which commit made it.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:  # no index lock: a long suite must not block the developer's git
        command = ["git", "--no-optional-locks", "-C", str(root), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout

    try:
        head = git("rev-parse", "--short=12", "HEAD").strip()
        changes = git("status", "--porcelain", "--", "bayesprompt", "benchmarks", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changes.strip() else "")


def _base_record(config: BenchmarkConfig, cell: Cell, spec: MethodSpec, digest: str, revision: str | None = None) -> dict[str, Any]:
    return {
        "task": cell.task,
        "method": cell.method,
        "method_label": spec.label,
        "family": spec.family,
        "seed": cell.seed,
        "budget": cell.budget,
        "budget_policy": spec.budget if isinstance(spec.budget, str) else "fixed",
        "config": config.name,
        "config_hash": digest,
        "precision": config.precision,
        **({"bf16_arithmetic": bf16_arithmetic(torch.device("cpu"))} if config.precision == "bf16" else {}),
        "torch_threads": torch.get_num_threads(),
        "model": config.model or ("all-MiniLM-L6-v2 (embedded)" if config.backend == "encoder" else config.backend),
        "code_revision": revision,
    }


def _name(cell: Cell) -> str:
    return f"{cell.task}/{cell.method}/seed{cell.seed}/budget{cell.budget}"


def _config_dict(config: BenchmarkConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["ood_pairs"] = {task: list(oods) for task, oods in config.ood_pairs}
    data["method_options"] = {name: dict(options) for name, options in config.method_options}
    return data


def _finite(value: Any) -> Any:
    """``value`` with NaN / inf floats replaced by ``None`` (strict JSON), recursively.

    Examples
    --------
    >>> _finite({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return repr(value)


# ---------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``python -m benchmarks.run --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark bayesprompt's engines against the black-box prompt-tuning peers.",
    )
    parser.add_argument("--config", choices=("smoke", "full"), default="full", help="preset (default: full)")
    parser.add_argument("--tasks", nargs="+", help=f"tasks (default: the preset's; suite: {' '.join(SUITE_TASKS)})")
    parser.add_argument("--methods", nargs="+", help="methods (default: the preset's; see --list-methods)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (split and engine)")
    parser.add_argument("--budgets", nargs="+", type=int, help="common API budgets of the main table")
    parser.add_argument("--sweep-budgets", nargs="*", type=int, help="budgets of the sweep (none: no sweep)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the budget sweep")
    parser.add_argument("--sweep-only", action="store_true", help="run only the budget sweep")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="forward precision of every method")
    parser.add_argument("--test-size", type=int, help="class-balanced test subsample (0: the whole test set)")
    parser.add_argument("--length-bucket", type=int, metavar="N",
                        help="while fitting, score batches over N examples sorted by length in chunks of N (default 16; "
                             "0: contiguous; not in the cache key: it changes scores by float rounding only)")
    parser.add_argument("--evaluation-length-bucket", type=int, metavar="N",
                        help="score the test and OOD sets sorted by length in chunks of N (default 16; 0: as the fit; "
                             "not in the cache key: it changes scores by float rounding only)")
    parser.add_argument("--data-dir", help="data root (default: $BAYESPROMPT_DATA)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory (default: benchmarks/results)")
    parser.add_argument("--throughput", action="store_true", help="also measure engine vs bare-forward throughput")
    parser.add_argument("--progress", action="store_true", help="show engine progress bars")
    parser.add_argument("--cached-only", action="store_true", help="run nothing: report the cached cells of the selection")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.add_argument("--readme", metavar="PATH",
                        help="also write the overview table of the main grid's cached cells into PATH, between the lines "
                             "<!-- overview:begin --> and <!-- overview:end -->")
    parser.add_argument("--record-engine-defaults", action="store_true",
                        help="record the engines' constructor defaults and the code fingerprints under "
                             "the current BENCHMARK_VERSION and exit")
    return parser.parse_args(argv)


def _requirements(registry: Mapping[str, MethodSpec]) -> list[str]:
    """What the engine-defaults record covers: every method's engines and the shared objects."""
    return [*SHARED_REQUIREMENTS, *(requirement for spec in registry.values() for requirement in spec.requires)]


def engine_defaults_warnings(registry: Mapping[str, MethodSpec], record: str | Path = engine_defaults.RECORD_PATH) -> list[str]:
    """Why cached cells may be stale: engine defaults or version differ from ``record`` (empty: none).

    Cell hashes do not cover the engines' constructor defaults nor the code (builders, engines);
    :mod:`benchmarks.engine_defaults` records them instead. Each changed default gives one
    line, each changed fingerprinted definition one (noting a Python version other than the record's), and a
    record made under another :data:`BENCHMARK_VERSION` gives one.
    """
    version, recorded = engine_defaults.load_record(record)
    lines = engine_defaults.changed_defaults(recorded, engine_defaults.current_defaults(_requirements(registry)))
    python, sources = engine_defaults.load_sources(record)
    if python is not None:
        changed = engine_defaults.changed_sources(sources, engine_defaults.source_fingerprints())
        if changed and python != engine_defaults.python_version():
            changed = [f"{line} (recorded under Python {python}, this is {engine_defaults.python_version()}: "
                       "ast.unparse may write the same code differently)" for line in changed]
        lines += changed
    if version != BENCHMARK_VERSION:
        lines.insert(0, f"{record}: recorded under BENCHMARK_VERSION {version}, the code has {BENCHMARK_VERSION}")
    return lines


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The preset with the command line's overrides applied."""
    config = preset(args.config)
    overrides: dict[str, Any] = {}
    for name in ("tasks", "methods", "seeds", "budgets", "sweep_budgets"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = tuple(value)
    if args.precision:
        overrides["precision"] = args.precision
    if args.test_size is not None:
        overrides["test_size"] = None if args.test_size == 0 else args.test_size
    if args.length_bucket is not None:
        overrides["length_bucket"] = args.length_bucket or None
    if args.evaluation_length_bucket is not None:
        overrides["evaluation_length_bucket"] = args.evaluation_length_bucket or None
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return dataclasses.replace(config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    registry = default_registry()
    if args.list_methods:
        for spec in registry.values():
            ok, reason = availability(spec)
            budget = spec.budget if isinstance(spec.budget, str) else f"{spec.budget} calls"
            print(f"{spec.name:15s} {spec.family:9s} budget={budget:11s} {spec.description}"
                  + ("" if ok else f"  [unavailable: {reason}]"))
        return 0
    if args.record_engine_defaults:
        defaults = engine_defaults.current_defaults(_requirements(registry))
        sources = engine_defaults.source_fingerprints()
        path = engine_defaults.write_record(BENCHMARK_VERSION, defaults, engine_defaults.RECORD_PATH, sources)
        print(f"recorded {len(defaults)} engines' defaults and {len(sources)} code fingerprints: {path}")
        return 0
    try:
        stale = engine_defaults_warnings(registry)
    except ValueError as err:
        stale = [f"cannot check: {err}"]
    if stale:
        print("warning: engine defaults or code differ from those the cached cells were computed with; "
              "if the change alters results, bump BENCHMARK_VERSION or rerun the cells it affects, then record "
              "with --record-engine-defaults:\n  " + "\n  ".join(stale),
              file=sys.stderr)
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        result = run_suite(
            config,
            args.out,
            registry,
            include_main=not args.sweep_only,
            include_sweep=not args.no_sweep,
            progress=args.progress,
            cached_only=args.cached_only,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.throughput:
        from benchmarks.throughput import measure, write_throughput

        rows = measure(config.tasks[0], budget=min(512, *config.budgets), num_particles=config.num_particles,
                       n_tokens=config.n_tokens, intrinsic_dim=config.intrinsic_dim, k=config.k,
                       data_dir=config.data_dir, backend=config.backend)
        result.outputs["throughput"] = str(write_throughput(rows, Path(args.out)))
    print(f"{len(result.records)} cells: {result.ran} ran, {result.cache_hits} cached, {result.reused} reused, {result.errors} errors, "
          f"{result.unavailable} unavailable, {result.not_run} not run; {time.perf_counter() - started:.1f}s")
    if result.not_run:
        unestimated = f", {result.not_run_unestimated} of them without an estimate" if result.not_run_unestimated else ""
        print(f"not run: about {result.not_run_seconds / 3600:.1f} h of one core{unestimated} (timings of the cached cells)")
    if args.readme:
        try:
            write_overview(args.readme, config, Path(args.out) / "cells", registry)
        except (OSError, ValueError) as err:
            print(f"error: {args.readme}: {err}", file=sys.stderr)
            return 2
        result.outputs["readme"] = args.readme
    for name, path in result.outputs.items():
        print(f"{name}: {path}")
    return 0


def write_overview(readme: str | Path, config: BenchmarkConfig, cells: str | Path, registry: Mapping[str, MethodSpec]) -> None:
    """Replace the overview table in ``readme`` by the one of ``config``'s main grid in ``cells``."""
    from benchmarks.report import overview_table, replace_between_markers

    path = Path(readme)
    table = overview_table(cached_main_records(config, cells, registry), list(registry))
    path.write_bytes(replace_between_markers(path.read_bytes().decode(), table).encode())  # keeps the file's newlines


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
