"""Bayesian model averaging of prompt models by their evidence.

Two prompt models fitted to the same training data (say, with and without a latent
likelihood temperature, or with two prior scales) can be weighed by their marginal
likelihoods, which tempered SMC estimates at no extra cost. The posterior probability of
model ``k`` under prior model probabilities ``pi_k`` is

.. math::

    p(M_k \\mid y) = \\frac{\\pi_k \\, p(y \\mid M_k)}{\\sum_j \\pi_j \\, p(y \\mid M_j)},

and the model-averaged predictive is :math:`\\sum_k p(M_k \\mid y)\\, p(y^* \\mid y, M_k)`,
itself an ensemble: the samples of every model, each weighted by its own posterior weight
times its model's probability (:func:`mix_ensembles`), so every metric of
:mod:`bayesprompt.metrics` and every uncertainty score applies to it unchanged.

For nested models the average is also one posterior of the larger model
(:func:`mix_posteriors`): a model without a latent temperature is the model with the
temperature fixed at 1, so its samples get ``temperature = 1`` and both sets of samples
predict through the larger model.

The evidence must be of the same data: :func:`~bayesprompt.pipeline.compare_runs` checks
that the runs share the task and the few-shot split. A model whose prior was tuned on the
dev split (``prior_centre="dev"``) has an empirical-Bayes evidence, which favours it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from bayesprompt.inference.posterior import Posterior
from bayesprompt.predict import EnsemblePredictions

__all__ = ["posterior_model_probabilities", "mix_ensembles", "mix_posteriors"]


def posterior_model_probabilities(
    log_evidences: Sequence[float], prior_probabilities: Sequence[float] | None = None
) -> np.ndarray:
    """Posterior model probabilities from log evidences (a softmax, in float64).

    Parameters
    ----------
    log_evidences : sequence of float
        ``log p(y | M_k)`` of each model, all finite.
    prior_probabilities : sequence of float or None
        ``pi_k``: positive prior weights, normalised here (default: uniform).

    Returns
    -------
    ndarray ``[K]``
        ``p(M_k | y)``, summing to one.

    Examples
    --------
    >>> posterior_model_probabilities([-20.0, -20.0 + math.log(3)]).round(4).tolist()
    [0.25, 0.75]
    """
    log_z = np.asarray(log_evidences, dtype=np.float64)
    if log_z.ndim != 1 or log_z.size == 0:
        raise ValueError(f"log_evidences must be a non-empty sequence of numbers, got {log_evidences!r}")
    if not np.isfinite(log_z).all():
        raise ValueError(f"log_evidences must be finite, got {log_z.tolist()}")
    if prior_probabilities is None:
        log_prior = np.zeros_like(log_z)
    else:
        prior = np.asarray(prior_probabilities, dtype=np.float64)
        if prior.shape != log_z.shape or not (np.isfinite(prior) & (prior > 0)).all():
            raise ValueError(
                f"prior_probabilities must hold {log_z.size} positive numbers (one per model), got {prior_probabilities!r}"
            )
        log_prior = np.log(prior / prior.sum())
    joint = log_z + log_prior
    weights = np.exp(joint - joint.max())
    return weights / weights.sum()


def mix_ensembles(ensembles: Sequence[EnsemblePredictions], model_probabilities: Sequence[float]) -> EnsemblePredictions:
    """One ensemble holding every model's samples, weighted by ``p(M_k | y) * w_ks``.

    Its mean is ``sum_k p(M_k | y) * ensembles[k].mean()``: the model-averaged predictive.
    Each ensemble's weights are normalised first; an ensemble of probability 0 is left
    out, as in :func:`mix_posteriors`. (With vote smoothing,
    ``mean(dirichlet_alpha > 0)`` of the mixture is not the average of the smoothed means,
    since the number of samples changes; the averages of score-based runs are exact.)

    Parameters
    ----------
    ensembles : sequence of EnsemblePredictions
        Per-model predictions of the same examples (same labels, same classes).
    model_probabilities : sequence of float
        Non-negative model weights summing to one (see :func:`posterior_model_probabilities`).

    Examples
    --------
    >>> a = EnsemblePredictions(torch.tensor([[[0.9, 0.1]]]), torch.tensor([1.0]), torch.tensor([0]))
    >>> b = EnsemblePredictions(torch.tensor([[[0.5, 0.5]], [[0.3, 0.7]]]), torch.tensor([0.5, 0.5]), torch.tensor([0]))
    >>> mix_ensembles([a, b], [0.5, 0.5]).mean()
    tensor([[0.6500, 0.3500]])
    """
    weights = _model_weights(model_probabilities, len(ensembles), "ensemble")
    first = ensembles[0]
    for index, other in enumerate(ensembles[1:], start=1):
        if other.probs.shape[1:] != first.probs.shape[1:]:
            raise ValueError(
                f"ensemble {index} predicts [examples, classes] = {list(other.probs.shape[1:])}, "
                f"ensemble 0 {list(first.probs.shape[1:])}"
            )
        if not torch.equal(other.labels, first.labels):
            raise ValueError(f"ensemble {index} has other labels than ensemble 0: they must predict the same examples")
    kept = [(ensemble, float(w)) for ensemble, w in zip(ensembles, weights) if w > 0]  # as mix_posteriors does
    dtype = _common_dtype(e.probs for e, _ in kept)
    probs = torch.cat([e.probs.to(dtype) for e, _ in kept])
    sample_weights = torch.cat([e.weights.double() / e.weights.double().sum() * w for e, w in kept])
    return EnsemblePredictions(probs, sample_weights / sample_weights.sum(), first.labels)


def mix_posteriors(
    posteriors: Sequence[Posterior],
    model_probabilities: Sequence[float],
    fixed: dict[str, float] | None = None,
) -> Posterior:
    """One posterior holding every model's samples, weighted by ``p(M_k | y) * w_ks``.

    This is the posterior under the mixture prior ``sum_k pi_k p(theta | M_k)``, where a
    model that fixes a site puts a point mass on its value. It serves predictions and
    posterior expectations; it has no density, so it is not a starting population for
    further SMC or MCMC moves, nor an input to density-based diagnostics (LOO).
    Models with probability 0 contribute no samples.

    Parameters
    ----------
    posteriors : sequence of Posterior
        Posteriors of nested models: after filling in ``fixed``, every posterior must
        have the same latent sites with the same per-sample shapes.
    model_probabilities : sequence of float
        Non-negative model weights summing to one.
    fixed : dict or None
        ``{site: value}`` for sites that some models fix, e.g. ``{"temperature": 1.0}``
        for a model without a latent temperature; a posterior missing such a site gets
        the value for every sample (shaped like the site in the posteriors that have it).

    Examples
    --------
    >>> plain = Posterior({"z": torch.zeros(2, 3)}, torch.zeros(2), summary={"log_evidence": -3.0})
    >>> hot = Posterior({"z": torch.ones(1, 3), "temperature": torch.full((1, 1), 2.0)}, torch.zeros(1))
    >>> mixed = mix_posteriors([plain, hot], [0.75, 0.25], fixed={"temperature": 1.0})
    >>> mixed.samples["temperature"].flatten().tolist(), mixed.weights.tolist()
    ([1.0, 1.0, 2.0], [0.375, 0.375, 0.25])
    >>> mix_posteriors([plain, hot], [1.0, 0.0], fixed={"temperature": 1.0}).num_samples
    2
    """
    weights = _model_weights(model_probabilities, len(posteriors), "posterior")
    fixed = dict(fixed or {})
    like = {site: v for p in posteriors for site, v in p.samples.items() if site in fixed}
    filled = []
    for index, posterior in enumerate(posteriors):
        samples = dict(posterior.samples)
        for site, value in fixed.items():
            if site not in samples:
                if site not in like:
                    raise ValueError(f"fixed site {site!r} is in none of the posteriors")
                shape = (posterior.num_samples, *like[site].shape[1:])
                samples[site] = torch.full(shape, float(value), dtype=like[site].dtype)
        if index and (set(samples) != set(filled[0]) or any(samples[k].shape[1:] != filled[0][k].shape[1:] for k in samples)):
            raise ValueError(
                f"posterior {index} has sites {_shapes(samples)}, posterior 0 {_shapes(filled[0])}; "
                "pass the sites one model fixes in `fixed`"
            )
        filled.append(samples)
    kept = [index for index, w in enumerate(weights) if w > 0]
    log_weights = torch.cat([posteriors[i].log_weights + math.log(weights[i]) for i in kept])
    samples = {}
    for site in filled[0]:
        dtype = _common_dtype(filled[i][site] for i in kept)
        samples[site] = torch.cat([filled[i][site].to(dtype) for i in kept])
    return Posterior(samples, log_weights, engine="model-average")


def _common_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The dtype all ``tensors`` promote to (no precision is lost in the concatenation)."""
    dtype = None
    for tensor in tensors:
        dtype = tensor.dtype if dtype is None else torch.promote_types(dtype, tensor.dtype)
    return dtype


def _model_weights(model_probabilities: Sequence[float], count: int, what: str) -> np.ndarray:
    """Validated model probabilities: one per ``what``, non-negative, summing to one."""
    weights = np.asarray(model_probabilities, dtype=np.float64)
    if count == 0 or weights.shape != (count,):
        raise ValueError(f"need one model probability per {what}, got {count} {what}s and {weights.tolist()}")
    if (weights < 0).any() or not math.isclose(weights.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"model_probabilities must be >= 0 and sum to 1, got {weights.tolist()}")
    return weights


def _shapes(samples: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {site: list(value.shape[1:]) for site, value in sorted(samples.items())}
