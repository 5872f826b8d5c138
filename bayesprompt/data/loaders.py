"""Load labelled examples from local JSON Lines files or from the Hugging Face hub.

Local layout: ``<data_dir>/<task.name>/<split>.jsonl`` with ``split`` one of ``train``,
``dev``, ``test``. Each non-blank line is a JSON object::

    {"text": "...", "label": 1, "label_name": "positive"}
    {"text": "...", "text_pair": "...", "label": 0}        # pair tasks

``label_name`` is optional; when it is a string it must equal
``task.label_names[label]``, which catches files written with another label order.
Every problem in a file is reported as a :class:`DataError` that names the file, the
1-based line number and the offending field.

The data directory is the ``data_dir`` argument or, failing that, the environment
variable ``BAYESPROMPT_DATA`` (see :func:`resolve_data_dir`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bayesprompt.data.registry import get_task
from bayesprompt.data.task import UNLABELLED, Example, Task

__all__ = [
    "DATA_ENV_VAR",
    "SPLITS",
    "DataError",
    "resolve_data_dir",
    "load_jsonl",
    "load_split",
    "load_hub",
]

DATA_ENV_VAR = "BAYESPROMPT_DATA"
"""Environment variable holding the default data directory."""

SPLITS = ("train", "dev", "test")
"""Split names understood by :func:`load_split` and :func:`load_hub`."""

_PROXY_TEST = "proxy_test"


class DataError(ValueError):
    """A data file or hub dataset holds a malformed or inconsistent example."""


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory: the argument, else ``$BAYESPROMPT_DATA``.

    Parameters
    ----------
    data_dir : str, path-like or None
        Explicit directory. ``None`` falls back to the environment variable
        ``BAYESPROMPT_DATA`` (an empty value counts as unset). ``~`` is expanded.

    Returns
    -------
    pathlib.Path
        The existing directory.

    Raises
    ------
    ValueError
        If neither the argument nor the environment variable is given.
    FileNotFoundError
        If the directory does not exist.
    NotADirectoryError
        If the path exists but is not a directory.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR) or None
        origin = f"environment variable {DATA_ENV_VAR}"
        if data_dir is None:
            raise ValueError(
                "no data directory given: pass data_dir=... or set the environment variable "
                f"{DATA_ENV_VAR} to the folder that holds one sub-folder per task "
                "(e.g. <data_dir>/sst2/train.jsonl)"
            )
    else:
        origin = "data_dir argument"
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data directory {str(path)!r} (from the {origin}) does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"data directory {str(path)!r} (from the {origin}) is not a directory")
    return path


# --------------------------------------------------------------------------- validation


def _require_text(record: Mapping[str, Any], key: str, where: str) -> str:
    """Return ``record[key]`` if it is a string with non-whitespace content."""
    if key not in record or record[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty or whitespace only")
    return value


def _require_label(record: Mapping[str, Any], key: str, task: Task, where: str) -> int:
    """Return ``record[key]`` if it is an ``int`` (not ``bool``) class index of ``task``."""
    if key not in record or record[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: field {key!r} must be an integer, got {value!r}")
    if not 0 <= value < task.num_classes:
        raise DataError(
            f"{where}: field {key!r} = {value} is out of range for task {task.name!r} "
            f"with {task.num_classes} classes (0..{task.num_classes - 1})"
        )
    return value


def _check_label_name(record: Mapping[str, Any], label: int, task: Task, where: str) -> None:
    """If ``record['label_name']`` is a string, check it names class ``label``."""
    name = record.get("label_name")
    if isinstance(name, str) and name != task.label_names[label]:
        raise DataError(
            f"{where}: field 'label_name' = {name!r} does not match label {label}, which is "
            f"{task.label_names[label]!r} for task {task.name!r} (label order: "
            f"{', '.join(task.label_names)})"
        )


def _make_example(
    record: Mapping[str, Any],
    task: Task,
    where: str,
    *,
    text_key: str = "text",
    pair_key: str | None = "text_pair",
    label_key: str = "label",
    labelled: bool = True,
) -> Example:
    """Validate one record and turn it into an :class:`Example`.

    With ``labelled=False`` a record without a label gets :data:`UNLABELLED`; a label
    that is present is still checked.
    """
    text = _require_text(record, text_key, where)
    if not labelled and record.get(label_key) is None:
        if isinstance(record.get("label_name"), str):
            raise DataError(f"{where}: field 'label_name' is given without {label_key!r}; give both, or neither")
        label = UNLABELLED
    else:
        label = _require_label(record, label_key, task, where)
        _check_label_name(record, label, task, where)
    if task.is_pair:
        if pair_key is None:
            raise DataError(f"{where}: task {task.name!r} is a pair task but no pair field is configured")
        return Example(text=text, label=label, text_pair=_require_text(record, pair_key, where))
    if pair_key is not None and record.get(pair_key) is not None:
        raise DataError(
            f"{where}: field {pair_key!r} is present but task {task.name!r} is a "
            "single-sentence task (is_pair=False)"
        )
    return Example(text=text, label=label)


# --------------------------------------------------------------------------- JSON Lines


def _parse_line(line: str, where: str) -> Mapping[str, Any]:
    """Decode one JSON Lines row, which must be an object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _iter_lines(path: Path) -> Iterable[tuple[int, str]]:
    """Yield ``(1-based line number, line)`` for the non-blank lines of the UTF-8 file ``path``.

    Raises
    ------
    DataError
        Naming the file and line, for a line that is not UTF-8.
    """
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}, line {lineno}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if line.strip():
            yield lineno, line


def load_jsonl(path: str | os.PathLike[str], task: str | Task, *, labelled: bool = True) -> list[Example]:
    """Read and validate a JSON Lines file of examples.

    Parameters
    ----------
    path : str or path-like
        The ``.jsonl`` file. Blank lines are skipped (they still count for line numbers).
    task : str or Task
        The task (or built-in task name) the file belongs to; it fixes the number of
        classes, the label names and whether ``text_pair`` is required.
    labelled : bool
        Require a ``label`` on every row (the default). ``False`` reads inputs to predict:
        a row may omit ``label`` (its example gets :data:`~bayesprompt.data.task.UNLABELLED`),
        and a label that is given is checked as usual.

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        For invalid JSON, a missing or empty ``text`` (or ``text_pair`` for a pair task),
        a ``text_pair`` in a single-sentence task, a label that is not an integer or is
        out of range, a ``label_name`` that disagrees with the label, or a file without
        any example. The message names the file, line and field.

    Examples
    --------
    >>> import json, pathlib, tempfile
    >>> tmp = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
    >>> _ = tmp.write_text(json.dumps({"text": "great fun", "label": 1}) + "\\n")
    >>> load_jsonl(tmp, "sst2")
    [Example(text='great fun', label=1, text_pair=None)]
    """
    task = get_task(task)
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"data file {str(path)!r} {problem}")
    examples = []
    for lineno, line in _iter_lines(path):
        where = f"{path}, line {lineno}"
        examples.append(_make_example(_parse_line(line, where), task, where, labelled=labelled))
    if not examples:
        raise DataError(f"{path}: the file contains no examples")
    return examples


def split_path(
    task: str | Task,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_proxy: bool = False,
) -> Path:
    """The file :func:`load_split` reads for ``split`` of ``task``.

    Its stem names what was found: ``"proxy_test"`` when the official test split is
    missing and ``allow_proxy`` let the proxy stand in, so a caller can label it.
    Parameters, errors and the proxy rule are those of :func:`load_split`.

    Examples
    --------
    >>> split_path("dbpedia", "test", allow_proxy=True).stem      # doctest: +SKIP
    'proxy_test'
    """
    task = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    folder = resolve_data_dir(data_dir) / task.name
    path = folder / f"{split}.jsonl"
    if path.is_file():
        return path
    proxy = folder / f"{_PROXY_TEST}.jsonl"
    if split == "test" and proxy.is_file():
        if allow_proxy:
            return proxy
        raise FileNotFoundError(
            f"the official test split of task {task.name!r} is missing ({str(path)!r} does not "
            f"exist), but a proxy test set exists at {str(proxy)!r}; it is not the benchmark "
            "test set. Pass allow_proxy=True to evaluate on it, and report it as a proxy."
        )
    raise FileNotFoundError(f"split {split!r} of task {task.name!r}: {str(path)!r} does not exist")


def load_split(
    task: str | Task,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_proxy: bool = False,
) -> list[Example]:
    """Load ``<data_dir>/<task.name>/<split>.jsonl``.

    Parameters
    ----------
    task : str or Task
        Task or built-in task name.
    split : {"train", "dev", "test"}
        Which split.
    data_dir : str, path-like or None
        Data directory; ``None`` uses ``$BAYESPROMPT_DATA`` (see :func:`resolve_data_dir`).
    allow_proxy : bool
        Only used for ``split="test"`` when ``test.jsonl`` is missing: if
        ``proxy_test.jsonl`` exists (DBPedia in the bundled data, whose official test
        could not be obtained), load it instead. The official test file always wins
        when it exists.

    Returns
    -------
    list of Example

    Raises
    ------
    ValueError
        For an unknown split or task name.
    FileNotFoundError
        If the file is missing, or if only a proxy test set exists and
        ``allow_proxy`` is false.
    DataError
        If the file holds a malformed example (see :func:`load_jsonl`).

    Examples
    --------
    >>> train = load_split("sst2", "train", "/path/to/data")       # doctest: +SKIP
    >>> proxy = load_split("dbpedia", "test", allow_proxy=True)    # doctest: +SKIP
    """
    task = get_task(task)
    return load_jsonl(split_path(task, split, data_dir, allow_proxy=allow_proxy), task)


# --------------------------------------------------------------------------- hub


def _hub_split(task: Task, split: str) -> str:
    """Translate our split name into the hub split name of ``task``."""
    if task.hub is None:
        raise ValueError(f"task {task.name!r} has no Hugging Face hub source (Task.hub is None)")
    if split not in task.hub.splits:
        available = ", ".join(sorted(task.hub.splits))
        raise ValueError(
            f"task {task.name!r} has no hub split for {split!r}; available: {available}"
        )
    return task.hub.splits[split]


def load_hub(task: str | Task, split: str) -> list[Example]:
    """Download a split from the Hugging Face hub with :func:`datasets.load_dataset`.

    Rows labelled ``-1`` (pairs without a gold label in SNLI, hidden GLUE test labels)
    are dropped; leading whitespace of the text is removed (DBPedia's ``content``
    starts with a space), which matches the bundled local copies. Every other row is
    validated like a line of :func:`load_jsonl`.

    Parameters
    ----------
    task : str or Task
        Task or built-in task name; ``task.hub`` says where to look.
    split : {"train", "dev", "test"}
        Our split name, mapped through ``task.hub.splits``.

    Returns
    -------
    list of Example
        In hub order.

    Raises
    ------
    ValueError
        If the task has no hub source or no hub split for ``split``.
    DataError
        For a malformed row (the message names dataset, split and 0-based row index), or
        if no labelled row remains.

    Examples
    --------
    >>> test = load_hub("sst2", "test")   # doctest: +SKIP
    >>> len(test)                          # doctest: +SKIP
    872
    """
    import datasets  # heavy import, only needed online

    task = get_task(task)
    hub_split = _hub_split(task, split)
    hub = task.hub
    assert hub is not None  # checked by _hub_split
    source = hub.path if hub.name is None else f"{hub.path}/{hub.name}"
    rows = datasets.load_dataset(hub.path, hub.name, split=hub_split)
    examples = []
    for index, row in enumerate(rows):
        if row.get(hub.label_field) == -1:
            continue
        record = dict(row)
        text = record.get(hub.text_field)
        if isinstance(text, str):
            record[hub.text_field] = text.lstrip()
        where = f"hub dataset {source!r} split {hub_split!r} row {index}"
        examples.append(
            _make_example(
                record,
                task,
                where,
                text_key=hub.text_field,
                pair_key=hub.pair_field,
                label_key=hub.label_field,
            )
        )
    if not examples:
        raise DataError(f"hub dataset {source!r} split {hub_split!r} contains no labelled examples")
    return examples
