"""Pyro prompt models: the prompt is a latent variable, the black box is the likelihood.

:class:`PromptModel` is the gradient-free model::

    z ~ prior                                  (any Pyro distribution over R^k)
    temperature ~ temperature_prior            (optional; otherwise temperature = 1)
    y_i ~ Categorical(logits = scores(A z)_i / temperature)   for each training example

:class:`LikelihoodFreePromptModel` replaces the likelihood by the only observable of a
label-only API: the predicted labels, recorded as a ``pyro.deterministic`` site.

Both vectorise over a particle plate (dim -2), so a population of z is scored in one
batched black-box call, and both detach z before the call: the black box never sees
the autograd graph. Custom models reuse :meth:`PromptModel.observe`::

    class HierarchicalPromptModel(PromptModel):
        def __call__(self, batch):
            scale = pyro.sample("scale", dist.HalfNormal(1.0))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.k]).to_event(1))
            return self.observe(z * scale.unsqueeze(-1), batch)
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from bayesprompt.lm.label_only import LabelOnly
from bayesprompt.models.projection import RandomProjection

__all__ = ["PromptModel", "LikelihoodFreePromptModel", "DEFAULT_PRIOR_SCALE", "lognormal_temperature_prior"]

#: Default prior scale of z. With BBT's projection (see :class:`RandomProjection`)
#: ``z ~ N(0, 1)`` gives prompts with the spread of the model's own word embeddings.
DEFAULT_PRIOR_SCALE = 1.0


class _PromptModelBase:
    """Shared parts: the prior on z and the projection to prompts."""

    def __init__(
        self,
        projection: RandomProjection,
        prior: dist.Distribution | None = None,
        prior_scale: float = DEFAULT_PRIOR_SCALE,
    ) -> None:
        if prior_scale <= 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        self.projection = projection
        self.prior_scale = prior_scale
        k = projection.intrinsic_dim
        if prior is None:
            prior = dist.Normal(torch.zeros(k), prior_scale).to_event(1)
        if tuple(prior.event_shape) != (k,) or tuple(prior.batch_shape) != ():
            raise ValueError(
                f"prior must have event_shape ({k},) and batch_shape () to match the projection, "
                f"got event_shape {tuple(prior.event_shape)}, batch_shape {tuple(prior.batch_shape)}"
            )
        self.prior = prior

    @property
    def k(self) -> int:
        """Dimension of z."""
        return self.projection.intrinsic_dim

    def sample_z(self) -> torch.Tensor:
        """The latent site ``z`` drawn from :attr:`prior`."""
        return pyro.sample("z", self.prior)

    def prompts(self, z: torch.Tensor) -> torch.Tensor:
        """Detach ``z [..., k]`` and map it to a population of prompts ``[P, n, d]``."""
        return self.projection(z.detach().reshape(-1, self.k))


class PromptModel(_PromptModelBase):
    """z ~ prior; labels ~ Categorical(logits = black-box scores / temperature).

    Parameters
    ----------
    blackbox : PromptBlackBox
        The scoring API.
    projection : RandomProjection
        Fixed map from z to prompts.
    prior : Distribution or None
        Prior over z with event shape ``(k,)``; default ``Normal(0, prior_scale)``.
    prior_scale : float
        Scale of the default prior.
    temperature_prior : Distribution or None
        Prior of a latent likelihood temperature (site ``"temperature"``), a scalar
        distribution on the positive reals such as ``LogNormal(0, 1)``. The black box's
        scores have a fixed scale that may be too sharp for a task; with this site the
        posterior learns how far to trust them, and predictions use each sample's own
        temperature. ``None`` (default): temperature 1.

    Examples
    --------
    >>> model = PromptModel(blackbox, projection)             # doctest: +SKIP
    >>> potential = Potential(model, (blackbox.encode(train),))  # doctest: +SKIP
    >>> tempered = PromptModel(blackbox, projection, temperature_prior=dist.LogNormal(0.0, 1.0))  # doctest: +SKIP
    """

    def __init__(
        self,
        blackbox: PromptBlackBox,
        projection: RandomProjection,
        prior: dist.Distribution | None = None,
        prior_scale: float = DEFAULT_PRIOR_SCALE,
        temperature_prior: dist.Distribution | None = None,
    ) -> None:
        super().__init__(projection, prior, prior_scale)
        if projection.embed_dim != blackbox.embed_dim:
            raise ValueError(
                f"projection maps to width {projection.embed_dim} but the black box expects "
                f"{blackbox.embed_dim}"
            )
        if temperature_prior is not None:
            _check_temperature_prior(temperature_prior)
        self.blackbox = blackbox
        self.temperature_prior = temperature_prior

    def logits(self, z: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """Black-box scores ``[..., B, C]`` for ``z``.

        ``z`` is either a single prompt ``[k]`` or a population ``[P, 1, k]`` as drawn
        inside a particle plate at dim -2 (the singleton slot is where the data plate
        puts the examples).
        """
        if z.ndim > 1 and z.shape[-2] != 1:
            raise ValueError(
                f"z has shape {tuple(z.shape)}; expected [k] or [..., 1, k] (a particle plate at "
                "dim -2 leaving dim -1 to the data plate)"
            )
        scores = self.blackbox.score(self.prompts(z), batch)
        return scores.reshape(*z.shape[:-2], len(batch), scores.shape[-1])

    def observe(
        self, z: torch.Tensor, batch: EncodedBatch, temperature: torch.Tensor | float = 1.0
    ) -> torch.Tensor:
        """Score ``z`` and observe the batch labels; returns the logits.

        ``temperature`` may be a float or a latent site drawn in the particle plate
        (shape ``[P, 1]``).
        """
        logits = self.logits(z, batch)
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.unsqueeze(-1)
        with pyro.plate("data", len(batch), dim=-1):
            pyro.sample("y", dist.Categorical(logits=logits / temperature), obs=batch.labels)
        return logits

    def sample_temperature(self) -> torch.Tensor | float:
        """The latent site ``temperature`` drawn from :attr:`temperature_prior`, or 1.0 without one."""
        if self.temperature_prior is None:
            return 1.0
        return pyro.sample("temperature", self.temperature_prior)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        z = self.sample_z()
        return self.observe(z, batch, self.sample_temperature())


def lognormal_temperature_prior(scale: float | None) -> dist.Distribution | None:
    """``LogNormal(0, scale)`` for :class:`PromptModel`'s ``temperature_prior``; ``None`` for ``scale=None``.

    Raises
    ------
    ValueError
        If ``scale`` is not a number > 0 (or ``None``).

    Examples
    --------
    >>> lognormal_temperature_prior(0.5).scale.item(), lognormal_temperature_prior(None)
    (0.5, None)
    """
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"temperature_prior_scale must be a number > 0 or None, got {scale!r}")
    return dist.LogNormal(0.0, float(scale))


def _check_temperature_prior(prior: dist.Distribution) -> None:
    """``prior`` must be a scalar distribution on the positive reals."""
    if tuple(prior.event_shape) != () or tuple(prior.batch_shape) != ():
        raise ValueError(
            "temperature_prior must be a scalar distribution (batch_shape () and event_shape ()), "
            f"got batch_shape {tuple(prior.batch_shape)}, event_shape {tuple(prior.event_shape)}"
        )
    lower = getattr(prior.support, "lower_bound", None)
    try:
        positive = lower is not None and float(lower) >= 0
    except (TypeError, ValueError, RuntimeError):  # a lower bound that is not one number
        positive = False
    if not positive:
        raise ValueError(f"temperature_prior must have support within the positive reals, got support {prior.support}")


class LikelihoodFreePromptModel(_PromptModelBase):
    """z ~ prior; the observable is the label-only API's predictions (deterministic site ``y_pred``).

    Parameters
    ----------
    view : LabelOnly
        The label-only view; this model can never see scores.
    projection, prior, prior_scale
        As in :class:`PromptModel`.
    """

    def __init__(
        self,
        view: LabelOnly,
        projection: RandomProjection,
        prior: dist.Distribution | None = None,
        prior_scale: float = DEFAULT_PRIOR_SCALE,
    ) -> None:
        super().__init__(projection, prior, prior_scale)
        if not isinstance(view, LabelOnly):
            raise TypeError(
                f"LikelihoodFreePromptModel needs a LabelOnly view, got {type(view).__name__}; "
                "wrap the backend with LabelOnly(backend)"
            )
        self.view = view

    def simulate(self, z: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        """Predicted labels for ``z``, recorded as site ``y_pred`` of shape ``[..., B]``."""
        labels = self.view.predict(self.prompts(z), batch)
        labels = labels.reshape(*z.shape[:-1], len(batch))
        return pyro.deterministic("y_pred", labels, event_dim=1)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        return self.simulate(self.sample_z(), batch)
