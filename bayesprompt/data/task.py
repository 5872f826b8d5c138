"""Task definitions: what a classification task looks like to each black-box backend.

A :class:`Task` carries everything a backend needs to turn raw examples into class
scores: the class names, a verbalizer per backend family, a masked-LM template and the
evaluation metric. Built-in tasks live in :mod:`bayesprompt.data.registry`; defining
your own is a few lines::

    >>> from bayesprompt.data import Task
    >>> spam = Task(
    ...     name="spam",
    ...     label_names=("ham", "spam"),
    ...     encoder_verbalizers=("This is a normal message.", "This is spam."),
    ...     mlm_template="{text} This is {mask} .",
    ...     mlm_verbalizers=("normal", "spam"),
    ... )
    >>> spam.num_classes
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Example", "Task", "HubSource", "UNLABELLED"]

#: The ``label`` of an example read for prediction without a gold label.
UNLABELLED: int = -1


@dataclass(frozen=True)
class Example:
    """One labelled example.

    Parameters
    ----------
    text : str
        The sentence (or first sentence / premise of a pair task).
    label : int
        Class index in ``range(task.num_classes)``, or :data:`UNLABELLED` for an input read
        only to be predicted (``load_jsonl(..., labelled=False)``).
    text_pair : str or None
        Second sentence / hypothesis for sentence-pair tasks, else ``None``.
    """

    text: str
    label: int
    text_pair: str | None = None


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hugging Face hub (for online users).

    Parameters
    ----------
    path, name : str
        Arguments of :func:`datasets.load_dataset`.
    splits : dict
        Maps our split names (``train``, ``dev``, ``test``) to hub split names. It is
        excluded from the hash (a ``dict`` is unhashable), so a :class:`Task` carrying a
        :class:`HubSource` stays hashable; treat it as read-only.
    text_field, pair_field, label_field : str
        Column names on the hub.
    """

    path: str
    name: str | None = None
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "test": "validation"}, hash=False
    )
    text_field: str = "sentence"
    pair_field: str | None = None
    label_field: str = "label"


@dataclass(frozen=True)
class Task:
    """A few-shot classification task.

    Parameters
    ----------
    name : str
        Identifier; also the sub-folder of the data directory.
    label_names : tuple of str
        Class names, in label-id order.
    encoder_verbalizers : tuple of str
        One sentence per class for sentence-encoder backends: the class score is the
        cosine similarity between the (prompted) input embedding and this sentence's
        embedding.
    mlm_template : str
        Masked-LM template with ``{text}``, optional ``{text_pair}`` and ``{mask}``.
    mlm_verbalizers : tuple of str
        One word per class; each must be a single token of the masked LM's vocabulary.
    is_pair : bool
        Whether examples have a ``text_pair``.
    metric : {"accuracy", "f1"}
        Headline metric (binary F1 of class 1 for MRPC).
    hub : HubSource or None
        Hugging Face hub location, used by :func:`bayesprompt.data.load_hub`.
    """

    name: str
    label_names: tuple[str, ...]
    encoder_verbalizers: tuple[str, ...]
    mlm_template: str
    mlm_verbalizers: tuple[str, ...]
    is_pair: bool = False
    metric: Literal["accuracy", "f1"] = "accuracy"
    hub: HubSource | None = None

    def __post_init__(self) -> None:
        c = len(self.label_names)
        if c < 2:
            raise ValueError(f"Task {self.name!r}: label_names needs at least 2 classes, got {c}")
        for attr in ("encoder_verbalizers", "mlm_verbalizers"):
            n = len(getattr(self, attr))
            if n != c:
                raise ValueError(
                    f"Task {self.name!r}: {attr} has {n} entries but there are {c} classes"
                )
        if "{mask}" not in self.mlm_template or "{text}" not in self.mlm_template:
            raise ValueError(
                f"Task {self.name!r}: mlm_template must contain '{{text}}' and '{{mask}}', "
                f"got {self.mlm_template!r}"
            )
        if self.is_pair and "{text_pair}" not in self.mlm_template:
            raise ValueError(
                f"Task {self.name!r}: a pair task's mlm_template must contain '{{text_pair}}'"
            )
        if self.metric not in ("accuracy", "f1"):
            raise ValueError(f"Task {self.name!r}: metric must be 'accuracy' or 'f1', got {self.metric!r}")
        if self.metric == "f1" and c != 2:
            raise ValueError(f"Task {self.name!r}: metric 'f1' is binary and needs 2 classes")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.label_names)
