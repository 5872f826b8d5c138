"""The benchmark's methods: one registry entry per row of the results table.

Every method is fitted on the same black box (same model, precision and
:class:`~bayesprompt.lm.meter.Meter`) from a :class:`MethodContext`, and returns a
:class:`MethodOutcome` whose ``predictor`` turns any encoded batch (test set, OOD set)
into :class:`~bayesprompt.predict.EnsemblePredictions`. Three kinds of method exist:

* **engine** methods build a bayesprompt engine (or a peer's algorithm implemented as
  one) and run it under the cell's API budget; their posterior is evaluated with
  :func:`~bayesprompt.predict.predict` (score-based) or
  :func:`~bayesprompt.predict.predict_votes` (likelihood-free engines, which only ever see
  predicted labels through :class:`~bayesprompt.lm.LabelOnly`);
* **zero-shot**: a zero-length prompt (no soft prompt at all; ``z = 0`` through the
  projection would put ten zero vectors in the input, which is not neutral);
* **white-box**: gradient tuning of the prompt through the model
  (:mod:`benchmarks.whitebox`), the full-access reference; it has no API budget.

Engines are imported lazily inside the builders, and each :class:`MethodSpec` lists the
modules it needs, so a method whose engine is not importable (yet) is reported as
``unavailable`` by :func:`availability` instead of crashing the suite.

Examples
--------
>>> registry = default_registry()
>>> registry["smc"].budget, registry["bbt-8000"].budget, registry["zero-shot"].budget
('common', 8000, 'none')
>>> effective_budget(registry["bbt-8000"], 2000), effective_budget(registry["smc"], 2000)
(8000, 2000)
>>> availability(MethodSpec("x", "X", "ours", "needs a missing engine", fit_zero_shot, requires=("no_such_module:Engine",)))
(False, "cannot import no_such_module: No module named 'no_such_module'")
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bayesprompt.data.task import Task
from bayesprompt.inference.base import Engine, InitialBudgetError, run
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.lm import LabelOnly, Meter
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel, PromptModel, lognormal_temperature_prior
from bayesprompt.inference.selection import dev_accuracy_score  # BBT's dev selection: accuracy, ties broken by likelihood
from bayesprompt.predict import EnsemblePredictions, fit_vote_smoothing, predict, predict_votes
from bayesprompt.runs import Checkpoint, RunDirectory, StateCodec, atomic_write_text, config_digest, run_with_checkpoints

__all__ = [
    "BudgetPolicy",
    "SHARED_REQUIREMENTS",
    "FIT_SETTINGS",
    "fit_parts",
    "MethodContext",
    "MethodOutcome",
    "MethodSpec",
    "Predictor",
    "availability",
    "default_registry",
    "effective_budget",
    "fit_bucket_in_effect",
    "run_engine",
]

#: ``"common"``: the cell's budget; ``"none"``: not budgeted (zero-shot, white-box);
#: an int: a fixed budget whatever the cell's (BBT at 8,000 calls).
BudgetPolicy = str | int

#: Maps an encoded batch to per-sample class probabilities.
Predictor = Callable[[EncodedBatch], EnsemblePredictions]


@dataclass
class MethodContext:
    """Everything a method may use, shared by all methods of a cell.

    Attributes
    ----------
    task : Task
        The task.
    backend : PromptBlackBox
        The black box; ``backend.meter`` is the cell's meter (budget already set).
    projection : RandomProjection
        The fixed random projection ``z -> prompt`` of the engine methods.
    train, dev : EncodedBatch
        Few-shot training and dev batches (``train`` holds the dev examples too for a
        method with ``conditions_on_dev``).
    budget : int or None
        API-call budget of this method in this cell (``None``: unbudgeted).
    seed : int
        Engine seed.
    num_particles : int
        Population size of particle / ensemble engines.
    prior_scale : float
        Scale of the ``N(0, s^2 I)`` prior on z.
    max_prediction_samples : int
        Posterior samples used for prediction (more are thinned or resampled).
    vote_smoothing : float
        Dirichlet smoothing of the vote distribution of likelihood-free methods.
    options : dict
        Per-method keyword overrides (from the benchmark configuration): engine
        constructor arguments, or :class:`benchmarks.whitebox.WhiteBoxConfig` fields for
        the white-box method.
    progress : bool
        Show engine progress bars.
    run_directory : Path or None
        Where a single-engine method (:func:`fit_engine`) checkpoints its engine state after
        every step, and continues from when a checkpoint is already there
        (:func:`run_engine`); a method chaining engine runs checkpoints each in a sub-folder
        (:class:`FitStages`); white-box tuning keeps its training state there too
        (:func:`fit_whitebox`); ``None``: no step checkpoints.
    provenance : dict
        What the fit runs under beside its options (``bf16_arithmetic``, ``code_revision``),
        written with the step checkpoints at every start and resume, so that a fit
        continued elsewhere shows what each part ran under (:attr:`MethodOutcome.resumed_from`).
    """

    task: Task
    backend: PromptBlackBox
    projection: RandomProjection
    train: EncodedBatch
    dev: EncodedBatch
    budget: int | None
    seed: int
    num_particles: int = 32
    prior_scale: float = 1.0
    max_prediction_samples: int = 64
    vote_smoothing: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    run_directory: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def meter(self) -> Meter:
        """The cell's meter (the backend's)."""
        return self.backend.meter


@dataclass
class MethodOutcome:
    """What fitting a method gives.

    Attributes
    ----------
    predictor : callable
        ``EncodedBatch -> EnsemblePredictions`` (metered on the cell's meter).
    status : str
        Why the method stopped (an engine :class:`~bayesprompt.inference.Status` value,
        or ``"finished"``).
    num_samples : int
        Samples of the fitted posterior (1 for point estimates).
    prediction_samples : int
        Samples actually used for prediction (see ``max_prediction_samples``).
    ess : float or None
        Kish ESS of the posterior weights.
    likelihood_free : bool
        Whether the predictor gives votes (one-hot per sample).
    summary : dict
        Engine summary scalars (JSON-serialisable).
    vote_smoothing : float or None
        Dirichlet smoothing of the votes fitted on the dev split (label-only methods with
        the ``vote_smoothing="dev"`` option); ``None``: the configuration's fixed value.
    fitted : Posterior, Tensor or None
        What ``predictor`` predicts with: the (thinned) prediction posterior of an engine
        method, or fixed prompts ``[S, n, d]``. :mod:`benchmarks.checkpoint` saves it so
        that a cell killed during evaluation need not be fitted again.
    resumed_from : dict or None
        ``{"calls", "iteration", "fit_seconds"}`` of the step checkpoint the fit continued
        from (:func:`run_engine`; for a fit of several engine runs, :class:`FitStages`, the
        latest calls and the steps and seconds of all its stages' checkpoints), and
        ``"fit_parts"``: what each earlier part of the fit ran under (the part from its
        start, then one per earlier resume), each
        ``{"fit_length_bucket", **provenance}`` (absent for step checkpoints older than
        :data:`FIT_SETTINGS`; a part from before provenance was kept has only the bucket);
        ``None`` for a fit run from its start.
    """

    predictor: Predictor
    status: str
    num_samples: int
    prediction_samples: int
    ess: float | None
    likelihood_free: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    vote_smoothing: float | None = None
    fitted: Posterior | torch.Tensor | None = None
    resumed_from: dict[str, Any] | None = None


@dataclass(frozen=True)
class MethodSpec:
    """One method of the benchmark.

    Parameters
    ----------
    name : str
        Registry key (used on the command line and in cache keys).
    label : str
        Display name in the table.
    family : str
        ``"reference"`` (zero-shot, white-box), ``"peer"`` (BBT and the paper's
        baselines) or ``"ours"``.
    description : str
        One line for the README / ``--list-methods``.
    fit : callable
        ``MethodContext -> MethodOutcome``.
    budget : str or int
        See :data:`BudgetPolicy`.
    requires : tuple of str
        ``"module:attribute"`` entries that must import for the method to run.
    budget_free : bool
        The method never reads its budget: it only stops for its own reasons, or when
        the meter refuses a query. A run that stopped for its own reasons after ``c``
        calls is therefore the same run under every budget of at least ``c`` calls,
        and the suite reuses its record for those budgets (see
        :func:`benchmarks.run.reusable_record`). Leave it ``False`` for a method that
        sizes its work by the budget (iterations, budget shares).
    conditions_on_dev : bool
        The likelihood sees the dev split too: ``MethodContext.train`` holds train and
        dev examples (each call scores both). A Bayesian method has no use for a
        held-out split of its own, while BBT and white-box tuning spend the dev split on
        selection and early stopping; this puts the same labels into the posterior.
    """

    name: str
    label: str
    family: str
    description: str
    fit: Callable[[MethodContext], MethodOutcome]
    budget: BudgetPolicy = "common"
    requires: tuple[str, ...] = ()
    budget_free: bool = False
    conditions_on_dev: bool = False

    def __post_init__(self) -> None:
        if self.budget not in ("common", "none") and not (isinstance(self.budget, int) and self.budget > 0):
            raise ValueError(f"method {self.name!r}: budget must be 'common', 'none' or a positive int, got {self.budget!r}")
        if self.family not in ("reference", "peer", "ours"):
            raise ValueError(f"method {self.name!r}: family must be 'reference', 'peer' or 'ours', got {self.family!r}")


def effective_budget(spec: MethodSpec, common: int | None) -> int | None:
    """The API budget ``spec`` runs under in a cell whose common budget is ``common``."""
    if spec.budget == "common":
        return common
    if spec.budget == "none":
        return None
    return int(spec.budget)


def availability(spec: MethodSpec) -> tuple[bool, str]:
    """``(True, "")`` if every module in ``spec.requires`` imports, else ``(False, reason)``."""
    for requirement in spec.requires:
        module_name, _, attribute = requirement.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - any import failure makes the method unavailable
            return False, f"cannot import {module_name}: {err}"
        if attribute and not hasattr(module, attribute):
            return False, f"{module_name} has no {attribute!r}"
    return True, ""


# ---------------------------------------------------------------------- shared pieces


#: Method options that shape the model rather than the engine (see :func:`make_potential`).
MODEL_OPTIONS = ("temperature_prior_scale",)


def make_potential(ctx: MethodContext, likelihood_free: bool) -> Potential:
    """The training potential of an engine method (score-based or label-only model).

    The option ``temperature_prior_scale`` ``s`` adds a latent likelihood temperature
    ``~ LogNormal(0, s)`` to the score model (see :class:`~bayesprompt.models.PromptModel`).
    """
    scale = ctx.options.get("temperature_prior_scale")
    if scale is not None and likelihood_free:
        raise ValueError("option temperature_prior_scale needs a score-based method: a label-only model has no likelihood to temper")
    if likelihood_free:
        model = LikelihoodFreePromptModel(LabelOnly(ctx.backend), ctx.projection, prior_scale=ctx.prior_scale)
    else:
        model = PromptModel(ctx.backend, ctx.projection, prior_scale=ctx.prior_scale,
                            temperature_prior=lognormal_temperature_prior(scale))
    return Potential(model, (ctx.train,), meter=ctx.meter)


def posterior_outcome(
    ctx: MethodContext, posterior: Posterior, potential: Potential, likelihood_free: bool, fit_smoothing: bool = False
) -> MethodOutcome:
    """Wrap a fitted posterior: thin it for prediction and build its predictor.

    With ``fit_smoothing`` (label-only methods) the Dirichlet smoothing of the votes is
    fitted on the dev split (:func:`~bayesprompt.predict.fit_vote_smoothing`), one API
    call per prediction sample, charged to the cell's meter.
    """
    used = posterior.subsample(ctx.max_prediction_samples, seed=ctx.seed)
    num_classes = ctx.task.num_classes
    smoothing = None
    if fit_smoothing:
        dev_votes = predict_votes(used, potential.with_args(ctx.dev), ctx.dev, num_classes, chunk_size=len(ctx.dev))
        smoothing = fit_vote_smoothing(dev_votes)
    return MethodOutcome(
        predictor=posterior_predictor(ctx, used, potential, likelihood_free),
        status=posterior.status,
        num_samples=posterior.num_samples,
        prediction_samples=used.num_samples,
        ess=posterior.ess,
        likelihood_free=likelihood_free,
        summary={**_scalars(posterior.summary), **_temperature_summary(posterior)},
        vote_smoothing=smoothing,
        fitted=used,
    )


def posterior_predictor(ctx: MethodContext, used: Posterior, potential: Potential, likelihood_free: bool) -> Predictor:
    """Ensemble predictions of the samples of ``used``: scores, or votes if ``likelihood_free``."""
    num_classes = ctx.task.num_classes

    def predictor(batch: EncodedBatch) -> EnsemblePredictions:
        if likelihood_free:
            return predict_votes(used, potential.with_args(batch), batch, num_classes)
        return predict(used, potential.with_args(batch), batch)

    return predictor


def prompt_predictor(backend: PromptBlackBox, prompts: torch.Tensor) -> Predictor:
    """Equally weighted predictions of fixed prompts ``[S, n, d]`` (``n`` may be 0)."""
    prompts = prompts.detach()

    def predictor(batch: EncodedBatch) -> EnsemblePredictions:
        probs = backend.score(prompts, batch).softmax(-1)
        size = prompts.shape[0]
        return EnsemblePredictions(probs, torch.full((size,), 1.0 / size), batch.labels)

    return predictor


def dev_vote_reserve(options: Mapping[str, Any], num_particles: int, max_prediction_samples: int) -> int:
    """Calls a method keeps back from its engine's budget for fitting the vote smoothing on dev.

    One per prediction sample for a label-only method with the option
    ``vote_smoothing="dev"`` (``num_particles`` from ``options`` if set there), else 0.

    Examples
    --------
    >>> dev_vote_reserve({"vote_smoothing": "dev"}, num_particles=32, max_prediction_samples=64)
    32
    >>> dev_vote_reserve({}, num_particles=32, max_prediction_samples=64)
    0
    """
    if options.get("vote_smoothing") != "dev":
        return 0
    return min(int(options.get("num_particles", num_particles)), max_prediction_samples)


def fit_engine(
    ctx: MethodContext,
    make_engine: Callable[[MethodContext, Potential], Engine],
    likelihood_free: bool = False,
) -> MethodOutcome:
    """Build the potential, run the engine under the cell's meter, wrap the posterior.

    A label-only method with the option ``vote_smoothing="dev"`` keeps back one call per
    prediction sample from the engine's budget, to fit the vote smoothing on the dev split.
    """
    options = dict(ctx.options)
    smoothing = options.pop("vote_smoothing", None)
    if smoothing not in (None, "dev") or (smoothing == "dev" and not likelihood_free):
        raise ValueError(f"option vote_smoothing must be 'dev' on a label-only method, got {smoothing!r}")
    reserve = 0
    if ctx.budget is not None:
        reserve = dev_vote_reserve(ctx.options, ctx.num_particles, ctx.max_prediction_samples)
        if reserve >= ctx.budget:
            raise ValueError(f"budget {ctx.budget} leaves nothing after the {reserve} dev calls of vote_smoothing='dev'")
    ctx = dataclasses.replace(ctx, options=options)
    potential = make_potential(ctx, likelihood_free)
    engine = make_engine(ctx, potential)
    ctx.meter.budget = None if ctx.meter.budget is None else ctx.meter.budget - reserve
    try:
        posterior, resumed_from = run_engine(ctx, engine, potential)
    finally:
        ctx.meter.budget = None if ctx.meter.budget is None else ctx.meter.budget + reserve
    outcome = posterior_outcome(ctx, posterior, potential, likelihood_free, fit_smoothing=smoothing == "dev")
    outcome.resumed_from = resumed_from
    return outcome


#: In a fit's step-checkpoint folder: the length bucket and provenance of each part of the fit
#: (``{"parts": [...]}``, one part per start or resume).
FIT_SETTINGS = "fit_settings.json"


def fit_bucket_in_effect(length_bucket: int | None, ctx: MethodContext) -> int | None:
    """``length_bucket`` if the fit's training or dev batch was larger (so sorted and chunked),
    else ``None`` (each scored as one batch).

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> fit_bucket_in_effect(16, NS(train=range(224), dev=range(224)))
    16
    >>> fit_bucket_in_effect(16, NS(train=range(16), dev=range(16))) is None
    True
    """
    return length_bucket if length_bucket is not None and max(len(ctx.train), len(ctx.dev)) > length_bucket else None


def run_engine(ctx: MethodContext, engine: Engine, potential: Potential) -> tuple[Posterior, dict[str, Any] | None]:
    """Run ``engine`` under the cell's meter, with step checkpoints in ``ctx.run_directory`` if set.

    A checkpoint already in that folder (a fit killed mid-way) is continued from: the meter
    is restored and the engine goes on from the saved state, so the posterior is the one
    an uninterrupted fit gives (:func:`bayesprompt.runs.run_with_checkpoints`).

    Returns
    -------
    posterior : Posterior
        The engine's posterior.
    resumed_from : dict or None
        See :attr:`MethodOutcome.resumed_from`.
    """
    if ctx.run_directory is None:
        return run(engine, potential, seed=ctx.seed, meter=ctx.meter, progress=ctx.progress), None
    run_dir, codec = RunDirectory(ctx.run_directory), StateCodec()
    start = run_dir.read_checkpoint(codec) if run_dir.has_checkpoint() else None
    earlier = record_fit_part(ctx, resuming=start is not None)
    posterior = _run_checkpointed(ctx, engine, potential, run_dir, codec, start)
    return posterior, _resumed_from([] if start is None else [start], earlier)


def _run_checkpointed(ctx: MethodContext, engine: Engine, potential: Potential, run_dir: RunDirectory,
                      codec: StateCodec, start: Checkpoint | None, stage: str | None = None) -> Posterior:
    """:func:`run_with_checkpoints` under the cell's meter and seed; a stage's name is part of
    its checkpoints' identity (a single-engine fit's identity has none, as before stages)."""
    identity = {"engine": engine.name, "seed": ctx.seed, "budget": ctx.meter.budget}
    if stage is not None:
        identity["stage"] = stage
    posterior, _ = run_with_checkpoints(engine, potential, run_dir, seed=ctx.seed, meter=ctx.meter,
                                        config_sha256=config_digest(identity), start=start, codec=codec,
                                        progress=ctx.progress)
    return posterior


def _resumed_from(starts: list[Checkpoint], earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:attr:`MethodOutcome.resumed_from` of a fit continued from the checkpoints ``starts`` (one per
    engine run that had one: the calls are the latest, steps and seconds add up)."""
    if not starts:
        return None
    resumed_from = {"calls": max(int(start.meter["calls"]) for start in starts),
                    "iteration": sum(start.iteration for start in starts),
                    "fit_seconds": sum(start.elapsed_seconds for start in starts)}
    if earlier:  # unknown for step checkpoints older than FIT_SETTINGS
        resumed_from["fit_parts"] = earlier
    return resumed_from


class FitStages:
    """The engine runs of a fit that chains several, each checkpointed in ``<run_directory>/<stage>/``.

    ``smc-devprior`` (the dev-centre CMA-ES, then tempered SMC) and ``smc-average`` (plain,
    then tempered SMC) run their engines through :meth:`run`. A fit killed in a later stage
    replays each finished one from its last checkpoint (its final state: no query, the
    meter as it ended) and continues the interrupted one from its last step, so the fit
    equals an uninterrupted one. Without a ``run_directory`` the stages just run.

    Parameters
    ----------
    ctx : MethodContext
        The cell's context.
    stages : sequence of str
        Names of the stages (folder names), in the order they run.

    Attributes
    ----------
    resumed_from : dict or None
        :attr:`MethodOutcome.resumed_from` of the fit: the stages' checkpoints found at the start.
    """

    def __init__(self, ctx: MethodContext, stages: tuple[str, ...]) -> None:
        self.ctx = ctx
        self._codec = StateCodec()
        self._starts: dict[str, Checkpoint] = {}
        self.resumed_from: dict[str, Any] | None = None
        if ctx.run_directory is None:
            return
        for stage in stages:
            run_dir = RunDirectory(Path(ctx.run_directory) / stage)
            if run_dir.has_checkpoint():
                self._starts[stage] = run_dir.read_checkpoint(self._codec)
        earlier = record_fit_part(ctx, resuming=bool(self._starts))
        self.resumed_from = _resumed_from(list(self._starts.values()), earlier)

    def run(self, stage: str, engine: Engine, potential: Potential) -> Posterior:
        """Run (or replay, or continue) ``engine`` as the stage ``stage`` under the cell's meter."""
        ctx = self.ctx
        if ctx.run_directory is None:
            return run(engine, potential, seed=ctx.seed, meter=ctx.meter, progress=ctx.progress)
        run_dir = RunDirectory(Path(ctx.run_directory) / stage)
        return _run_checkpointed(ctx, engine, potential, run_dir, self._codec, self._starts.get(stage), stage)


def record_fit_part(ctx: MethodContext, resuming: bool) -> list[dict[str, Any]]:
    """Add this part of the fit to :data:`FIT_SETTINGS` in ``ctx.run_directory``, before it runs
    (so a kill keeps it); returns the earlier parts (``[]`` for a fit that starts afresh)."""
    settings = Path(ctx.run_directory) / FIT_SETTINGS
    earlier = fit_parts(settings) if resuming else []
    settings.parent.mkdir(parents=True, exist_ok=True)
    here = {"fit_length_bucket": fit_bucket_in_effect(ctx.backend.length_bucket, ctx), **ctx.provenance}
    atomic_write_text(settings, json.dumps({"parts": [*earlier, here]}))
    return earlier


def fit_parts(settings: Path) -> list[dict[str, Any]]:
    """What each earlier part of a resumed fit ran under, oldest first, from its :data:`FIT_SETTINGS`.

    Reads the current layout ``{"parts": [...]}`` and the older one-part layout (the settings
    the fit began under, top level); a missing file gives ``[]`` (unknown).
    """
    if not settings.is_file():
        return []
    data = json.loads(settings.read_text())
    return [dict(part) for part in data["parts"]] if "parts" in data else [dict(data)]


def _temperature_summary(posterior: Posterior) -> dict[str, float]:
    """Posterior mean and sd of a latent likelihood temperature (empty without one)."""
    if "temperature" not in posterior.samples:
        return {}
    values = posterior.samples["temperature"].double().reshape(posterior.num_samples)
    weights = posterior.log_weights.double().softmax(0)
    mean = float(weights @ values)
    return {"temperature_mean": mean, "temperature_sd": float(weights @ (values - mean) ** 2) ** 0.5}


def _scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar entries of an engine summary."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool | int | str) or value is None:
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else str(value)
    return out


def _options(ctx: MethodContext, defaults: dict[str, Any]) -> dict[str, Any]:
    """Engine keyword arguments: ``defaults`` overridden by the method's options, less the model's."""
    return {**defaults, **{k: v for k, v in ctx.options.items() if k not in MODEL_OPTIONS}}


# ---------------------------------------------------------------------- method fitters


def fit_zero_shot(ctx: MethodContext) -> MethodOutcome:
    """No prompt at all: a zero-length prompt (the model's plain sentence embedding)."""
    zero = torch.zeros(1, 0, ctx.backend.embed_dim)
    return MethodOutcome(prompt_predictor(ctx.backend, zero), "finished", 1, 1, 1.0, fitted=zero)


def fit_whitebox(ctx: MethodContext) -> MethodOutcome:
    """Adam on the prompt through the model (full access), early-stopped on dev."""
    from benchmarks.whitebox import CHECKPOINT_FILE, WhiteBoxConfig, train_prompt

    config = WhiteBoxConfig(**{"seed": ctx.seed, "n_tokens": ctx.projection.n_tokens, **ctx.options})
    checkpoint = None if ctx.run_directory is None else Path(ctx.run_directory) / CHECKPOINT_FILE
    earlier = [] if checkpoint is None else record_fit_part(ctx, resuming=checkpoint.is_file())
    result = train_prompt(ctx.backend, ctx.train, ctx.dev, config, projection=ctx.projection, checkpoint=checkpoint)
    summary = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_dev_score": result.best_dev_score,
        "initial_train_loss": result.train_losses[0],
        "final_train_loss": result.train_losses[-1],
        "forward_passes": result.forward_passes,
        "backward_passes": result.backward_passes,
    }
    prompts = result.prompt.detach().unsqueeze(0)
    outcome = MethodOutcome(prompt_predictor(ctx.backend, prompts), result.status, 1, 1, 1.0, summary=summary, fitted=prompts)
    if result.resumed_from is not None:  # training is not metered: it continued at call 0
        outcome.resumed_from = {"calls": 0, "iteration": result.resumed_from["step"],
                                "fit_seconds": result.resumed_from["fit_seconds"], **({"fit_parts": earlier} if earlier else {})}
    return outcome


def _bbt_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.cma import CMAES

    options = _options(ctx, {"popsize": 20})
    return CMAES(dev_score=dev_accuracy_score(potential, ctx.dev), **options)


def _ensembles_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.cma import PromptEnsembles

    options = _options(ctx, {"num_members": 5, "popsize": 20})
    return PromptEnsembles(meter=ctx.meter, dev_score=dev_accuracy_score(potential, ctx.dev), **options)


def _cma_elbo_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.cma import CMAELBO

    options = _options(ctx, {"popsize": 20, "num_mc_samples": 4, "num_samples": ctx.num_particles})
    return CMAELBO(dev_score=dev_accuracy_score(potential, ctx.dev), **options)


def _smc_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.smc import TemperedSMC

    return TemperedSMC(**_options(ctx, {"num_particles": ctx.num_particles}))


def _abc_engine(weighting: str, schedule: str) -> Callable[[MethodContext, Potential], Engine]:
    def build(ctx: MethodContext, potential: Potential) -> Engine:
        from bayesprompt.inference.smc import ABCSMC

        defaults = {"num_particles": ctx.num_particles, "weighting": weighting, "schedule": schedule}
        return ABCSMC(observed=ctx.train.labels, **_options(ctx, defaults))

    return build


def _abc_mcmc_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.smc.abc_mcmc import AdaptiveABCSMC

    return AdaptiveABCSMC(observed=ctx.train.labels, **_options(ctx, {"num_particles": ctx.num_particles}))


#: ``eki-mda``: EKI forced through at least this many tempering steps (``max_step = 1 / n``).
EKI_MDA_STEPS = 8


def _eki_engine(min_steps: int | None = None) -> Callable[[MethodContext, Potential], Engine]:
    """EKI; with ``min_steps``, at least that many Kalman updates (``max_step = 1 / min_steps``)."""
    def build(ctx: MethodContext, potential: Potential) -> Engine:
        from bayesprompt.inference.kalman import EKI

        defaults: dict[str, Any] = {"num_ensemble": ctx.num_particles}
        if min_steps is not None:
            defaults["max_step"] = 1.0 / min_steps
        return EKI(**_options(ctx, defaults))

    return build


def _eks_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.kalman import EKS

    iterations = 50 if ctx.budget is None else max(1, ctx.budget // ctx.num_particles)
    return EKS(**_options(ctx, {"num_ensemble": ctx.num_particles, "num_iterations": iterations}))


def _ensemble_mcmc_engine(ctx: MethodContext, potential: Potential) -> Engine:
    from bayesprompt.inference.mcmc import EnsembleSampler

    walkers = max(4, ctx.num_particles + ctx.num_particles % 2)
    iterations = 100 if ctx.budget is None else max(2, (ctx.budget - walkers) // walkers)
    defaults = {"num_walkers": walkers, "num_iterations": iterations, "burn_in": iterations // 2}
    return EnsembleSampler(**_options(ctx, defaults))


def _random_walk_engine(ctx: MethodContext, potential: Potential) -> Engine:
    """Pyro's RandomWalkKernel, one chain from a prior draw; half the budget is warmup."""
    from pyro.infer.autoguide.initialization import init_to_sample

    from bayesprompt.inference.mcmc import PyroRandomWalk

    steps = 2000 if ctx.budget is None else max(2, ctx.budget - 8)  # Pyro's set-up costs ~4 calls per chain
    defaults = {"warmup_steps": steps // 2, "num_samples": steps - steps // 2, "init_strategy": init_to_sample}
    return PyroRandomWalk(**_options(ctx, defaults))


def fit_smc_dev_prior(ctx: MethodContext) -> MethodOutcome:
    """Tempered SMC on the training split under a prior centred on a prompt tuned on dev.

    Empirical Bayes in two stages, each on its own examples. CMA-ES (BBT's optimiser,
    popsize 20, keeping its best candidate) maximises the dev log-likelihood with
    ``point_share`` of the budget (default 0.5); tempered SMC then samples the training
    posterior under ``N(z_dev, prior_scale^2 I)`` with the rest. Options other than
    ``point_share`` and ``popsize`` go to :class:`~bayesprompt.inference.smc.TemperedSMC`.
    """
    from bayesprompt.inference.empirical_bayes import fit_dev_centre
    from bayesprompt.inference.smc import TemperedSMC

    options = dict(ctx.options)
    share = float(options.pop("point_share", 0.5))
    popsize = int(options.pop("popsize", 20))
    if not 0.0 < share < 1.0:
        raise ValueError(f"option point_share must be in (0, 1), got {share}")
    point_budget = 1000 if ctx.budget is None else int(share * ctx.budget)
    stages = FitStages(ctx, ("dev_centre", "smc"))
    dev_model = PromptModel(ctx.backend, ctx.projection, prior_scale=ctx.prior_scale)
    centre = fit_dev_centre(dev_model, ctx.dev, point_budget, meter=ctx.meter, popsize=popsize, seed=ctx.seed,
                            progress=ctx.progress, runner=lambda engine, potential: stages.run("dev_centre", engine, potential))
    potential = Potential(PromptModel(ctx.backend, ctx.projection, prior=centre.prior(ctx.prior_scale)), (ctx.train,),
                          meter=ctx.meter)
    posterior = stages.run("smc", TemperedSMC(**{"num_particles": ctx.num_particles, **options}), potential)
    outcome = posterior_outcome(ctx, posterior, potential, likelihood_free=False)
    outcome.summary.update(point_calls=centre.api_calls, point_norm=centre.norm)
    outcome.resumed_from = stages.resumed_from
    return outcome


def fit_smc_average(ctx: MethodContext) -> MethodOutcome:
    """Bayesian model average of tempered SMC with and without a latent likelihood temperature.

    Both models run tempered SMC on the training split under the cell's meter (each stops
    by itself, typically after 300-600 calls). Their SMC log evidences give the posterior
    model probabilities (uniform prior odds), and the prediction posterior holds both
    particle sets, the plain model's with ``temperature = 1``
    (:func:`~bayesprompt.averaging.mix_posteriors`), predicted through the tempered model.
    The option ``temperature_prior_scale`` (required; 1 in the default ``method_options``)
    sets the LogNormal scale; the rest
    go to :class:`~bayesprompt.inference.smc.TemperedSMC`. A model whose run the budget
    stops before beta = 1 has no evidence estimate and gets probability 0 (the record's
    status then says ``budget_exhausted``); so does the tempered model when the plain run
    leaves too little of the budget for its first population (as at a sweep budget of 250;
    the summary's ``tempered_status`` is then ``not_started``).
    """
    from bayesprompt.averaging import mix_posteriors

    if ctx.options.get("temperature_prior_scale") is None:  # a resumed evaluation rebuilds the model from the options: they must name the scale
        raise ValueError("smc-average needs the option temperature_prior_scale (set in the default method_options)")
    stages = FitStages(ctx, ("plain", "tempered"))
    plain_ctx = dataclasses.replace(ctx, options={k: v for k, v in ctx.options.items() if k not in MODEL_OPTIONS})
    plain_potential = make_potential(plain_ctx, likelihood_free=False)
    plain = stages.run("plain", _smc_engine(plain_ctx, plain_potential), plain_potential)
    potential = make_potential(ctx, likelihood_free=False)  # ctx's options carry the temperature
    try:
        tempered = stages.run("tempered", _smc_engine(ctx, potential), potential)
    except InitialBudgetError:  # the plain run left too little for a first population: keep the plain model alone
        tempered = None
    log_z = [math.nan if p is None else float(p.summary.get("log_evidence", math.nan)) for p in (plain, tempered)]
    probabilities = _evidence_probabilities(log_z)
    statuses = [plain.status, Status.BUDGET_EXHAUSTED if tempered is None else tempered.status]
    runs = [plain, tempered]
    if tempered is None:  # predictions go through the tempered model: give the plain particles temperature 1
        shape = {site.name: site.shape for site in potential.discover_sites()}["temperature"]
        runs = [dataclasses.replace(plain, samples={**plain.samples, "temperature": torch.ones(plain.num_samples, *shape)})]
    combined = mix_posteriors(runs, probabilities[: len(runs)], fixed={"temperature": 1.0})
    combined = dataclasses.replace(combined, status=next((s for s in statuses if s != Status.FINISHED), Status.FINISHED))
    outcome = posterior_outcome(ctx, combined, potential, likelihood_free=False)
    outcome.resumed_from = stages.resumed_from
    outcome.summary.update(
        _scalars({"log_evidence_plain": log_z[0], "log_evidence_tempered": log_z[1]}),
        probability_tempered=probabilities[1],
        tempered_status="not_started" if tempered is None else tempered.status,
        **({} if tempered is None else {f"tempered_{k}": v for k, v in _temperature_summary(tempered).items()}),
    )
    return outcome


def _evidence_probabilities(log_z: list[float]) -> list[float]:
    """Posterior model probabilities of the models whose SMC reached beta = 1 (finite log evidence).

    A model stopped by the budget has no evidence estimate and gets probability 0, so the
    finished work of the others is kept; if none finished, the first (plain) model's
    particles are used, as its own method would return them.
    """
    from bayesprompt.averaging import posterior_model_probabilities

    finished = [index for index, value in enumerate(log_z) if math.isfinite(value)]
    if not finished:
        return [1.0] + [0.0] * (len(log_z) - 1)
    probabilities = posterior_model_probabilities([log_z[index] for index in finished])
    out = [0.0] * len(log_z)
    for index, probability in zip(finished, probabilities):
        out[index] = float(probability)
    return out


def _engine_fitter(make_engine: Callable[[MethodContext, Potential], Engine], likelihood_free: bool = False):
    def fit(ctx: MethodContext) -> MethodOutcome:
        return fit_engine(ctx, make_engine, likelihood_free)

    return fit


# ---------------------------------------------------------------------- the registry


#: Objects every cell is built from, beside its method's engines, whose signature defaults
#: shape results; they are guarded with the engines' (:mod:`benchmarks.engine_defaults`).
SHARED_REQUIREMENTS: tuple[str, ...] = (
    "bayesprompt.data.fewshot:balanced_subsample",
    "bayesprompt.data.fewshot:few_shot_split",
    "bayesprompt.lm.sentence_encoder:SentenceEncoderBlackBox",
    "bayesprompt.models.potential:Potential",
    "bayesprompt.models.projection:RandomProjection.from_embeddings",
    "bayesprompt.models.prompt:LikelihoodFreePromptModel",
    "bayesprompt.models.prompt:PromptModel",
    "bayesprompt.predict:fit_vote_smoothing",
    "bayesprompt.predict:predict",
    "bayesprompt.predict:predict_votes",
)


def default_registry() -> dict[str, MethodSpec]:
    """All methods, in table order (a fresh dict each call; extend it freely).

    Returns
    -------
    dict
        ``name -> MethodSpec``.
    """
    smc, kalman, mcmc, cma = (
        "bayesprompt.inference.smc",
        "bayesprompt.inference.kalman",
        "bayesprompt.inference.mcmc",
        "bayesprompt.inference.cma",
    )
    specs = [
        MethodSpec("zero-shot", "Zero-shot (no prompt)", "reference",
                   "zero-length prompt: the encoder's plain sentence embedding vs the verbalizers",
                   fit_zero_shot, budget="none"),
        MethodSpec("whitebox", "White-box Adam (full access)", "reference",
                   "Adam on the 10 prompt embeddings through the model, early-stopped on dev",
                   fit_whitebox, budget="none", requires=("benchmarks.whitebox:train_prompt",)),
        MethodSpec("bbt-8000", "BBT (CMA-ES), 8,000 calls", "peer",
                   "Black-Box Tuning: CMA-ES on z, popsize 20, best-dev prompt, 8,000 calls",
                   _engine_fitter(_bbt_engine), budget=8000, requires=(f"{cma}:CMAES",)),
        MethodSpec("bbt", "BBT (CMA-ES)", "peer",
                   "Black-Box Tuning at the common budget",
                   _engine_fitter(_bbt_engine), requires=(f"{cma}:CMAES",)),
        MethodSpec("ensembles", "Prompt Ensembles (paper)", "peer",
                   "5 independent BBT runs splitting the budget (Shen et al.)",
                   _engine_fitter(_ensembles_engine), requires=(f"{cma}:PromptEnsembles",)),
        MethodSpec("abc-uniform", "ABC-SMC, uniform weights (paper)", "peer",
                   "Shen et al.'s ABC-SMC: label-only, paper tolerance schedule, uniform weights",
                   _engine_fitter(_abc_engine("uniform", "paper"), likelihood_free=True), requires=(f"{smc}:ABCSMC",),
                   budget_free=True),
        MethodSpec("smc", "Tempered SMC", "ours",
                   "adaptive tempered SMC with random-walk moves (score likelihood)",
                   _engine_fitter(_smc_engine), requires=(f"{smc}:TemperedSMC",), budget_free=True),
        MethodSpec("smc-temp", "Tempered SMC, latent likelihood temperature", "ours",
                   "tempered SMC on z and a likelihood temperature ~ LogNormal(0, 1) that rescales the scores",
                   _engine_fitter(_smc_engine), requires=(f"{smc}:TemperedSMC",), budget_free=True),
        MethodSpec("smc-average", "Tempered SMC, model average over a latent temperature", "ours",
                   "SMC with tau = 1 and with tau ~ LogNormal(0, 1), averaged by their evidence",
                   fit_smc_average, requires=(f"{smc}:TemperedSMC",)),
        MethodSpec("smc-dev", "Tempered SMC, train + dev", "ours",
                   "tempered SMC conditioned on the training and dev examples (no held-out selection)",
                   _engine_fitter(_smc_engine), requires=(f"{smc}:TemperedSMC",), budget_free=True, conditions_on_dev=True),
        MethodSpec("smc-devprior", "Tempered SMC, prior centred on a dev-tuned prompt", "ours",
                   "CMA-ES on the dev likelihood (half the budget) centres the prior; SMC on train (the rest)",
                   fit_smc_dev_prior, requires=(f"{smc}:TemperedSMC", f"{cma}:CMAES")),
        MethodSpec("abc-smc", "ABC-SMC, importance weights", "ours",
                   "label-only ABC-SMC with correct importance weights, quantile schedule",
                   _engine_fitter(_abc_engine("importance", "quantile"), likelihood_free=True),
                   requires=(f"{smc}:ABCSMC",), budget_free=True),
        MethodSpec("abc-mcmc", "Adaptive ABC-SMC (MCMC moves)", "ours",
                   "label-only adaptive ABC-SMC with random-walk MCMC moves",
                   _engine_fitter(_abc_mcmc_engine, likelihood_free=True),
                   requires=(f"{smc}.abc_mcmc:AdaptiveABCSMC",), budget_free=True),
        MethodSpec("eki", "EKI", "ours", "ensemble Kalman inversion, tempered to the posterior",
                   _engine_fitter(_eki_engine()), requires=(f"{kalman}:EKI",), budget_free=True),
        MethodSpec("eki-mda", "EKI, at least 8 steps (ES-MDA)", "ours",
                   f"EKI with max_step = 1/{EKI_MDA_STEPS}: at least {EKI_MDA_STEPS} smaller Kalman updates, as in ES-MDA",
                   _engine_fitter(_eki_engine(EKI_MDA_STEPS)), requires=(f"{kalman}:EKI",), budget_free=True),
        MethodSpec("eks", "EKS", "ours", "ensemble Kalman sampler (ALDI correction)",
                   _engine_fitter(_eks_engine), requires=(f"{kalman}:EKS",)),
        MethodSpec("ensemble-mcmc", "Ensemble sampler (MCMC)", "ours",
                   "affine-invariant ensemble MCMC, half the iterations burn-in",
                   _engine_fitter(_ensemble_mcmc_engine), requires=(f"{mcmc}:EnsembleSampler",)),
        MethodSpec("rw-mcmc", "Pyro random walk (MCMC)", "ours",
                   "Pyro's RandomWalkKernel, one chain, half the budget warmup",
                   _engine_fitter(_random_walk_engine), requires=(f"{mcmc}:PyroRandomWalk",)),
        MethodSpec("cma-elbo", "CMA-ELBO", "ours",
                   "CMA-ES on a mean-field Gaussian q(z), Monte Carlo ELBO, best-dev q",
                   _engine_fitter(_cma_elbo_engine), requires=(f"{cma}:CMAELBO",)),
        MethodSpec("cma-elbo-iso", "CMA-ELBO, one scale, true ELBO", "ours",
                   "CMA-ELBO with q = N(m, s^2 I) and KL weight 1 (see benchmarks.cma_elbo_drift)",
                   _engine_fitter(_cma_elbo_engine), requires=(f"{cma}:CMAELBO",)),
    ]
    return {spec.name: spec for spec in specs}
