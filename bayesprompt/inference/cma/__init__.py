"""CMA-ES engines: BBT's single-prompt search, prompt ensembles and CMA-ELBO."""

from bayesprompt.inference.cma.bbt import CMAES, CMAState
from bayesprompt.inference.cma.elbo import CMAELBO, CMAELBOState, gaussian_prior
from bayesprompt.inference.cma.ensembles import EnsembleState, PromptEnsembles

__all__ = [
    "CMAES",
    "CMAState",
    "PromptEnsembles",
    "EnsembleState",
    "CMAELBO",
    "CMAELBOState",
    "gaussian_prior",
]
