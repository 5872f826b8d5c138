"""Black-box language-model backends, query metering and the label-only view.

Examples
--------
>>> from bayesprompt.lm import Meter
>>> Meter(budget=100).remaining
100
>>> box = load_backend("encoder", task)              # doctest: +SKIP
>>> box = load_backend("mlm", task, model_name_or_path="roberta-large")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bayesprompt.data.task import Task
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.lm.label_only import LabelOnly
from bayesprompt.lm.meter import BudgetExhausted, Meter, MeterSnapshot, ProbeInterrupt
from bayesprompt.lm.precision import bf16_arithmetic, bf16_autocast, native_bf16

if TYPE_CHECKING:
    from bayesprompt.lm.masked_lm import MaskedLMBlackBox
    from bayesprompt.lm.sentence_encoder import DEFAULT_SCALE, SentenceEncoderBlackBox, fit_scale

#: Names of the Hugging Face backends, imported on first use: importing transformers takes
#: seconds, which the engines, the meter and ``bayesprompt --help`` do not need.
_LAZY = {
    "MaskedLMBlackBox": "bayesprompt.lm.masked_lm",
    "DEFAULT_SCALE": "bayesprompt.lm.sentence_encoder",
    "SentenceEncoderBlackBox": "bayesprompt.lm.sentence_encoder",
    "fit_scale": "bayesprompt.lm.sentence_encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BACKENDS",
    "BudgetExhausted",
    "DEFAULT_SCALE",
    "EncodedBatch",
    "LabelOnly",
    "MaskedLMBlackBox",
    "Meter",
    "MeterSnapshot",
    "ProbeInterrupt",
    "PromptBlackBox",
    "SentenceEncoderBlackBox",
    "bf16_arithmetic",
    "bf16_autocast",
    "fit_scale",
    "load_backend",
    "native_bf16",
]

#: Backend kinds accepted by :func:`load_backend`.
BACKENDS: tuple[str, ...] = ("encoder", "mlm")


def load_backend(kind: str, task: Task, **kwargs: Any) -> PromptBlackBox:
    """Build a backend by kind.

    Parameters
    ----------
    kind : {"encoder", "mlm"}
        ``"encoder"``: :class:`SentenceEncoderBlackBox` (default model: the bundled
        all-MiniLM-L6-v2); ``"mlm"``: :class:`MaskedLMBlackBox` (needs
        ``model_name_or_path``).
    task : Task
        The task to classify.
    **kwargs
        Passed to the backend's constructor.

    Examples
    --------
    >>> load_backend("gpt", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown backend kind 'gpt'; choose one of ('encoder', 'mlm')
    """
    if kind == "encoder":
        from bayesprompt.lm.sentence_encoder import SentenceEncoderBlackBox

        return SentenceEncoderBlackBox(task, **kwargs)
    if kind == "mlm":
        if "model_name_or_path" not in kwargs:
            raise ValueError("load_backend('mlm', ...) needs model_name_or_path (e.g. 'roberta-large')")
        from bayesprompt.lm.masked_lm import MaskedLMBlackBox

        return MaskedLMBlackBox(task, **kwargs)
    raise ValueError(f"unknown backend kind {kind!r}; choose one of {BACKENDS}")
