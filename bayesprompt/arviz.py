"""Export posteriors and predictions to ArviZ (``xarray.DataTree``) and diagnose them.

:func:`to_datatree` builds the tree with :func:`arviz_base.from_dict`. Its layout:

``posterior``
    Every latent site with dims ``(chain, draw, *event)``; event dims get ArviZ's
    default names ``{site}_dim_{i}`` (e.g. ``z`` is ``(chain, draw, z_dim_0)``). MCMC
    output is chain-major (``Posterior.num_chains`` chains of ``S / num_chains``
    draws); particle output is one chain of ``S`` draws.
``sample_stats``
    ``log_weight (chain, draw)``: the normalised log importance weights, present unless
    ``resample=True``. **ArviZ statistics ignore these weights** (``ess``, ``rhat``,
    ``summary`` treat draws as equally weighted), so export a weighted SMC posterior
    with ``resample=True`` -- systematic resampling, seeded, to ``num_draws`` equally
    weighted draws -- before using them, or weigh the draws yourself.
``posterior_predictive`` (with ``predictions``)
    ``probs (chain, draw, example, class)``: every sample's class probabilities on the
    evaluated split, and ``{label_var} (chain, draw, example)``: one label drawn from
    each of them (seeded) -- a posterior predictive draw, named like the observation
    as ArviZ's predictive checks expect. Weights of ``sample_stats`` apply to both.
``observed_data`` (with labels)
    ``{label_var} (example)``: the gold labels.
``engine_stats`` (when the posterior has per-iteration diagnostics)
    One variable per numeric diagnostic key (``beta``, ``ess``, ``acceptance``,
    ``epsilon``, ``evaluations``...) along dim ``iteration``. These describe the
    engine's iterations, not the draws, so they cannot live in ``sample_stats``
    (which ``from_dict`` gives ``chain``/``draw`` dims); the group is built with
    :func:`arviz_base.dict_to_dataset` and ``sample_dims=["iteration"]``. A record
    missing a key gets NaN there; non-numeric keys, and keys whose values change shape,
    are left out and listed in the group's ``skipped`` attribute. An integer
    ``iteration`` key becomes the coordinate.

Root attributes hold ``engine``, ``status``, ``num_chains``, ``num_samples``,
``resampled`` (0/1) and the scalar entries of ``Posterior.summary`` and
``Posterior.api_calls`` as ``summary.<key>`` / ``api_calls.<key>``.

:func:`summarize` gives convergence diagnostics: rank-normalised split R-hat and bulk and
tail ESS from ``arviz_stats`` for MCMC output (``Posterior.mcmc``; ESS for one chain too, R-hat from two), the Kish ESS of the
weights otherwise.

Examples
--------
>>> post = Posterior({"z": torch.randn(8, 3)}, torch.zeros(8), num_chains=2)
>>> tree = to_datatree(post)
>>> dict(tree["posterior"]["z"].sizes)
{'chain': 2, 'draw': 4, 'z_dim_0': 3}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import arviz_base
import arviz_stats
import numpy as np
import torch
import xarray as xr

from bayesprompt.inference.posterior import Posterior
from bayesprompt.inference.smc.resampling import systematic
from bayesprompt.predict import EnsemblePredictions

__all__ = ["predictive_datatree", "summarize", "to_datatree"]

_MISSING_STRINGS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def to_datatree(
    posterior: Posterior,
    predictions: EnsemblePredictions | None = None,
    observed_labels: torch.Tensor | None = None,
    *,
    resample: bool = False,
    num_draws: int | None = None,
    seed: int = 0,
    label_var: str = "y",
) -> xr.DataTree:
    """Convert a posterior (and optionally its predictions) to an ArviZ ``DataTree``.

    Parameters
    ----------
    posterior : Posterior
        Output of any engine.
    predictions : EnsemblePredictions, optional
        ``predict(posterior, ...)`` on an evaluation split: one row of ``probs`` per
        posterior sample.
    observed_labels : Tensor ``[N]``, optional
        Gold labels; default ``predictions.labels`` when predictions are given.
    resample : bool
        Replace weighted particles by ``num_draws`` equally weighted draws (systematic
        resampling with ``seed``); only for single-chain (particle) posteriors.
    num_draws : int, optional
        Number of resampled draws (default ``S``); only with ``resample=True``.
    seed : int
        Seed of the resampling and of the posterior predictive label draws.
    label_var : str
        Name of the observed label variable.

    Returns
    -------
    xarray.DataTree
        Groups as described in the module docstring.

    Examples
    --------
    >>> post = Posterior({"z": torch.randn(4, 2)}, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    >>> pred = EnsemblePredictions(torch.full((4, 5, 3), 1 / 3), post.weights, torch.zeros(5, dtype=torch.long))
    >>> tree = to_datatree(post, pred, resample=True, num_draws=10)
    >>> sorted(tree.children), dict(tree["posterior_predictive"]["probs"].sizes)
    (['observed_data', 'posterior', 'posterior_predictive'], {'chain': 1, 'draw': 10, 'example': 5, 'class': 3})
    """
    if label_var == "probs":
        raise ValueError("label_var must not be 'probs': the posterior_predictive group holds the class probabilities there")
    generator = torch.Generator().manual_seed(seed)
    index, chains = _draw_index(posterior, resample, num_draws, generator)
    shape = (chains, index.shape[0] // chains)
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {
            site: _numpy(value[index]).reshape(*shape, *value.shape[1:]) for site, value in posterior.samples.items()
        }
    }
    if not resample:
        groups["sample_stats"] = {"log_weight": _numpy(posterior.log_weights).reshape(shape)}
    if predictions is not None:
        _check_predictions(posterior, predictions)
        groups["posterior_predictive"] = _predictive(predictions.probs[index], shape, label_var, generator)
    labels = observed_labels if observed_labels is not None else getattr(predictions, "labels", None)
    if labels is not None:
        groups["observed_data"] = {label_var: _observed(labels, predictions)}
    tree = arviz_base.from_dict(
        groups,
        dims={"probs": ["example", "class"], label_var: ["example"]},
        check_conventions=False,
        attrs={"/": _root_attrs(posterior, resample)},
    )
    if posterior.diagnostics:
        tree["engine_stats"] = xr.DataTree(_engine_stats(posterior.diagnostics))
    return tree


def predictive_datatree(
    predictions: EnsemblePredictions,
    num_draws: int = 1000,
    seed: int = 0,
    label_var: str = "y",
) -> xr.DataTree:
    """Posterior predictive label draws and observed labels, for ArviZ predictive checks.

    Each of the ``num_draws`` draws picks a posterior sample by its weight and then a
    label from that sample's class probabilities (both seeded), so the draws follow the
    weighted posterior predictive. The tree has ``posterior_predictive.{label_var}``
    ``(chain=1, draw, example)`` and ``observed_data.{label_var}`` ``(example)``, the
    input of e.g. :func:`arviz_plots.plot_ppc_pava`.

    Examples
    --------
    >>> pred = EnsemblePredictions(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.ones(1), torch.tensor([1, 0]))
    >>> tree = predictive_datatree(pred, num_draws=3)
    >>> tree["posterior_predictive"]["y"].values.tolist()
    [[[1, 0], [1, 0], [1, 0]]]
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive int, got {num_draws!r}")
    generator = torch.Generator().manual_seed(seed)
    weights = torch.as_tensor(predictions.weights, dtype=torch.float64)
    index = torch.multinomial(weights, num_draws, replacement=True, generator=generator)
    draws = _sample_labels(predictions.probs[index], generator).reshape(1, num_draws, -1)
    return arviz_base.from_dict(
        {
            "posterior_predictive": {label_var: draws},
            "observed_data": {label_var: _observed(predictions.labels, predictions)},
        },
        dims={label_var: ["example"]},
        check_conventions=False,
    )


def summarize(posterior: Posterior) -> dict[str, Any]:
    """Convergence and sample-size diagnostics of a posterior.

    For MCMC output (``posterior.mcmc``, or ``num_chains >= 2``; a single chain
    included): ``arviz_stats`` rank-normalised split R-hat and bulk/tail ESS of every
    latent site (arrays of the site's event shape; the weights are ignored), and their
    worst values ignoring NaN. The draws' autocorrelation counts: one chain of ``S``
    correlated draws has a bulk ESS well below ``S``. R-hat compares chains, so it is NaN
    for a single chain (``arviz_stats`` needs two; Pyro's random walk runs one by default). Components whose draws
    are all equal get NaN (undefined), without a warning. Otherwise (weighted particles): the
    Kish ESS ``1 / Σ w_i²`` of the weights.

    Returns
    -------
    dict
        MCMC: ``method="mcmc"``, ``num_chains``, ``num_draws``, ``rhat``, ``ess_bulk``,
        ``ess_tail`` (``{site: ndarray}``), ``max_rhat``, ``min_ess_bulk``,
        ``min_ess_tail``. Particles: ``method="importance"``, ``num_samples``, ``ess``,
        ``ess_fraction``.

    Examples
    --------
    >>> post = Posterior({"z": torch.randn(4, 2)}, torch.log(torch.tensor([1.0, 1.0, 1.0, 0.0])))
    >>> summary = summarize(post)
    >>> summary["method"], round(summary["ess"], 6), summary["ess_fraction"]
    ('importance', 3.0, 0.75)
    """
    if not posterior.mcmc and posterior.num_chains < 2:
        ess = posterior.ess
        size = posterior.num_samples
        return {"method": "importance", "num_samples": size, "ess": ess, "ess_fraction": ess / size}
    draws = to_datatree(posterior)["posterior"].to_dataset()
    with np.errstate(invalid="ignore", divide="ignore"):  # constant draws: NaN, not a warning
        results = {
            "rhat": arviz_stats.rhat(draws),
            "ess_bulk": arviz_stats.ess(draws, method="bulk"),
            "ess_tail": arviz_stats.ess(draws, method="tail"),
        }
    per_site = {name: {site: np.asarray(ds[site].values) for site in posterior.samples} for name, ds in results.items()}
    return {
        "method": "mcmc",
        "num_chains": posterior.num_chains,
        "num_draws": posterior.num_samples // posterior.num_chains,
        **per_site,
        "max_rhat": _extreme(per_site["rhat"], np.nanmax),
        "min_ess_bulk": _extreme(per_site["ess_bulk"], np.nanmin),
        "min_ess_tail": _extreme(per_site["ess_tail"], np.nanmin),
    }


# ---------------------------------------------------------------------------- helpers
def _numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()  # numpy has no bf16


def _extreme(per_site: Mapping[str, np.ndarray], reduce) -> float:
    """``reduce`` over all sites' values; NaN when every value is NaN (e.g. constant draws)."""
    values = np.concatenate([np.ravel(v) for v in per_site.values()])
    return float(reduce(values)) if not np.isnan(values).all() else math.nan


def _draw_index(
    posterior: Posterior, resample: bool, num_draws: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Indices of the exported draws and the number of chains."""
    if not resample:
        if num_draws is not None:
            raise ValueError("num_draws is only used with resample=True")
        return torch.arange(posterior.num_samples), posterior.num_chains
    if posterior.num_chains > 1:
        raise ValueError(
            f"resample=True is for weighted particle posteriors; this one has {posterior.num_chains} "
            "MCMC chains, whose draws are already equally weighted"
        )
    if num_draws is not None and (isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1):
        raise ValueError(f"num_draws must be a positive int or None (the posterior's size), got {num_draws!r}")
    return systematic(posterior.log_weights, num_draws or posterior.num_samples, generator), 1


def _check_predictions(posterior: Posterior, predictions: EnsemblePredictions) -> None:
    samples = predictions.probs.shape[0]
    if samples != posterior.num_samples:
        raise ValueError(f"predictions have {samples} samples, the posterior {posterior.num_samples}")
    if not torch.allclose(predictions.weights.double(), posterior.weights, atol=1e-6):
        raise ValueError("predictions.weights differ from the posterior's weights: predict with this posterior")


def _sample_labels(probs: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """One label per row of ``probs [..., C]`` (int64 array of shape ``probs.shape[:-1]``)."""
    flat = probs.reshape(-1, probs.shape[-1]).double()
    if not bool(((flat >= 0).all(-1) & (flat.sum(-1) > 0)).all()):
        raise ValueError("predictions.probs must be non-negative with positive row sums to draw labels")
    labels = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    return _numpy(labels)


def _predictive(
    probs: torch.Tensor, shape: tuple[int, int], label_var: str, generator: torch.Generator
) -> dict[str, np.ndarray]:
    """Per-sample probabilities reshaped to ``(chain, draw, example, class)`` and one label drawn from each."""
    probs = probs.reshape(*shape, *probs.shape[1:])
    return {"probs": _numpy(probs), label_var: _sample_labels(probs, generator)}


def _observed(labels: torch.Tensor, predictions: EnsemblePredictions | None) -> np.ndarray:
    labels = _numpy(torch.as_tensor(labels).long())
    if labels.ndim != 1:
        raise ValueError(f"observed labels must be [N], got shape {labels.shape}")
    if predictions is not None and labels.shape[0] != predictions.probs.shape[1]:
        raise ValueError(f"{labels.shape[0]} observed labels for {predictions.probs.shape[1]} predicted examples")
    return labels


def _root_attrs(posterior: Posterior, resample: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "engine": posterior.engine,
        "status": posterior.status,
        "num_chains": posterior.num_chains,
        "num_samples": posterior.num_samples,
        "resampled": int(resample),
    }
    for prefix, record in (("summary", posterior.summary), ("api_calls", posterior.api_calls)):
        attrs.update({f"{prefix}.{key}": _attr_value(value) for key, value in record.items()})
    return attrs


def _attr_value(value: Any) -> str | int | float:
    """A netCDF-safe attribute: numbers and strings as they are, the rest as JSON."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, default=str)


def _numeric(value: Any) -> np.ndarray | None:
    """``value`` as a numeric array, or None when it is missing or not numeric."""
    if isinstance(value, str):
        value = _MISSING_STRINGS.get(value)  # non-finite floats saved by Posterior.save
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = _numpy(value)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return array if array.dtype.kind in "biuf" else None


def _is_index(values: np.ndarray) -> bool:
    """Whether ``values`` can label the ``iteration`` dim: distinct integers."""
    return values.ndim == 1 and values.dtype.kind in "iu" and len(set(values.tolist())) == values.size


def _engine_stats(records: Sequence[Mapping[str, Any]]) -> xr.Dataset:
    """Per-iteration diagnostics stacked along ``iteration`` (see the module docstring)."""
    stacked: dict[str, np.ndarray] = {}
    skipped = []
    for key in dict.fromkeys(k for record in records for k in record):
        column = [_numeric(record.get(key)) for record in records]
        present = [a for a in column if a is not None]
        if not present or len({a.shape for a in present}) != 1:
            skipped.append(str(key))
        elif len(present) == len(column):
            stacked[str(key)] = np.stack(present)
        else:
            filled = np.full((len(column), *present[0].shape), np.nan)
            for i, a in enumerate(column):
                if a is not None:
                    filled[i] = a
            stacked[str(key)] = filled
    iteration = stacked.pop("iteration", None)
    if iteration is not None and not _is_index(iteration):
        skipped.append("iteration")
        iteration = None
    if iteration is None:
        iteration = np.arange(len(records))
    dataset = arviz_base.dict_to_dataset(
        stacked, sample_dims=["iteration"], coords={"iteration": iteration}, check_conventions=False
    )
    dataset.attrs["skipped"] = ", ".join(skipped)
    return dataset
