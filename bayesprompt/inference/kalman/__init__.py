"""Derivative-free ensemble Kalman methods (they need a Gaussian prior).

* :class:`EKI` -- ensemble Kalman inversion with the data-misfit controller: posterior
  tempering to ``t = 1``, or Tikhonov EKI (a regularised point estimate);
* :class:`EKS` -- the ensemble Kalman sampler with the finite-ensemble (ALDI) correction;
* :class:`ObservationMap`, :func:`gaussian_prior` -- the Gaussian inverse problem read
  from any Pyro model's trace (Normal and Categorical observed sites);
* :class:`EnsembleFailure` -- raised when fewer than 2 members have finite outputs.
"""

from bayesprompt.inference.kalman.common import EnsembleState
from bayesprompt.inference.kalman.eki import EKI, EKIState
from bayesprompt.inference.kalman.eks import EKS, EKSState
from bayesprompt.inference.kalman.ensemble import EnsembleFailure, kalman_increments
from bayesprompt.inference.kalman.observation import (
    CATEGORICAL_MODES,
    GaussianPrior,
    ObservationMap,
    Observations,
    ensemble_trace,
    gaussian_prior,
)

__all__ = [
    "CATEGORICAL_MODES",
    "EKI",
    "EKIState",
    "EKS",
    "EKSState",
    "EnsembleFailure",
    "EnsembleState",
    "GaussianPrior",
    "ObservationMap",
    "Observations",
    "ensemble_trace",
    "gaussian_prior",
    "kalman_increments",
]
