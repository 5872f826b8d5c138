"""End-to-end runs: data -> black box -> prompt model -> engine -> test metrics -> run directory.

:func:`fit` is what ``bayesprompt fit`` runs; it is also the shortest way to use the
package from Python::

    from bayesprompt.pipeline import FitConfig, fit
    result = fit(FitConfig(task="sst2", engine="smc", budget=2000, out="runs/demo"))
    print(result.metrics["test"]["accuracy"])

With ``out`` set, the run directory (see :mod:`bayesprompt.runs`) receives a checkpoint
of the engine state after ``init`` and after every engine step, so a killed run
continues with :func:`resume` (``bayesprompt fit --resume runs/demo``) and reaches the
same result as an uninterrupted run. :func:`evaluate_run` recomputes the test (and OOD)
predictions and metrics of a finished run and :func:`plot_run` draws its plots.
:func:`predict_run` applies a finished run to new inputs (``bayesprompt predict``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from bayesprompt.data import balanced_subsample, examples_fingerprint, few_shot_split, get_task, load_jsonl, load_split
from bayesprompt.data.task import UNLABELLED, Example, Task
from bayesprompt.inference.base import Engine
from bayesprompt.inference.empirical_bayes import DevCentre, fit_dev_centre
from bayesprompt.inference.posterior import Posterior
from bayesprompt.inference.selection import dev_accuracy_score
from bayesprompt.lm import LabelOnly, Meter, load_backend
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.metrics import aurc, classification_report, ood_report, selective_prediction_report
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel, PromptModel, lognormal_temperature_prior
from bayesprompt.predict import EnsemblePredictions, fit_vote_smoothing, predict, predict_votes
from bayesprompt.runs import (
    DEV_CENTRE_DIR,
    PREDICTIONS_FILE,
    Checkpoint,
    RunDirectory,
    RunDirectoryError,
    RunPredictions,
    StateCodec,
    config_digest,
    run_with_checkpoints,
)

__all__ = [
    "ENGINE_BUILDERS",
    "ENGINE_NAMES",
    "LIKELIHOOD_FREE_ENGINES",
    "EngineBuilder",
    "FitConfig",
    "FitResult",
    "Forecast",
    "SAME_DATA_FIELDS",
    "build_engine",
    "compare_runs",
    "config_from_dict",
    "dev_accuracy_score",
    "evaluate_run",
    "fit",
    "plot_run",
    "predict_run",
    "resume",
    "write_run",
]

#: ``(config, potential, train_batch, dev_batch) -> engine``; options come from ``config.engine_options``.
EngineBuilder = Callable[["FitConfig", Potential, EncodedBatch, EncodedBatch], Engine]


def _build_smc(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.smc import TemperedSMC

    return TemperedSMC(num_particles=config.num_particles, **config.engine_options)


def _build_abc_smc(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.smc import ABCSMC

    return ABCSMC(num_particles=config.num_particles, observed=train.labels, **config.engine_options)


def _build_abc_mcmc(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.smc import AdaptiveABCSMC

    return AdaptiveABCSMC(num_particles=config.num_particles, observed=train.labels, **config.engine_options)


def _build_cmaes(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.cma import CMAES

    options = {"popsize": config.num_particles, **config.engine_options}
    return CMAES(dev_score=dev_accuracy_score(potential, dev), **options)


def _build_eki(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.kalman import EKI

    return EKI(num_ensemble=config.num_particles, **config.engine_options)


def _build_eks(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.kalman import EKS

    return EKS(num_ensemble=config.num_particles, **config.engine_options)


def _build_ensemble_mcmc(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.mcmc import EnsembleSampler

    walkers = config.num_particles + config.num_particles % 2  # the red-blue split needs an even number
    options = {"num_iterations": _iterations_for_budget(config, walkers, 1000), **config.engine_options}
    options.setdefault("burn_in", options["num_iterations"] // 2)
    return EnsembleSampler(num_walkers=walkers, **options)


#: Calls kept for the queries of Pyro's MCMC set-up out of rw-mcmc's budget.
RW_SETUP_CALLS = 8


def _build_rw_mcmc(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch):
    from bayesprompt.inference.mcmc import PyroRandomWalk

    steps = config.engine_budget - RW_SETUP_CALLS if config.engine_budget is not None else 2000  # >= 1: FitConfig
    options = {"warmup_steps": steps // 2, "num_samples": steps - steps // 2, **config.engine_options}
    return PyroRandomWalk(**options)


def _build_ensembles(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.cma import PromptEnsembles

    options = {"popsize": config.num_particles, **config.engine_options}
    return PromptEnsembles(meter=potential.meter, dev_score=dev_accuracy_score(potential, dev), **options)


def _build_cma_elbo(config: "FitConfig", potential: Potential, train: EncodedBatch, dev: EncodedBatch) -> Engine:
    from bayesprompt.inference.cma import CMAELBO

    options = {"popsize": config.num_particles, **config.engine_options}
    return CMAELBO(dev_score=dev_accuracy_score(potential, dev), **options)


def _is_int(value: Any) -> bool:
    """An integer (numpy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A real number (numpy's included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _iterations_for_budget(config: "FitConfig", calls_per_iteration: int, default: int) -> int:
    """As many iterations as the engine's budget allows after the initial population (or ``default``)."""
    if config.engine_budget is None:
        return default
    return max(1, config.engine_budget // calls_per_iteration - 1)


#: Engine name -> builder. Add an engine here (and its state class to
#: :data:`bayesprompt.runs.STATE_CLASSES` so that its runs checkpoint and resume).
ENGINE_BUILDERS: Mapping[str, EngineBuilder] = MappingProxyType(
    {
        "smc": _build_smc,
        "abc-smc": _build_abc_smc,
        "abc-mcmc": _build_abc_mcmc,
        "cmaes": _build_cmaes,
        "ensembles": _build_ensembles,
        "cma-elbo": _build_cma_elbo,
        "eki": _build_eki,
        "eks": _build_eks,
        "ensemble-mcmc": _build_ensemble_mcmc,
        "rw-mcmc": _build_rw_mcmc,
    }
)
#: Engines the pipeline can build.
ENGINE_NAMES = tuple(ENGINE_BUILDERS)
#: Engines that only see the label-only view.
LIKELIHOOD_FREE_ENGINES = frozenset({"abc-smc", "abc-mcmc"})
#: Where the prior on z is centred (see ``FitConfig.prior_centre``).
PRIOR_CENTRES = ("zero", "dev")
#: CMA-ES population of the dev stage of ``prior_centre="dev"`` (BBT's).
DEV_CENTRE_POPSIZE = 20


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a run (saved in ``config.json``).

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
    prior_centre : {"zero", "dev"}
        Centre of that prior. ``"dev"`` is empirical Bayes: CMA-ES first maximises the
        dev log-likelihood with ``prior_centre_share`` of the budget
        (:func:`~bayesprompt.inference.empirical_bayes.fit_dev_centre`), then the engine
        samples the training posterior under ``N(z_dev, prior_scale^2 I)`` with the rest.
        Score engines only. The centre is saved in ``prior_centre.npz``.
    prior_centre_share : float
        Share of the budget for the dev stage of ``prior_centre="dev"``, in (0, 1).
    temperature_prior_scale : float or None
        With a number ``s``, the likelihood gets a latent temperature
        ``~ LogNormal(0, s)`` that divides the black box's scores (site
        ``"temperature"``; see :class:`~bayesprompt.models.PromptModel`), so the posterior
        can soften scores that are sharper than the task warrants. Score engines only.
        ``None`` (default): temperature 1.
    num_particles : int
        Population size of particle engines (SMC, ABC-SMC); CMA-ES popsize.
    test_size : int or None
        Class-balanced test subsample (``None``: the whole test split).
    vote_smoothing : float or "dev"
        Dirichlet smoothing ``alpha`` of the vote distribution of likelihood-free engines.
        ``"dev"`` (the default) fits it on the dev split by maximum likelihood
        (:func:`~bayesprompt.predict.fit_vote_smoothing`); the engine then runs on the
        budget less one call per particle, kept back for the dev votes. The fitted value
        is in ``metrics["vote_smoothing"]``.
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
    prior_centre: str = "zero"
    prior_centre_share: float = 0.5
    temperature_prior_scale: float | None = None
    num_particles: int = 32
    test_size: int | None = None
    vote_smoothing: float | str = "dev"
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_BUILDERS:
            raise ValueError(f"engine must be one of {tuple(ENGINE_BUILDERS)}, got {self.engine!r}")
        for name in ("budget", "k", "dev_k", "n_tokens", "intrinsic_dim", "num_particles", "test_size"):
            value = getattr(self, name)
            optional = name in ("budget", "test_size")
            if not (optional and value is None) and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1{' or None' if optional else ''}, got {value!r}")
        if not (_is_number(self.prior_scale) and 0 < self.prior_scale < math.inf):
            raise ValueError(f"prior_scale must be a finite number > 0, got {self.prior_scale!r}")
        if self.vote_smoothing != "dev" and not (_is_number(self.vote_smoothing) and 0 <= self.vote_smoothing < math.inf):
            raise ValueError(f"vote_smoothing must be a finite number >= 0 or 'dev', got {self.vote_smoothing!r}")
        self._check_prior_centre()
        self._check_temperature()
        rw_sized_by_budget = self.engine == "rw-mcmc" and "num_samples" not in self.engine_options
        if rw_sized_by_budget and self.engine_budget is not None and self.engine_budget < RW_SETUP_CALLS + 1:
            raise ValueError(
                f"budget {self.budget} leaves {self.engine_budget} calls for rw-mcmc, which needs at least "
                f"{RW_SETUP_CALLS + 1} ({RW_SETUP_CALLS} kept for Pyro's set-up and one sample)"
            )
        if self.dev_reserve and self.budget is not None and self.budget <= self.dev_reserve:
            raise ValueError(
                f"budget {self.budget} leaves no calls for inference after the {self.dev_reserve} dev calls of "
                "vote_smoothing='dev'; raise the budget or give vote_smoothing a number"
            )

    def _check_prior_centre(self) -> None:
        if self.prior_centre not in PRIOR_CENTRES:
            raise ValueError(f"prior_centre must be one of {PRIOR_CENTRES}, got {self.prior_centre!r}")
        if not 0.0 < self.prior_centre_share < 1.0:
            raise ValueError(f"prior_centre_share must be in (0, 1), got {self.prior_centre_share}")
        if self.prior_centre != "dev":
            return
        if self.likelihood_free:
            raise ValueError(
                f"prior_centre='dev' tunes the centre on dev scores; engine {self.engine!r} is likelihood-free "
                "(label-only), so use prior_centre='zero' or a score engine"
            )
        if self.budget is None:
            raise ValueError("prior_centre='dev' needs a budget: prior_centre_share of it goes to the dev stage")
        if self.dev_centre_budget < DEV_CENTRE_POPSIZE:
            raise ValueError(
                f"budget {self.budget} x prior_centre_share {self.prior_centre_share} = {self.dev_centre_budget} calls "
                f"is less than one CMA-ES population ({DEV_CENTRE_POPSIZE}) for the dev stage"
            )

    def _check_temperature(self) -> None:
        if lognormal_temperature_prior(self.temperature_prior_scale) is None:  # validates the scale
            return
        if self.likelihood_free:
            raise ValueError(
                f"temperature_prior_scale tempers the score likelihood; engine {self.engine!r} is likelihood-free "
                "(label-only), so leave it None or use a score engine"
            )

    @property
    def dev_centre_budget(self) -> int:
        """API calls of the dev stage of ``prior_centre="dev"`` (0 otherwise)."""
        if self.prior_centre != "dev" or self.budget is None:
            return 0
        return int(self.prior_centre_share * self.budget)

    @property
    def engine_budget(self) -> int | None:
        """API calls planned for the engine: the budget less the dev stage and the dev-vote reserve."""
        if self.budget is None:
            return None
        return self.budget - self.dev_centre_budget - self.dev_reserve

    @property
    def likelihood_free(self) -> bool:
        """Whether the engine only sees predicted labels."""
        return self.engine in LIKELIHOOD_FREE_ENGINES

    @property
    def dev_reserve(self) -> int:
        """API calls kept back from the engine to fit the vote smoothing on dev (one per particle)."""
        if not (self.likelihood_free and self.vote_smoothing == "dev"):
            return 0
        return int(self.engine_options.get("num_particles", self.num_particles))


def config_from_dict(data: Mapping[str, Any], **overrides: Any) -> FitConfig:
    """A :class:`FitConfig` from its saved fields (as in ``config.json``), with overrides.

    Raises
    ------
    ValueError
        For unknown or invalid fields.

    Examples
    --------
    >>> config_from_dict({"task": "rte", "k": 4}, out="runs/x").out
    'runs/x'
    >>> config_from_dict({"tsk": "rte"})
    Traceback (most recent call last):
    ...
    ValueError: unknown config fields ['tsk'] (known: ...)
    """
    known = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown} (known: {sorted(known)})")
    try:
        return FitConfig(**{**data, **overrides})
    except TypeError as err:
        raise ValueError(f"invalid config: {err}") from err


@dataclass
class FitResult:
    """What :func:`fit` and :func:`resume` return."""

    config: FitConfig
    posterior: Posterior
    predictions: EnsemblePredictions
    metrics: dict[str, Any]
    projection: RandomProjection
    run_dir: Path | None = None


@dataclass
class _Setup:
    """Everything built from a config before inference."""

    config: FitConfig
    task: Task
    meter: Meter
    backend: PromptBlackBox
    projection: RandomProjection
    potential: Potential
    train: EncodedBatch
    dev: EncodedBatch
    test: list[Example]
    centre: DevCentre | None = None
    fingerprints: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- fit / resume
def fit(
    config: FitConfig,
    progress: bool = True,
    engine: Engine | None = None,
    *,
    codec: StateCodec | None = None,
) -> FitResult:
    """Run one experiment end to end and (if ``config.out``) write its run directory.

    Parameters
    ----------
    config : FitConfig
        The run.
    progress : bool
        Show a progress bar.
    engine : Engine or None
        Use this engine instead of building ``config.engine``.
    codec : StateCodec or None
        Serialiser of the checkpoints (default :class:`~bayesprompt.runs.StateCodec`); pass
        one with ``extra_classes`` for a custom engine's state.
    """
    task = get_task(config.task)
    setup = _setup(config, task, projection=None)
    custom = engine
    # built before anything is written or queried, so that bad engine options cost nothing
    engine = custom if custom is not None else build_engine(config, setup.potential, setup.train, setup.dev)
    run_dir = None
    if config.out is not None:
        run_dir = RunDirectory.create(config.out, _config_dict(config), setup.projection.metadata())
        run_dir.write_projection(setup.projection)
    if config.prior_centre == "dev":
        setup = _centred(setup, _dev_centre(setup, run_dir, codec, progress))
        if custom is None:  # the engine of the centred prior
            engine = build_engine(config, setup.potential, setup.train, setup.dev)
    return _complete(setup, engine, run_dir, codec, None, progress)


def resume(directory: str | Path, progress: bool = True, *, codec: StateCodec | None = None) -> FitResult:
    """Continue the run in ``directory`` from its last checkpoint (``bayesprompt fit --resume``).

    The config, projection and checkpoint come from the run directory; the meter is
    restored from the checkpoint, the model's latent sites are learnt without a query,
    and the engine continues from the checkpointed state. The result (posterior,
    diagnostics, metrics) equals that of an uninterrupted run with the same config.
    Under ``prior_centre="dev"``, a run killed before the engine's first checkpoint
    continues its dev stage from the last CMA-ES step checkpointed in ``dev_centre/``.

    Raises
    ------
    RunDirectoryError
        For a missing or corrupt file, a checkpoint that does not belong to the config, or
        a finished run (whose predictions are written; re-predict it with :func:`evaluate_run`).
    """
    run_dir = RunDirectory.open(directory)
    if run_dir.file(PREDICTIONS_FILE).is_file():
        raise RunDirectoryError(
            f"{run_dir.path}: the run has finished ({PREDICTIONS_FILE} is written); "
            "`bayesprompt evaluate` predicts it again"
        )
    saved = run_dir.read_config()
    config = _saved_config(run_dir, saved, out=str(directory))
    codec = codec if codec is not None else StateCodec()
    checkpoint = None  # the dev stage of prior_centre="dev" was cut short, or the engine's init
    if config.prior_centre != "dev" or run_dir.has_checkpoint():
        checkpoint = run_dir.read_checkpoint(codec)
        if checkpoint.config_sha256 != config_digest(saved):
            raise RunDirectoryError(
                f"{run_dir.file('checkpoint.npz')}: written for another config than {run_dir.file('config.json')}"
            )
    task = get_task(config.task)
    setup = _setup(config, task, projection=run_dir.read_projection())
    if config.prior_centre == "dev":
        centre = run_dir.read_prior_centre() if checkpoint is not None else _dev_centre(setup, run_dir, codec, progress)
        setup = _centred(setup, centre)
    engine = build_engine(config, setup.potential, setup.train, setup.dev)
    if checkpoint is not None and checkpoint.engine != engine.name:
        raise RunDirectoryError(
            f"{run_dir.file('checkpoint.npz')}: holds a {checkpoint.engine!r} state, the config builds {engine.name!r}"
        )
    return _complete(setup, engine, run_dir, codec, checkpoint, progress)


def build_engine(
    config: FitConfig,
    potential: Potential,
    train_batch: EncodedBatch,
    dev_batch: EncodedBatch,
    builders: Mapping[str, EngineBuilder] = ENGINE_BUILDERS,
) -> Engine:
    """The engine named by ``config.engine`` (looked up in ``builders``) with the config's options.

    Raises
    ------
    ValueError
        For an unknown engine, or options its constructor refuses (an unknown name, a
        value of the wrong type), naming ``engine_options``.
    """
    try:
        builder = builders[config.engine]
    except KeyError:
        raise ValueError(f"no builder for engine {config.engine!r}; known engines: {sorted(builders)}") from None
    try:
        return builder(config, potential, train_batch, dev_batch)
    except TypeError as err:  # an unknown keyword, or a value of the wrong type
        raise ValueError(
            f"engine {config.engine!r} refuses engine_options {config.engine_options!r}: {err}"
        ) from err


def write_run(result: FitResult, directory: Path) -> None:
    """Write config, projection, posterior, diagnostics, metrics and predictions to ``directory``.

    :func:`fit` does this itself (with checkpoints); this is for results built otherwise.
    """
    run_dir = RunDirectory.create(directory, _config_dict(result.config), result.projection.metadata())
    run_dir.write_projection(result.projection)
    _write_results(run_dir, result, {"inference": result.posterior.api_calls})


# ---------------------------------------------------------------------------- evaluate / plot
def evaluate_run(
    directory: str | Path,
    ood: Sequence[str] = (),
    ood_size: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Recompute the ensemble predictions and metrics of a finished run.

    Predicts the run's test split (the same subsample as ``fit``) and the test split of
    each OOD task, rendered with the OOD task's own template and scored with the run's
    verbalizers. Queries are metered (not budgeted). Updates ``metrics.json``,
    ``predictions.npz`` and ``meter.json`` and returns the metrics.

    Parameters
    ----------
    directory : str or Path
        The run directory.
    ood : sequence of str
        OOD task names.
    ood_size : int or None
        Class-balanced subsample of each OOD test split (default: the run's ``test_size``).
    data_dir : str or None
        Data root (default: the run's ``data_dir``, then ``$BAYESPROMPT_DATA``).
    """
    ood_tasks = [get_task(name) for name in ood]
    if ood_size is not None and ood_size < 1:
        raise ValueError(f"ood_size must be >= 1, got {ood_size}")
    run_dir, config, task, posterior = _open_finished(directory)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    previous = _previous_metrics(run_dir)
    previous.pop("ood", None)  # from an earlier evaluation, maybe with other OOD tasks
    meter = Meter()
    backend = _backend(config, task, meter)
    test = backend.encode(_test_examples(task, config))
    potential = _run_potential(config, run_dir, backend, test)
    predictions = _predict(config, task, posterior, potential, test)
    size = ood_size if ood_size is not None else config.test_size
    ood_predictions = {
        ood_task.name: _predict_ood(config, task, ood_task, posterior, potential, backend, size) for ood_task in ood_tasks
    }
    metrics = {**previous, **_evaluation_metrics(config, task, posterior, predictions, ood_predictions)}
    metrics["evaluate_api_calls"] = meter.snapshot().to_dict()
    run_dir.write_metrics(metrics)
    run_dir.write_predictions(RunPredictions(predictions, _ensemble_probs(config, predictions), ood_predictions, task.name))
    readings = run_dir.read_meter() if run_dir.file("meter.json").is_file() else {}
    run_dir.write_meter({**readings, "evaluate": meter.snapshot().to_dict()})
    return metrics


@dataclass(frozen=True)
class Forecast:
    """Ensemble predictions of a finished run on new inputs (see :func:`predict_run`).

    Attributes
    ----------
    predictions : EnsemblePredictions
        Per-sample probabilities ``[S, N, C]`` (one-hot votes for likelihood-free runs);
        ``labels`` are the inputs' gold labels, :data:`~bayesprompt.data.task.UNLABELLED`
        where an input has none.
    probs : Tensor ``[N, C]``
        The ensemble's probabilities (the vote shares smoothed with the run's fitted
        ``vote_smoothing`` for likelihood-free runs): what the run's test metrics use.
    scores : dict of Tensor ``[N]``
        Uncertainty scores from the same probabilities (higher = more uncertain).
    label_names : tuple of str
        Class names of the run's task.
    api_calls : int
        Black-box calls the prediction used.
    """

    predictions: EnsemblePredictions
    probs: torch.Tensor
    scores: dict[str, torch.Tensor]
    label_names: tuple[str, ...]
    api_calls: int

    @property
    def labelled(self) -> torch.Tensor:
        """Boolean mask ``[N]`` of the inputs with a gold label."""
        return self.predictions.labels != UNLABELLED

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready record per input.

        ``predicted`` and ``predicted_name`` (the class of highest ensemble probability),
        ``probs`` (class name -> probability), one field per uncertainty score, and
        ``label``, the input's gold label, where it has one.
        """
        probs = self.probs.tolist()
        scores = {name: score.tolist() for name, score in self.scores.items()}
        gold = self.predictions.labels.tolist()
        rows = []
        for i, predicted in enumerate(self.probs.argmax(-1).tolist()):
            row: dict[str, Any] = {
                "predicted": predicted,
                "predicted_name": self.label_names[predicted],
                "probs": dict(zip(self.label_names, probs[i])),
                **{name: values[i] for name, values in scores.items()},
            }
            if gold[i] != UNLABELLED:
                row["label"] = gold[i]
            rows.append(row)
        return rows


def predict_run(directory: str | Path, inputs: Sequence[Example] | str | Path) -> Forecast:
    """Predict new inputs with the posterior of a finished run.

    Every posterior sample scores every input (metered, not budgeted: one call per distinct
    sample and chunk of inputs), and the ensemble average is formed as for the run's test metrics:
    probability average for score engines, smoothed vote shares for likelihood-free ones.

    Parameters
    ----------
    directory : str or Path
        A run directory written by :func:`fit` (needs ``config.json``, ``projection.npz``
        and ``posterior.{json,npz}``; ``metrics.json`` too for likelihood-free runs with
        ``vote_smoothing="dev"``).
    inputs : sequence of Example, or str or Path
        Inputs of the run's task, whose labels may be
        :data:`~bayesprompt.data.task.UNLABELLED`; or a JSON Lines file of them, read with
        ``load_jsonl(path, task, labelled=False)`` (``label`` optional on each row).

    Returns
    -------
    Forecast

    Examples
    --------
    >>> forecast = predict_run("runs/sst2-smc", "reviews.jsonl")                    # doctest: +SKIP
    >>> forecast.rows()[0]["predicted_name"], forecast.scores["mutual_information"][0]  # doctest: +SKIP
    """
    run_dir, config, task, posterior = _open_finished(directory)
    examples = load_jsonl(inputs, task, labelled=False) if isinstance(inputs, str | Path) else list(inputs)
    if not examples:
        raise ValueError("no inputs to predict")
    meter = Meter()
    backend = _backend(config, task, meter)
    batch, labels = _blind_batch(backend, examples)
    predicted = _predict(config, task, posterior, _run_potential(config, run_dir, backend, batch), batch)
    predictions = EnsemblePredictions(predicted.probs, predicted.weights, labels)
    smoothing = _smoothing(config)
    return Forecast(
        predictions, _ensemble_probs(config, predictions), predictions.uncertainty(smoothing), task.label_names, meter.calls
    )


def plot_run(directory: str | Path) -> list[Path]:
    """Draw the plots of a run's saved predictions into ``plots/`` (replacing its PNGs).

    * ``reliability_pav.png`` -- binary tasks: PAV reliability diagram;
    * ``reliability.png`` -- top-label reliability diagram;
    * ``risk_coverage.png`` -- risk against coverage for every uncertainty score;
    * ``uncertainty_<ood task>_<score>.png`` -- ID vs OOD histograms, per OOD task and score.

    The scores and probabilities are those of ``metrics.json``: for a label-only run, of
    the vote distribution smoothed by the run's ``vote_smoothing``. The PAV diagram alone
    draws labels from the per-sample predictions, i.e. from the unsmoothed votes.
    """
    from bayesprompt import plotting

    run_dir = RunDirectory.open(directory)
    run_dir.require_posterior()  # a killed fit is resumed, not evaluated
    saved = run_dir.read_predictions()
    smoothing = _smoothing(_finished_config(run_dir))  # the vote smoothing the saved metrics used
    plots = run_dir.plots_dir
    plots.mkdir(exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()
    test, probs = saved.test, saved.test_probs
    paths = []
    if probs.shape[-1] == 2:
        paths.append(plotting.plot_pav_reliability(test, plots / "reliability_pav.png"))
    paths.append(plotting.plot_reliability_diagram(probs, test.labels, plots / "reliability.png"))
    scores = test.uncertainty(smoothing)
    correct = (probs.argmax(-1) == test.labels).numpy()
    paths.append(plotting.plot_risk_coverage(scores, correct, plots / "risk_coverage.png"))
    for name, ood in saved.ood.items():
        ood_scores = ood.uncertainty(smoothing)
        for score in scores:
            target = plots / f"uncertainty_{name}_{score}.png"
            paths.append(plotting.plot_uncertainty_histogram(scores[score], ood_scores[score], target, name=score))
    return paths


#: Config fields that define the training examples a run is conditioned on; runs compared
#: by their evidence must agree on all of them (and on ``metrics["data"]`` where saved).
SAME_DATA_FIELDS = ("task", "k", "data_seed")


def compare_runs(
    directories: Sequence[str | Path], prior_probabilities: Sequence[float] | None = None
) -> dict[str, Any]:
    """Weigh finished runs of one task by their evidence and score their model average.

    Each run is a prompt model (its prior, temperature, prompt length, verbalizers,
    backend, ...) fitted to the same few-shot training examples. Tempered SMC estimates
    each model's log evidence ``log p(y_train | M)``; the posterior model probabilities
    follow (:func:`~bayesprompt.averaging.posterior_model_probabilities`), and the saved
    test (and OOD) predictions are mixed into the Bayesian model average
    (:func:`~bayesprompt.averaging.mix_ensembles`), scored with the metrics of
    :func:`evaluate_run`. No query is made.

    Parameters
    ----------
    directories : sequence of str or Path
        Two or more distinct finished runs (``metrics.json`` and ``predictions.npz``) of
        score engines that estimate the evidence (``smc`` run to beta = 1), on the same
        training examples (:data:`SAME_DATA_FIELDS`, and the fingerprints of the training
        and test examples that runs save in ``metrics["data"]``) and the same test set.
    prior_probabilities : sequence of float or None
        Positive prior weights of the models, normalised (default: uniform).

    Warns
    -----
    UserWarning
        When two runs fit the same prompt model and differ only in how they sampled it
        (engine seed, budget, particles, engine options): their weights then measure Monte
        Carlo error, not a model choice.

    Returns
    -------
    dict
        ``{"runs": [{"run", "engine", "log_evidence", "probability", "test"}, ...],
        "average": {"test", "test_split", "uncertainty", "selective", "ood"?}}``; OOD
        metrics cover the OOD tasks that every run has predictions for.

    Examples
    --------
    ::

        bayesprompt fit --task rte --out runs/rte
        bayesprompt fit --task rte --latent-temperature 1 --out runs/rte-tau
        bayesprompt compare runs/rte runs/rte-tau
    """
    if len(directories) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(directories)}")
    resolved = [Path(directory).resolve() for directory in directories]
    if len(set(resolved)) < len(resolved):
        raise ValueError(f"compare got the same run twice: {[str(d) for d in directories]}")
    runs = [_ComparedRun.open(directory) for directory in directories]
    for run in runs[1:]:
        run.check_same_data(runs[0])
    _warn_about_replicates(runs)
    from bayesprompt.averaging import mix_ensembles, posterior_model_probabilities

    probabilities = posterior_model_probabilities([run.log_evidence for run in runs], prior_probabilities)
    task = get_task(runs[0].config.task)
    common_ood = [name for name in runs[0].predictions.ood if all(name in run.predictions.ood for run in runs[1:])]
    average = _prediction_metrics(
        task,
        mix_ensembles([run.predictions.test for run in runs], probabilities),
        {name: mix_ensembles([run.predictions.ood[name] for run in runs], probabilities) for name in common_ood},
        smoothing=0.0,
    )
    rows = [
        {
            "run": str(run.directory.path),
            "engine": run.config.engine,
            "log_evidence": run.log_evidence,
            "probability": float(probability),
            "test": classification_report(run.predictions.test.mean(), run.predictions.test.labels, task.metric),
        }
        for run, probability in zip(runs, probabilities)
    ]
    return {"runs": rows, "average": average}


#: Settings that change how a run samples its posterior but not the prompt model (prior,
#: likelihood, data) whose evidence it estimates. Under ``prior_centre="dev"`` the seed and
#: budget also set the prior's centre, so they count as part of the model there.
_INFERENCE_ONLY_FIELDS = ("engine", "budget", "out", "data_dir", "seed", "num_particles", "test_size",
                         "vote_smoothing", "engine_options")


def _warn_about_replicates(runs: Sequence["_ComparedRun"]) -> None:
    """Warn when two compared runs fit the same model, so that their weights are not a model choice."""
    for index, run in enumerate(runs):
        mine = asdict(run.config)
        ignored = set(_INFERENCE_ONLY_FIELDS) - ({"seed", "budget"} if run.config.prior_centre == "dev" else set())
        for other in runs[:index]:
            theirs = asdict(other.config)
            differing = [name for name in mine if mine[name] != theirs[name]]
            if not set(differing) <= ignored:
                continue
            shown = ", ".join(name for name in differing if name != "out") or "their output folder"
            warnings.warn(
                f"{run.directory.path} and {other.directory.path} fit the same prompt model (they differ only in "
                f"{shown}); their probabilities reflect the Monte Carlo error of the evidence estimates, not a "
                "choice between models, and their average pools replicates",
                UserWarning,
                stacklevel=3,
            )


@dataclass(frozen=True)
class _ComparedRun:
    """A finished score-engine run with a finite log evidence, and its saved predictions."""

    directory: RunDirectory
    config: FitConfig
    log_evidence: float
    fingerprints: Mapping[str, str]
    predictions: RunPredictions

    @classmethod
    def open(cls, path: str | Path) -> "_ComparedRun":
        run_dir = RunDirectory.open(path)
        config = _saved_config(run_dir, run_dir.read_config())
        if config.likelihood_free:
            raise ValueError(f"{run_dir.path}: engine {config.engine!r} is likelihood-free and estimates no evidence")
        metrics = _previous_metrics(run_dir)
        summary = metrics.get("summary", {})
        log_z = summary.get("log_evidence") if isinstance(summary, Mapping) else None
        if isinstance(log_z, bool) or not isinstance(log_z, (int, float)) or not math.isfinite(log_z):
            raise ValueError(
                f"{run_dir.file('metrics.json')}: no finite summary.log_evidence (engine {config.engine!r}, "
                f"got {log_z!r}); the evidence comes from engines that estimate it, such as smc run to beta = 1"
            )
        data = metrics.get("data", {})
        return cls(run_dir, config, float(log_z), data if isinstance(data, Mapping) else {}, run_dir.read_predictions())

    def check_same_data(self, first: "_ComparedRun") -> None:
        """Raise unless this run saw ``first``'s training examples and predicted its test (and OOD) sets."""
        here, there = self.directory.path, first.directory.path
        for name in SAME_DATA_FIELDS:
            mine, theirs = getattr(self.config, name), getattr(first.config, name)
            if mine != theirs:
                raise ValueError(f"{here}: {name} = {mine!r} but {there} has {theirs!r}; "
                                 "evidences are comparable only on the same training examples")
        for key, what in (("train_sha256", "training examples"), ("test_sha256", "test examples")):
            if key in self.fingerprints and key in first.fingerprints and self.fingerprints[key] != first.fingerprints[key]:
                raise ValueError(f"{here}: its {what} differ from those of {there} (metrics.json data.{key})")
        pairs = [("test", self.predictions.test, first.predictions.test)]
        pairs += [(f"OOD {name}", ood, first.predictions.ood[name])
                  for name, ood in self.predictions.ood.items() if name in first.predictions.ood]
        for what, mine, theirs in pairs:
            if mine.probs.shape[1:] != theirs.probs.shape[1:] or not torch.equal(mine.labels, theirs.labels):
                raise ValueError(f"{here}: its {what} predictions cover other examples than those of {there} "
                                 f"(evaluate both with the same --ood and --ood-size)")


# ---------------------------------------------------------------------------- internals: setup
def _config_dict(config: FitConfig) -> dict[str, Any]:
    return asdict(config)


def _saved_config(run_dir: RunDirectory, saved: Mapping[str, Any], **overrides: Any) -> FitConfig:
    try:
        return config_from_dict(saved, **overrides)
    except ValueError as err:
        raise RunDirectoryError(f"{run_dir.file('config.json')}: {err}") from err


def _setup(config: FitConfig, task: Task, projection: RandomProjection | None) -> _Setup:
    train, dev, test = _load_examples(task, config)
    meter = Meter(None if config.budget is None else config.budget - config.dev_reserve)
    backend = _backend(config, task, meter)
    if projection is None:
        projection = RandomProjection.from_embeddings(
            backend.embedding_table(),
            intrinsic_dim=config.intrinsic_dim,
            n_tokens=config.n_tokens,
            seed=config.projection_seed,
        )
    _check_projection(config, projection)
    train_batch, dev_batch = backend.encode(train), backend.encode(dev)
    potential = _potential(config, backend, projection, train_batch)
    fingerprints = {"train_sha256": examples_fingerprint(train), "test_sha256": examples_fingerprint(test)}
    return _Setup(config, task, meter, backend, projection, potential, train_batch, dev_batch, test,
                  fingerprints=fingerprints)


def _previous_metrics(run_dir: RunDirectory) -> dict[str, Any]:
    return run_dir.read_metrics() if run_dir.file("metrics.json").is_file() else {}


def _open_finished(directory: str | Path) -> tuple[RunDirectory, FitConfig, Task, Posterior]:
    """A finished run: its directory, config (see :func:`_finished_config`), task and posterior."""
    run_dir = RunDirectory.open(directory)
    config = _finished_config(run_dir)
    return run_dir, config, get_task(config.task), run_dir.read_posterior()


def _run_potential(config: FitConfig, run_dir: RunDirectory, backend: PromptBlackBox, batch: EncodedBatch) -> Potential:
    """The run's model on ``backend`` and ``batch`` with its saved projection, latent sites known."""
    potential = _potential(config, backend, run_dir.read_projection(), batch)
    potential.discover_sites()
    return potential


def _finished_config(run_dir: RunDirectory) -> FitConfig:
    """The config of a finished run, with the vote smoothing its fit chose (likelihood-free, ``"dev"``)."""
    config = _saved_config(run_dir, run_dir.read_config(), out=str(run_dir.path))
    if config.likelihood_free and config.vote_smoothing == "dev":
        previous = _previous_metrics(run_dir)
        if "vote_smoothing" not in previous:
            raise RunDirectoryError(f"{run_dir.file('metrics.json')}: no fitted 'vote_smoothing' (fit did not finish)")
        config = dataclasses.replace(config, vote_smoothing=float(previous["vote_smoothing"]))
    return config


def _check_projection(config: FitConfig, projection: RandomProjection) -> None:
    expected = (config.intrinsic_dim, config.n_tokens, config.projection_seed)
    found = (projection.intrinsic_dim, projection.n_tokens, projection.seed)
    if expected != found:
        raise RunDirectoryError(
            f"projection.npz has (intrinsic_dim, n_tokens, seed) = {found}, the config {expected}"
        )


def _load_examples(task: Task, config: FitConfig) -> tuple[list[Example], list[Example], list[Example]]:
    pool = load_split(task, "train", config.data_dir)
    train, dev = few_shot_split(pool, task.num_classes, k=config.k, dev_k=config.dev_k, seed=config.data_seed)
    return train, dev, _test_examples(task, config)


def _test_examples(task: Task, config: FitConfig) -> list[Example]:
    test = load_split(task, "test", config.data_dir, allow_proxy=True)
    if config.test_size is not None:
        test = balanced_subsample(test, task.num_classes, config.test_size, seed=config.data_seed)
    return test


def _backend(config: FitConfig, task: Task, meter: Meter) -> PromptBlackBox:
    kwargs: dict[str, Any] = {"meter": meter, "precision": config.precision}
    if config.backend == "encoder":
        kwargs["model_path"] = config.model
    elif config.model is None:
        raise ValueError("backend 'mlm' needs a model: pass --model with a local path or hub id (e.g. roberta-large)")
    else:
        kwargs["model_name_or_path"] = config.model
    return load_backend(config.backend, task, **kwargs)


def _potential(
    config: FitConfig,
    backend: PromptBlackBox,
    projection: RandomProjection,
    batch: EncodedBatch,
    centre: DevCentre | None = None,
) -> Potential:
    prior = None if centre is None else centre.prior(config.prior_scale)
    if config.likelihood_free:
        model = LikelihoodFreePromptModel(LabelOnly(backend), projection, prior=prior, prior_scale=config.prior_scale)
    else:
        model = PromptModel(backend, projection, prior=prior, prior_scale=config.prior_scale,
                            temperature_prior=lognormal_temperature_prior(config.temperature_prior_scale))
    return Potential(model, (batch,), meter=backend.meter)


def _dev_centre(setup: _Setup, run_dir: RunDirectory | None, codec: StateCodec | None, progress: bool) -> DevCentre:
    """The dev stage of ``prior_centre="dev"``: CMA-ES on the dev log-likelihood.

    With a run directory, its steps are checkpointed in ``dev_centre/`` (a resumed stage
    continues from the last one, a finished one replays its final state without a query,
    so the meter reads as it ended) and the centre is saved in ``prior_centre.npz``.
    """
    config = setup.config
    runner = None
    if run_dir is not None:
        stage, codec = RunDirectory(run_dir.file(DEV_CENTRE_DIR)), codec if codec is not None else StateCodec()
        start = stage.read_checkpoint(codec) if stage.has_checkpoint() else None
        digest = config_digest({"stage": DEV_CENTRE_DIR, "config": run_dir.read_config()})

        def runner(engine: Engine, potential: Potential) -> Posterior:
            return run_with_checkpoints(engine, potential, stage, seed=config.seed, meter=setup.meter,
                                        config_sha256=digest, start=start, codec=codec, progress=progress)[0]

    model = PromptModel(setup.backend, setup.projection, prior_scale=config.prior_scale)
    centre = fit_dev_centre(model, setup.dev, config.dev_centre_budget, meter=setup.meter, popsize=DEV_CENTRE_POPSIZE,
                            seed=config.seed, progress=progress, runner=runner)
    if run_dir is not None:
        run_dir.write_prior_centre(centre)
    return centre


def _centred(setup: _Setup, centre: DevCentre) -> _Setup:
    """``setup`` with the training potential's prior centred on ``centre``."""
    potential = _potential(setup.config, setup.backend, setup.projection, setup.train, centre)
    return dataclasses.replace(setup, potential=potential, centre=centre)


# ---------------------------------------------------------------------------- internals: inference
def _infer(
    setup: _Setup,
    engine: Engine,
    run_dir: RunDirectory | None,
    codec: StateCodec | None,
    checkpoint: Checkpoint | None,
    progress: bool,
) -> tuple[Posterior, float]:
    """Run (or continue) inference, checkpointing into ``run_dir``; returns the posterior and seconds.

    A continued run keeps its checkpoint's config digest: :func:`resume` checked it against
    the saved ``config.json``, whose ``out`` may name another spelling or place of the run.
    """
    if checkpoint is not None:
        digest = checkpoint.config_sha256
    else:  # the saved config.json: a run resumed under another spelling of its directory starts the engine here
        digest = config_digest(run_dir.read_config() if run_dir is not None else _config_dict(setup.config))
    return run_with_checkpoints(engine, setup.potential, run_dir, seed=setup.config.seed, meter=setup.meter,
                                config_sha256=digest, start=checkpoint, codec=codec, progress=progress)


def _complete(
    setup: _Setup,
    engine: Engine,
    run_dir: RunDirectory | None,
    codec: StateCodec | None,
    checkpoint: Checkpoint | None,
    progress: bool,
) -> FitResult:
    """Inference, test predictions, metrics and (with a run directory) all result files."""
    posterior, seconds = _infer(setup, engine, run_dir, codec, checkpoint, progress)
    meter, config, task = setup.meter, setup.config, setup.task
    meter.budget = config.budget  # releases the calls kept back for the dev votes
    if config.likelihood_free and config.vote_smoothing == "dev":
        dev_potential = setup.potential.with_args(setup.dev)
        dev_votes = predict_votes(posterior, dev_potential, setup.dev, task.num_classes, chunk_size=len(setup.dev))
        config = dataclasses.replace(config, vote_smoothing=fit_vote_smoothing(dev_votes))
    inference_calls = meter.snapshot().to_dict()
    meter.budget = None  # evaluation is metered but not budgeted
    test_batch = setup.backend.encode(setup.test)
    predictions = _predict(config, task, posterior, setup.potential, test_batch)
    metrics = {
        "task": task.name,
        "engine": engine.name,
        "status": posterior.status,
        "inference_api_calls": inference_calls,
        "evaluation_api_calls": meter.calls - inference_calls["calls"],
        "inference_seconds": seconds,
        "num_samples": posterior.num_samples,
        "posterior_ess": posterior.ess,
        "summary": posterior.summary,
        "data": dict(setup.fingerprints),
        **_evaluation_metrics(config, task, posterior, predictions, {}),
    }
    if config.likelihood_free:
        metrics["vote_smoothing"] = config.vote_smoothing
    if setup.centre is not None:
        metrics["prior_centre"] = {
            "api_calls": setup.centre.api_calls,
            "dev_log_likelihood": setup.centre.dev_log_likelihood,
            "norm": setup.centre.norm,
            "iterations": setup.centre.iterations,
        }
    result = FitResult(config, posterior, predictions, metrics, setup.projection, run_dir.path if run_dir else None)
    if run_dir is not None:
        readings = {"inference": inference_calls, "evaluation": meter.snapshot().to_dict()}
        _write_results(run_dir, result, readings)
    return result


def _write_results(run_dir: RunDirectory, result: FitResult, readings: Mapping[str, Any]) -> None:
    run_dir.write_posterior(result.posterior)
    run_dir.write_diagnostics(result.posterior.diagnostics)
    run_dir.write_meter(readings)
    run_dir.write_metrics(result.metrics)
    probs = _ensemble_probs(result.config, result.predictions)
    run_dir.write_predictions(RunPredictions(result.predictions, probs, {}, result.config.task))
    plot_run(run_dir.path)


# ---------------------------------------------------------------------------- internals: evaluation
def _predict(
    config: FitConfig, task: Task, posterior: Posterior, potential: Potential, batch: EncodedBatch
) -> EnsemblePredictions:
    """Per-sample predictions on ``batch``: class probabilities, or votes for likelihood-free runs."""
    if config.likelihood_free:
        return predict_votes(posterior, potential.with_args(batch), batch, task.num_classes)
    return predict(posterior, potential.with_args(batch), batch)


def _predict_ood(
    config: FitConfig,
    task: Task,
    ood_task: Task,
    posterior: Posterior,
    potential: Potential,
    backend: PromptBlackBox,
    size: int | None,
) -> EnsemblePredictions:
    """Predictions on ``ood_task``'s test split, rendered with its own template.

    The model observes dummy labels (class 0: the OOD labels need not be classes of the
    run's task); the returned predictions carry the OOD task's own labels.
    """
    examples = load_split(ood_task, "test", config.data_dir, allow_proxy=True)
    if size is not None:
        examples = balanced_subsample(examples, ood_task.num_classes, size, seed=config.data_seed)
    return _predict_unseen(config, task, posterior, potential, backend, examples, template=ood_task)


def _predict_unseen(
    config: FitConfig,
    task: Task,
    posterior: Posterior,
    potential: Potential,
    backend: PromptBlackBox,
    examples: Sequence[Example],
    template: Task | None = None,
) -> EnsemblePredictions:
    """Predictions on inputs whose labels the model must not see (see :func:`_blind_batch`);
    they carry the inputs' own labels."""
    batch, labels = _blind_batch(backend, examples, template)
    predictions = _predict(config, task, posterior, potential, batch)
    return EnsemblePredictions(predictions.probs, predictions.weights, labels)


def _blind_batch(
    backend: PromptBlackBox, examples: Sequence[Example], template: Task | None = None
) -> tuple[EncodedBatch, torch.Tensor]:
    """Encode OOD or unlabelled inputs for prediction: ``(batch, their labels)``.

    The model observes class 0 for every input (their own labels may not be classes of
    the run's task, or be ``UNLABELLED``), which changes no predicted probability.
    """
    labels = torch.tensor([example.label for example in examples], dtype=torch.long)
    return backend.encode([dataclasses.replace(example, label=0) for example in examples], template=template), labels


def _smoothing(config: FitConfig) -> float:
    """The Dirichlet smoothing of the ensemble average: the votes' for likelihood-free runs, else 0."""
    return float(config.vote_smoothing) if config.likelihood_free else 0.0


def _ensemble_probs(config: FitConfig, predictions: EnsemblePredictions) -> torch.Tensor:
    """The ensemble's probabilities ``[N, C]`` (smoothed vote shares for likelihood-free runs)."""
    return predictions.mean(_smoothing(config))


def _evaluation_metrics(
    config: FitConfig,
    task: Task,
    posterior: Posterior,
    predictions: EnsemblePredictions,
    ood: Mapping[str, EnsemblePredictions],
) -> dict[str, Any]:
    """Test classification, uncertainty, selective-prediction, OOD and ArviZ metrics."""
    from bayesprompt.arviz import summarize

    metrics = _prediction_metrics(task, predictions, ood, _smoothing(config))
    metrics["arviz"] = summarize(posterior)
    return metrics


def _prediction_metrics(
    task: Task, predictions: EnsemblePredictions, ood: Mapping[str, EnsemblePredictions], smoothing: float
) -> dict[str, Any]:
    """Test classification, uncertainty, selective-prediction and OOD metrics of an ensemble."""
    probs = predictions.mean(smoothing)
    scores = predictions.uncertainty(smoothing)
    metrics: dict[str, Any] = {
        "test": classification_report(probs, predictions.labels, task.metric),
        "test_split": "proxy_test" if task.name == "dbpedia" else "test",
        "uncertainty": {name: float(value.mean()) for name, value in scores.items()},
        "selective": selective_prediction_report(probs, predictions.labels, scores=scores),
    }
    if ood:
        correct = (probs.argmax(-1) == predictions.labels).numpy()
        metrics["ood"] = {name: _ood_metrics(scores, correct, other.uncertainty(smoothing)) for name, other in ood.items()}
    return metrics


def _ood_metrics(
    in_scores: Mapping[str, torch.Tensor], correct: Any, ood_scores: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """AUROC and FPR95 of OOD detection, and the risk-rejection AURC on the pooled set.

    ``"{score}/risk_rejection_aurc"``: the in-distribution and OOD examples are pooled,
    OOD predictions count as errors, and the least uncertain fraction is kept
    (:func:`~bayesprompt.metrics.aurc`, lower is better).
    """
    report: dict[str, Any] = dict(ood_report(dict(in_scores), dict(ood_scores)))
    for name in in_scores:
        pooled = torch.cat([in_scores[name], ood_scores[name]]).numpy()
        pooled_correct = list(correct) + [False] * len(ood_scores[name])
        report[f"{name}/risk_rejection_aurc"] = aurc(-pooled, pooled_correct)
    return report
