"""Masked-LM black box (RoBERTa / BERT): the setting of BBT and of the paper.

The example is written into ``task.mlm_template`` (``{text}``, ``{text_pair}`` and
``{mask}`` replaced, the mask by the tokenizer's mask token), tokenised with the model's
special tokens, and the soft prompt is inserted right after the first special token
(``<s>`` / ``[CLS]``)::

    <s> p_1 ... p_n  text It was <mask> . </s>

The class scores are the masked-LM logits, at the mask position, of the verbalizer tokens
(``task.mlm_verbalizers``, each a single token of the vocabulary).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.base import EncodedBatch, Precision, PromptBlackBox
from bayesprompt.lm.meter import Meter
from bayesprompt.lm.sentence_encoder import (
    check_fits,
    check_max_length,
    example_labels,
    example_texts,
    position_limit,
    repeat,
    splice,
    splice_mask,
)

__all__ = ["MaskedLMBlackBox", "verbalizer_token_ids"]

Mode = Literal["prepend", "add"]
_PLACEHOLDER = re.compile(r"\{(text|text_pair|mask)\}")
_HEAD_NAMES = ("lm_head", "cls", "predictions")


class MaskedLMBlackBox(PromptBlackBox):
    """Soft prompts for a masked language model, scored by verbalizer logits.

    Parameters
    ----------
    task : Task
        Supplies ``mlm_template`` and ``mlm_verbalizers``.
    model_name_or_path : str or PathLike
        Hub id or local folder for ``AutoTokenizer`` (a fast tokenizer, for offsets) and
        ``AutoModelForMaskedLM``.
    meter : Meter or None
        Where queries are charged.
    precision : {"fp32", "bf16"}
        Forward-pass precision (bf16 autocast); scores are float32 either way.
    max_sequences : int
        Upper bound on sequences per forward pass.
    length_bucket : int or None
        Sort large batches by length into chunks of this many examples (see
        :class:`~bayesprompt.lm.base.PromptBlackBox`); ``None``: contiguous chunks.
    mode : {"prepend", "add"}
        ``"prepend"`` inserts the prompt as given. ``"add"`` inserts
        ``initial_prompt + prompt`` (BBT: the searched vector is an offset from a fixed
        initial prompt, e.g. the embeddings of random vocabulary tokens).
    initial_prompt : Tensor or None
        Required in ``"add"`` mode, where its ``n`` fixes the prompt length; not allowed in
        ``"prepend"`` mode. A float Tensor ``[n, d]`` is used as is; an integer Tensor
        ``[n]`` of vocabulary ids is replaced by those tokens' word embeddings (so the
        model need not be loaded twice to build BBT's random-token initial prompt).
    max_length : int
        Tokens per example, special tokens and template included. Only the text (and
        text pair, longer first) is truncated, from its end, so the mask token always
        survives.

    Raises
    ------
    ValueError
        If a verbalizer word is not a single token, the template alone does not fit in
        ``max_length``, or ``mode`` / ``initial_prompt`` are inconsistent.

    Notes
    -----
    Text and text pair are stripped of surrounding whitespace, then the template string is
    tokenised as a whole (so BPE merges and the mask token's whitespace handling are the
    tokenizer's own); truncation removes text tokens identified by their character
    offsets. All parts share token type 0.

    Examples
    --------
    >>> from bayesprompt.data import Task
    >>> task = Task("sst2", ("negative", "positive"),
    ...             ("It was terrible.", "It was great."), "{text} It was {mask} .",
    ...             ("terrible", "great"))
    >>> box = MaskedLMBlackBox(task, "roberta-large")  # doctest: +SKIP
    >>> batch = box.encode([Example("a gorgeous film", 1)])  # doctest: +SKIP
    >>> box.score(torch.zeros(8, 50, box.embed_dim), batch).shape  # doctest: +SKIP
    torch.Size([8, 1, 2])
    """

    def __init__(
        self,
        task: Task,
        model_name_or_path: str | PathLike,
        meter: Meter | None = None,
        precision: Precision = "fp32",
        max_sequences: int = 256,
        mode: Mode = "prepend",
        initial_prompt: torch.Tensor | None = None,
        max_length: int = 128,
        length_bucket: int | None = 64,
    ) -> None:
        super().__init__(task, meter=meter, precision=precision, max_sequences=max_sequences, length_bucket=length_bucket)
        self.model_name_or_path = str(model_name_or_path)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.model_name_or_path)
        self.model: PreTrainedModel = AutoModelForMaskedLM.from_pretrained(
            self.model_name_or_path, dtype=torch.float32
        ).eval()
        self.embed_dim = int(self.model.get_input_embeddings().embedding_dim)
        self.position_limit = position_limit(self.model)
        self.max_length = check_max_length(max_length, self.position_limit)
        _check_tokenizer(self.tokenizer)
        self.mode = mode
        self.initial_prompt = _check_initial_prompt(mode, initial_prompt, self.embedding_table())
        self.verbalizer_ids = verbalizer_token_ids(self.tokenizer, task.mlm_verbalizers)
        self._head = _find_head(self.model)

    def embedding_table(self) -> torch.Tensor:
        """Return the word-embedding matrix ``[V, d]`` (a read-only view; not a query)."""
        return self.model.get_input_embeddings().weight.detach()

    def encode(self, examples: Sequence[Example], template: Task | None = None) -> EncodedBatch:
        """Fill the template and tokenise; ``extras["mask_position"]`` is the mask index.

        The mask index is relative to the text sequence (without prompt slots). No query
        is made and nothing is charged. An empty sequence gives an empty batch.
        ``template`` renders the examples with another task's template (e.g. OOD inputs);
        the scores still use this backend's verbalizers.
        """
        template = self.task if template is None else template
        examples = list(examples)
        labels = example_labels(examples, template)
        if not examples:
            empty = torch.zeros(0, 0, dtype=torch.long)
            return EncodedBatch(empty, empty.clone(), labels, {"mask_position": labels.clone()})
        texts, pairs = example_texts(examples, template)
        rows = [
            self._encode_one(t, pairs[i] if pairs else None, template.mlm_template) for i, t in enumerate(texts)
        ]
        return self._collate(rows, labels)

    def _check_query(self, prompts: torch.Tensor, batch: EncodedBatch) -> None:
        """Refuse, before charging, prompts too long for the position table and, in
        ``"add"`` mode, prompts whose length differs from ``initial_prompt``."""
        if self.initial_prompt is not None and tuple(prompts.shape[1:]) != tuple(self.initial_prompt.shape):
            raise ValueError(
                f"mode 'add' needs prompts [P, {self.initial_prompt.shape[0]}, "
                f"{self.embed_dim}] matching initial_prompt, got {tuple(prompts.shape)}"
            )
        check_fits(prompts, batch, self.position_limit)

    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        if self.initial_prompt is not None:
            prompts = prompts + self.initial_prompt.to(prompts.device)
        num_prompts, num_slots, _ = prompts.shape
        words = self.model.get_input_embeddings()(batch.input_ids)
        inputs = splice(words, prompts.to(words.dtype))
        attention = repeat(splice_mask(batch.attention_mask, num_slots, 1), num_prompts)
        mask_at = repeat(batch.extras["mask_position"], num_prompts) + num_slots
        logits = self._mask_logits(inputs, attention, mask_at)
        return logits[:, self.verbalizer_ids].float().view(num_prompts, len(batch), -1)

    def _mask_logits(self, inputs: torch.Tensor, attention: torch.Tensor, mask_at: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[N, V]`` at the mask position of each sequence."""
        rows = torch.arange(inputs.shape[0])
        if self._head is None:
            logits = self.model(inputs_embeds=inputs, attention_mask=attention).logits
            return logits[rows, mask_at]
        hidden = self.model.base_model(inputs_embeds=inputs, attention_mask=attention)[0]
        return self._head(hidden[rows, mask_at])

    def _encode_one(self, text: str, pair: str | None, mlm_template: str) -> list[int]:
        string, spans = fill_template(mlm_template, self.tokenizer.mask_token, text, pair)
        enc = self.tokenizer(
            string, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False
        )
        ids = list(enc["input_ids"])
        excess = len(ids) - self.max_length
        if excess > 0:
            owners = _span_owners(enc["offset_mapping"], enc["special_tokens_mask"], spans)
            drop = _tokens_to_drop(owners, excess, self.max_length)
            ids = [tok for i, tok in enumerate(ids) if i not in drop]
        if ids.count(self.tokenizer.mask_token_id) != 1:
            raise ValueError(
                f"the filled template must contain exactly one mask token, found "
                f"{ids.count(self.tokenizer.mask_token_id)} in {string!r}"
            )
        return ids

    def _collate(self, rows: list[list[int]], labels: torch.Tensor) -> EncodedBatch:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        mask_position = torch.tensor([r.index(self.tokenizer.mask_token_id) for r in rows], dtype=torch.long)
        return EncodedBatch(input_ids, attention, labels, {"mask_position": mask_position})

    def __repr__(self) -> str:
        return (
            f"MaskedLMBlackBox(task={self.task.name!r}, model={self.model_name_or_path!r}, "
            f"mode={self.mode!r}, precision={self.precision!r})"
        )


def verbalizer_token_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[int]:
    """Token id of each verbalizer word: ``" word"`` (BPE style) or else ``"word"``.

    Raises ``ValueError`` naming the word and its tokenizations if neither is exactly one
    known token.
    """
    ids = []
    for word in words:
        tried = {}
        for candidate in (" " + word, word):
            tokens = tokenizer.encode(candidate, add_special_tokens=False)
            tried[candidate] = tokenizer.convert_ids_to_tokens(tokens)
            if len(tokens) == 1 and tokens[0] != tokenizer.unk_token_id:
                ids.append(tokens[0])
                break
        else:
            raise ValueError(
                f"verbalizer word {word!r} is not a single token of this vocabulary: "
                + ", ".join(f"{c!r} -> {t}" for c, t in tried.items())
            )
    if len(set(ids)) != len(ids):
        raise ValueError(f"verbalizer words {tuple(words)} map to repeated token ids {ids}")
    return ids


def fill_template(
    template: str, mask_token: str, text: str, pair: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Fill ``template``; return the string and the character spans of text and pair.

    Examples
    --------
    >>> fill_template("{text} It was {mask} .", "<mask>", "so good")
    ('so good It was <mask> .', [(0, 7)])
    """
    values = {"text": text, "text_pair": pair or "", "mask": mask_token}
    pieces, spans, cursor = [], [], 0
    parts = _PLACEHOLDER.split(template)
    for index, part in enumerate(parts):
        is_field = index % 2 == 1
        value = values[part] if is_field else part
        if is_field and part != "mask":
            spans.append((cursor, cursor + len(value)))
        pieces.append(value)
        cursor += len(value)
    return "".join(pieces), spans


def _span_owners(offsets, special, spans: list[tuple[int, int]]) -> list[int]:
    """For each token, the index of the text span it overlaps, or -1."""
    owners = []
    for (start, end), is_special in zip(offsets, special):
        owner = -1
        if not is_special and end > start:
            owner = next((k for k, (a, b) in enumerate(spans) if start < b and end > a), -1)
        owners.append(owner)
    return owners


def _tokens_to_drop(owners: list[int], excess: int, max_length: int) -> set[int]:
    """Indices of the text tokens to remove: from the end of the longest span first."""
    by_span: dict[int, list[int]] = {}
    for i, owner in enumerate(owners):
        if owner >= 0:
            by_span.setdefault(owner, []).append(i)
    drop: set[int] = set()
    for _ in range(excess):
        longest = max(by_span.values(), key=len, default=[])
        if not longest:
            raise ValueError(
                f"the template and special tokens alone need more than max_length={max_length} "
                f"tokens; raise max_length"
            )
        drop.add(longest.pop())
    return drop


def _find_head(model: PreTrainedModel) -> nn.Module | None:
    """The masked-LM head module mapping hidden states to vocabulary logits, if standard."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and head is not model.base_model:
            return head
    return None


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.mask_token is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a mask token and a pad token")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("MaskedLMBlackBox needs a fast tokenizer (character offsets for truncation)")
    ids = tokenizer("a")["input_ids"]
    if not ids or ids[0] not in tokenizer.all_special_ids:
        raise ValueError(
            "the tokenizer must add a leading special token (<s> or [CLS]) after which the "
            f"prompt is inserted; it gives {tokenizer.convert_ids_to_tokens(ids)} for 'a'"
        )


def _check_initial_prompt(
    mode: str, initial_prompt: torch.Tensor | None, table: torch.Tensor
) -> torch.Tensor | None:
    """Validate ``initial_prompt`` for ``mode``; token ids ``[n]`` become embeddings ``[n, d]``."""
    if mode not in ("prepend", "add"):
        raise ValueError(f"mode must be 'prepend' or 'add', got {mode!r}")
    if mode == "prepend":
        if initial_prompt is not None:
            raise ValueError("initial_prompt is only used in mode 'add'; pass mode='add' or drop it")
        return None
    if initial_prompt is None:
        raise ValueError(
            "mode 'add' needs initial_prompt: a float Tensor [n_tokens, d] or a LongTensor "
            "[n_tokens] of vocabulary ids whose embeddings start the prompt (BBT uses n random "
            "vocabulary tokens); the prompt length is not known without it"
        )
    if not isinstance(initial_prompt, torch.Tensor):
        raise TypeError(f"initial_prompt must be a Tensor, got {type(initial_prompt).__name__}")
    if not initial_prompt.is_floating_point():
        return _embed_token_ids(initial_prompt, table)
    dim = table.shape[1]
    if initial_prompt.ndim != 2 or initial_prompt.shape[1] != dim:
        raise ValueError(f"initial_prompt must be [n_tokens, {dim}], got {tuple(initial_prompt.shape)}")
    if not torch.isfinite(initial_prompt).all():
        raise ValueError("initial_prompt contains NaN or inf")
    return initial_prompt.detach().float().clone()


def _embed_token_ids(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    vocab = table.shape[0]
    if ids.ndim != 1 or (ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab)):
        raise ValueError(f"initial_prompt token ids must be a 1-D LongTensor in [0, {vocab}), got {ids.tolist()[:10]}")
    return table[ids.long()].detach().float().clone()
