"""The Potential bridge: per-particle log densities equal a plain per-particle loop."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprompt.models.potential import Potential
from bayesprompt.testing import LinearGaussian

Y = torch.tensor([0.3, -1.2, 2.0, 0.7])


def constrained_model(y):
    """A hierarchical model with a positive scale and a simplex-free vector site."""
    scale = pyro.sample("scale", dist.HalfNormal(2.0))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.5).to_event(1))
    with pyro.plate("data", len(y), dim=-1):
        pyro.sample("y", dist.Normal(loc[..., 0] - loc[..., 1], scale), obs=y)


def loop_log_densities(values, i):
    """Log prior in unconstrained space and log likelihood of particle i, by hand."""
    scale, loc = values["scale"][i], values["loc"][i]
    log_prior = dist.HalfNormal(2.0).log_prob(scale) + torch.log(scale)  # Jacobian of exp
    log_prior = log_prior + dist.Normal(0.0, 1.5).log_prob(loc).sum()
    log_lik = dist.Normal(loc[0] - loc[1], scale).log_prob(Y).sum()
    return log_prior, log_lik


def test_log_densities_match_a_plain_loop():
    potential = Potential(constrained_model, (Y,))
    population = potential.init_population(6, torch.Generator().manual_seed(1))
    assert population.u.shape == (6, 3)
    assert [(s.name, s.shape) for s in potential.sites] == [("scale", ()), ("loc", (2,))]
    values = potential.unpack(population.u)
    assert (values["scale"] > 0).all()
    for i in range(6):
        log_prior, log_lik = loop_log_densities(values, i)
        torch.testing.assert_close(population.log_prior[i], log_prior, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(population.log_likelihood[i], log_lik, rtol=1e-5, atol=1e-5)


def test_evaluate_and_log_prior_agree_with_the_prior_draw():
    potential = Potential(constrained_model, (Y,))
    population = potential.init_population(5, torch.Generator().manual_seed(2))
    again = potential.evaluate(population.u)
    torch.testing.assert_close(again.log_prior, population.log_prior)
    torch.testing.assert_close(again.log_likelihood, population.log_likelihood)
    torch.testing.assert_close(potential.log_prior(population.u), population.log_prior)
    torch.testing.assert_close(potential.pack(potential.unpack(population.u)), population.u)


def test_log_prior_runs_no_black_box_call():
    problem = LinearGaussian.random(dim=2, num_obs=3, seed=0)
    potential = Potential(problem.model)
    population = potential.init_population(4, torch.Generator().manual_seed(0))
    calls = problem.meter.calls
    potential.log_prior(population.u)
    assert problem.meter.calls == calls
    potential.evaluate(population.u)
    assert problem.meter.calls == calls + 4  # one batched query of 4 calls


def test_prior_draws_are_seeded_and_leave_global_rng_alone():
    potential = Potential(constrained_model, (Y,))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = potential.init_population(4, torch.Generator().manual_seed(7)).u
    assert torch.equal(torch.get_rng_state(), before)
    b = potential.init_population(4, torch.Generator().manual_seed(7)).u
    assert torch.equal(a, b)


def test_deterministic_sites_are_outputs_not_likelihood():
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.deterministic("double", 2 * z)

    potential = Potential(model, max_plate_nesting=0)
    population = potential.init_population(3, torch.Generator().manual_seed(0))
    assert torch.equal(population.log_likelihood, torch.zeros(3))
    torch.testing.assert_close(population.outputs["double"], 2 * population.u[:, 0])


def test_discrete_latent_site_is_refused():
    def model():
        pyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="'k' is discrete"):
        Potential(model, max_plate_nesting=0).init_population(2, torch.Generator())


def test_unvectorised_site_gives_a_clear_error():
    def model(y):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), dim=-1):
            # wrong: adds a batch dim the plates do not declare
            pyro.sample("y", dist.Normal(z.reshape(-1, 1, 1), 1.0), obs=y)

    with pytest.raises(ValueError, match="max_plate_nesting"):
        Potential(model, (Y,)).init_population(3, torch.Generator())


def test_wrong_u_shape_and_uninitialised_use():
    potential = Potential(constrained_model, (Y,))
    with pytest.raises(RuntimeError, match="init_population"):
        potential.evaluate(torch.zeros(2, 3))
    potential.init_population(2, torch.Generator())
    with pytest.raises(ValueError, match=r"\[P, D=3\]"):
        potential.evaluate(torch.zeros(2, 4))


def test_with_args_shares_sites_and_rebinds_data():
    potential = Potential(constrained_model, (Y,))
    population = potential.init_population(3, torch.Generator().manual_seed(0))
    other = potential.with_args(Y[:2])
    values = potential.unpack(population.u)
    expected = torch.stack(
        [dist.Normal(values["loc"][i, 0] - values["loc"][i, 1], values["scale"][i]).log_prob(Y[:2]).sum() for i in range(3)]
    )
    torch.testing.assert_close(other.evaluate(population.u).log_likelihood, expected)


def test_discover_sites_with_a_meter_costs_no_query():
    problem = LinearGaussian.random(dim=3, num_obs=4, seed=0)
    potential = Potential(problem.model, meter=problem.meter)
    sites = potential.discover_sites()
    assert [(s.name, s.shape) for s in sites] == [("z", (3,))]
    assert problem.meter.calls == 0 and problem.meter.queries == 0
    assert potential.evaluate(torch.zeros(2, 3)).log_likelihood.shape == (2,)
    assert problem.meter.calls == 2


def test_discover_sites_without_a_meter_evaluates_one_draw():
    problem = LinearGaussian.random(dim=2, num_obs=4, seed=0)
    potential = Potential(problem.model)
    potential.discover_sites()
    assert potential.dim == 2 and problem.meter.calls == 1
