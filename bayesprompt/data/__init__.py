"""Tasks, data loading and few-shot sampling.

* :class:`Task`, :class:`Example`, :class:`HubSource`: what a task and an example are.
* :data:`TASKS`, :func:`get_task`: the built-in tasks (sst2, imdb, agnews, dbpedia,
  mrpc, rte, snli).
* :func:`load_split`, :func:`load_jsonl`, :func:`resolve_data_dir`: validated loading of
  local JSON Lines files (``<data_dir>/<task>/<split>.jsonl``); :func:`load_hub` does
  the same from the Hugging Face hub. Bad data raises :class:`DataError`.
* :func:`few_shot_split`, :func:`balanced_subsample`: seeded, class-balanced sampling.

Typical use (``data_dir`` may be omitted when ``$BAYESPROMPT_DATA`` is set)::

    >>> from bayesprompt.data import get_task, load_split, few_shot_split
    >>> task = get_task("sst2")
    >>> pool = load_split(task, "train", data_dir="/path/to/data")      # doctest: +SKIP
    >>> train, dev = few_shot_split(pool, task.num_classes, k=16, seed=42)  # doctest: +SKIP
    >>> test = load_split(task, "test", data_dir="/path/to/data")       # doctest: +SKIP
    >>> len(train), len(dev)                                            # doctest: +SKIP
    (32, 32)
"""

from bayesprompt.data.fewshot import balanced_subsample, examples_fingerprint, few_shot_split
from bayesprompt.data.loaders import DataError, load_hub, load_jsonl, load_split, resolve_data_dir, split_path
from bayesprompt.data.registry import TASKS, get_task
from bayesprompt.data.task import UNLABELLED, Example, HubSource, Task

__all__ = [
    "Example",
    "Task",
    "HubSource",
    "UNLABELLED",
    "TASKS",
    "get_task",
    "DataError",
    "load_jsonl",
    "load_split",
    "split_path",
    "load_hub",
    "resolve_data_dir",
    "few_shot_split",
    "balanced_subsample",
    "examples_fingerprint",
]
