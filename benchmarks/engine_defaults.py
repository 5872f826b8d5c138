"""A recorded snapshot of the engines' constructor defaults, to catch stale cached cells.

A cell's cache key (:func:`benchmarks.run.cell_hash`) covers the benchmark settings and
each method's ``method_options``, but not the defaults of the engine constructors those
options are merged into. Changing such a default (say ``TemperedSMC(target_ess=0.5)``)
changes results while every cached cell stays valid by its key. Putting the defaults into
the key would invalidate every cell at once, so instead they are recorded here, in
``engine_defaults.json`` next to this module, together with the
:data:`~benchmarks.run.BENCHMARK_VERSION` they were recorded under. The benchmark runner
warns when the code's defaults differ from the record, and a test fails, until the
change is acknowledged: bump ``BENCHMARK_VERSION`` when the change alters results (so the
cells are recomputed), then re-record with ``python -m benchmarks.run
--record-engine-defaults``.

The defaults are read from the signatures of the objects each
:class:`~benchmarks.methods.MethodSpec` ``requires``, and of the objects every cell is
built from (:data:`benchmarks.methods.SHARED_REQUIREMENTS`: the backend, the prompt
models, the potential, the projection, prediction); callables are named by module and
qualified name, so the record does not depend on memory addresses.

Constants inside the method builders of :mod:`benchmarks.methods` (``popsize=20``, budget
shares) are not signature defaults, and the engines' own code is not a default at all. Both
are guarded by fingerprints of the code instead: :func:`source_fingerprints` hashes the
top-level code (functions, classes, constants, imports) of the modules in
:data:`FINGERPRINTED_MODULES` (the method builders, the runner and every module of the
packages that fit and score a cell: engines, models, backends, data, prediction and
metrics, and the run directory's checkpoints that every fit writes and resumes from), as ``ast.unparse`` writes them without docstrings (so comments, docstrings and
formatting do not count). A changed fingerprint asks the same question as a changed
default: if the change alters results, bump ``BENCHMARK_VERSION`` (or rerun the cells it
affects); either way re-record. ``ast.unparse`` could write the same code
differently under another Python version (3.11, 3.12 and 3.13 write ``benchmarks/methods.py``
alike), so the record keeps the Python version, and a difference found under another one
says so.

Examples
--------
>>> class Engine:
...     def __init__(self, num_particles: int = 64, kernel: str = "rw", *, seed=None) -> None: ...
>>> signature_defaults(Engine)
{'num_particles': '64', 'kernel': "'rw'", 'seed': 'None'}
>>> changed_defaults({"x:Engine": {"num_particles": "64"}}, {"x:Engine": {"num_particles": "32"}})
['x:Engine: num_particles 64 -> 32']
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import inspect
import json
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FINGERPRINTED_MODULES",
    "RECORD_PATH",
    "changed_defaults",
    "changed_sources",
    "current_defaults",
    "fingerprinted_modules",
    "load_record",
    "load_sources",
    "python_version",
    "signature_defaults",
    "source_fingerprints",
    "write_record",
]

#: The recorded defaults (JSON: ``{"benchmark_version": int, "defaults": {requirement: {parameter: repr}},
#: "python": "3.x", "sources": {"module:name": digest}}``).
RECORD_PATH = Path(__file__).with_name("engine_defaults.json")
#: Modules whose top-level code is fingerprinted; a package stands for all of its modules
#: (:func:`fingerprinted_modules`). What a cell's numbers depend on beyond its settings: the method
#: builders, the runner's fit and evaluation, the engines, models, backends, data, prediction and metrics.
FINGERPRINTED_MODULES = (
    "benchmarks.methods",
    "benchmarks.run",
    "benchmarks.checkpoint",
    "benchmarks.whitebox",
    "benchmarks.estimate",  # STOPPED_BY_BUDGET: which records run.reusable_record reuses at other budgets
    "bayesprompt.inference",
    "bayesprompt.models",
    "bayesprompt.lm",
    "bayesprompt.data",
    "bayesprompt.predict",
    "bayesprompt.metrics",
    "bayesprompt.uncertainty",
    "bayesprompt.averaging",
    "bayesprompt.runs",  # every fit's step checkpoints and resume (run_with_checkpoints, StateCodec)
)


def _stable_repr(value: Any) -> str:
    """``repr(value)``, but ``module.qualname`` for functions and classes (no addresses)."""
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def signature_defaults(obj: Any) -> dict[str, str]:
    """The parameters of ``obj``'s signature that have defaults, mapped to stable reprs."""
    parameters = inspect.signature(obj).parameters.values()
    return {p.name: _stable_repr(p.default) for p in parameters if p.default is not inspect.Parameter.empty}


def _resolve(requirement: str) -> Any:
    """The object named by ``"module:attribute"``; the attribute may be dotted (``Class.method``)."""
    module_name, _, path = requirement.partition(":")
    obj: Any = importlib.import_module(module_name)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def current_defaults(requirements: Iterable[str]) -> dict[str, dict[str, str]]:
    """Signature defaults of every ``"module:attribute"`` requirement that imports.

    A requirement that does not import is left out: its method is reported as unavailable
    by :func:`benchmarks.methods.availability` and has no cells to go stale.
    """
    defaults: dict[str, dict[str, str]] = {}
    for requirement in sorted(set(requirements)):
        try:
            obj = _resolve(requirement)
        except (ImportError, AttributeError):
            continue
        defaults[requirement] = signature_defaults(obj)
    return defaults


def changed_defaults(recorded: Mapping[str, Mapping[str, str]], current: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One line per default that differs between ``recorded`` and ``current`` (empty: none).

    Requirements present in both are compared parameter by parameter (a parameter added or
    removed shows as ``<absent>`` on the missing side); one in ``current`` but not in
    ``recorded`` (a new engine) gives a ``not recorded`` line. One recorded but not current
    is not reported: it does not import here, so its methods cannot run.
    """
    lines = [f"{requirement}: not recorded" for requirement in sorted(set(current) - set(recorded))]
    for requirement in sorted(set(recorded) & set(current)):
        before, after = recorded[requirement], current[requirement]
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name, "<absent>"), after.get(name, "<absent>")
            if old != new:
                lines.append(f"{requirement}: {name} {old} -> {new}")
    return lines


def python_version() -> str:
    """``"major.minor"`` of the running Python (recorded with the fingerprints)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _without_docstrings(node: ast.AST) -> ast.AST:
    """A copy of ``node`` with the docstring of every function and class in it removed."""
    node = copy.deepcopy(node)
    for child in ast.walk(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and child.body and _is_docstring(child.body[0]):
            child.body = child.body[1:] or [ast.Pass()]
    return node


def fingerprinted_modules(names: Iterable[str] = FINGERPRINTED_MODULES) -> list[str]:
    """``names`` with every package replaced by itself and all of its modules, sorted.

    Raises
    ------
    ValueError
        If a name cannot be imported.

    Examples
    --------
    >>> modules = fingerprinted_modules(["bayesprompt.inference.smc"])
    >>> modules[0], "bayesprompt.inference.smc.abc" in modules
    ('bayesprompt.inference.smc', True)
    """
    modules: set[str] = set()
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"cannot import {name} to fingerprint it ({err})") from err
        modules.add(name)
        if hasattr(module, "__path__"):  # a package
            modules.update(info.name for info in pkgutil.walk_packages(module.__path__, f"{name}."))
    return sorted(modules)


def source_fingerprints(modules: Iterable[str] | None = None) -> dict[str, str]:
    """``{"module:name": digest}`` for the top-level code of ``modules``.

    ``modules`` defaults to :func:`fingerprinted_modules` of :data:`FINGERPRINTED_MODULES`.
    Every function, class and constant gets its own entry; the imports share one
    (``module:<imports>``) and any other statement (a tuple assignment, an ``if`` block)
    another (``module:<other>``); only the module docstring is left out. The digest (12 hex
    digits of SHA-256) is of ``ast.unparse`` of the code without docstrings: a changed
    constant, statement or import changes it, a comment or docstring does not.

    Raises
    ------
    ValueError
        If a module cannot be imported or its source cannot be read.

    Examples
    --------
    >>> fingerprints = source_fingerprints(["benchmarks.engine_defaults"])
    >>> len(fingerprints["benchmarks.engine_defaults:source_fingerprints"])
    12
    >>> "benchmarks.engine_defaults:<imports>" in fingerprints
    True
    """
    fingerprints: dict[str, str] = {}
    for module_name in fingerprinted_modules() if modules is None else modules:
        try:
            source = inspect.getsource(importlib.import_module(module_name))
        except (ImportError, OSError, TypeError) as err:
            raise ValueError(f"cannot read the source of {module_name} to fingerprint it ({err})") from err
        groups: dict[str, list[str]] = {}
        for index, node in enumerate(ast.parse(source).body):
            if index == 0 and _is_docstring(node):
                continue
            groups.setdefault(_defined_name(node), []).append(ast.unparse(_without_docstrings(node)))
        for name, codes in groups.items():
            fingerprints[f"{module_name}:{name}"] = hashlib.sha256("\n".join(codes).encode()).hexdigest()[:12]
    return fingerprints


def _defined_name(node: ast.stmt) -> str:
    """The entry a top-level statement belongs to: the function, class or constant it defines,
    ``<imports>`` or ``<other>``."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Import | ast.ImportFrom):
        return "<imports>"
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    names = [target.id for target in targets if isinstance(target, ast.Name)]
    return ", ".join(names) if names and len(names) == len(targets) else "<other>"


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def changed_sources(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """One line per fingerprinted definition that is new, changed or gone (empty: none).

    Examples
    --------
    >>> changed_sources({"m:a": "1", "m:b": "2"}, {"m:a": "1", "m:b": "3", "m:c": "4"})
    ['m:b: code changed', 'm:c: code not recorded']
    """
    lines = []
    for name in sorted(set(recorded) | set(current)):
        if name not in recorded:
            lines.append(f"{name}: code not recorded")
        elif name not in current:
            lines.append(f"{name}: no longer defined")
        elif recorded[name] != current[name]:
            lines.append(f"{name}: code changed")
    return lines


def load_sources(path: str | Path = RECORD_PATH) -> tuple[str | None, dict[str, str]]:
    """``(python_version, fingerprints)`` from the record file (``(None, {})`` if it has none)."""
    return _read_record(path, lambda data: (None, {}) if "sources" not in data else
                        (str(data["python"]), {str(k): str(v) for k, v in data["sources"].items()}))


def _read_record(path: str | Path, extract: Callable[[Any], Any]) -> Any:
    """``extract`` applied to the record file's JSON; any failure is a ValueError naming the file."""
    path = Path(path)
    try:
        return extract(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read the engine-defaults record ({err})") from err


def load_record(path: str | Path = RECORD_PATH) -> tuple[int, dict[str, dict[str, str]]]:
    """``(benchmark_version, defaults)`` from the record file ``path``."""
    return _read_record(path, lambda data: (int(data["benchmark_version"]),
                                            {str(k): dict(v) for k, v in data["defaults"].items()}))


def write_record(
    benchmark_version: int,
    defaults: Mapping[str, Mapping[str, str]],
    path: str | Path = RECORD_PATH,
    sources: Mapping[str, str] | None = None,
) -> Path:
    """Write the record file (sorted, one parameter per line) and return its path.

    ``sources`` (from :func:`source_fingerprints`) are stored with the running Python's version.
    """
    path = Path(path)
    payload: dict[str, Any] = {"benchmark_version": benchmark_version, "defaults": defaults}
    if sources is not None:
        payload |= {"python": python_version(), "sources": dict(sources)}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path
