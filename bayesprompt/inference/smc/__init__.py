"""Sequential Monte Carlo: adaptive tempered SMC and its building blocks.

* :class:`TemperedSMC` -- the engine (``run(TemperedSMC(...), potential)``);
* :func:`resample` and the schemes :func:`systematic`, :func:`stratified`,
  :func:`multinomial`, :func:`residual`;
* :func:`ess`, :func:`normalize` -- weight utilities;
* :func:`next_beta`, :func:`incremental_log_weights` -- adaptive tempering;
* :class:`ABCSMC` -- the likelihood-free engine (defined in :mod:`.abc`);
* :class:`AdaptiveABCSMC` -- likelihood-free ABC-SMC with MCMC moves for high
  dimension (defined in :mod:`.abc_mcmc`; its moves are in :mod:`.moves`).
"""

from bayesprompt.inference.smc.abc import ABCSMC, ABCSMCState, PartialPopulation
from bayesprompt.inference.smc.abc_mcmc import AdaptiveABCSMC, AdaptiveABCSMCState
from bayesprompt.inference.smc.ess import ess, normalize
from bayesprompt.inference.smc.resampling import (
    SCHEMES,
    multinomial,
    resample,
    residual,
    stratified,
    systematic,
)
from bayesprompt.inference.smc.tempered import TemperedSMC, TemperedSMCState
from bayesprompt.inference.smc.tempering import incremental_log_weights, next_beta, tempered_log_likelihood

__all__ = [
    "ABCSMC",
    "ABCSMCState",
    "AdaptiveABCSMC",
    "AdaptiveABCSMCState",
    "PartialPopulation",
    "SCHEMES",
    "TemperedSMC",
    "TemperedSMCState",
    "ess",
    "incremental_log_weights",
    "multinomial",
    "next_beta",
    "normalize",
    "resample",
    "residual",
    "stratified",
    "systematic",
    "tempered_log_likelihood",
]
