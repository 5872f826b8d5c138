"""Markov chain Monte Carlo over prompts.

* :class:`EnsembleSampler` (``"ensemble-mcmc"``) -- batched affine-invariant ensemble
  sampler (stretch and differential-evolution moves), an
  :class:`~bayesprompt.inference.base.Engine`: ``run(EnsembleSampler(...), potential)``;
  each red-blue half-step scores all its proposals in one black-box query;
* :class:`PyroRandomWalk` (``"rw-mcmc"``) / :func:`run_random_walk` -- Pyro's own
  ``RandomWalkKernel`` (one prompt per step), driven one transition per engine step as
  ``pyro.infer.MCMC`` drives it, so it draws what ``MCMC`` draws and checkpoints like
  the other engines;
* :func:`integrated_time`, :func:`autocorr_function`, :func:`autocorr_reliable` --
  emcee's integrated autocorrelation time estimator.

Both samplers store their draws chain-major with ``Posterior.num_chains`` set (each
ensemble walker is a chain), so ``samples[site].reshape(num_chains, draws, ...)``
recovers the chains for R-hat and ESS.
"""

from bayesprompt.inference.mcmc.autocorr import autocorr_function, autocorr_reliable, integrated_time
from bayesprompt.inference.mcmc.ensemble import (
    MOVES,
    DEMove,
    EnsembleSampler,
    EnsembleState,
    Move,
    StretchMove,
)
from bayesprompt.inference.mcmc.random_walk import (
    PyroRandomWalk,
    RandomWalkState,
    WarmupBudgetError,
    run_random_walk,
)

__all__ = [
    "DEMove",
    "EnsembleSampler",
    "EnsembleState",
    "MOVES",
    "Move",
    "PyroRandomWalk",
    "RandomWalkState",
    "StretchMove",
    "WarmupBudgetError",
    "autocorr_function",
    "autocorr_reliable",
    "integrated_time",
    "run_random_walk",
]
