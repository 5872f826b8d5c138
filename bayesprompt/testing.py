"""Analytic test targets for the engines.

:class:`LinearGaussian` is a conjugate model with a closed-form posterior and evidence.
Its forward map is a *fake black box*: every evaluation is charged to a
:class:`~bayesprompt.lm.meter.Meter` exactly like a language-model query (one call per
particle), so budgets, batching and statistics can all be tested without a model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from bayesprompt.data.task import Example, Task
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.lm.meter import Meter

__all__ = ["LinearGaussian", "FakeBlackBox"]


class LinearGaussian:
    """``z ~ N(0, s^2 I_D)``, ``y ~ N(G z, sigma^2 I_m)`` with a metered forward map.

    Parameters
    ----------
    design : Tensor ``[m, D]``
        The linear forward map ``G``.
    observations : Tensor ``[m]``
        Observed ``y``.
    prior_scale, noise_scale : float
        ``s`` and ``sigma``.
    meter : Meter or None
        Charged one call per particle per forward evaluation.

    Examples
    --------
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> problem.posterior_mean().shape
    torch.Size([2])
    """

    def __init__(
        self,
        design: torch.Tensor,
        observations: torch.Tensor,
        prior_scale: float = 1.0,
        noise_scale: float = 1.0,
        meter: Meter | None = None,
    ) -> None:
        self.design = design.double()
        self.observations = observations.double()
        self.prior_scale = float(prior_scale)
        self.noise_scale = float(noise_scale)
        self.meter = meter if meter is not None else Meter()

    @classmethod
    def random(
        cls,
        dim: int = 2,
        num_obs: int = 10,
        seed: int = 0,
        prior_scale: float = 1.0,
        noise_scale: float = 1.0,
        meter: Meter | None = None,
    ) -> "LinearGaussian":
        """A random instance whose data are drawn from the model itself."""
        g = torch.Generator().manual_seed(seed)
        design = torch.randn(num_obs, dim, generator=g, dtype=torch.float64)
        z = prior_scale * torch.randn(dim, generator=g, dtype=torch.float64)
        y = design @ z + noise_scale * torch.randn(num_obs, generator=g, dtype=torch.float64)
        return cls(design, y, prior_scale, noise_scale, meter)

    @property
    def dim(self) -> int:
        """Dimension ``D`` of z."""
        return int(self.design.shape[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The fake black box: ``G z``, one metered call per particle.

        ``z`` is ``[D]`` or a population ``[P, 1, D]`` drawn in a particle plate at dim -2;
        the result is ``[m]`` or ``[P, m]`` (the data plate takes dim -1).
        """
        if z.ndim > 1 and z.shape[-2] != 1:
            raise ValueError(f"z must be [D] or [..., 1, D], got {tuple(z.shape)}")
        z = z.detach().double()
        particles = int(math.prod(z.shape[:-1]))
        self.meter.charge(calls=particles, sequences=particles, tokens=particles * self.dim)
        prediction = z @ self.design.T
        return prediction.squeeze(-2) if z.ndim > 1 else prediction

    def model(self) -> None:
        """The Pyro model (vectorises over a particle plate at dim -2)."""
        z = pyro.sample(
            "z", dist.Normal(torch.zeros(self.dim, dtype=torch.float64), self.prior_scale).to_event(1)
        )
        prediction = self.forward(z)
        with pyro.plate("data", len(self.observations), dim=-1):
            pyro.sample("y", dist.Normal(prediction, self.noise_scale), obs=self.observations)

    def posterior_cov(self) -> torch.Tensor:
        """Exact posterior covariance ``(G^T G / sigma^2 + I / s^2)^-1``."""
        precision = self.design.T @ self.design / self.noise_scale**2
        precision = precision + torch.eye(self.dim, dtype=torch.float64) / self.prior_scale**2
        return torch.linalg.inv(precision)

    def posterior_mean(self) -> torch.Tensor:
        """Exact posterior mean."""
        return self.posterior_cov() @ self.design.T @ self.observations / self.noise_scale**2

    def log_evidence(self) -> float:
        """Exact ``log p(y) = log N(y; 0, s^2 G G^T + sigma^2 I)``."""
        m = self.observations.shape[0]
        cov = self.prior_scale**2 * self.design @ self.design.T
        cov = cov + self.noise_scale**2 * torch.eye(m, dtype=torch.float64)
        return float(dist.MultivariateNormal(torch.zeros(m, dtype=torch.float64), cov).log_prob(self.observations))


class FakeBlackBox(PromptBlackBox):
    """A tiny deterministic black box for tests: no language model, real metering.

    Each example gets a fixed random feature vector (seeded by a hash of its text), and
    ``score[p, b] = (features_b + mean(prompt_p)) @ W`` with a fixed random ``W [d, C]``.

    Parameters
    ----------
    task : Task
        Defines the number of classes.
    embed_dim : int
        Prompt width ``d``.
    seed : int
        Seed of ``W`` and of the embedding table.
    meter, precision, max_sequences, length_bucket
        As in :class:`~bayesprompt.lm.base.PromptBlackBox`.

    Examples
    --------
    >>> from bayesprompt.data.task import Example, Task
    >>> task = Task("toy", ("a", "b"), ("A.", "B."), "{text} {mask}", ("a", "b"))
    >>> box = FakeBlackBox(task, embed_dim=4)
    >>> batch = box.encode([Example("x", 0), Example("y", 1)])
    >>> box.score(torch.zeros(3, 2, 4), batch).shape
    torch.Size([3, 2, 2])
    """

    def __init__(
        self,
        task: Task,
        embed_dim: int = 8,
        seed: int = 0,
        meter: Meter | None = None,
        precision: str = "fp32",
        max_sequences: int = 512,
        length_bucket: int | None = 64,
    ) -> None:
        super().__init__(task, meter, precision, max_sequences, length_bucket)
        self.embed_dim = embed_dim
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(embed_dim, task.num_classes, generator=generator)
        self._embeddings = 0.05 * torch.randn(50, embed_dim, generator=generator)

    def embedding_table(self) -> torch.Tensor:
        """A random ``[50, d]`` "word embedding" table (for projections)."""
        return self._embeddings

    def encode(self, examples: Sequence[Example], template: Task | None = None) -> EncodedBatch:
        """Features from a stable hash of each text."""
        features = []
        for example in examples:
            digest = hashlib.sha256((example.text + "\0" + (example.text_pair or "")).encode()).digest()
            seed = int.from_bytes(digest[:8], "little")
            features.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        size = len(examples)
        return EncodedBatch(
            input_ids=torch.ones(size, 1, dtype=torch.long),
            attention_mask=torch.ones(size, 1, dtype=torch.long),
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            extras={"features": torch.stack(features) if features else torch.zeros(0, self.embed_dim)},
        )

    def _score_chunk(self, prompts: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        pooled = prompts.mean(1) if prompts.shape[1] else torch.zeros(prompts.shape[0], self.embed_dim)
        inputs = batch.extras["features"].unsqueeze(0) + pooled.unsqueeze(1)
        return inputs @ self.weight
