"""Dev-set selection scores (BBT's best-on-dev prompt, prompt ensembles, CMA-ELBO)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bayesprompt.lm.base import EncodedBatch
from bayesprompt.models.potential import Potential

__all__ = ["dev_accuracy_score"]

#: Weight of the dev log-likelihood in :func:`dev_accuracy_score`: small enough never to
#: outweigh one example of accuracy (``1 / B``) for any log-likelihood above ``-1e6 / B``.
TIE_BREAK_WEIGHT = 1e-6


def dev_accuracy_score(potential: Potential, dev_batch: EncodedBatch) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u -> dev accuracy + 1e-6 * dev log-likelihood`` (accuracy, ties broken by likelihood).

    The log-likelihood is read from the likelihood's normalised logits, so a probability
    that underflows to 0 in float32 still gives a finite score (it gave ``-inf`` for every
    prompt before 2026-12-07, and CMA-ES then never replaced its starting prompt).

    Parameters
    ----------
    potential : Potential
        The prompt model's potential, its latent sites discovered (as after an engine's
        ``init``); its model's observed site must be ``"y"``.
    dev_batch : EncodedBatch
        The labelled dev examples.

    Returns
    -------
    callable
        ``u [P, D] -> scores [P]`` (float64), higher is better; one black-box call per prompt.

    Examples
    --------
    >>> from bayesprompt.data.task import Example, Task
    >>> from bayesprompt.models.projection import RandomProjection
    >>> from bayesprompt.models.prompt import PromptModel
    >>> from bayesprompt.testing import FakeBlackBox
    >>> box = FakeBlackBox(Task("toy", ("a", "b"), ("A.", "B."), "{text} {mask}", ("a", "b")), embed_dim=4)
    >>> projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=3, n_tokens=2, seed=0)
    >>> dev = box.encode([Example(f"x{i}", i % 2) for i in range(8)])
    >>> potential = Potential(PromptModel(box, projection), (dev,))
    >>> _ = potential.discover_sites()  # an engine's init does this
    >>> scores = dev_accuracy_score(potential, dev)(torch.zeros(2, 3))
    >>> scores.shape, bool(scores[0] == scores[1])
    (torch.Size([2]), True)
    """

    def score(u: torch.Tensor) -> torch.Tensor:
        trace = potential.with_args(dev_batch).trace(u)
        log_probs = trace.nodes["y"]["fn"].logits.reshape(u.shape[0], len(dev_batch), -1)  # log-softmax
        correct = (log_probs.argmax(-1) == dev_batch.labels).double().mean(-1)
        labels = dev_batch.labels.expand(u.shape[0], -1).unsqueeze(-1)
        log_lik = log_probs.gather(-1, labels).sum((-1, -2))
        return correct + TIE_BREAK_WEIGHT * log_lik.double()

    return score
