"""The black-box interface every backend implements.

A black box takes a population of soft prompts ``[P, n_tokens, d]`` (vectors in the
model's input-embedding space) and a batch of encoded examples, and returns class scores
``[P, B, C]``. That is all an engine ever sees of the model: no gradients, no weights.

:class:`PromptBlackBox` does the shared work (validation with precise errors, metering
and budget, ``torch.inference_mode``, optional bf16 autocast, memory-bounded chunking);
a backend only implements :meth:`PromptBlackBox.encode` and
:meth:`PromptBlackBox._score_chunk`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.meter import Meter
from bayesprompt.lm.precision import bf16_autocast

__all__ = ["EncodedBatch", "PromptBlackBox", "Precision"]

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class EncodedBatch:
    """Examples tokenised once for one backend.

    Parameters
    ----------
    input_ids : LongTensor ``[B, L]``
        Token ids of the text part (without the prompt slots), right-padded.
    attention_mask : LongTensor ``[B, L]``
        1 for real tokens, 0 for padding.
    labels : LongTensor ``[B]``
        Gold labels (never sent to the model).
    extras : dict of Tensor
        Backend-specific per-example tensors with leading dim ``B`` (e.g. the mask
        position of a masked LM, token type ids).
    token_extras : tuple of str
        The names of the ``extras`` that are per token (``[B, L]``, like ``input_ids``),
        which :meth:`select` trims with the padding. Say so explicitly: a per-example
        feature of width ``L`` must not be cut.

    Raises
    ------
    ValueError
        If a ``token_extras`` name is not in ``extras`` or its shape is not ``input_ids``'.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    token_extras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in self.token_extras:
            if name not in self.extras:
                raise ValueError(f"token_extras names {name!r}, which is not in extras {sorted(self.extras)}")
            if tuple(self.extras[name].shape) != tuple(self.input_ids.shape):
                raise ValueError(f"per-token extra {name!r} has shape {tuple(self.extras[name].shape)}, "
                                 f"input_ids {tuple(self.input_ids.shape)}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of real (unpadded) text tokens in the batch."""
        return int(self.attention_mask.sum())

    def select(self, index: slice | torch.Tensor) -> "EncodedBatch":
        """Return the sub-batch at ``index`` (trimmed of all-padding columns).

        The ``token_extras`` are trimmed alike; the other extras are only indexed.
        """
        mask = self.attention_mask[index]
        width = int(mask.sum(-1).max()) if mask.numel() else 0
        return EncodedBatch(
            input_ids=self.input_ids[index][:, :width],
            attention_mask=mask[:, :width],
            labels=self.labels[index],
            extras={k: v[index][:, :width] if k in self.token_extras else v[index] for k, v in self.extras.items()},
            token_extras=self.token_extras,
        )


class PromptBlackBox(ABC):
    """Base class of black-box backends: validated, metered, batched scoring.

    Parameters
    ----------
    task : Task
        The task whose verbalizers define the classes.
    meter : Meter or None
        Where queries are charged; a fresh unlimited meter if ``None``.
    precision : {"fp32", "bf16"}
        ``"bf16"`` runs the forward pass under CPU/GPU bf16 autocast (about 3x faster on
        CPUs with bf16 units, slightly less exact). Scores are returned as float32. On a
        CPU without bf16 units, linear layers and matmuls run as fp32 GEMMs on
        bf16-rounded operands, the same arithmetic at about fp32 speed
        (:mod:`bayesprompt.lm.precision`).
    max_sequences : int
        Upper bound on sequences per forward pass; bounds activation memory.
    length_bucket : int or None
        A batch of more than ``length_bucket`` examples (a test set) is sorted by length
        and run in chunks of ``length_bucket`` examples, each padded only to its own
        longest example, with several prompts per forward pass. This cuts the padding of
        large batches of uneven length (3.1x faster on 1,000 AG News test examples in
        bf16). The scores come back in the batch's order; in fp32 they are the same as
        unsorted, in bf16 they differ in the last bits (up to 0.03 in the logits).
        Batches of at most ``length_bucket`` examples (few-shot training batches) run as
        they are. ``None``: contiguous chunks in the batch's order.

    Notes
    -----
    Subclasses set ``self.embed_dim`` and implement :meth:`encode` and
    :meth:`_score_chunk` (and may add checks in :meth:`_check_query`). Only
    :meth:`score` is public for querying. With ``precision="bf16"`` the whole of
    ``_score_chunk`` runs under autocast: a backend switches it off around steps that
    must stay in fp32 (pooling, cosines).
    """

    embed_dim: int

    def __init__(
        self,
        task: Task,
        meter: Meter | None = None,
        precision: Precision = "fp32",
        max_sequences: int = 512,
        length_bucket: int | None = 64,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
        if length_bucket is not None and (not isinstance(length_bucket, int) or length_bucket < 1):
            raise ValueError(f"length_bucket must be None or an int >= 1, got {length_bucket!r}")
        self.task = task
        self.meter = meter if meter is not None else Meter()
        self.precision = precision
        self.max_sequences = max_sequences
        self.length_bucket = length_bucket

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` of the scores."""
        return self.task.num_classes

    @property
    def device(self) -> torch.device:
        """Device the model runs on."""
        return torch.device("cpu")

    @abstractmethod
    def encode(self, examples: Sequence[Example], template: Task | None = None) -> EncodedBatch:
        """Tokenise examples once for this backend (no query, no charge).

        ``template`` (default: this backend's task) renders the examples with another
        task's template, e.g. out-of-distribution inputs scored with this task's
        verbalizers; their labels are validated against ``template``.
        """

    @abstractmethod
    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """Score ``prompts [p, n, d]`` on ``batch``; return float32 ``[p, b, C]``."""

    def score(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """Return class scores ``[P, B, C]`` for each prompt on each example.

        Charges ``P`` API calls to the meter before running (raising
        :class:`~bayesprompt.lm.meter.BudgetExhausted` if they do not fit).

        Parameters
        ----------
        prompts : Tensor ``[P, n_tokens, d]``
            Soft prompts in the input-embedding space; ``n_tokens`` may be 0.
        batch : EncodedBatch
            From :meth:`encode`.
        """
        prompts = self._check_prompts(prompts)
        if len(batch) == 0:
            raise ValueError("batch is empty: score() needs at least one example")
        self._check_query(prompts, batch)
        num_prompts, num_slots, _ = prompts.shape
        num_examples = len(batch)
        self.meter.charge(
            calls=num_prompts,
            sequences=num_prompts * num_examples,
            tokens=num_prompts * (batch.num_tokens + num_slots * num_examples),
        )
        with torch.inference_mode(), self._autocast():
            return self._score_chunked(prompts.to(self.device), batch)

    def _check_query(self, prompts: torch.Tensor, batch: EncodedBatch) -> None:
        """Backend-specific validation of a query, run before it is charged (default: none)."""

    def example_chunks(self, batch: EncodedBatch) -> list[slice | torch.Tensor]:
        """The example indices of each forward pass of one prompt over ``batch``.

        Contiguous slices of at most ``max_sequences`` examples, or, for a batch of more
        than ``length_bucket`` examples, length-sorted index chunks of ``length_bucket``
        (see the class notes). :meth:`score` runs these chunks; code that takes its own
        forwards (white-box gradients) can use them to pad alike.

        Examples
        --------
        >>> from bayesprompt.data.task import Example, Task
        >>> from bayesprompt.testing import FakeBlackBox
        >>> task = Task("toy", ("a", "b"), ("A.", "B."), "{text} {mask}", ("a", "b"))
        >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
        >>> batch = EncodedBatch(torch.ones(3, 3, dtype=torch.long), mask, torch.zeros(3, dtype=torch.long))
        >>> [chunk.tolist() for chunk in FakeBlackBox(task, embed_dim=4, length_bucket=2).example_chunks(batch)]
        [[1, 2], [0]]
        >>> FakeBlackBox(task, embed_dim=4, length_bucket=None, max_sequences=2).example_chunks(batch)
        [slice(0, 2, None), slice(2, 4, None)]
        """
        num_examples, per_pass = len(batch), self._examples_per_pass(len(batch))
        if self._length_sorted(num_examples):
            order = batch.attention_mask.sum(-1).argsort(stable=True)
            return [order[start : start + per_pass] for start in range(0, num_examples, per_pass)]
        return [slice(start, start + per_pass) for start in range(0, num_examples, per_pass)]

    def _length_sorted(self, num_examples: int) -> bool:
        return self.length_bucket is not None and num_examples > self.length_bucket

    def _examples_per_pass(self, num_examples: int) -> int:
        if self._length_sorted(num_examples):
            return min(self.length_bucket, self.max_sequences)
        return max(1, min(num_examples, self.max_sequences))

    def _score_chunked(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        chunks = self.example_chunks(batch)
        prompt_step = max(1, self.max_sequences // self._examples_per_pass(len(batch)))
        rows = []
        for p0 in range(0, prompts.shape[0], prompt_step):
            cols = [
                self._score_chunk(prompts[p0 : p0 + prompt_step], batch.select(index)).float().cpu()
                for index in chunks
            ]
            rows.append(torch.cat(cols, dim=1))
        scores = torch.cat(rows, dim=0)
        if not self._length_sorted(len(batch)):
            return scores
        unsorted = torch.empty_like(scores)
        unsorted[:, torch.cat(chunks)] = scores
        return unsorted

    def _check_prompts(self, prompts: torch.Tensor) -> torch.Tensor:
        if not isinstance(prompts, torch.Tensor):
            raise TypeError(f"prompts must be a torch.Tensor [P, n_tokens, d], got {type(prompts).__name__}")
        if prompts.ndim != 3:
            raise ValueError(
                f"prompts must have shape [P, n_tokens, d], got {tuple(prompts.shape)}"
            )
        if prompts.shape[-1] != self.embed_dim:
            raise ValueError(
                f"prompt width {prompts.shape[-1]} does not match the model's embedding "
                f"size {self.embed_dim} (prompts shape {tuple(prompts.shape)})"
            )
        if prompts.shape[0] == 0:
            raise ValueError("prompts is empty: need at least one prompt (P >= 1)")
        if not torch.isfinite(prompts).all():
            bad = (~torch.isfinite(prompts)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"prompts contain NaN or inf (prompt indices {bad[:10]})")
        return prompts.detach().float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return bf16_autocast(self.device)
        return contextlib.nullcontext()
