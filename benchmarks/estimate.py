"""Rough one-core cost of a cell not run yet, from the timings of the cached cells.

A cell's fit costs about its API calls times the seconds one call takes on its task (the
black box dominates, whatever the engine), and its evaluation about what the same method's
evaluations took on that task. :func:`estimate_cost` turns the cached records into such an
estimate, for planning sittings (``python -m benchmarks.run --cached-only`` prints one per
cell not run). It is a median of past timings, not a promise: machines, thread counts and
the load beside a cell all move them. Records of fits that ran with emulated bf16
(``bf16_arithmetic``, machines without bf16 units) are left out, as they ran several times
slower.

Examples
--------
>>> records = [
...     {"task": "sst2", "method": "smc", "budget": 2000, "api_calls": 576, "fit_seconds": 230.0,
...      "evaluation_seconds": 800.0, "engine_status": "finished"},
...     {"task": "sst2", "method": "bbt", "budget": 2000, "api_calls": 2000, "fit_seconds": 500.0, "evaluation_seconds": 20.0,
...      "engine_status": "budget_exhausted"},
... ]
>>> estimate = estimate_cost("sst2", "smc", 4000, budget_free=True, records=records)
>>> round(estimate.fit_seconds), round(estimate.evaluation_seconds)  # 576 calls at the task's median s/call
(187, 800)
>>> estimate.describe()
'about 16 min (576 calls x 0.3 s over 2 sst2 cells; evaluation as 1 smc cells)'
>>> round(estimate_cost("sst2", "smc", 500, budget_free=True, records=records).fit_seconds)  # cut at 500 calls
162
>>> round(estimate_cost("sst2", "bbt", 8000, budget_free=False, records=records).fit_seconds)  # the whole budget
2597
>>> estimate_cost("rte", "smc", 2000, budget_free=True, records=records) is None  # no timings on rte
True
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["EMULATED_BF16", "STOPPED_BY_BUDGET", "CostEstimate", "estimate_cost", "timed_records"]

#: ``bf16_arithmetic`` of fits run on machines without bf16 units (several times slower).
EMULATED_BF16 = "fp32-accumulate emulation"
#: Engine statuses of a fit the budget cut short (it would have spent more calls; its calls say nothing of a larger budget).
STOPPED_BY_BUDGET = ("budget_exhausted", "running")


@dataclass(frozen=True)
class CostEstimate:
    """Estimated one-core seconds of a cell's fit and evaluation, and what they rest on."""

    fit_seconds: float
    evaluation_seconds: float
    basis: str
    #: Seconds per API call of the fit (``None``: a fit without a budget, timed as a whole).
    seconds_per_call: float | None = None

    @property
    def seconds(self) -> float:
        """Fit plus evaluation."""
        return self.fit_seconds + self.evaluation_seconds

    def after(self, calls_done: int, *, fitted: bool = False) -> CostEstimate:
        """What is left once a saved fit has made ``calls_done`` calls (``fitted``: the whole fit is done).

        >>> CostEstimate(600.0, 60.0, "x", seconds_per_call=2.0).after(100).seconds
        460.0
        >>> CostEstimate(600.0, 60.0, "x", seconds_per_call=2.0).after(0, fitted=True).describe()
        'about 1 min (x; the fit is saved)'
        """
        if fitted:
            return replace(self, fit_seconds=0.0, basis=f"{self.basis}; the fit is saved")
        if calls_done <= 0 or self.seconds_per_call is None:
            return self
        fit = max(self.fit_seconds - calls_done * self.seconds_per_call, 0.0)
        return replace(self, fit_seconds=fit, basis=f"{self.basis}; less the {calls_done} calls saved")

    def describe(self) -> str:
        """``"about 95 min (...)"``."""
        return f"about {self.seconds / 60:.0f} min ({self.basis})"


def timed_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``ok`` records whose timings describe a run of their own on a machine with bf16 units.

    Records reused from another budget's run (``reused_from_budget``) repeat that run's
    timings and are left out, as are fits with emulated bf16 arithmetic (also when only
    part of the fit had it: ``bf16_arithmetic_before_resume`` or ``_of_fit``).
    """
    return [
        record for record in records
        if record.get("status", "ok") == "ok"
        and "reused_from_budget" not in record
        and EMULATED_BF16 not in (record.get(f"bf16_arithmetic{suffix}") for suffix in ("", "_before_resume", "_of_fit"))
        and isinstance(record.get("fit_seconds"), (int, float))
        and isinstance(record.get("evaluation_seconds"), (int, float))
    ]


def estimate_cost(
    task: str, method: str, budget: int | None, *, budget_free: bool, records: Sequence[Mapping[str, Any]]
) -> CostEstimate | None:
    """Estimated cost of the cell ``(task, method, budget)`` from ``records``; ``None`` without a basis.

    Parameters
    ----------
    task, method : str
        The cell's task and method.
    budget : int or None
        Its API budget (``None``: a method without one, such as white-box tuning).
    budget_free : bool
        The method stops by itself (:attr:`~benchmarks.methods.MethodSpec.budget_free`).
        A cell is expected to spend the median calls of its method's cells on ``task`` at
        the same budget (other seeds); without those, the median calls of the method's fits
        on ``task`` that stopped by themselves, at most ``budget``, if ``budget_free``; else
        the whole budget.
    records : sequence of mapping
        Cached records; only those :func:`timed_records` keeps are used.

    Returns
    -------
    CostEstimate or None
        ``None`` when ``task`` has no timed record with API calls (or, for a cell without a
        budget, ``method`` has none on ``task``).
    """
    timed = timed_records(records)
    on_task = [r for r in timed if r["task"] == task]
    same = [r for r in on_task if r["method"] == method]
    evaluation = statistics.median(r["evaluation_seconds"] for r in (same or on_task)) if on_task else None
    evaluation_basis = f"evaluation as {len(same)} {method} cells" if same else "evaluation: the task's median"
    if budget is None:
        if not same or evaluation is None:
            return None
        fit = statistics.median(r["fit_seconds"] for r in same)
        return CostEstimate(fit, evaluation, f"as {len(same)} {task} {method} cells")
    with_calls = [r for r in on_task if isinstance(r.get("api_calls"), int) and r["api_calls"] > 0]
    if not with_calls or evaluation is None:
        return None
    per_call = statistics.median(r["fit_seconds"] / r["api_calls"] for r in with_calls)
    at_budget = [r["api_calls"] for r in same if r.get("budget") == budget and isinstance(r.get("api_calls"), int)]
    stopped = [r["api_calls"] for r in same if r.get("engine_status") not in STOPPED_BY_BUDGET and r.get("api_calls")]
    if at_budget:  # other seeds at this budget
        calls = round(statistics.median(at_budget))
    elif budget_free and stopped:
        calls = min(budget, round(statistics.median(stopped)))
    else:
        calls = budget
    basis = f"{calls} calls x {per_call:.1f} s over {len(with_calls)} {task} cells; {evaluation_basis}"
    return CostEstimate(calls * per_call, evaluation, basis, seconds_per_call=per_call)
