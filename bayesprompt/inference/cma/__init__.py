"""CMA-ES engines: BBT's single-prompt search (and, later, prompt ensembles and CMA-ELBO)."""

from bayesprompt.inference.cma.bbt import CMAES, CMAState

__all__ = ["CMAES", "CMAState"]
