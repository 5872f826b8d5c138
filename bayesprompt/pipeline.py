"""End-to-end fitting: data -> black box -> prompt model -> engine -> test metrics -> run directory.

:func:`fit` is what ``bayesprompt fit`` runs; it is also the shortest way to use the
package from Python::

    from bayesprompt.pipeline import FitConfig, fit
    result = fit(FitConfig(task="sst2", engine="smc", budget=2000, out="runs/demo"))
    print(result.metrics["test"]["accuracy"])
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bayesprompt.data import balanced_subsample, few_shot_split, get_task, load_split
from bayesprompt.data.task import Task
from bayesprompt.inference.base import Engine, run
from bayesprompt.inference.posterior import Posterior
from bayesprompt.lm import LabelOnly, Meter, load_backend
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.metrics import classification_report
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel, PromptModel
from bayesprompt.predict import EnsemblePredictions, predict, predict_votes

__all__ = ["FitConfig", "FitResult", "fit", "ENGINE_NAMES", "LIKELIHOOD_FREE_ENGINES"]

#: Engines the pipeline can build.
ENGINE_NAMES = ("smc", "abc-smc", "cmaes")
#: Engines that only see the label-only view.
LIKELIHOOD_FREE_ENGINES = frozenset({"abc-smc"})


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a run (saved as ``config.json``).

    Parameters
    ----------
    task : str
        Built-in task name (see :data:`bayesprompt.data.TASKS`).
    engine : str
        One of :data:`ENGINE_NAMES`.
    budget : int or None
        API-call budget for inference (test-set prediction is metered separately).
    out : str or None
        Run directory to write; nothing is written if ``None``.
    data_dir : str or None
        Data root; falls back to ``$BAYESPROMPT_DATA``.
    k, dev_k : int
        Training and dev examples per class, sampled from the training pool.
    data_seed, seed, projection_seed : int
        Seeds of the few-shot split, the engine and the projection (independent).
    backend : {"encoder", "mlm"}
        Sentence encoder (embedded default MiniLM) or a masked LM.
    model : str or None
        Local path or hub id of the model; ``None`` for the embedded MiniLM.
    precision : {"fp32", "bf16"}
        Forward-pass precision.
    n_tokens, intrinsic_dim : int
        Prompt length and dimension ``k`` of z.
    prior_scale : float
        Scale of the isotropic Normal prior on z. The projection is calibrated so that
        ``z ~ N(0, I)`` gives prompts with the spread of the model's word embeddings;
        the prior scale multiplies that spread.
    num_particles : int
        Population size of particle engines (SMC, ABC-SMC); CMA-ES popsize.
    test_size : int or None
        Class-balanced test subsample (``None``: the whole test split).
    vote_smoothing : float
        Dirichlet smoothing of the vote distribution of likelihood-free engines.
    engine_options : dict
        Extra keyword arguments for the engine's constructor.
    """

    task: str = "sst2"
    engine: str = "smc"
    budget: int | None = 2000
    out: str | None = None
    data_dir: str | None = None
    k: int = 16
    dev_k: int = 16
    data_seed: int = 0
    seed: int = 0
    projection_seed: int = 0
    backend: str = "encoder"
    model: str | None = None
    precision: str = "fp32"
    n_tokens: int = 10
    intrinsic_dim: int = 500
    prior_scale: float = 1.0
    num_particles: int = 32
    test_size: int | None = None
    vote_smoothing: float = 1.0
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"engine must be one of {ENGINE_NAMES}, got {self.engine!r}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be a positive number of API calls, got {self.budget}")
        for name in ("k", "dev_k", "n_tokens", "intrinsic_dim", "num_particles"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def likelihood_free(self) -> bool:
        """Whether the engine only sees predicted labels."""
        return self.engine in LIKELIHOOD_FREE_ENGINES


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    config: FitConfig
    posterior: Posterior
    predictions: EnsemblePredictions
    metrics: dict[str, Any]
    projection: RandomProjection


def fit(config: FitConfig, progress: bool = True, engine: Engine | None = None) -> FitResult:
    """Run one experiment end to end and (if ``config.out``) write its run directory."""
    task = get_task(config.task)
    train, dev, test = _load_examples(task, config)
    meter = Meter(config.budget)
    backend = _backend(config, task, meter)
    projection = RandomProjection.from_embeddings(
        backend.embedding_table(),
        intrinsic_dim=config.intrinsic_dim,
        n_tokens=config.n_tokens,
        seed=config.projection_seed,
    )
    train_batch, dev_batch = backend.encode(train), backend.encode(dev)
    potential = _potential(config, backend, projection, train_batch)
    if engine is None:
        engine = build_engine(config, potential, train_batch, dev_batch)
    started = time.perf_counter()
    posterior = run(engine, potential, seed=config.seed, meter=meter, progress=progress)
    inference_seconds = time.perf_counter() - started
    inference_calls = meter.snapshot().to_dict()
    meter.budget = None  # evaluation is metered but not budgeted
    test_batch = backend.encode(test)
    if config.likelihood_free:
        predictions = predict_votes(posterior, potential.with_args(test_batch), test_batch, task.num_classes)
    else:
        predictions = predict(posterior, potential.with_args(test_batch), test_batch)
    test_probs = predictions.mean(config.vote_smoothing if config.likelihood_free else 0.0)
    metrics = {
        "task": task.name,
        "engine": engine.name,
        "status": posterior.status,
        "inference_api_calls": inference_calls,
        "evaluation_api_calls": meter.calls - inference_calls["calls"],
        "inference_seconds": inference_seconds,
        "num_samples": posterior.num_samples,
        "posterior_ess": posterior.ess,
        "test": classification_report(test_probs, predictions.labels, task.metric),
        "test_split": "proxy_test" if task.name == "dbpedia" else "test",
        "summary": posterior.summary,
    }
    result = FitResult(config, posterior, predictions, metrics, projection)
    if config.out is not None:
        write_run(result, Path(config.out))
    return result


def build_engine(
    config: FitConfig,
    potential: Potential,
    train_batch: EncodedBatch,
    dev_batch: EncodedBatch,
) -> Engine:
    """The engine named by ``config.engine`` with the config's options."""
    options = dict(config.engine_options)
    if config.engine == "cmaes":
        from bayesprompt.inference.cma import CMAES

        options.setdefault("popsize", config.num_particles)
        return CMAES(dev_score=dev_accuracy_score(potential, dev_batch), **options)
    if config.engine == "smc":
        from bayesprompt.inference.smc import TemperedSMC

        return TemperedSMC(num_particles=config.num_particles, **options)
    from bayesprompt.inference.smc import ABCSMC

    return ABCSMC(num_particles=config.num_particles, observed=train_batch.labels, **options)


def dev_accuracy_score(potential: Potential, dev_batch: EncodedBatch) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> dev accuracy + 1e-6 * dev log-likelihood`` (accuracy, ties broken by likelihood)."""

    def score(u: torch.Tensor) -> torch.Tensor:
        trace = potential.with_args(dev_batch).trace(u)
        probs = trace.nodes["y"]["fn"].probs.reshape(u.shape[0], len(dev_batch), -1)
        correct = (probs.argmax(-1) == dev_batch.labels).double().mean(-1)
        log_lik = probs.gather(-1, dev_batch.labels.expand(u.shape[0], -1).unsqueeze(-1)).log().sum((-1, -2))
        return correct + 1e-6 * log_lik.double()

    return score


def write_run(result: FitResult, directory: Path) -> None:
    """Write config, projection, posterior and metrics to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = asdict(result.config)
    config["projection"] = result.projection.metadata()
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    result.projection.save(str(directory / "projection.npz"))
    result.posterior.save(directory)
    (directory / "metrics.json").write_text(json.dumps(result.metrics, indent=1, default=str))


def _load_examples(task: Task, config: FitConfig):
    pool = load_split(task, "train", config.data_dir)
    train, dev = few_shot_split(pool, task.num_classes, k=config.k, dev_k=config.dev_k, seed=config.data_seed)
    test = load_split(task, "test", config.data_dir, allow_proxy=True)
    if config.test_size is not None:
        test = balanced_subsample(test, task.num_classes, config.test_size, seed=config.data_seed)
    return train, dev, test


def _backend(config: FitConfig, task: Task, meter: Meter) -> PromptBlackBox:
    kwargs: dict[str, Any] = {"meter": meter, "precision": config.precision}
    if config.backend == "encoder":
        kwargs["model_path"] = config.model
    elif config.model is None:
        raise ValueError("backend 'mlm' needs a model: pass --model with a local path or hub id (e.g. roberta-large)")
    else:
        kwargs["model_name_or_path"] = config.model
    return load_backend(config.backend, task, **kwargs)


def _potential(config: FitConfig, backend: PromptBlackBox, projection: RandomProjection, batch: EncodedBatch) -> Potential:
    if config.likelihood_free:
        model = LikelihoodFreePromptModel(LabelOnly(backend), projection, prior_scale=config.prior_scale)
    else:
        model = PromptModel(backend, projection, prior_scale=config.prior_scale)
    return Potential(model, (batch,), meter=backend.meter)
