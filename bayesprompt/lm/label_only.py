"""The likelihood-free view of a black box: predicted labels only.

Code that holds a :class:`LabelOnly` can query predicted labels and read the meter, but
has no method that returns scores. ABC-type engines are handed this view, which is how
the package guarantees they never use information a label-only API would not give.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.lm.meter import Meter

__all__ = ["LabelOnly"]


class LabelOnly:
    """Wrap a backend so that only arg-max labels ``[P, B]`` come back.

    Parameters
    ----------
    blackbox : PromptBlackBox
        Any scoring backend. Its meter is shared, so label queries are charged exactly
        like score queries.

    Examples
    --------
    >>> view = LabelOnly(backend)                      # doctest: +SKIP
    >>> labels = view.predict(prompts, view.encode(examples))  # doctest: +SKIP
    >>> labels.shape                                   # doctest: +SKIP
    torch.Size([P, B])
    """

    __slots__ = ("__blackbox",)

    def __init__(self, blackbox: PromptBlackBox) -> None:
        if isinstance(blackbox, LabelOnly):
            blackbox = blackbox.__blackbox
        if not isinstance(blackbox, PromptBlackBox):
            raise TypeError(f"LabelOnly wraps a PromptBlackBox, got {type(blackbox).__name__}")
        self.__blackbox = blackbox

    @property
    def meter(self) -> Meter:
        """The shared query meter."""
        return self.__blackbox.meter

    @property
    def task(self) -> Task:
        """The task being classified."""
        return self.__blackbox.task

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.__blackbox.num_classes

    @property
    def embed_dim(self) -> int:
        """Width ``d`` of the prompt vectors."""
        return self.__blackbox.embed_dim

    def encode(self, examples: Sequence[Example], template: Task | None = None) -> EncodedBatch:
        """Tokenise examples (no query); see :meth:`PromptBlackBox.encode`."""
        return self.__blackbox.encode(examples, template)

    def predict(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """Return predicted labels ``[P, B]`` (int64); charged like :meth:`PromptBlackBox.score`."""
        return self.__blackbox.score(prompts, batch).argmax(-1)

    def __repr__(self) -> str:
        return f"LabelOnly({type(self.__blackbox).__name__})"
