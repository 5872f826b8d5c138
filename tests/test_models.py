"""Projection and Pyro prompt models on a fake black box."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.label_only import LabelOnly
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import LikelihoodFreePromptModel, PromptModel
from bayesprompt.testing import FakeBlackBox

TASK = Task("toy", ("neg", "pos"), ("Bad.", "Good."), "{text} {mask}", ("bad", "good"))
EXAMPLES = [Example(f"text {i}", i % 2) for i in range(6)]


def make(seed=0, k=5, n_tokens=3):
    box = FakeBlackBox(TASK, embed_dim=4, seed=seed)
    projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=k, n_tokens=n_tokens, seed=seed)
    return box, projection


def test_projection_shape_seed_and_scale():
    embeddings = 0.3 * torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    proj = RandomProjection.from_embeddings(embeddings, intrinsic_dim=50, n_tokens=4, seed=3)
    again = RandomProjection.from_embeddings(embeddings, intrinsic_dim=50, n_tokens=4, seed=3)
    other = RandomProjection.from_embeddings(embeddings, intrinsic_dim=50, n_tokens=4, seed=4)
    assert torch.equal(proj.matrix, again.matrix) and not torch.equal(proj.matrix, other.matrix)
    assert proj.matrix.shape == (50, 64)
    # entry std = embedding std / sqrt(k): relative MC error of a std over 3200 entries ~ 1.3%
    assert proj.matrix.std().item() == pytest.approx(0.3 / 50**0.5, rel=0.06)
    # prompts from z ~ N(0, I) have the per-coordinate spread of the embeddings
    z = torch.randn(400, 50, generator=torch.Generator().manual_seed(1))
    prompts = proj(z)
    assert prompts.shape == (400, 4, 16)
    assert prompts.std().item() == pytest.approx(0.3, rel=0.06)


def test_projection_roundtrip(tmp_path):
    proj = RandomProjection.from_embeddings(torch.randn(10, 3), intrinsic_dim=2, n_tokens=2, seed=0)
    proj.save(str(tmp_path / "p.npz"))
    loaded = RandomProjection.load(str(tmp_path / "p.npz"))
    assert torch.equal(loaded.matrix, proj.matrix) and loaded.metadata() == proj.metadata()
    with pytest.raises(ValueError, match="last dimension 3"):
        proj(torch.zeros(1, 3))
    (tmp_path / "bad.npz").write_text("nope")
    with pytest.raises(ValueError, match="bad.npz"):
        RandomProjection.load(str(tmp_path / "bad.npz"))


def test_prompt_model_log_likelihood_matches_a_loop_and_uses_one_call():
    box, projection = make()
    batch = box.encode(EXAMPLES)
    potential = Potential(PromptModel(box, projection), (batch,))
    population = potential.init_population(7, torch.Generator().manual_seed(0))
    assert box.meter.calls == 7 and box.meter.queries == 1
    z = potential.unpack(population.u)["z"]
    for i in range(7):
        logits = box.score(projection(z[i : i + 1]), batch)[0]
        expected = dist.Categorical(logits=logits).log_prob(batch.labels).sum()
        torch.testing.assert_close(population.log_likelihood[i], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(population.log_prior[i], dist.Normal(0.0, 1.0).log_prob(z[i]).sum())


def test_custom_hierarchical_model_with_latent_temperature():
    box, projection = make()
    batch = box.encode(EXAMPLES)

    class Hierarchical(PromptModel):
        def __call__(self, batch):
            scale = pyro.sample("scale", dist.HalfNormal(1.0))
            temperature = pyro.sample("temperature", dist.LogNormal(0.0, 0.5))
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            return self.observe(z * scale.unsqueeze(-1), batch, temperature=temperature)

    model = Hierarchical(box, projection)
    potential = Potential(model, (batch,))
    population = potential.init_population(4, torch.Generator().manual_seed(0))
    values = potential.unpack(population.u)
    for i in range(4):
        z = values["z"][i] * values["scale"][i]
        logits = box.score(projection(z.unsqueeze(0)), batch)[0] / values["temperature"][i]
        expected = dist.Categorical(logits=logits).log_prob(batch.labels).sum()
        torch.testing.assert_close(population.log_likelihood[i], expected, rtol=1e-5, atol=1e-5)


def test_temperature_prior_adds_a_scored_site_and_is_validated():
    box, projection = make()
    batch = box.encode(EXAMPLES)
    model = PromptModel(box, projection, temperature_prior=dist.LogNormal(0.0, 1.0))
    potential = Potential(model, (batch,))
    population = potential.init_population(5, torch.Generator().manual_seed(0))
    assert box.meter.calls == 5
    values = potential.unpack(population.u)
    assert set(values) == {"z", "temperature"} and bool((values["temperature"] > 0).all())
    for i in range(5):
        logits = box.score(projection(values["z"][i : i + 1]), batch)[0] / values["temperature"][i]
        expected = dist.Categorical(logits=logits).log_prob(batch.labels).sum()
        torch.testing.assert_close(population.log_likelihood[i], expected, rtol=1e-5, atol=1e-5)
    assert "temperature" not in pyro.poutine.trace(PromptModel(box, projection)).get_trace(batch).nodes
    for bad, match in [
        (dist.Normal(0.0, 1.0), "support within the positive reals"),
        (dist.LogNormal(torch.zeros(2), 1.0), "scalar distribution"),
        (dist.LogNormal(0.0, 1.0).expand([1]).to_event(1), "scalar distribution"),
    ]:
        with pytest.raises(ValueError, match=match):
            PromptModel(box, projection, temperature_prior=bad)
    PromptModel(box, projection, temperature_prior=dist.Uniform(0.5, 4.0))  # an interval in (0, inf) is fine


def test_temperature_posterior_matches_quadrature():
    """With z pinned near 0, the posterior of the temperature is one-dimensional: check it on a grid.

    Tolerance as in ``test_smc.py``: ``Z = 4`` standard errors with ``N_eff = N / 4``.
    """
    from bayesprompt.inference.base import run
    from bayesprompt.inference.smc import TemperedSMC

    box, projection = make(k=1)
    examples = [Example(f"text {i}", int(i % 3 == 0)) for i in range(24)]
    batch = box.encode(examples)
    model = PromptModel(box, projection, prior=dist.Normal(torch.zeros(1), 1e-4).to_event(1),
                        temperature_prior=dist.LogNormal(0.0, 1.0))
    num_particles = 2000
    posterior = run(TemperedSMC(num_particles=num_particles), Potential(model, (batch,)), seed=3, progress=False)
    temperature = posterior.samples["temperature"].double().reshape(-1)

    logits = box.score(projection(torch.zeros(1, 1)), batch)[0].double()
    log_t = torch.linspace(-7.0, 7.0, 4001, dtype=torch.float64)
    log_lik = torch.distributions.Categorical(logits=logits / log_t.exp()[:, None, None]).log_prob(batch.labels).sum(-1)
    log_post = dist.Normal(0.0, 1.0).log_prob(log_t) + log_lik  # density of log t: the Jacobian cancels
    w = torch.softmax(log_post, 0)
    mean = float((w * log_t.exp()).sum())
    var = float((w * (log_t.exp() - mean) ** 2).sum())
    tol = 4.0 * math.sqrt(var * 4.0 / num_particles)
    assert abs(float(temperature.mean()) - mean) <= tol
    prior_mean = math.exp(0.5)  # the likelihood must have moved it, or the check says nothing
    assert abs(prior_mean - mean) > 3 * tol


def test_black_box_only_sees_detached_prompts():
    box, projection = make()
    seen = []
    original = box._score_chunk
    box._score_chunk = lambda prompts, batch: seen.append(prompts.requires_grad) or original(prompts, batch)
    model = PromptModel(box, projection)
    z = torch.zeros(1, 1, 5, requires_grad=True)
    model.logits(z, box.encode(EXAMPLES))
    assert seen == [False]


def test_likelihood_free_model_records_predicted_labels_only():
    box, projection = make()
    view = LabelOnly(box)
    batch = view.encode(EXAMPLES)
    potential = Potential(LikelihoodFreePromptModel(view, projection), (batch,))
    population = potential.init_population(5, torch.Generator().manual_seed(0))
    assert torch.equal(population.log_likelihood, torch.zeros(5))
    labels = population.outputs["y_pred"]
    assert labels.shape == (5, 6) and labels.dtype == torch.long
    z = potential.unpack(population.u)["z"]
    torch.testing.assert_close(labels, box.score(projection(z), batch).argmax(-1))
    with pytest.raises(TypeError, match="LabelOnly"):
        LikelihoodFreePromptModel(box, projection)


def test_prior_shape_is_checked():
    box, projection = make()
    with pytest.raises(ValueError, match="event_shape"):
        PromptModel(box, projection, prior=dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pytest.raises(ValueError, match="prior_scale"):
        PromptModel(box, projection, prior_scale=0.0)
