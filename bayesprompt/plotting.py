"""Calibration, selective-prediction and OOD plots, written as PNG files.

Every function takes the data and an output ``path`` (parent folders are created),
renders headless and returns the path as a :class:`pathlib.Path`. Figures are built
with :class:`matplotlib.figure.Figure` directly (no pyplot state) except the PAV
diagram, which ``arviz_plots`` draws through pyplot and which is closed after saving.

* :func:`plot_pav_reliability` -- binary tasks: the PAV (isotonic) reliability diagram
  of :func:`arviz_plots.plot_ppc_pava` with its consistency band;
* :func:`plot_reliability_diagram` -- any task: top-label accuracy vs confidence per bin
  (the binning of :func:`bayesprompt.metrics.ece`) with the calibration gap;
* :func:`plot_risk_coverage` -- risk (error rate) against coverage per uncertainty score;
* :func:`plot_uncertainty_histogram` -- an uncertainty score, in-distribution vs OOD.

Examples
--------
>>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
>>> plot_reliability_diagram(probs, torch.tensor([0, 1, 1]), "reliability.png")  # doctest: +SKIP
PosixPath('reliability.png')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from bayesprompt import metrics
from bayesprompt.arviz import predictive_datatree
from bayesprompt.metrics import ArrayLike
from bayesprompt.predict import EnsemblePredictions

__all__ = [
    "plot_pav_reliability",
    "plot_reliability_diagram",
    "plot_risk_coverage",
    "plot_uncertainty_histogram",
]

_DPI = 120


def _target(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(figure: Figure, path: str | Path) -> Path:
    path = _target(path)
    figure.savefig(path, dpi=_DPI, format="png", bbox_inches="tight")
    return path


def _named(scores: Mapping[str, ArrayLike] | ArrayLike, default: str) -> dict[str, np.ndarray]:
    """A mapping of named 1-D score arrays from a mapping or a single array."""
    if not isinstance(scores, Mapping):
        scores = {default: scores}
    if not scores:
        raise ValueError("no scores given")
    return {name: metrics._vector(value, f"scores[{name!r}]") for name, value in scores.items()}


def plot_pav_reliability(
    predictions: EnsemblePredictions,
    path: str | Path,
    *,
    num_draws: int = 500,
    ci_prob: float = 0.94,
    seed: int = 0,
) -> Path:
    """PAV-adjusted reliability diagram of a binary task through :func:`arviz_plots.plot_ppc_pava`.

    ``num_draws`` posterior predictive label draws (a sample by weight, then a label
    from its probabilities; see :func:`bayesprompt.arviz.predictive_datatree`) give
    the x-axis -- their mean, the predicted probability of class 1 -- and the
    ``ci_prob`` consistency band; the line is the isotonic fit of the observed labels
    (conditional event probability). A well-calibrated model follows the diagonal.

    Examples
    --------
    >>> p = torch.rand(4, 50, 1)  # each sample's probability of class 1
    >>> pred = EnsemblePredictions(torch.cat([1 - p, p], -1), torch.full((4,), 0.25), torch.randint(0, 2, (50,)))
    >>> plot_pav_reliability(pred, "pav.png")  # doctest: +SKIP
    PosixPath('pav.png')
    """
    from arviz_plots import plot_ppc_pava
    from matplotlib import pyplot

    if predictions.probs.shape[-1] != 2:
        raise ValueError(
            f"the PAV reliability diagram needs a binary task, got {predictions.probs.shape[-1]} classes; "
            "use plot_reliability_diagram"
        )
    tree = predictive_datatree(predictions, num_draws=num_draws, seed=seed, label_var="label")
    collection = plot_ppc_pava(
        tree,
        ci_prob=ci_prob,
        backend="matplotlib",
        visuals={"title": False, "xlabel": {"text": "predicted P(label = 1)"}, "ylabel": {"text": "CEP (PAV)"}},
    )
    figure = collection.viz["figure"].item()
    try:
        return _save(figure, path)
    finally:
        pyplot.close(figure)


def plot_reliability_diagram(
    probs: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    *,
    num_bins: int = 10,
    lower: float = 0.0,
    title: str = "Reliability diagram",
) -> Path:
    """Top-label reliability diagram: accuracy per confidence bin, with the gap to the diagonal.

    Bins follow :func:`bayesprompt.metrics.calibration_bins` (``lower=0.5`` for the
    binary variant); the legend gives the ECE and MCE of the same bins, the lower panel
    the number of examples per bin.

    Examples
    --------
    >>> probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3]])
    >>> plot_reliability_diagram(probs, torch.tensor([0, 2]), "reliability.png")  # doctest: +SKIP
    PosixPath('reliability.png')
    """
    bins = metrics.calibration_bins(probs, labels, num_bins, lower)
    edges, filled = bins["edges"], bins["count"] > 0
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    figure = Figure(figsize=(5, 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    accuracy, confidence = np.nan_to_num(bins["accuracy"]), np.nan_to_num(bins["confidence"])
    top.bar(centres[filled], accuracy[filled], width[filled], edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(
        centres[filled], (confidence - accuracy)[filled], width[filled], bottom=accuracy[filled],
        color="tab:red", alpha=0.3, hatch="//", edgecolor="tab:red", label="gap (confidence - accuracy)",
    )
    top.plot([lower, 1], [lower, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(xlim=(lower, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    scores = f"ECE {metrics.ece(probs, labels, num_bins, lower):.4f}   MCE {metrics.mce(probs, labels, num_bins, lower):.4f}"
    top.legend(loc="upper left", fontsize=8, title=scores)
    bottom.bar(centres, bins["count"], width, color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (top-label)", ylabel="examples")
    return _save(figure, path)


def plot_risk_coverage(
    uncertainty: Mapping[str, ArrayLike] | ArrayLike,
    correct: ArrayLike,
    path: str | Path,
    *,
    max_levels: int = 200,
    title: str = "Risk-coverage",
) -> Path:
    """Risk (error rate on the retained examples) against coverage, one curve per score.

    Scores are uncertainties: the least uncertain examples are kept first. Curves use
    ``min(N, max_levels)`` equally spaced coverages; the legend gives each score's
    :func:`bayesprompt.metrics.aurc` (mean risk at coverages 0.1, ..., 1.0). The dotted
    line is the oracle that rejects the errors first.

    Examples
    --------
    >>> plot_risk_coverage({"entropy": [0.1, 0.5, 0.9]}, [True, True, False], "rc.png")  # doctest: +SKIP
    PosixPath('rc.png')
    """
    scores = _named(uncertainty, "uncertainty")
    right = metrics._vector(correct, "correct", bool)
    levels = np.arange(1, min(right.size, max_levels) + 1) / min(right.size, max_levels)
    figure = Figure(figsize=(5.5, 4))
    axes = figure.subplots()
    for name, score in scores.items():
        coverage, risk = metrics.risk_coverage_curve(-score, right, levels)
        axes.plot(coverage, risk, label=f"{name} (AURC {metrics.aurc(-score, right):.4f})")
    kept = np.maximum(1, np.ceil(np.round(levels * right.size, 9)))
    axes.plot(kept / right.size, np.maximum(0.0, 1.0 - right.sum() / kept), "k:", label="oracle")
    axes.set(xlabel="coverage", ylabel="risk (error rate)", xlim=(0, 1), title=title)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_uncertainty_histogram(
    in_scores: ArrayLike,
    ood_scores: ArrayLike,
    path: str | Path,
    *,
    name: str = "uncertainty",
    bins: int = 30,
) -> Path:
    """Density histograms of an uncertainty score on in-distribution and OOD examples.

    Both use the same bin edges; the title gives the OOD AUROC and FPR at 95% TPR.

    Examples
    --------
    >>> plot_uncertainty_histogram([0.1, 0.2, 0.3], [0.6, 0.7], "hist.png", name="entropy")  # doctest: +SKIP
    PosixPath('hist.png')
    """
    inside, outside = metrics._vector(in_scores, "in_scores"), metrics._vector(ood_scores, "ood_scores")
    for label, values in (("in_scores", inside), ("ood_scores", outside)):
        if not np.isfinite(values).all():
            raise ValueError(f"{label} must be finite to be binned into a histogram")
    edges = np.histogram_bin_edges(np.r_[inside, outside], bins=bins)
    figure = Figure(figsize=(5.5, 4))
    axes = figure.subplots()
    axes.hist(inside, edges, density=True, alpha=0.5, color="tab:blue", label=f"in-distribution (n={inside.size})")
    axes.hist(outside, edges, density=True, alpha=0.5, color="tab:orange", label=f"OOD (n={outside.size})")
    auroc, fpr = metrics.ood_auroc(inside, outside), metrics.fpr_at_tpr(inside, outside)
    axes.set(xlabel=name, ylabel="density", title=f"{name}: OOD AUROC {auroc:.3f}, FPR@95%TPR {fpr:.3f}")
    axes.legend(fontsize=8)
    return _save(figure, path)
