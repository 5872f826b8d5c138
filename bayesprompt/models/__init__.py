"""Pyro prompt models, the random projection and the Potential bridge to the engines."""

from bayesprompt.models.potential import Evaluation, Potential, SiteInfo, seeded
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import (
    DEFAULT_PRIOR_SCALE,
    LikelihoodFreePromptModel,
    PromptModel,
    lognormal_temperature_prior,
)

__all__ = [
    "DEFAULT_PRIOR_SCALE",
    "Evaluation",
    "LikelihoodFreePromptModel",
    "Potential",
    "PromptModel",
    "RandomProjection",
    "SiteInfo",
    "lognormal_temperature_prior",
    "seeded",
]
