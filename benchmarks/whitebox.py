"""White-box soft-prompt tuning: the "full access" reference of the benchmark.

Gradient-based prompt tuning (Lester et al., 2021) on the same model, prompt position
and scoring rule as the black box: Adam on the ``n_tokens`` prompt vectors directly (or
on ``z`` through the fixed random projection), full-batch cross-entropy on the few-shot
training set, early-stopped on the dev set (accuracy, ties broken by log-likelihood, as
BBT selects its prompt).

Gradients come from the backend's own forward: :meth:`PromptBlackBox.score` wraps
``_score_chunk`` in ``torch.inference_mode`` (no autograd), but ``_score_chunk`` itself is
plain differentiable PyTorch for the built-in backends (for
:class:`~bayesprompt.lm.SentenceEncoderBlackBox`: word embeddings, prompt splice,
``inputs_embeds`` forward, text mean-pooling, cosine to the verbalizer embeddings). So
:func:`differentiable_scores` calls it under ``torch.enable_grad`` and the backend's own
autocast, which reuses the exact scoring code without editing or copying the backend.
Gradients are taken with :func:`torch.autograd.grad` with respect to the prompt only, so
the model's weights are never modified and never accumulate ``.grad``. The full-batch
loss is summed over the chunks the backend itself would score
(:meth:`~PromptBlackBox.example_chunks`: length-sorted buckets for a batch longer than
``length_bucket``), so white-box forwards are padded like the black box's.

With a ``checkpoint`` file, :func:`train_prompt` saves its state (parameter, Adam's
moments, the best prompt so far and the history) at every dev evaluation, and a run killed
mid-way continues from that file with the result an uninterrupted run gives: a DBPedia
run is hours on a CPU.

This is *not* an API method: training forwards are not charged to the meter (they are
counted in ``forward_passes`` / ``backward_passes``); test predictions go through the
ordinary metered :meth:`~PromptBlackBox.score`.

Examples
--------
>>> from bayesprompt.data.task import Example, Task
>>> from bayesprompt.testing import FakeBlackBox
>>> task = Task("toy", ("a", "b"), ("A.", "B."), "{text} {mask}", ("a", "b"))
>>> box = FakeBlackBox(task, embed_dim=4)
>>> batch = box.encode([Example(f"x{i}", i % 2) for i in range(8)])
>>> result = train_prompt(box, batch, batch, WhiteBoxConfig(n_tokens=2, max_steps=20, lr=0.1))
>>> result.prompt.shape, result.train_losses[-1] < result.train_losses[0]
(torch.Size([2, 4]), True)
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.models.projection import RandomProjection
from bayesprompt.runs import atomic_write_bytes

__all__ = ["CHECKPOINT_FILE", "WhiteBoxConfig", "WhiteBoxResult", "checkpoint_step", "differentiable_scores", "train_prompt"]

#: File name of a :func:`train_prompt` checkpoint in the benchmark's step-checkpoint folder.
CHECKPOINT_FILE = "whitebox.pt"


@dataclass(frozen=True)
class WhiteBoxConfig:
    """Settings of :func:`train_prompt`.

    Parameters
    ----------
    n_tokens : int
        Prompt length (``parametrisation="prompt"``; with ``"z"`` the projection's length).
    parametrisation : {"prompt", "z"}
        Optimise the prompt embeddings directly, or ``z`` through the random projection.
    init : {"vocab", "zeros"}
        Initial prompt: random rows of the word-embedding table (standard prompt-tuning
        initialisation) or zeros. With ``parametrisation="z"`` the start is ``z = 0``
        (BBT's) either way.
    lr : float
        Adam learning rate.
    max_steps : int
        Gradient steps.
    eval_every : int
        Dev evaluation period in steps (the initial prompt is evaluated too).
    patience : int
        Stop after this many dev evaluations without improvement.
    seed : int
        Seed of the initialisation.
    """

    n_tokens: int = 10
    parametrisation: str = "prompt"
    init: str = "vocab"
    lr: float = 3e-3
    max_steps: int = 300
    eval_every: int = 10
    patience: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.parametrisation not in ("prompt", "z"):
            raise ValueError(f"parametrisation must be 'prompt' or 'z', got {self.parametrisation!r}")
        if self.init not in ("vocab", "zeros"):
            raise ValueError(f"init must be 'vocab' or 'zeros', got {self.init!r}")
        for name in ("n_tokens", "max_steps", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class WhiteBoxResult:
    """Outcome of :func:`train_prompt`.

    Attributes
    ----------
    prompt : Tensor ``[n_tokens, d]``
        The selected (best-dev) prompt.
    train_losses : list of float
        Mean training cross-entropy before each step, then after the last one.
    dev_history : list of dict
        ``{"step", "dev_score", "dev_accuracy"}`` per dev evaluation.
    best_step : int
        Step of the selected prompt (0: the initial prompt).
    best_dev_score : float
        Its dev score (accuracy + 1e-6 log-likelihood).
    steps : int
        Gradient steps taken.
    status : str
        ``"finished"`` (``max_steps``) or ``"early_stopped"``.
    forward_passes, backward_passes : int
        Prompt-on-batch forwards (training and dev; the unit of an API call) and
        backward passes.
    resumed_from : dict or None
        ``{"step", "fit_seconds"}`` of the checkpoint a killed run continued from
        (``None``: trained in one go).
    """

    prompt: torch.Tensor
    train_losses: list[float]
    dev_history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_dev_score: float = -math.inf
    steps: int = 0
    status: str = "finished"
    forward_passes: int = 0
    backward_passes: int = 0
    resumed_from: dict[str, Any] | None = None


def differentiable_scores(backend: PromptBlackBox, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
    """Class scores ``[P, B, C]`` with autograd, from the backend's own forward.

    Runs ``backend._score_chunk`` (the unmetered model forward behind
    :meth:`PromptBlackBox.score`) under ``torch.enable_grad`` and the backend's precision
    (bf16 autocast or not). ``P * B`` must fit one forward pass (no chunking here).
    """
    if prompts.ndim != 3 or prompts.shape[-1] != backend.embed_dim:
        raise ValueError(f"prompts must be [P, n, {backend.embed_dim}], got {tuple(prompts.shape)}")
    with torch.enable_grad(), backend._autocast():
        return backend._score_chunk(prompts.to(backend.device), batch).float()


def train_prompt(
    backend: PromptBlackBox,
    train: EncodedBatch,
    dev: EncodedBatch,
    config: WhiteBoxConfig = WhiteBoxConfig(),
    projection: RandomProjection | None = None,
    checkpoint: str | Path | None = None,
) -> WhiteBoxResult:
    """Tune a soft prompt by Adam on the training cross-entropy, selected on dev.

    Parameters
    ----------
    backend : PromptBlackBox
        A backend whose ``_score_chunk`` is differentiable (the built-in ones are).
    train, dev : EncodedBatch
        Few-shot training and dev batches.
    config : WhiteBoxConfig
        Optimiser settings.
    projection : RandomProjection or None
        Needed for ``parametrisation="z"``.
    checkpoint : path or None
        File for the training state, written before each dev evaluation after the first;
        if it exists, training continues from it (see the module docstring). It must have
        been written under the same ``config``. It is left in place at the end.

    Returns
    -------
    WhiteBoxResult
    """
    if len(train) == 0 or len(dev) == 0:
        raise ValueError("train_prompt needs non-empty train and dev batches")
    param, to_prompt = _parameter(backend, config, projection)
    optimiser = torch.optim.Adam([param], lr=config.lr)
    result = WhiteBoxResult(prompt=to_prompt(param).detach().clone(), train_losses=[])
    stale = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        stale, result = _restore(checkpoint, config, param, optimiser)
    resumed = result.resumed_from or {"step": 0, "fit_seconds": 0.0}
    first, earlier_seconds = resumed["step"], resumed["fit_seconds"]
    started = time.perf_counter()
    for step in range(first, config.max_steps + 1):
        if step % config.eval_every == 0 or step == config.max_steps:
            if checkpoint is not None and step > first:
                fit_seconds = earlier_seconds + time.perf_counter() - started
                _save(checkpoint, config, step, stale, fit_seconds, param, optimiser, result)
            with torch.no_grad():
                score, accuracy = _dev_score(backend, to_prompt(param), dev)
            result.forward_passes += 1
            result.dev_history.append({"step": step, "dev_score": score, "dev_accuracy": accuracy})
            if score > result.best_dev_score:
                result.prompt, result.best_step, result.best_dev_score = to_prompt(param).detach().clone(), step, score
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    result.status = "early_stopped"
                    break
        loss, grad = _loss_and_grad(backend, param, to_prompt, train)
        result.train_losses.append(loss)
        result.forward_passes += 1
        if step == config.max_steps:
            break
        result.backward_passes += 1
        param.grad = grad
        optimiser.step()
        result.steps = step + 1
    return result


#: Bumped when the layout of a :func:`train_prompt` checkpoint changes.
_CHECKPOINT_VERSION = 1


def _save(path: str | Path, config: WhiteBoxConfig, step: int, stale: int, fit_seconds: float,
          param: torch.Tensor, optimiser: torch.optim.Optimizer, result: WhiteBoxResult) -> None:
    """Write the state before ``step``'s dev evaluation to ``path`` (atomically)."""
    state = {
        "version": _CHECKPOINT_VERSION,
        "config": dataclasses.asdict(config),
        "step": step,
        "stale": stale,
        "fit_seconds": fit_seconds,
        "param": param.detach().clone(),
        "optimiser": optimiser.state_dict(),
        "result": {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "resumed_from"},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def checkpoint_step(path: str | Path) -> int:
    """The step a :func:`train_prompt` checkpoint continues from."""
    return int(torch.load(path, weights_only=True)["step"])


def _restore(path: str | Path, config: WhiteBoxConfig, param: torch.Tensor,
             optimiser: torch.optim.Optimizer) -> tuple[int, WhiteBoxResult]:
    """Load a :func:`_save` file into ``param`` and ``optimiser``: ``(stale, result)``, where
    ``result.resumed_from`` holds the step to continue from and the fit seconds so far."""
    state = torch.load(path, weights_only=True)
    if state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{path}: white-box checkpoint version {state.get('version')!r}, expected {_CHECKPOINT_VERSION}")
    if state["config"] != dataclasses.asdict(config):
        raise ValueError(f"{path}: written under WhiteBoxConfig {state['config']}, not the run's {dataclasses.asdict(config)}")
    with torch.no_grad():
        param.copy_(state["param"])
    optimiser.load_state_dict(state["optimiser"])
    resumed_from = {"step": state["step"], "fit_seconds": state["fit_seconds"]}
    return state["stale"], WhiteBoxResult(**state["result"], resumed_from=resumed_from)


def _parameter(backend: PromptBlackBox, config: WhiteBoxConfig, projection: RandomProjection | None):
    """The trainable tensor and its map to a prompt ``[n, d]``."""
    if config.parametrisation == "z":
        if projection is None:
            raise ValueError("parametrisation='z' needs the random projection")
        z = torch.zeros(projection.intrinsic_dim, requires_grad=True)
        return z, lambda value: projection(value)
    generator = torch.Generator().manual_seed(int(config.seed))
    if config.init == "vocab":
        table = backend.embedding_table().detach().float()
        rows = torch.randint(0, table.shape[0], (config.n_tokens,), generator=generator)
        start = table[rows].clone()
    else:
        start = torch.zeros(config.n_tokens, backend.embed_dim)
    return start.requires_grad_(True), lambda value: value


def _loss_and_grad(backend: PromptBlackBox, param: torch.Tensor, to_prompt, train: EncodedBatch):
    """Mean training cross-entropy and its gradient w.r.t. ``param`` (chunked, accumulated)."""
    total, grad = 0.0, torch.zeros_like(param)
    size = len(train)
    for part in _split(backend, train):
        scores = differentiable_scores(backend, to_prompt(param).unsqueeze(0), part)[0]
        loss = F.cross_entropy(scores, part.labels, reduction="sum") / size
        (part_grad,) = torch.autograd.grad(loss, [param])
        grad += part_grad
        total += float(loss.detach())
    return total, grad


def _dev_score(backend: PromptBlackBox, prompt: torch.Tensor, dev: EncodedBatch) -> tuple[float, float]:
    """Dev accuracy + 1e-6 * dev log-likelihood, and the accuracy."""
    correct, log_lik = 0, 0.0
    for part in _split(backend, dev):
        scores = differentiable_scores(backend, prompt.unsqueeze(0), part)[0]
        log_probs = scores.log_softmax(-1)
        correct += int((log_probs.argmax(-1) == part.labels).sum())
        log_lik += float(log_probs.gather(-1, part.labels.unsqueeze(-1)).sum())
    accuracy = correct / len(dev)
    return accuracy + 1e-6 * log_lik, accuracy


def _split(backend: PromptBlackBox, batch: EncodedBatch) -> list[EncodedBatch]:
    """The sub-batches the backend would score in one forward pass each (same padding)."""
    return [batch.select(index) for index in backend.example_chunks(batch)]
