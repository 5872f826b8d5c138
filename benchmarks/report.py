"""Markdown tables and budget-sweep plots from benchmark records.

A *record* is the JSON dict of one cell (see :func:`benchmarks.run.run_cell`); the
functions here only read its keys: ``task``, ``method``, ``method_label``, ``seed``,
``budget``, ``budget_policy``, ``status``, ``error``, the metrics (``metric``,
``metric_name``, ``nll``, ``brier``, ``ece``, ``misclassification_auroc``,
``ood_auroc``, ``ood``), the costs (``api_calls``, ``fit_seconds``) and ``test``.

Examples
--------
>>> records = [
...     {"task": "sst2", "method": "smc", "method_label": "Tempered SMC", "seed": s, "budget": 2000,
...      "budget_policy": "common", "status": "ok", "metric_name": "accuracy", "metric": m,
...      "nll": 0.5, "brier": 0.3, "ece": 0.05, "misclassification_auroc": 0.7, "ood_auroc": 0.6,
...      "api_calls": 2000, "fit_seconds": 10.0}
...     for s, m in ((0, 0.80), (1, 0.84))
... ]
>>> print(markdown_table(records).splitlines()[4])
| Tempered SMC | 2000 | 0.820 ± 0.028 | 0.500 ± 0.000 | 0.300 ± 0.000 | 0.050 ± 0.000 | 0.700 ± 0.000 | 0.600 ± 0.000 | 2000 | 10.0 | 2 |
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Suffixes of the record entries that hold what earlier parts of a cell ran under
#: (``fit_length_bucket_before_resume``, ``bf16_arithmetic_of_fit``; see ``benchmarks.run``).
BEFORE_RESUME, OF_FIT = "_before_resume", "_of_fit"

__all__ = [
    "BEFORE_RESUME",
    "OF_FIT",
    "format_mean_sd",
    "group_records",
    "markdown_report",
    "markdown_table",
    "overview_table",
    "plot_budget_sweep",
    "replace_between_markers",
    "sweep_seed",
    "sweep_table",
    "write_markdown",
]

#: (header, record key, digits) of the metric columns.
_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("NLL", "nll", 3),
    ("Brier", "brier", 3),
    ("ECE", "ece", 3),
    ("Misclass. AUROC", "misclassification_auroc", 3),
    ("OOD AUROC", "ood_auroc", 3),
)
#: Line colours of the sweep plot, by method position.
_PALETTE: tuple[str, ...] = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                             "tab:gray", "tab:olive", "tab:cyan", "navy", "darkgoldenrod", "teal", "crimson")
#: Markers of the sweep plot: the next one each time the palette starts over.
_MARKERS: tuple[str, ...] = ("o", "s", "^", "D")
#: Sweep-plot layout: legend columns, inches per legend row of 8-point labels, axes height.
_LEGEND_COLUMNS = 3
_LEGEND_ROW_INCHES = 0.2
_AXES_INCHES = 4.5


def format_mean_sd(values: Iterable[float | None], digits: int = 3) -> str:
    """``"mean ± sd"`` over the finite values (sample sd); one value alone; ``"n/a"`` if none.

    Examples
    --------
    >>> format_mean_sd([0.5, 0.7])
    '0.600 ± 0.141'
    >>> format_mean_sd([0.5]), format_mean_sd([None, float("nan")])
    ('0.500', 'n/a')
    """
    finite = [float(v) for v in values if v is not None and not _is_nan(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite)
    if len(finite) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(finite):.{digits}f}"


def group_records(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, Any], list[Mapping[str, Any]]]:
    """Records grouped by ``(task, method, budget)``, in first-appearance order."""
    groups: dict[tuple[str, str, Any], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["task"], record["method"], record.get("budget")), []).append(record)
    return groups


def markdown_table(
    records: Sequence[Mapping[str, Any]],
    task: str | None = None,
    method_order: Sequence[str] | None = None,
) -> str:
    """One markdown table of mean ± sd over seeds per method (and budget) for one task.

    Parameters
    ----------
    records : sequence of dict
        Cell records; only those of ``task`` are used (default: the first record's task).
    task : str or None
        The task.
    method_order : sequence of str or None
        Row order by method name (default: first appearance); unlisted methods go last.

    Returns
    -------
    str
        A heading line, a blank line, then the table. Groups whose cells all failed show
        ``error: <message>``; methods that could not be imported show ``unavailable``.
    """
    if not records:
        return "_no records_\n"
    task = task if task is not None else records[0]["task"]
    mine = [r for r in records if r["task"] == task]
    metric_name = _metric_name(mine, task)
    heading = f"### {task}{' (proxy test)' if _on_proxy_test(mine) else ''}"
    notes = _test_note(mine)
    headers = ["Method", "Budget", "F1" if metric_name == "f1" else "Accuracy", *[h for h, _, _ in _COLUMNS], "Calls", "Fit time (s)", "Seeds"]
    lines = [heading + (f" — {notes}" if notes else ""), "", _row(headers), _row(["---"] + ["---:"] * (len(headers) - 1))]
    groups = group_records(mine)
    order = {name: i for i, name in enumerate(method_order or [])}
    keys = sorted(groups, key=lambda key: (order.get(key[1], len(order)), _budget_sort(key[2])))
    for key in keys:
        lines.append(_row(_group_cells(groups[key])))
    buckets = sorted({r["evaluation_length_bucket"] for r in mine if r.get("status") == "ok" and r.get("evaluation_length_bucket")})
    if buckets:
        lines += ["", f"(k bucketed): k of the seeds had their test and OOD sets scored in length-sorted chunks of "
                      f"{' or '.join(map(str, buckets))} (`evaluation_length_bucket`); the others in one contiguous batch."]
    fit_buckets = sorted({r["fit_length_bucket"] for r in mine
                          if r.get("status") == "ok" and r.get("fit_length_bucket") and not _partly_chunked(r)})
    if fit_buckets:
        lines += ["", f"(k fit in chunks): k of the seeds scored their training (and dev) batch in length-sorted chunks of "
                      f"{' or '.join(map(str, fit_buckets))} while fitting (`length_bucket`); the others as one batch."]
    if any(r.get("status") == "ok" and _partly_chunked(r) for r in mine):
        lines += ["", "(k partly in chunks): k of the seeds were resumed from a step checkpoint under another "
                      "`length_bucket` (`fit_length_bucket_before_resume`): part of their fit ran in chunks, part as one batch."]
    if any(r.get("status") == "ok" and _emulated_bf16(r) for r in mine):
        lines += ["", "(k emulated bf16): k of the seeds ran on a CPU without bf16 units, their GEMMs as fp32 GEMMs on "
                      "bf16-rounded operands (`bayesprompt.lm.precision`): the same arithmetic, in another order of accumulation."]
    if any(r.get("status") == "ok" and _partly_emulated_bf16(r) for r in mine):
        lines += ["", "(k partly emulated bf16): k of the seeds were fitted or evaluated partly on bf16 units and partly "
                      "with emulated bf16 (a fit resumed or evaluated on another machine: `bf16_arithmetic_before_resume`, "
                      "`bf16_arithmetic_of_fit`)."]
    return "\n".join(lines) + "\n"


def overview_table(records: Sequence[Mapping[str, Any]], method_order: Sequence[str] | None = None) -> str:
    """Methods x tasks, each cell ``metric / NLL (n)``: means over the ``n`` finished seeds.

    The metric is the task's headline metric (accuracy; F1 on MRPC). In each column the
    lowest mean NLL (to the three digits shown) among black-box methods (all but white-box
    tuning) with the largest number of seeds any black-box method has there is bold, so a
    method is only ranked against others averaged over as many splits; ties are all bold.
    A method with records at several budgets gets one row per budget.

    Examples
    --------
    >>> rows = [{"task": "rte", "method": m, "method_label": m.upper(), "seed": s, "budget": 2000, "status": "ok",
    ...          "metric_name": "accuracy", "metric": 0.5, "nll": nll + s / 100}
    ...         for m, nll in (("bbt", 0.75), ("smc", 0.70)) for s in (0, 1)]
    >>> print(overview_table(rows + [{**rows[0], "method": "one", "method_label": "ONE", "nll": 0.1}]))
    | Method | rte |
    | --- | ---: |
    | BBT | 0.500 / 0.755 (2) |
    | SMC | 0.500 / **0.705** (2) |
    | ONE | 0.500 / 0.100 (1) |
    <BLANKLINE>
    """
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return "_no records_\n"
    tasks = list(dict.fromkeys(r["task"] for r in ok))
    methods, labels = _ordered_methods(ok, method_order)
    budgets = {m: sorted({r.get("budget") for r in ok if r["method"] == m}, key=_budget_sort) for m in methods}
    rows = [(m, b) for m in methods for b in budgets[m]]
    groups = {(row, t): [r for r in ok if (r["method"], r.get("budget")) == row and r["task"] == t] for row in rows for t in tasks}
    nll = {key: f"{_mean([r['nll'] for r in group]):.3f}" for key, group in groups.items() if group}
    bold: set[tuple[tuple[str, Any], str]] = set()
    for task in tasks:
        black_box = [row for row in rows if groups[(row, task)] and not any(map(_is_white_box, groups[(row, task)]))]
        most = max((len(groups[(row, task)]) for row in black_box), default=0)
        ranked = [row for row in black_box if len(groups[(row, task)]) == most]
        lowest = min((float(nll[(row, task)]) for row in ranked), default=math.nan)
        bold |= {(row, task) for row in ranked if float(nll[(row, task)]) == lowest}
    lines = [_row(["Method", *[_task_heading(ok, t) for t in tasks]]), _row(["---"] + ["---:"] * len(tasks))]
    for row in rows:
        cells = []
        for task in tasks:
            group = groups[(row, task)]
            if not group:
                cells.append("—")
                continue
            shown = f"**{nll[(row, task)]}**" if (row, task) in bold else nll[(row, task)]
            cells.append(f"{_mean([r['metric'] for r in group]):.3f} / {shown} ({len(group)})")
        method, budget = row
        lines.append(_row([labels[method] + (f" ({budget} calls)" if len(budgets[method]) > 1 else ""), *cells]))
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, replacement: str, name: str = "overview") -> str:
    r"""``text`` with the lines between the line ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced.

    ``replacement`` (lines ending in ``\n``) takes the newline style of the begin line.
    Raises :class:`ValueError` naming the markers when the begin line (with its newline)
    is missing or no end marker follows it.

    Examples
    --------
    >>> replace_between_markers("a\n<!-- overview:begin -->\nold\n<!-- overview:end -->\nb\n", "new\n")
    'a\n<!-- overview:begin -->\nnew\n<!-- overview:end -->\nb\n'
    >>> replace_between_markers("<!-- t:begin -->\r\nold\r\n<!-- t:end -->\r\n", "x\ny\n", name="t")
    '<!-- t:begin -->\r\nx\r\ny\r\n<!-- t:end -->\r\n'
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start = text.find(begin)
    body = text.find("\n", start) + 1 if start >= 0 else 0  # just after the begin line
    stop = text.find(end, body) if body > 0 else -1
    if stop < 0:
        raise ValueError(f"markers {begin!r} and {end!r} not found in order, each on its own line")
    newline = "\r\n" if text[body - 2:body] == "\r\n" else "\n"
    return text[:body] + replacement.replace("\n", newline) + text[stop:]


def sweep_seed(records: Sequence[Mapping[str, Any]], task: str) -> int | None:
    """The seed the budget sweep of ``task`` shows: the lowest of its finished common-budget cells.

    One seed for every budget, so that a row's trend is the budget's and not a change of
    split (the sweep runs seed 0 first; cells reused across budgets exist for every seed).
    """
    seeds = [r["seed"] for r in records if r["task"] == task and r.get("budget_policy") == "common" and r.get("status") == "ok"]
    return min(seeds) if seeds else None


def sweep_table(records: Sequence[Mapping[str, Any]], task: str, method_order: Sequence[str] | None = None) -> str:
    """Budget sweep of one task at :func:`sweep_seed`: rows are methods, columns budgets, cells ``metric / NLL``."""
    seed = sweep_seed(records, task)
    mine = [r for r in records if r["task"] == task and r.get("budget_policy") == "common" and r.get("status") == "ok"
            and r["seed"] == seed]
    budgets = sorted({r["budget"] for r in mine if r.get("budget") is not None})
    if not budgets:
        return ""
    metric_name = _metric_name(mine, task)
    methods, labels = _ordered_methods(mine, method_order)
    lines = [
        f"### Budget sweep: {task} ({metric_name} / NLL, seed {seed})",
        "",
        _row(["Method", *[f"{b} calls" for b in budgets]]),
        _row(["---"] + ["---:"] * len(budgets)),
    ]
    for method in methods:
        cells = []
        for budget in budgets:
            cell = next((r for r in mine if r["method"] == method and r["budget"] == budget), None)
            same = " *" if cell is not None and "reused_from_budget" in cell else ""
            cells.append(f"{cell['metric']:.3f} / {cell['nll']:.3f}{same}" if cell is not None else "—")
        lines.append(_row([labels[method], *cells]))
    lines += ["", f"One seed ({seed}) throughout, so that a row changes with the budget alone; the means over seeds "
              "at the main budget are in the tables above."]
    if any("reused_from_budget" in r for r in mine):
        lines += ["", "\\* the method stopped by itself under this budget: the same run as at another budget (`reused_from_budget`)."]
    return "\n".join(lines) + "\n"


def markdown_report(
    records: Sequence[Mapping[str, Any]],
    config: Any = None,
    method_order: Sequence[str] | None = None,
) -> str:
    """The full markdown report: main table per task, OOD details, budget sweeps.

    ``config`` (a :class:`benchmarks.run.BenchmarkConfig`, optional) selects which
    budgets belong to the main table (``config.budgets``; other budgets of common-budget
    methods are sweep-only) and adds a settings line.
    """
    main_budgets = set(getattr(config, "budgets", ()) or ())
    is_main = (lambda r: r.get("budget_policy") != "common" or not main_budgets or r.get("budget") in main_budgets)
    main = [r for r in records if is_main(r)]
    parts = ["## Results", ""]
    if config is not None:
        parts += [_settings_line(config), ""]
    parts += ["### Overview: metric / NLL (seeds) per task", "", overview_table(main, method_order)]
    for task in dict.fromkeys(r["task"] for r in main):
        parts.append(markdown_table(main, task, method_order))
    parts += ["### Coverage: seeds finished per method and task (main budgets)", "", _coverage_table(main, method_order)]
    ood = _ood_table(main, method_order)
    if ood:
        parts += ["### OOD AUROC per pair (predictive entropy; OOD = positive)", "", ood]
    for task in dict.fromkeys(r["task"] for r in records):
        table = sweep_table(records, task, method_order)
        if table and len({r["budget"] for r in records if r["task"] == task and r.get("budget_policy") == "common"}) > 1:
            parts.append(table)
    return "\n".join(parts)


def write_markdown(records: Sequence[Mapping[str, Any]], path: str | Path, config: Any = None, method_order: Sequence[str] | None = None) -> Path:
    """Write :func:`markdown_report` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_report(records, config, method_order))
    return path


def plot_budget_sweep(records: Sequence[Mapping[str, Any]], path: str | Path, task: str | None = None) -> Path:
    """Plot the task's metric and NLL against API calls used, one line per method.

    Every method at the one seed of :func:`sweep_seed`: common-budget methods are lines,
    fixed-budget methods (BBT at 8,000 calls) single points, unbudgeted references
    (zero-shot, white-box) horizontal dashed lines. Uses matplotlib's object API (no
    pyplot state).
    """
    figure = budget_sweep_figure(records, task)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def budget_sweep_figure(records: Sequence[Mapping[str, Any]], task: str | None = None) -> Figure:
    """The figure of :func:`plot_budget_sweep`; its height grows with the legend, which stays inside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    task = task if task is not None else records[0]["task"]
    seed = sweep_seed(records, task)
    ok = [r for r in records if r["task"] == task and r.get("status") == "ok" and (seed is None or r["seed"] == seed)]
    metric_name = next((r["metric_name"] for r in ok), "accuracy")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in ok:
        groups.setdefault(record["method"], []).append(record)
    legend_inches = (math.ceil(len(groups) / _LEGEND_COLUMNS) + 1) * _LEGEND_ROW_INCHES
    height = _AXES_INCHES + legend_inches
    figure = Figure(figsize=(12, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for index, (method, rows) in enumerate(groups.items()):
        color = _PALETTE[index % len(_PALETTE)]
        marker = _MARKERS[index // len(_PALETTE) % len(_MARKERS)]
        label = rows[0].get("method_label", method)
        policy = rows[0].get("budget_policy")
        for ax, key in zip(axes, ("metric", "nll")):
            if policy == "none":
                ax.axhline(_mean([r[key] for r in rows]), linestyle="--", linewidth=1, label=label, color=color)
                continue
            by_budget: dict[Any, list[Mapping[str, Any]]] = {}
            for r in rows:
                by_budget.setdefault(r["budget"], []).append(r)
            budgets = sorted(by_budget)
            x = [max(1.0, _mean([r["api_calls"] for r in by_budget[b]])) for b in budgets]  # log axis
            y = [_mean([r[key] for r in by_budget[b]]) for b in budgets]
            ax.plot(x, y, marker=marker, markersize=4, label=label, color=color,
                    linestyle="-" if policy == "common" else "none")
    for ax, ylabel in zip(axes, (metric_name.upper() if metric_name == "f1" else "accuracy", "NLL")):
        ax.set_xscale("log")
        ax.set_xlabel("API calls used (inference)")
        ax.set_ylabel(f"test {ylabel}")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=_LEGEND_COLUMNS, fontsize=8, frameon=False)
    figure.suptitle(f"{task}: test {metric_name} and NLL against API calls (seed {seed})")
    figure.tight_layout(rect=(0, legend_inches / height, 1, 1))
    return figure


# ---------------------------------------------------------------------- helpers


def _group_cells(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    first = rows[0]
    label = first.get("method_label", first["method"])
    budget = "—" if first.get("budget") is None else str(first["budget"])
    ok = [r for r in rows if r.get("status") == "ok"]
    blanks = len(_COLUMNS) + 2
    if not ok:
        status = first.get("status", "error")
        if status == "unavailable":
            return [label, budget, "unavailable", *[""] * blanks, "0"]
        message = str(first.get("error", "")).splitlines()[0][:80] if first.get("error") else ""
        return [label, budget, f"error: {message}".replace("|", "/"), *[""] * blanks, "0"]
    cells = [label, budget, format_mean_sd([r["metric"] for r in ok])]
    cells += [format_mean_sd([r.get(key) for r in ok], digits) for _, key, digits in _COLUMNS]
    calls = [r.get("api_calls") for r in ok if r.get("api_calls") is not None]
    gradient = [r["summary"]["backward_passes"] for r in ok if _is_white_box(r)]
    if gradient:  # white-box: no API calls, report the gradient steps instead
        cells.append(f"{_mean(gradient):.0f} grad steps")
    else:
        cells.append(f"{_mean(calls):.0f}" if calls else "n/a")
    cells.append(f"{_mean([r.get('fit_seconds', math.nan) for r in ok]):.1f}")
    failed = len(rows) - len(ok)
    bucketed = sum(1 for r in ok if r.get("evaluation_length_bucket"))
    partly = sum(1 for r in ok if _partly_chunked(r))
    fit_chunked = sum(1 for r in ok if r.get("fit_length_bucket") and not _partly_chunked(r))
    marks = [f"{bucketed} bucketed"] if bucketed else []
    marks += [f"{fit_chunked} fit in chunks"] if fit_chunked else []
    marks += [f"{partly} partly in chunks"] if partly else []
    emulated = sum(1 for r in ok if _emulated_bf16(r))
    marks += [f"{emulated} emulated bf16"] if emulated else []
    partly_emulated = sum(1 for r in ok if _partly_emulated_bf16(r))
    marks += [f"{partly_emulated} partly emulated bf16"] if partly_emulated else []
    marks += [f"{failed} failed"] if failed else []
    cells.append(f"{len(ok)}" + (f" ({', '.join(marks)})" if marks else ""))
    return cells


def _task_heading(records: Sequence[Mapping[str, Any]], task: str) -> str:
    """``task``, with ``(F1)`` where its records' metric is F1 and ``(proxy test)`` where they
    were scored on a proxy test set."""
    mine = [r for r in records if r["task"] == task]
    notes = (["F1"] if _metric_name(mine, task) == "f1" else []) + (["proxy test"] if _on_proxy_test(mine) else [])
    return f"{task} ({', '.join(notes)})" if notes else task


def _on_proxy_test(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the finished ``records`` were scored on a proxy test set (see ``load_split``)."""
    return any((r.get("test") or {}).get("split") == "proxy_test" for r in records if r.get("status") == "ok")


def _metric_name(records: Sequence[Mapping[str, Any]], task: str) -> str:
    """The headline metric of ``task``'s finished records (``f1`` for MRPC when none finished)."""
    return next((r["metric_name"] for r in records if r["task"] == task and r.get("status") == "ok"),
                "f1" if task == "mrpc" else "accuracy")


def _ordered_methods(records: Iterable[Mapping[str, Any]], method_order: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The records' methods in ``method_order`` (unlisted ones last, by first appearance) and their labels."""
    records = list(records)
    order = {name: i for i, name in enumerate(method_order or [])}
    methods = sorted(dict.fromkeys(r["method"] for r in records), key=lambda m: order.get(m, len(order)))
    return methods, {r["method"]: r.get("method_label", r["method"]) for r in records}


def _is_white_box(record: Mapping[str, Any]) -> bool:
    """Whether the record's method had gradient access (it reports backward passes)."""
    return "backward_passes" in (record.get("summary") or {})


def _bf16_arithmetics(record: Mapping[str, Any]) -> set[str]:
    """How the record's bf16 GEMMs were computed in each part of the cell (empty: not bf16).

    Records before 2026-12-06 ran on bf16 units (``native``).
    """
    if record.get("precision") != "bf16":
        return set()
    keys = ("bf16_arithmetic", f"bf16_arithmetic{BEFORE_RESUME}", f"bf16_arithmetic{OF_FIT}")
    return {record.get(key, "native") for key in keys if key in record or key == "bf16_arithmetic"}


def _emulated_bf16(record: Mapping[str, Any]) -> bool:
    """Whether every part of the record's bf16 GEMMs was emulated in fp32."""
    return bool(arithmetics := _bf16_arithmetics(record)) and "native" not in arithmetics


def _partly_emulated_bf16(record: Mapping[str, Any]) -> bool:
    """Whether some parts of the cell ran on bf16 units and others with emulated bf16."""
    return len(_bf16_arithmetics(record)) > 1


def _partly_chunked(record: Mapping[str, Any]) -> bool:
    """Whether a resumed fit ran under two length buckets (see ``fit_length_bucket_before_resume``)."""
    key = f"fit_length_bucket{BEFORE_RESUME}"
    return key in record and record[key] != record.get("fit_length_bucket")


def _coverage_table(records: Sequence[Mapping[str, Any]], method_order: Sequence[str] | None) -> str:
    """Methods x tasks: how many seeds finished (``—``: none), so gaps in the suite are visible."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    methods, labels = _ordered_methods(records, method_order)
    lines = [_row(["Method", *tasks]), _row(["---"] + ["---:"] * len(tasks))]
    for method in methods:
        counts = [len({r["seed"] for r in records if r["method"] == method and r["task"] == task and r.get("status") == "ok"})
                  for task in tasks]
        lines.append(_row([labels[method], *[str(n) if n else "—" for n in counts]]))
    return "\n".join(lines) + "\n"


def _ood_table(records: Sequence[Mapping[str, Any]], method_order: Sequence[str] | None) -> str:
    pairs = list(dict.fromkeys((r["task"], name) for r in records if r.get("status") == "ok" for name in (r.get("ood") or {})))
    if not pairs:
        return ""
    methods, labels = _ordered_methods(records, method_order)
    methods = [m for m in methods if any(r["method"] == m and r.get("status") == "ok" for r in records)]
    lines = [_row(["Method", *[f"{t} → {o}" for t, o in pairs]]), _row(["---"] + ["---:"] * len(pairs))]
    for method in methods:
        cells = []
        for task, name in pairs:
            values = [r["ood"][name]["auroc"] for r in records if r["method"] == method and r["task"] == task
                      and r.get("status") == "ok" and name in (r.get("ood") or {})]
            cells.append(format_mean_sd(values) if values else "—")
        lines.append(_row([labels[method], *cells]))
    return "\n".join(lines) + "\n"


def _test_note(records: Sequence[Mapping[str, Any]]) -> str:
    info = next((r["test"] for r in records if r.get("status") == "ok" and r.get("test")), None)
    if not info:
        return ""
    split = "proxy test set (held-out train rows)" if info.get("split") == "proxy_test" else "test set"
    if info.get("subsample_seed") is not None:
        size = f"{info['size']} of {info['total']} examples (class-balanced subsample, seed {info['subsample_seed']})"
    else:
        size = f"all {info['size']} examples"
    ood = next((r.get("ood") for r in records if r.get("status") == "ok" and r.get("ood")), None) or {}
    ood_note = ", ".join(f"{name} ({v['size']})" for name, v in ood.items())
    return f"{split}: {size}" + (f"; OOD: {ood_note}" if ood_note else "")


def _settings_line(config: Any) -> str:
    model = config.model or ("all-MiniLM-L6-v2 (embedded)" if config.backend == "encoder" else f"{config.backend} backend")
    return (
        f"Config `{config.name}`: model {model}, {config.precision}, {config.k} train + {config.dev_k} dev "
        f"examples per class, seeds {list(config.seeds)}, prompt {config.n_tokens} tokens, z dim {config.intrinsic_dim}, "
        f"{config.num_particles} particles, common budget {list(config.budgets)} API calls (1 call = 1 prompt on 1 batch). "
        f"Mean ± sd over seeds; uncertainty score for the AUROCs: predictive entropy of the model-average probabilities."
    )


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _budget_sort(budget: Any) -> float:
    return -1.0 if budget is None else float(budget)


def _mean(values: Iterable[float | None]) -> float:
    finite = [float(v) for v in values if v is not None and not _is_nan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True
