"""Fit checkpoints: a cell's fitted method, kept on disk until its evaluation is recorded.

Fitting is paid for in API calls and evaluation can take as long again (every prediction
sample scores every test and OOD example), so :func:`benchmarks.run.run_suite` writes what
a fitted method predicts with before evaluating it. A cell whose evaluation is killed is
then evaluated again from the checkpoint, without a new fit, and gives the same record
(apart from timings). The checkpoint is removed once the cell's record is saved.

A checkpoint is a folder with

* ``posterior.npz`` / ``posterior.json`` (:meth:`Posterior.save`): the prediction
  posterior of an engine method (already thinned to ``max_prediction_samples``), or
* ``prompts.npy``: the fixed prompts ``[S, n, d]`` of zero-shot and white-box tuning,

and ``outcome.json``, written last, with the rest of the :class:`MethodOutcome` and the
fit's API usage and time. A folder without ``outcome.json`` is an unfinished write and
is ignored.

The fit itself is checkpointed too: a single-engine method writes its engine state to
``steps/`` after every engine step (:func:`benchmarks.methods.run_engine`), and a cell
killed during its fit continues from the last step on the next run. The methods that chain
two engine runs (``smc-average``, ``smc-devprior``) checkpoint each in ``steps/<stage>/``
(:class:`benchmarks.methods.FitStages`). White-box tuning writes ``steps/whitebox.pt``
before each dev evaluation (:func:`benchmarks.whitebox.train_prompt`) and continues from
it likewise.

Examples
--------
>>> import tempfile
>>> outcome = MethodOutcome(lambda batch: None, "finished", 1, 1, 1.0, fitted=torch.zeros(1, 0, 4))
>>> with tempfile.TemporaryDirectory() as folder:
...     save_fit(outcome, folder, {"fit_seconds": 1.5})
...     sorted(p.name for p in Path(folder).iterdir())
['outcome.json', 'prompts.npy']
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.methods import MethodContext, MethodOutcome, make_potential, posterior_predictor, prompt_predictor
from bayesprompt.inference.posterior import Posterior
from bayesprompt.runs import atomic_write_bytes, atomic_write_text

__all__ = ["STEP_CHECKPOINTS", "load_fit", "save_fit"]

#: Bumped when the checkpoint layout changes; other versions are refitted, not read.
CHECKPOINT_VERSION = 1

#: Subfolder of a cell's checkpoint folder with the engine's step checkpoints (a
#: :class:`~bayesprompt.runs.RunDirectory`'s ``checkpoint.npz`` and ``diagnostics.jsonl``).
STEP_CHECKPOINTS = "steps"

_OUTCOME = "outcome.json"
_PROMPTS = "prompts.npy"


def save_fit(outcome: MethodOutcome, directory: str | Path, extra: Mapping[str, Any]) -> None:
    """Write ``outcome`` (and the JSON-friendly ``extra``) into ``directory``.

    Raises
    ------
    ValueError
        If ``outcome.fitted`` is neither a :class:`Posterior` nor a prompt tensor.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fitted = outcome.fitted
    if isinstance(fitted, Posterior):
        kind = "posterior"
        fitted.save(directory)
    elif isinstance(fitted, torch.Tensor):
        kind = "prompts"
        buffer = io.BytesIO()
        np.save(buffer, fitted.detach().cpu().numpy())
        atomic_write_bytes(directory / _PROMPTS, buffer.getvalue())
    else:
        raise ValueError(f"outcome.fitted must be a Posterior or a prompt tensor to checkpoint, got {type(fitted).__name__}")
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "kind": kind,
        "status": outcome.status,
        "num_samples": outcome.num_samples,
        "prediction_samples": outcome.prediction_samples,
        "ess": outcome.ess,
        "likelihood_free": outcome.likelihood_free,
        "summary": outcome.summary,
        "vote_smoothing": outcome.vote_smoothing,
        "extra": dict(extra),
    }
    atomic_write_text(directory / _OUTCOME, json.dumps(meta, indent=1))


def load_fit(ctx: MethodContext, directory: str | Path) -> tuple[MethodOutcome, dict[str, Any]] | None:
    """The outcome checkpointed in ``directory``, rebuilt on ``ctx``'s black box, and its ``extra``.

    Returns ``None`` when ``directory`` holds no finished checkpoint of this layout
    version. Raises ``ValueError`` naming the file when a finished checkpoint is corrupt.
    """
    directory = Path(directory)
    meta_path = directory / _OUTCOME
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("checkpoint_version") != CHECKPOINT_VERSION:
        return None
    kind, likelihood_free = meta.get("kind"), bool(meta.get("likelihood_free"))
    if kind == "posterior":
        potential = make_potential(ctx, likelihood_free)
        potential.discover_sites()  # free under a meter; prediction needs the sites
        posterior = Posterior.load(directory)
        unknown = set(posterior.samples) - {site.name for site in potential.sites}
        if unknown:  # the model would ignore them and predict as if they were absent
            raise ValueError(f"{directory}: the checkpointed posterior has sites {sorted(unknown)} that the method's "
                             "model (built from its options) lacks; were the method_options changed?")
        predictor = posterior_predictor(ctx, posterior, potential, likelihood_free)
    elif kind == "prompts":
        try:
            prompts = torch.from_numpy(np.load(directory / _PROMPTS))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {directory / _PROMPTS}: {err}") from err
        predictor = prompt_predictor(ctx.backend, prompts)
    else:
        raise ValueError(f"{meta_path}: field 'kind' must be 'posterior' or 'prompts', got {kind!r}")
    outcome = MethodOutcome(
        predictor=predictor,
        status=meta["status"],
        num_samples=meta["num_samples"],
        prediction_samples=meta["prediction_samples"],
        ess=meta["ess"],
        likelihood_free=likelihood_free,
        summary=meta["summary"],
        vote_smoothing=meta["vote_smoothing"],
        fitted=None,
    )
    return outcome, meta["extra"]
