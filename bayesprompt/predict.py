"""Ensemble predictions over a posterior of prompts.

For each posterior sample the model is run (vectorised, conditioned on the sample) on
the evaluation batch, and the distribution of its observed site gives per-sample class
probabilities ``[S, N, C]``. The Bayesian model average is their weighted mean. This
works for any prompt model whose observed site is a Categorical, e.g. with a latent
likelihood temperature. Large evaluation sets stream in chunks of examples, so memory
stays bounded; each chunk costs one metered call per distinct sample (repeated samples,
such as resampled particles or the states of a rejected MCMC move, are run once: the model
is deterministic given its latent values).

:meth:`EnsemblePredictions.uncertainty` gives the per-example uncertainty scores of
:mod:`bayesprompt.uncertainty` (predictive/expected entropy, mutual information,
``1 - max p``, ``1 - vote margin``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bayesprompt.inference.posterior import Posterior
from bayesprompt.lm.base import EncodedBatch
from bayesprompt.models.potential import Potential
from bayesprompt.uncertainty import normalised_weights, uncertainty_scores

__all__ = ["EnsemblePredictions", "fit_vote_smoothing", "predict", "predict_votes"]


@dataclass(frozen=True)
class EnsemblePredictions:
    """Per-sample predictive probabilities and their weights.

    Attributes
    ----------
    probs : Tensor ``[S, N, C]``
        Class probabilities of each posterior sample on each example.
    weights : Tensor ``[S]``
        Posterior weights, non-negative; divided by their sum on construction, so that
        :meth:`mean` is a probability average whatever scale they came in.
    labels : Tensor ``[N]``
        Gold labels of the evaluated examples.

    Examples
    --------
    >>> pred = EnsemblePredictions(
    ...     torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[0.7, 0.3], [0.2, 0.8]]]),
    ...     torch.tensor([0.5, 0.5]),
    ...     torch.tensor([0, 1]),
    ... )
    >>> pred.mean()
    tensor([[0.8000, 0.2000],
            [0.3000, 0.7000]])
    >>> [round(v, 4) for v in pred.uncertainty()["mutual_information"].tolist()]
    [0.0324, 0.0242]
    """

    probs: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.probs.ndim != 3:
            raise ValueError(f"probs must be [S, N, C], got shape {tuple(self.probs.shape)}")
        samples, examples = self.probs.shape[:2]
        if tuple(self.labels.shape) != (examples,):
            raise ValueError(f"labels must be [N={examples}], got shape {tuple(self.labels.shape)}")
        weights = normalised_weights(self.weights, samples)
        dtype = self.weights.dtype if self.weights.is_floating_point() else torch.float64
        object.__setattr__(self, "weights", weights.to(dtype))  # frozen: set once, here

    def mean(self, dirichlet_alpha: float = 0.0) -> torch.Tensor:
        """Bayesian model average ``[N, C]``: the weighted mean of the per-sample probabilities.

        With ``dirichlet_alpha > 0`` the average is smoothed as the posterior mean of a
        Dirichlet(alpha) prior updated with ``S`` weighted votes,
        ``(S * mean + alpha) / (S + C * alpha)``, so that a vote distribution (one-hot
        per-sample probabilities) is not quantised to multiples of ``1/S``.
        """
        if dirichlet_alpha < 0:
            raise ValueError(f"dirichlet_alpha must be >= 0, got {dirichlet_alpha}")
        w = self.weights.to(self.probs.dtype).reshape(-1, 1, 1)
        average = (w * self.probs).sum(0)
        samples, classes = self.probs.shape[0], self.probs.shape[-1]
        return (samples * average + dirichlet_alpha) / (samples + classes * dirichlet_alpha)

    def uncertainty(self, dirichlet_alpha: float = 0.0) -> dict[str, torch.Tensor]:
        """Per-example uncertainty scores ``{name: [N]}``, higher = more uncertain.

        See :func:`bayesprompt.uncertainty.uncertainty_scores` for the names and
        definitions; the weights are the posterior weights. With ``dirichlet_alpha > 0``
        the scores of the model average (predictive entropy, ``1 - max p``, and mutual
        information = predictive - expected entropy) use the smoothed average
        :meth:`mean` ``(dirichlet_alpha)``, as the probabilities of a vote predictive do.
        """
        scores = uncertainty_scores(self.probs, self.weights)
        if dirichlet_alpha == 0:
            return scores
        average = self.mean(dirichlet_alpha).double()
        scores["predictive_entropy"] = torch.special.entr(average).sum(-1)
        scores["one_minus_max_prob"] = 1.0 - average.max(-1).values
        scores["mutual_information"] = scores["predictive_entropy"] - scores["expected_entropy"]
        return scores


def predict(
    posterior: Posterior,
    potential: Potential,
    batch: EncodedBatch,
    chunk_size: int = 256,
    site: str = "y",
    num_samples: int | None = None,
    seed: int = 0,
) -> EnsemblePredictions:
    """Predict ``batch`` with the samples of ``posterior`` (all, or ``num_samples``).

    Parameters
    ----------
    posterior : Posterior
        Weighted prompt samples (from any engine).
    potential : Potential
        The potential the posterior was fitted with; its model is re-run on ``batch``.
    batch : EncodedBatch
        Evaluation examples (their labels are only returned, not used).
    chunk_size : int
        Examples per model run.
    site : str
        Name of the observed Categorical site of the model.
    num_samples : int or None
        Predict with at most this many samples (:meth:`Posterior.subsample`: even
        thinning of equal weights, seeded resampling of weighted ones); each sample costs
        one API call per chunk, repeated samples only once. ``None``: every sample.
    seed : int
        Seed of the resampling.

    Returns
    -------
    EnsemblePredictions
    """

    def class_probs(part_potential: Potential, u: torch.Tensor, part: EncodedBatch) -> torch.Tensor:
        trace = part_potential.trace(u)
        if site not in trace.nodes:
            raise KeyError(f"the model has no site {site!r}; pass site= the observed label site")
        fn = trace.nodes[site]["fn"]
        if not hasattr(fn, "probs"):
            raise TypeError(f"site {site!r} is a {type(fn).__name__}, not a Categorical")
        probs = fn.probs
        return probs.expand(u.shape[0], *probs.shape[1:]).reshape(u.shape[0], len(part), -1)

    if num_samples is not None:
        posterior = posterior.subsample(num_samples, seed)
    probs = _stream(posterior, potential, batch, chunk_size, class_probs)
    return EnsemblePredictions(probs.float(), posterior.weights, batch.labels)


def predict_votes(
    posterior: Posterior,
    potential: Potential,
    batch: EncodedBatch,
    num_classes: int,
    chunk_size: int = 256,
    site: str = "y_pred",
    num_samples: int | None = None,
    seed: int = 0,
) -> EnsemblePredictions:
    """Likelihood-free prediction: each sample's predicted label as a one-hot vote.

    ``potential`` wraps a likelihood-free model whose deterministic site ``site`` holds
    the label-only API's predictions; the result's :meth:`EnsemblePredictions.mean` is the
    (optionally Dirichlet-smoothed) weighted vote distribution. ``chunk_size``,
    ``num_samples`` and ``seed`` are as in :func:`predict`.
    """

    def predicted_labels(part_potential: Potential, u: torch.Tensor, part: EncodedBatch) -> torch.Tensor:
        outputs = part_potential.evaluate(u).outputs
        if site not in outputs:
            raise KeyError(f"the model has no deterministic site {site!r} of predicted labels")
        return outputs[site].reshape(u.shape[0], len(part))

    if num_samples is not None:
        posterior = posterior.subsample(num_samples, seed)
    votes = _stream(posterior, potential, batch, chunk_size, predicted_labels)
    onehot = torch.nn.functional.one_hot(votes.long(), num_classes).float()
    return EnsemblePredictions(onehot, posterior.weights, batch.labels)


def fit_vote_smoothing(
    votes: EnsemblePredictions, min_alpha: float = 1e-2, max_alpha: float = 1e4, grid_size: int = 2001
) -> float:
    """The Dirichlet smoothing ``alpha`` that maximises the likelihood of held-out labels.

    A label-only posterior often votes unanimously, and ``votes.mean(alpha)`` then
    assigns every example the same confidence ``(S + alpha) / (S + C * alpha)``; a fixed
    ``alpha`` (e.g. 1) makes that confidence close to 1 whatever the accuracy. Fitting
    ``alpha`` on labelled held-out examples (the few-shot dev split) by maximum
    likelihood calibrates it: for unanimous votes on two classes, the fitted confidence
    equals the dev accuracy. The search is over a log-spaced grid on
    ``[min_alpha, max_alpha]`` (relative spacing ~0.7% by default), which is robust
    because the log-likelihood of one scalar is cheap and need not be concave.

    Parameters
    ----------
    votes : EnsemblePredictions
        Per-sample predictions (one-hot votes, or any probabilities) on held-out examples,
        with their gold labels.
    min_alpha, max_alpha : float
        Search range; the lower end keeps the confidence below 1 when every held-out
        vote is right.
    grid_size : int
        Grid points.

    Returns
    -------
    float
        The fitted ``alpha``, for :meth:`EnsemblePredictions.mean`.

    Examples
    --------
    Thirty-two unanimous voters are right on 3 of 4 held-out examples; the fitted alpha
    turns their unanimous vote into a confidence of 0.75:

    >>> onehot = torch.tensor([[1.0, 0.0]]).expand(32, 4, 2)
    >>> votes = EnsemblePredictions(onehot, torch.full((32,), 1 / 32), torch.tensor([0, 0, 0, 1]))
    >>> alpha = fit_vote_smoothing(votes)
    >>> round(alpha, 1), round(votes.mean(alpha)[0, 0].item(), 3)
    (16.0, 0.75)
    """
    if not 0 < min_alpha < max_alpha:
        raise ValueError(f"need 0 < min_alpha < max_alpha, got min_alpha={min_alpha}, max_alpha={max_alpha}")
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    if votes.labels.numel() == 0:
        raise ValueError("votes has no examples: fitting the smoothing needs labelled held-out examples")
    w = votes.weights.double().reshape(-1, 1, 1)
    samples, classes = votes.probs.shape[0], votes.probs.shape[-1]
    counts = samples * (w * votes.probs.double()).sum(0)  # [N, C] weighted vote counts
    observed = counts.gather(-1, votes.labels.long().unsqueeze(-1)).squeeze(-1)  # [N]
    alphas = torch.logspace(math.log10(min_alpha), math.log10(max_alpha), grid_size, dtype=torch.float64)
    log_lik = (observed + alphas.unsqueeze(-1)).log().sum(-1) - len(observed) * (samples + classes * alphas).log()
    return float(alphas[log_lik.argmax()])


def _stream(
    posterior: Posterior,
    potential: Potential,
    batch: EncodedBatch,
    chunk_size: int,
    read: Callable[[Potential, torch.Tensor, EncodedBatch], torch.Tensor],
) -> torch.Tensor:
    """Run ``read(potential_on_chunk, u, chunk)`` over chunks of examples; concatenate on dim 1.

    Repeated samples (resampled particles, rejected MCMC moves) are run once and their
    outputs copied, which the model's determinism given its latent values makes exact.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(batch) == 0:
        raise ValueError("batch is empty: nothing to predict")
    distinct, inverse = distinct_rows(potential.pack(posterior.samples))
    parts = []
    for start in range(0, len(batch), chunk_size):
        part = batch.select(slice(start, start + chunk_size))
        parts.append(read(potential.with_args(part), distinct, part))
    return torch.cat(parts, dim=1)[inverse]


def distinct_rows(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``u`` in order of first appearance, and where each row went.

    Returns ``(distinct, inverse)`` with ``distinct[inverse]`` equal to ``u``. Keeping the
    order of first appearance makes rows without repeats come back as they are, so such a
    posterior is run exactly as the samples were given.

    Examples
    --------
    >>> distinct, inverse = distinct_rows(torch.tensor([[2.0], [1.0], [2.0], [3.0]]))
    >>> distinct.flatten().tolist(), inverse.tolist()
    ([2.0, 1.0, 3.0], [0, 1, 0, 2])
    """
    _, group = torch.unique(u, dim=0, return_inverse=True)  # groups in sorted order
    rows = torch.arange(len(u), device=u.device)
    first = torch.full((int(group.max()) + 1,), len(u), device=u.device).scatter_reduce(0, group, rows, "amin")
    order = first.argsort()  # groups by first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=u.device)
    return u[first[order]], rank[group]
