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
qualified name, so the record does not depend on memory addresses. Constants inside the
method builders of :mod:`benchmarks.methods` (``popsize=20``, budget shares) are not
signature defaults and are not guarded.

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

import importlib
import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD_PATH",
    "changed_defaults",
    "current_defaults",
    "load_record",
    "signature_defaults",
    "write_record",
]

#: The recorded defaults (JSON: ``{"benchmark_version": int, "defaults": {requirement: {parameter: repr}}}``).
RECORD_PATH = Path(__file__).with_name("engine_defaults.json")


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


def load_record(path: str | Path = RECORD_PATH) -> tuple[int, dict[str, dict[str, str]]]:
    """``(benchmark_version, defaults)`` from the record file ``path``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return int(data["benchmark_version"]), {str(k): dict(v) for k, v in data["defaults"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read the engine-defaults record ({err})") from err


def write_record(benchmark_version: int, defaults: Mapping[str, Mapping[str, str]], path: str | Path = RECORD_PATH) -> Path:
    """Write the record file (sorted, one parameter per line) and return its path."""
    path = Path(path)
    payload = {"benchmark_version": benchmark_version, "defaults": defaults}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path
