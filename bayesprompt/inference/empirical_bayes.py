"""Empirical Bayes: centre the prompt prior on a prompt tuned on the dev split.

The default prior ``z ~ N(0, s^2 I)`` puts the useful prompt directions of some tasks
tens of prior standard deviations out (see the AG News diagnosis in the repository's
``benchmarks/FINDINGS.md``): a few nats of likelihood cannot pay for them, so the
posterior stays near the zero-shot model. :func:`fit_dev_centre` spends a share of the budget on BBT's CMA-ES over the
**dev** log-likelihood; :meth:`DevCentre.prior` is then ``N(z_dev, s^2 I)`` for the
posterior on the **training** split. Each split informs one stage only, so the
training likelihood is not counted twice.

The posterior is only as good as the dev prompt: few training examples barely move the
particles around it. In the README's benchmark this matched BBT on AG News but lost on
SST-2, where the dev prompt overfit its 32 dev examples.

Examples
--------
A fitted centre (``fit_dev_centre(model, dev_batch, budget=1000, meter=meter)`` with a
:class:`~bayesprompt.models.PromptModel`) gives the prior for the training posterior:

>>> centre = DevCentre(torch.tensor([3.0, 4.0]), api_calls=40, dev_log_likelihood=-3.0, iterations=2)
>>> centre.norm, centre.prior(0.5).event_shape
(5.0, torch.Size([2]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from bayesprompt.inference.base import Engine, run
from bayesprompt.inference.cma.bbt import CMAES
from bayesprompt.inference.posterior import Posterior
from bayesprompt.lm.base import EncodedBatch
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.models.prompt import PromptModel

__all__ = ["DevCentre", "fit_dev_centre"]


@dataclass(frozen=True)
class DevCentre:
    """A prompt tuned on the dev split, used as the centre of the prior.

    Attributes
    ----------
    z : Tensor ``[k]``
        The dev-tuned latent (CMA-ES's best candidate).
    api_calls : int
        Calls the dev stage used (counted by the meter).
    dev_log_likelihood : float
        Dev log-likelihood at ``z``.
    iterations : int
        CMA-ES iterations.
    """

    z: torch.Tensor
    api_calls: int
    dev_log_likelihood: float
    iterations: int

    def prior(self, scale: float) -> dist.Distribution:
        """``Normal(z, scale)`` over the ``k`` coordinates (an event of shape ``[k]``)."""
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return dist.Normal(self.z, scale).to_event(1)

    @property
    def norm(self) -> float:
        """Euclidean norm of ``z`` (in prior standard deviations when the scale is 1)."""
        return float(self.z.norm())


def fit_dev_centre(
    model: PromptModel,
    dev_batch: EncodedBatch,
    budget: int,
    *,
    meter: Meter,
    popsize: int = 20,
    seed: int = 0,
    progress: bool = True,
    runner: Callable[[Engine, Potential], Posterior] | None = None,
) -> DevCentre:
    """Maximise the dev log-likelihood with CMA-ES (BBT's optimiser) within ``budget`` calls.

    Parameters
    ----------
    model : PromptModel
        The prompt model whose latent site ``z`` is tuned (its prior is not used by the
        objective, only its shape).
    dev_batch : EncodedBatch
        The dev examples (model argument).
    budget : int
        API calls for this stage (each CMA-ES iteration costs ``popsize``); the meter's
        overall budget still applies.
    meter : Meter
        The black box's meter.
    popsize : int
        CMA-ES population (BBT: 20).
    seed : int
        CMA-ES seed.
    progress : bool
        Show a progress bar.
    runner : callable or None
        ``(engine, potential) -> Posterior``: how the CMA-ES engine is run, e.g. with
        checkpoints (default: :func:`~bayesprompt.inference.base.run` with ``seed``,
        ``meter`` and ``progress``). It runs inside the stage's cap of ``budget`` calls from
        the meter's count at entry; a runner that restores the meter from a checkpoint of
        this stage must be entered at the count the stage began at.

    Returns
    -------
    DevCentre
        Best training-objective candidate on dev (no selection split is left for it).

    Raises
    ------
    ValueError
        If ``budget`` is below one CMA-ES population, or the model has no site ``z``.
    """
    if budget < popsize:
        raise ValueError(f"budget {budget} is less than one CMA-ES population ({popsize} calls)")
    potential = Potential(model, (dev_batch,), meter=meter)
    calls_before = meter.calls
    with meter.capped(budget):
        if runner is None:
            point = run(CMAES(popsize=popsize), potential, seed=seed, meter=meter, progress=progress)
        else:
            point = runner(CMAES(popsize=popsize), potential)
    if "z" not in point.samples:
        raise ValueError(f"the model has no latent site 'z' (sites: {sorted(point.samples)})")
    return DevCentre(
        z=point.samples["z"].reshape(-1).detach().float().clone(),
        api_calls=meter.calls - calls_before,
        dev_log_likelihood=-float(point.summary["best_train_loss"]),
        iterations=int(point.summary["iterations"]),
    )
