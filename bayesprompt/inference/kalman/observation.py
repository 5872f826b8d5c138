"""Gaussian views of a Pyro model for ensemble Kalman methods.

Ensemble Kalman methods see a model as an inverse problem::

    u ~ N(m0, C0),        y = G(u) + eta,   eta ~ N(0, Gamma),  Gamma diagonal.

This module reads those pieces from a :class:`~bayesprompt.models.potential.Potential`
trace, so any Pyro model with a Gaussian prior and Normal / Categorical likelihoods works
without a hand-written forward map:

* :func:`gaussian_prior` -- ``m0`` and ``C0`` from the latent sites' distributions, which
  must be ``Normal``, ``Independent(Normal)`` or ``MultivariateNormal`` with real support
  and must not depend on other latent sites (then the unconstrained transform is the
  identity and ``u`` *is* the latent vector);
* :class:`ObservationMap` -- ``G(u) [P, M]``, ``y [M]`` and ``diag(Gamma) [M]`` from the
  observed sites of one vectorised trace, i.e. one batched black-box query per ensemble;
* :func:`ensemble_trace` -- that trace, with Pyro's argument validation switched off so a
  member whose forward output is NaN yields NaN rows of ``G`` instead of an exception;
* :meth:`Potential.prior_trace <bayesprompt.models.potential.Potential.prior_trace>` --
  prior draws made by Pyro itself (free with a meter), to read the prior before the
  ensemble exists.

Observed sites map as follows (``pyro.deterministic`` and subsample sites are skipped):

========================  ===================================  =====================  ==========================
site                      forward ``G(u)``                     data ``y``             noise variance
========================  ===================================  =====================  ==========================
``Normal(loc, scale)``    ``loc`` (flattened per particle)     observed value         ``scale**2``
``Categorical`` (probs)   class probabilities ``[B*C]``        one-hot labels         ``categorical_noise``
``Categorical`` (clr)     centred log-probabilities            centred log of the     ``categorical_noise``
                                                               smoothed one-hot
========================  ===================================  =====================  ==========================

**The categorical noise.** A label is not a Gaussian observation of its probability
vector; the surrogate ``onehot(y) ~ N(p(u), gamma I_C)`` is calibrated so that its
log-likelihood has the curvature of the categorical one. With ``gamma_c = p_c`` the
misfit ``sum_c (onehot_c - p_c)^2 / p_c`` is Pearson's chi-square statistic, the
quadratic (Fisher-information) approximation of ``-2 log p(y | u)`` -- ``diag(p)^-1``
is a generalised inverse of the multinomial covariance ``diag(p) - p p^T``. A fixed
``Gamma`` cannot follow ``p(u)``, so the default evaluates it at the uninformed
predictor ``p_c = 1/C``: ``gamma = 1/C`` (``0.5`` for binary labels, which reproduces
the Bernoulli Fisher information ``1 / (p (1 - p)) = 4`` at ``p = 1/2``). In the
centred-log (clr) mode the delta method maps it to ``gamma = (1/C) / (1/C)^2 = C``.
Smaller values trust the labels more (sharper, more overconfident fits).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import Categorical, Normal

from bayesprompt.models.potential import Potential, seeded
from bayesprompt.models.priors import (
    GaussianPrior,
    full_batch_shape,
    gaussian_prior,
    per_particle_rows,
    prior_moments,
    trace_size,
    unwrap_independent,
)

__all__ = [
    "CATEGORICAL_MODES",
    "GaussianPrior",
    "ObservationMap",
    "Observations",
    "ensemble_trace",
    "gaussian_prior",
    "prior_moments",
]

#: Forward maps of Categorical observed sites: probabilities, or centred log-probabilities.
CATEGORICAL_MODES = ("probs", "clr")
#: Log-probabilities are clamped here in the clr mode (a zero probability stays finite).
_MIN_LOG_PROB = math.log(1e-12)


# ---------------------------------------------------------------------------- observations
@dataclass(frozen=True)
class Observations:
    """The Gaussian inverse problem of one ensemble evaluation.

    Attributes
    ----------
    forward : Tensor ``[P, M]`` (float64)
        ``G(u)`` of each member; a row with a NaN / inf entry marks a failed member.
    data : Tensor ``[M]``
        ``y``.
    noise_var : Tensor ``[M]``
        The diagonal of ``Gamma``.
    blocks : tuple of (str, int)
        ``(site name, number of entries)`` in the order they are stacked.
    """

    forward: torch.Tensor
    data: torch.Tensor
    noise_var: torch.Tensor
    blocks: tuple[tuple[str, int], ...]

    @property
    def num_obs(self) -> int:
        """``M``."""
        return int(self.data.shape[0])

    @property
    def ok(self) -> torch.Tensor:
        """``[P]`` bool: members whose forward output is all finite."""
        return torch.isfinite(self.forward).all(dim=1)

    def whitened(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``Gamma^-1/2 G(u) [P, M]`` and ``Gamma^-1/2 y [M]`` (the noise becomes ``I``)."""
        scale = self.noise_var.rsqrt()
        return self.forward * scale, self.data * scale


@dataclass(frozen=True)
class ObservationMap:
    """Builds ``G(u)``, ``y`` and ``Gamma`` from a model's observed sites.

    Parameters
    ----------
    categorical : {"probs", "clr"}
        Forward map of Categorical sites: class probabilities (default; bounded, robust)
        or centred log-probabilities ``log p - mean_c log p`` (closer to linear in the
        logits, so closer to the Gaussian-linear setting where the methods are exact).
    categorical_noise : float or None
        Noise variance of each one-hot (or clr) entry; ``None`` uses ``1/C`` in the
        probability mode and ``C`` in the clr mode (see the module docstring).
    label_smoothing : float
        In the clr mode the data are the clr of ``(1 - eps) onehot + eps / C``
        (a one-hot vector has no finite log); unused in the probability mode.

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> def model():
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", 3, dim=-1):
    ...         pyro.sample("y", dist.Normal(2.0 * z, 0.5), obs=torch.zeros(3))
    >>> potential = Potential(model)
    >>> _ = potential.discover_sites()
    >>> obs = ObservationMap()(potential, torch.tensor([[1.0], [2.0]]))
    >>> obs.forward.tolist(), obs.noise_var.tolist()
    ([[2.0, 2.0, 2.0], [4.0, 4.0, 4.0]], [0.25, 0.25, 0.25])
    """

    categorical: str = "probs"
    categorical_noise: float | None = None
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.categorical not in CATEGORICAL_MODES:
            raise ValueError(f"categorical must be one of {CATEGORICAL_MODES}, got {self.categorical!r}")
        if self.categorical_noise is not None and not self.categorical_noise > 0:
            raise ValueError(f"categorical_noise must be > 0 or None, got {self.categorical_noise}")
        if not 0.0 < self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in (0, 1), got {self.label_smoothing}")

    def __call__(
        self, potential: Potential, u: torch.Tensor, generator: torch.Generator | None = None
    ) -> Observations:
        """Evaluate the ensemble ``u [P, D]`` (one batched query) and build its observations."""
        return self.from_trace(ensemble_trace(potential, u, generator), potential)

    def from_trace(self, trace: poutine.Trace, potential: Potential) -> Observations:
        """Stack every observed site of ``trace`` into one :class:`Observations`."""
        latent = {site.name for site in potential.sites}
        num_particles = trace_size(trace, potential)
        parts = []
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or name in latent or not node["is_observed"]:
                continue
            if node["infer"].get("_deterministic") or site_is_subsample(node):
                continue
            parts.append((name, *self._site(name, node, num_particles, potential.max_plate_nesting)))
        if not parts:
            raise ValueError("the model has no observed Normal or Categorical site: there is no data to fit")
        return Observations(
            forward=torch.cat([p[1] for p in parts], dim=1),
            data=torch.cat([p[2] for p in parts]),
            noise_var=torch.cat([p[3] for p in parts]),
            blocks=tuple((p[0], int(p[2].shape[0])) for p in parts),
        )

    def _site(self, name: str, node: dict, num_particles: int, nesting: int):
        fn = node["fn"]
        base = unwrap_independent(fn)
        weight = _site_weight(name, node["scale"])
        full = full_batch_shape(fn, nesting)
        if isinstance(base, Normal):
            forward = per_particle_rows(base.loc.reshape(full), num_particles)
            data = _observed(node["value"], full).reshape(-1)
            scale = per_particle_rows(base.scale.reshape(full), num_particles)
            if not torch.equal(scale, scale[:1].expand_as(scale)):
                raise ValueError(
                    f"observed site {name!r}: its noise scale differs across ensemble members (it depends on "
                    "a latent site); ensemble Kalman methods need a fixed observation noise"
                )
            noise_var = scale[0] ** 2 / weight
        elif isinstance(base, Categorical):
            forward, data, noise_var = self._categorical(base, node["value"], full, num_particles)
            noise_var = noise_var / weight
        else:
            raise ValueError(
                f"observed site {name!r} has a {type(fn).__name__} likelihood; the ensemble Kalman "
                "observation map supports Normal and Categorical observed sites"
            )
        if not bool((noise_var > 0).all()) or not bool(torch.isfinite(noise_var).all()):
            raise ValueError(f"observed site {name!r}: noise variances must be finite and > 0")
        return forward.double(), data.double(), noise_var.double().expand(data.shape[0]).clone()

    def _categorical(self, base: Categorical, value: torch.Tensor, full: tuple[int, ...], num_particles: int):
        num_classes = int(base.param_shape[-1])
        labels = _observed(value, full).long()
        onehot = torch.nn.functional.one_hot(labels, num_classes).double()
        if self.categorical == "probs":
            forward = per_particle_rows(base.probs.reshape(*full, num_classes), num_particles)
            default_noise = 1.0 / num_classes
            data = onehot
        else:
            log_probs = base.logits.reshape(*full, num_classes).double().clamp(min=_MIN_LOG_PROB)
            forward = per_particle_rows(log_probs - log_probs.mean(-1, keepdim=True), num_particles)
            smoothed = ((1.0 - self.label_smoothing) * onehot + self.label_smoothing / num_classes).log()
            data = smoothed - smoothed.mean(-1, keepdim=True)
            default_noise = float(num_classes)
        noise = self.categorical_noise if self.categorical_noise is not None else default_noise
        return forward, data.reshape(-1), torch.tensor(float(noise), dtype=torch.float64)


def _site_weight(name: str, scale) -> float:
    """A site's ``poutine.scale`` factor (e.g. subsampling): it divides the noise variance."""
    scale = torch.as_tensor(scale)
    if scale.numel() != 1 or not float(scale) > 0:
        raise ValueError(f"observed site {name!r} has a non-scalar or non-positive poutine scale")
    return float(scale)


def _observed(value: torch.Tensor, full: tuple[int, ...]) -> torch.Tensor:
    """The observed value broadcast to one particle's shape ``full[1:]``."""
    value = value.reshape((1,) * max(0, len(full) - value.ndim) + tuple(value.shape))
    return torch.broadcast_to(value, (value.shape[0], *full[1:]))[0]


# ---------------------------------------------------------------------------- shared helpers
def ensemble_trace(
    potential: Potential, u: torch.Tensor, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> poutine.Trace:
    """One vectorised, conditioned model run over the ensemble ``u [P, D]`` (one query).

    Pyro's distribution validation is off inside, so a member whose forward output is NaN
    gives NaN forward rows (handled by the engines) instead of a ``ValueError``.
    ``generator`` seeds any randomness inside the model; ``dtype`` is the latent dtype
    (default: ``u``'s).
    """
    u = u.detach() if dtype is None else u.detach().to(dtype)
    seeding = seeded(generator) if generator is not None else contextlib.nullcontext()
    with seeding, pyro.validation_enabled(False):
        return potential.trace(u)


