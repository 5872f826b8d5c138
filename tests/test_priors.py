"""Gaussian priors read from Pyro models (shared by EKI/EKS and CMA-ELBO)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from bayesprompt.models.potential import Potential
from bayesprompt.models.priors import GaussianPrior, gaussian_prior
from bayesprompt.testing import LinearGaussian


def test_kl_from_diagonal_matches_torch_for_a_correlated_prior():
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    prior = GaussianPrior.from_moments(torch.tensor([0.5, -1.0]), cov)
    mean = torch.tensor([[0.1, 0.3], [-2.0, 1.0]], dtype=torch.float64)
    std = torch.tensor([[0.5, 2.0], [1.0, 0.1]], dtype=torch.float64)
    expected = torch.stack(
        [kl_divergence(MultivariateNormal(m, torch.diag(s**2)), MultivariateNormal(prior.mean, cov)) for m, s in zip(mean, std)]
    )
    torch.testing.assert_close(prior.kl_from_diagonal(mean, std), expected)


def test_prior_trace_is_free_with_a_meter_and_reads_the_prior():
    problem = LinearGaussian.random(dim=3, num_obs=4, prior_scale=1.5)
    potential = Potential(problem.model, meter=problem.meter)
    prior = gaussian_prior(potential.prior_trace(4, torch.Generator().manual_seed(0)), potential)
    assert problem.meter.calls == 0
    torch.testing.assert_close(prior.cov, 2.25 * torch.eye(3, dtype=torch.float64))


def test_non_gaussian_site_is_named():
    def model():
        pyro.sample("rate", dist.Gamma(2.0, 1.0))

    potential = Potential(model, max_plate_nesting=0)
    trace = potential.prior_trace(2, torch.Generator())
    with pytest.raises(ValueError, match="'rate'"):
        gaussian_prior(trace, potential)
