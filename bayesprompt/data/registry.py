"""Built-in tasks: the Black-Box Tuning (BBT) benchmark suite plus IMDB.

:data:`TASKS` is a read-only mapping from task name to :class:`~bayesprompt.data.Task`:

========  =====================  =======  ========
name      dataset                classes  metric
========  =====================  =======  ========
sst2      SST-2 (GLUE)           2        accuracy
imdb      IMDB (out-of-domain)   2        accuracy
agnews    AG News                4        accuracy
dbpedia   DBPedia-14             14       accuracy
mrpc      MRPC (GLUE), pairs     2        f1
rte       RTE (GLUE), pairs      2        accuracy
snli      SNLI, pairs            3        accuracy
========  =====================  =======  ========

Label ids follow the Hugging Face ``datasets`` order, which is also the order of the
local data files. Masked-LM templates and verbalizers follow BBT (Sun et al., 2022) for
RoBERTa; verbalizer words are written without a leading space, which the backend adds.

>>> from bayesprompt.data import TASKS, get_task
>>> sorted(TASKS)
['agnews', 'dbpedia', 'imdb', 'mrpc', 'rte', 'snli', 'sst2']
>>> get_task("agnews").label_names
('World', 'Sports', 'Business', 'Sci/Tech')
>>> get_task("mrpc").metric
'f1'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bayesprompt.data.task import HubSource, Task

__all__ = ["TASKS", "get_task"]

_PAIR_TEMPLATE = "{text} ? {mask} , {text_pair}"
_SENTIMENT_TEMPLATE = "{text} It was {mask} ."
_SENTIMENT_ENCODER = ("It was terrible.", "It was great.")
_SENTIMENT_MLM = ("bad", "great")


def _sst2() -> Task:
    return Task(
        name="sst2",
        label_names=("negative", "positive"),
        encoder_verbalizers=_SENTIMENT_ENCODER,
        mlm_template=_SENTIMENT_TEMPLATE,
        mlm_verbalizers=_SENTIMENT_MLM,
        hub=HubSource(
            path="nyu-mll/glue",
            name="sst2",
            splits={"train": "train", "test": "validation"},
            text_field="sentence",
        ),
    )


def _imdb() -> Task:
    return Task(
        name="imdb",
        label_names=("neg", "pos"),
        encoder_verbalizers=_SENTIMENT_ENCODER,
        mlm_template=_SENTIMENT_TEMPLATE,
        mlm_verbalizers=_SENTIMENT_MLM,
        hub=HubSource(
            path="stanfordnlp/imdb",
            splits={"train": "train", "test": "test"},
            text_field="text",
        ),
    )


def _agnews() -> Task:
    return Task(
        name="agnews",
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        encoder_verbalizers=(
            "This is world news.",
            "This is sports news.",
            "This is business news.",
            "This is science and technology news.",
        ),
        mlm_template="{mask} News: {text}",
        mlm_verbalizers=("World", "Sports", "Business", "Tech"),
        hub=HubSource(
            path="fancyzhx/ag_news",
            splits={"train": "train", "test": "test"},
            text_field="text",
        ),
    )


def _dbpedia() -> Task:
    return Task(
        name="dbpedia",
        label_names=(
            "Company",
            "EducationalInstitution",
            "Artist",
            "Athlete",
            "OfficeHolder",
            "MeanOfTransportation",
            "Building",
            "NaturalPlace",
            "Village",
            "Animal",
            "Plant",
            "Album",
            "Film",
            "WrittenWork",
        ),
        encoder_verbalizers=(
            "This is about a company.",
            "This is about an educational institution.",
            "This is about an artist.",
            "This is about an athlete.",
            "This is about a politician or office holder.",
            "This is about a means of transportation.",
            "This is about a building.",
            "This is about a natural place.",
            "This is about a village.",
            "This is about an animal.",
            "This is about a plant.",
            "This is about a music album.",
            "This is about a film.",
            "This is about a written work.",
        ),
        mlm_template="[Category: {mask}] {text}",
        mlm_verbalizers=(
            "Company",
            "Education",
            "Artist",
            "Athlete",
            "Office",
            "Transportation",
            "Building",
            "Natural",
            "Village",
            "Animal",
            "Plant",
            "Album",
            "Film",
            "Written",
        ),
        hub=HubSource(
            path="fancyzhx/dbpedia_14",
            splits={"train": "train", "test": "test"},
            text_field="content",
        ),
    )


def _mrpc() -> Task:
    return Task(
        name="mrpc",
        label_names=("not_equivalent", "equivalent"),
        encoder_verbalizers=(
            "The two sentences say different things.",
            "The two sentences say the same thing.",
        ),
        mlm_template=_PAIR_TEMPLATE,
        mlm_verbalizers=("No", "Yes"),
        is_pair=True,
        metric="f1",
        hub=HubSource(
            path="nyu-mll/glue",
            name="mrpc",
            splits={"train": "train", "test": "validation"},
            text_field="sentence1",
            pair_field="sentence2",
        ),
    )


def _rte() -> Task:
    return Task(
        name="rte",
        label_names=("entailment", "not_entailment"),
        encoder_verbalizers=(
            "The second sentence follows from the first.",
            "The second sentence does not follow from the first.",
        ),
        mlm_template=_PAIR_TEMPLATE,
        mlm_verbalizers=("Yes", "No"),
        is_pair=True,
        hub=HubSource(
            path="nyu-mll/glue",
            name="rte",
            splits={"train": "train", "test": "validation"},
            text_field="sentence1",
            pair_field="sentence2",
        ),
    )


def _snli() -> Task:
    return Task(
        name="snli",
        label_names=("entailment", "neutral", "contradiction"),
        encoder_verbalizers=(
            "The second sentence is true.",
            "The second sentence might be true.",
            "The second sentence is false.",
        ),
        mlm_template=_PAIR_TEMPLATE,
        mlm_verbalizers=("Yes", "Maybe", "No"),
        is_pair=True,
        hub=HubSource(
            path="stanfordnlp/snli",
            splits={"train": "train", "dev": "validation", "test": "test"},
            text_field="premise",
            pair_field="hypothesis",
        ),
    )


def _build_tasks() -> Mapping[str, Task]:
    tasks = (_sst2(), _imdb(), _agnews(), _dbpedia(), _mrpc(), _rte(), _snli())
    return MappingProxyType({task.name: task for task in tasks})


TASKS: Mapping[str, Task] = _build_tasks()
"""Read-only mapping ``name -> Task`` of the built-in tasks."""


def get_task(name_or_task: str | Task) -> Task:
    """Look up a built-in task by name, or pass a :class:`Task` through unchanged.

    Parameters
    ----------
    name_or_task : str or Task
        A key of :data:`TASKS` (e.g. ``"sst2"``) or a user-defined :class:`Task`.

    Returns
    -------
    Task

    Raises
    ------
    ValueError
        If the name is not a built-in task; the message lists the known names.
    TypeError
        If the argument is neither a string nor a :class:`Task`.

    Examples
    --------
    >>> get_task("sst2").mlm_verbalizers
    ('bad', 'great')
    >>> get_task("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'nope'; known tasks: agnews, dbpedia, imdb, mrpc, rte, snli, sst2
    """
    if isinstance(name_or_task, Task):
        return name_or_task
    if not isinstance(name_or_task, str):
        raise TypeError(
            f"expected a task name (str) or a Task, got {type(name_or_task).__name__}"
        )
    try:
        return TASKS[name_or_task]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name_or_task!r}; known tasks: {known}") from None
