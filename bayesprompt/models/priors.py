"""Gaussian priors read off a Pyro model, shared by the engines that need them.

Ensemble Kalman methods require, and CMA-ELBO exploits (closed-form KL), a prior that is
a fixed Gaussian over the unconstrained vector ``u``: every latent site ``Normal``,
``Independent(Normal)``, ``MultivariateNormal`` or ``LowRankMultivariateNormal`` with real
support, not depending on other latent sites. :func:`gaussian_prior` reads ``N(m0, C0)``
from a vectorised trace (e.g. :meth:`Potential.prior_trace`) and raises a ``ValueError``
naming the offending site otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal, constraints

from bayesprompt.models.potential import PARTICLE_PLATE, Potential

__all__ = [
    "GaussianPrior",
    "fixed_gaussian_prior",
    "full_batch_shape",
    "gaussian_prior",
    "per_particle_rows",
    "prior_moments",
    "trace_size",
    "unwrap_independent",
]

@dataclass(frozen=True)
class GaussianPrior:
    """A fixed Gaussian prior ``N(mean, cov)`` on the unconstrained vector ``u [D]``.

    Attributes
    ----------
    mean : Tensor ``[D]`` (float64)
    cov : Tensor ``[D, D]`` (float64)
    chol : Tensor ``[D, D]``
        Lower Cholesky factor of ``cov``.
    precision : Tensor ``[D, D]``
        ``cov^-1``.
    dtype : torch.dtype
        The dtype of the model's latent values (ensembles are cast to it for the model).

    Examples
    --------
    >>> prior = GaussianPrior.from_moments(torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0])))
    >>> prior.whiten(torch.tensor([[1.0, 2.0]])).tolist()
    [[1.0, 1.0]]
    """

    mean: torch.Tensor
    cov: torch.Tensor
    chol: torch.Tensor
    precision: torch.Tensor
    dtype: torch.dtype = torch.float64

    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor, dtype: torch.dtype | None = None) -> "GaussianPrior":
        """Build the prior from its mean and covariance (checked positive definite)."""
        mean, cov = mean.detach().double().reshape(-1), cov.detach().double()
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError("the prior covariance is not positive definite")
        return cls(mean, cov, chol, torch.cholesky_inverse(chol), dtype if dtype is not None else mean.dtype)

    @property
    def dim(self) -> int:
        """Dimension ``D``."""
        return int(self.mean.shape[0])

    def whiten(self, u: torch.Tensor) -> torch.Tensor:
        """``L^-1 (u - mean)`` row-wise for ``u [P, D]`` (``cov = L L^T``)."""
        centred = (u.double() - self.mean).T
        return torch.linalg.solve_triangular(self.chol, centred, upper=False).T

    def sample(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """``num`` draws ``[num, D]`` (float64)."""
        noise = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + noise @ self.chol.T

    def kl_from_diagonal(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """``KL(N(mean, diag(std^2)) || self)`` for ``mean, std [P, D]``; returns ``[P]``.

        Examples
        --------
        >>> prior = GaussianPrior.from_moments(torch.zeros(2), 4 * torch.eye(2))
        >>> prior.kl_from_diagonal(torch.zeros(1, 2), 2 * torch.ones(1, 2)).tolist()
        [0.0]
        """
        mean, std = mean.double(), std.double()
        trace_term = (torch.diagonal(self.precision) * std**2).sum(-1)
        centred = mean - self.mean
        mahalanobis = ((centred @ self.precision) * centred).sum(-1)
        log_det_prior = 2 * torch.log(torch.diagonal(self.chol)).sum()
        log_det_q = 2 * torch.log(std).sum(-1)
        return 0.5 * (trace_term + mahalanobis - self.dim + log_det_prior - log_det_q)

    def matches(self, mean: torch.Tensor, cov: torch.Tensor) -> bool:
        """Whether the moments ``mean [D]``, ``cov [D, D]`` are (numerically) this prior's."""
        return bool(
            self.mean.shape == mean.shape
            and torch.allclose(self.mean, mean, rtol=1e-6, atol=1e-9)
            and torch.allclose(self.cov, cov, rtol=1e-6, atol=1e-9)
        )


def fixed_gaussian_prior(potential: Potential) -> GaussianPrior | None:
    """The prior as a fixed Gaussian on ``u`` (see :mod:`bayesprompt.models.priors`), else ``None``.

    Two prior draws are traced (free when the Potential has a meter). ``None`` (any other
    prior) tells CMA-ELBO to estimate its KL term by Monte Carlo and the CMA-ES family to
    start at ``u = 0``.

    Examples
    --------
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=3, prior_scale=2.0)
    >>> prior = fixed_gaussian_prior(Potential(problem.model, meter=problem.meter))
    >>> torch.diagonal(prior.cov).tolist()
    [4.0, 4.0, 4.0]
    """
    trace = potential.prior_trace(2, torch.Generator().manual_seed(0))
    try:
        return gaussian_prior(trace, potential)
    except ValueError:
        return None


def gaussian_prior(trace: poutine.Trace, potential: Potential) -> GaussianPrior:
    """Read ``N(m0, C0)`` over ``u`` from the latent sites of a vectorised trace.

    See :func:`prior_moments` for the arguments and errors.
    """
    return GaussianPrior.from_moments(*prior_moments(trace, potential))


def prior_moments(trace: poutine.Trace, potential: Potential) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Mean ``[D]``, covariance ``[D, D]`` (float64) and dtype of the prior over ``u``.

    Parameters
    ----------
    trace : Trace
        A trace of ``P >= 1`` particles (e.g. from :func:`ensemble_trace`).
    potential : Potential
        Gives the latent sites (in the packing order of ``u``) and the plate nesting.

    Raises
    ------
    ValueError
        Naming the site, if a latent site is not Gaussian with real support, or if its
        prior differs across particles (it depends on another latent site).
    """
    means, covs, dtype = [], [], None
    num_particles = trace_size(trace, potential)
    for site in potential.sites:
        node = trace.nodes[site.name]
        mean, cov = _site_moments(site.name, node["fn"], num_particles, potential.max_plate_nesting)
        if mean.shape[-1] != site.numel:
            raise ValueError(
                f"latent site {site.name!r}: prior mean has {mean.shape[-1]} entries, expected {site.numel}"
            )
        means.append(mean)
        covs.append(cov)
        dtype = dtype or node["fn"].mean.dtype
    return torch.cat(means), torch.block_diag(*covs), dtype


def _site_moments(name: str, fn, num_particles: int, nesting: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[n]`` and covariance ``[n, n]`` of one Gaussian latent site."""
    base = unwrap_independent(fn)
    if not isinstance(base, (Normal, MultivariateNormal, LowRankMultivariateNormal)) or not _is_real(fn.support):
        raise ValueError(
            f"this engine needs a Gaussian prior with real support, but latent site {name!r} "
            f"has a {type(fn).__name__} prior ({type(base).__name__} base, support {fn.support}); "
            "use Normal / Independent(Normal) / MultivariateNormal, or reparametrise the site "
            "(e.g. a Normal site pushed through exp inside the model)"
        )
    full = full_batch_shape(fn, nesting)
    mean = per_particle_rows(base.loc.reshape(full), num_particles)
    if isinstance(base, Normal):
        spread = per_particle_rows(base.scale.reshape(full), num_particles)
    else:
        k = base.event_shape[-1]
        spread = per_particle_rows(base.covariance_matrix.reshape(*full[:-1], k * k), num_particles)
    if not (_same_rows(mean) and _same_rows(spread)):
        raise ValueError(
            f"latent site {name!r} has a prior that differs across ensemble members (it depends on "
            "another latent site); this engine needs a fixed Gaussian prior"
        )
    if isinstance(base, Normal):
        cov = torch.diag(spread[0] ** 2)
    else:
        cov = torch.block_diag(*spread[0].reshape(-1, k, k).unbind(0))
    return mean[0].double(), cov.double()


def _same_rows(x: torch.Tensor) -> bool:
    """Whether every particle (row) of ``x [P, n]`` equals the first."""
    return torch.equal(x, x[:1].expand_as(x))


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def unwrap_independent(fn):
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def trace_size(trace: poutine.Trace, potential: Potential) -> int:
    """Ensemble size of a vectorised trace (the size of the particle plate)."""
    if PARTICLE_PLATE in trace.nodes:
        return int(trace.nodes[PARTICLE_PLATE]["value"].shape[0])
    return int(trace.nodes[potential.sites[0].name]["value"].shape[0])


def full_batch_shape(fn, nesting: int) -> tuple[int, ...]:
    """A site's per-draw shape with exactly ``nesting + 1`` batch dims (particle dim first)."""
    batch = tuple(fn.batch_shape)
    if len(batch) > nesting + 1:
        raise ValueError(f"a site has batch shape {batch}: more batch dims than max_plate_nesting + 1")
    return (1,) * (nesting + 1 - len(batch)) + batch + tuple(fn.event_shape)


def per_particle_rows(x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``x [1 or P, ...]`` -> ``[P, n]`` (a particle-independent value is expanded)."""
    if x.shape[0] not in (1, num_particles):
        raise ValueError(f"particle dim of size {x.shape[0]}, expected 1 or {num_particles}")
    return x.expand(num_particles, *x.shape[1:]).reshape(num_particles, -1)
