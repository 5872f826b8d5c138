"""The bridge from any Pyro model to vectorised per-particle log densities.

Engines never parse a model. They see a :class:`Potential`, which runs the model under
Pyro effect handlers -- an outer particle ``plate``, ``condition`` on the proposed
latent values and ``trace`` -- and reads off, for a whole population in one batched
model run (hence one black-box query):

* the log prior of each particle, in **unconstrained** coordinates (constrained sites
  are mapped with :func:`torch.distributions.biject_to`, and the log-Jacobian is added);
* the log likelihood of each particle (all observed sites, ``pyro.factor`` included);
* the values of ``pyro.deterministic`` sites (used by likelihood-free engines).

Models must be vectorisable over an extra plate to the left of their own plates (as for
Pyro's ``vectorize_particles=True``): declare how many plates the model nests with
``max_plate_nesting`` (1 for the built-in prompt models).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch.distributions import Transform, biject_to

from bayesprompt.lm.meter import Meter, ProbeInterrupt

__all__ = ["Evaluation", "Potential", "SiteInfo", "seeded"]

PARTICLE_PLATE = "_particles"


@dataclass(frozen=True)
class SiteInfo:
    """Shape and transform of one latent site (per particle, particle dim excluded)."""

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    transform: Transform

    @property
    def numel(self) -> int:
        """Number of unconstrained coordinates of the site."""
        return math.prod(self.unconstrained_shape)


@dataclass(frozen=True)
class Evaluation:
    """A population and its per-particle log densities.

    Attributes
    ----------
    u : Tensor ``[P, D]``
        Unconstrained coordinates.
    log_prior : Tensor ``[P]``
        Log prior density of ``u`` (log-Jacobian of the constraining map included).
    log_likelihood : Tensor ``[P]``
        Sum of the log densities of all observed sites.
    outputs : dict of Tensor
        Values ``[P, ...]`` of the model's ``pyro.deterministic`` sites.
    """

    u: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.u.shape[0])

    def select(self, index: torch.Tensor) -> "Evaluation":
        """Return the particles at ``index`` (e.g. after resampling)."""
        return Evaluation(
            self.u[index],
            self.log_prior[index],
            self.log_likelihood[index],
            {k: v[index] for k, v in self.outputs.items()},
        )

    @staticmethod
    def where(accept: torch.Tensor, new: "Evaluation", old: "Evaluation") -> "Evaluation":
        """Take ``new`` where ``accept`` is true and ``old`` elsewhere (an MH update)."""

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            mask = accept.reshape(-1, *([1] * (a.ndim - 1)))
            return torch.where(mask, a, b)

        return Evaluation(
            pick(new.u, old.u),
            pick(new.log_prior, old.log_prior),
            pick(new.log_likelihood, old.log_likelihood),
            {k: pick(new.outputs[k], old.outputs[k]) for k in new.outputs},
        )


@contextlib.contextmanager
def seeded(generator: torch.Generator) -> Iterator[None]:
    """Run a block with torch's global RNG seeded from ``generator``, then restore it.

    Pyro draws from torch's global RNG; this keeps engine randomness a pure function of
    the engine's own generator.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: never touches CUDA seeds
        yield


class Potential:
    """Vectorised log prior and log likelihood of a Pyro model over a population.

    Parameters
    ----------
    model : callable
        A Pyro model. Its latent sites must be continuous. It is called as
        ``model(*model_args, **model_kwargs)``.
    model_args, model_kwargs
        Arguments for the model (e.g. the encoded training batch).
    max_plate_nesting : int
        Number of plates the model nests (the particle plate goes left of them).
    meter : Meter or None
        The meter of the black box the model queries. With it, :meth:`discover_sites`
        learns the latent sites by running the model only up to its first query (free);
        without it, discovery evaluates one prior draw (one query).

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y), dim=-1):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> potential = Potential(model, (torch.tensor([0.5, 1.5]),))
    >>> ev = potential.init_population(8, torch.Generator().manual_seed(0))
    >>> ev.u.shape, ev.log_likelihood.shape
    (torch.Size([8, 1]), torch.Size([8]))
    """

    def __init__(
        self,
        model: Callable,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
        max_plate_nesting: int = 1,
        meter: Meter | None = None,
    ) -> None:
        if max_plate_nesting < 0:
            raise ValueError(f"max_plate_nesting must be >= 0, got {max_plate_nesting}")
        self.model = model
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs or {})
        self.max_plate_nesting = max_plate_nesting
        self.meter = meter
        self._sites: tuple[SiteInfo, ...] | None = None
        self._full_shapes: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ structure
    @property
    def sites(self) -> tuple[SiteInfo, ...]:
        """Latent sites, in model order (known after the first population is drawn)."""
        if self._sites is None:
            raise RuntimeError(
                "the model's latent sites are not known yet: call init_population() first"
            )
        return self._sites

    @property
    def dim(self) -> int:
        """Total number ``D`` of unconstrained coordinates."""
        return sum(site.numel for site in self.sites)

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map unconstrained ``u [P, D]`` to constrained site values ``{name: [P, *shape]}``."""
        u = self._check_u(u)
        values, offset = {}, 0
        for site in self.sites:
            chunk = u[:, offset : offset + site.numel].reshape(u.shape[0], *site.unconstrained_shape)
            values[site.name] = site.transform(chunk)
            offset += site.numel
        return values

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unpack`: constrained ``{name: [P, *shape]}`` to ``u [P, D]``."""
        parts = []
        for site in self.sites:
            if site.name not in values:
                raise KeyError(f"pack() is missing latent site {site.name!r}")
            x = values[site.name]
            parts.append(site.transform.inv(x.reshape(x.shape[0], *site.shape)).reshape(x.shape[0], -1))
        return torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ evaluation
    def init_population(self, num_particles: int, generator: torch.Generator) -> Evaluation:
        """Draw ``num_particles`` from the prior and evaluate them (one batched model run)."""
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        with seeded(generator):
            trace = self._trace(num_particles, data=None)
        if self._sites is None:
            self._sites = self._discover_sites(trace, num_particles)
        values = {s.name: trace.nodes[s.name]["value"].reshape(num_particles, *s.shape) for s in self.sites}
        return self._evaluation(trace, self.pack(values), num_particles)

    def evaluate(self, u: torch.Tensor) -> Evaluation:
        """Evaluate the population ``u [P, D]`` (one batched model run)."""
        return self._evaluation(self.trace(u), u, u.shape[0])

    def trace(self, u: torch.Tensor) -> poutine.Trace:
        """Run the vectorised model conditioned on ``u [P, D]`` and return its trace.

        Log probabilities are computed; observed sites keep their distributions, so
        e.g. ``trace.nodes["y"]["fn"].probs`` is the per-particle predictive.
        """
        u = self._check_u(u)
        return self._trace(u.shape[0], data=self._condition_data(u))

    def discover_sites(self, generator: torch.Generator | None = None) -> tuple[SiteInfo, ...]:
        """Learn the latent sites without a query when possible (see ``meter``).

        With a meter, the model runs under :meth:`Meter.probe` and is interrupted at its
        first black-box query; all latent sites drawn before it are recorded. Latent sites
        drawn *after* the first query are not found this way, so a model that does that
        should be given no meter here.
        """
        if self._sites is not None:
            return self._sites
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.meter is None:
            self.init_population(1, generator)
            return self.sites
        tracer = poutine.trace(self._vectorised(1))
        with seeded(generator), self.meter.probe(), torch.no_grad():
            try:
                tracer(*self.model_args, **self.model_kwargs)
            except ProbeInterrupt:
                pass
        self._sites = self._discover_sites(tracer.trace, 1)
        return self._sites

    def prior_trace(self, num_particles: int, generator: torch.Generator) -> poutine.Trace:
        """A vectorised trace of ``num_particles`` prior draws made by Pyro itself.

        With a meter the model runs under :meth:`Meter.probe` and stops at its first
        black-box query (free); if a latent site is drawn only after that query, or
        without a meter, the model runs in full (one query of ``num_particles`` calls).
        Pyro's argument validation is off, so a NaN forward output does not raise.
        """
        self.discover_sites()
        if self.meter is not None:
            tracer = poutine.trace(self._vectorised(num_particles))
            with seeded(generator), self.meter.probe(), torch.no_grad(), pyro.validation_enabled(False):
                try:
                    tracer(*self.model_args, **self.model_kwargs)
                except ProbeInterrupt:
                    pass
            if all(site.name in tracer.trace.nodes for site in self.sites):
                return tracer.trace
        with seeded(generator), torch.no_grad(), pyro.validation_enabled(False):
            return poutine.trace(self._vectorised(num_particles)).get_trace(*self.model_args, **self.model_kwargs)

    @property
    def is_initialised(self) -> bool:
        """Whether the latent sites are known (after the first :meth:`init_population`)."""
        return self._sites is not None

    def with_args(self, *model_args, model: Callable | None = None, **model_kwargs) -> "Potential":
        """The same latent sites with other model arguments (e.g. the dev or test batch).

        ``model`` swaps in another model with the same latent sites (e.g. the score-based
        twin of a likelihood-free model, to evaluate a fixed posterior).
        """
        model = self.model if model is None else model
        other = Potential(model, model_args, model_kwargs, self.max_plate_nesting, self.meter)
        other._sites = self.sites
        other._full_shapes = self._full_shapes
        return other

    def _condition_data(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.unpack(u)
        return {s.name: values[s.name].reshape(u.shape[0], *self._full_shapes[s.name]) for s in self.sites}

    def log_prior(self, u: torch.Tensor) -> torch.Tensor:
        """Log prior ``[P]`` of ``u`` without running the likelihood.

        The model is stopped right after its last latent site, so a model that calls the
        black box after drawing its latents (all the built-in ones) costs no query.
        """
        u = self._check_u(u)
        model = poutine.condition(self._vectorised(u.shape[0]), data=self._condition_data(u))
        stopper = _StopAfterSites({s.name for s in self.sites})
        tracer = poutine.trace(stopper(model))
        try:
            with torch.no_grad():
                tracer(*self.model_args, **self.model_kwargs)
        except NonlocalExit:
            pass
        trace = tracer.trace
        trace.compute_log_prob()
        return self._log_prior(trace, u, u.shape[0])

    # ------------------------------------------------------------------ internals
    def _vectorised(self, num_particles: int) -> Callable:
        dim = -(self.max_plate_nesting + 1)

        def wrapped(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim):
                return self.model(*args, **kwargs)

        return wrapped

    def _trace(self, num_particles: int, data: dict | None) -> poutine.Trace:
        model = self._vectorised(num_particles)
        if data is not None:
            model = poutine.condition(model, data=data)
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(*self.model_args, **self.model_kwargs)
        trace.compute_log_prob()
        return trace

    def _discover_sites(self, trace: poutine.Trace, num_particles: int) -> tuple[SiteInfo, ...]:
        sites, full = [], {}
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
                continue
            fn = node["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(fn).__name__}); gradient-free "
                    "engines need continuous latent sites (marginalise or observe it)"
                )
            value = node["value"]
            if value.ndim == 0 or value.shape[0] != num_particles:
                raise ValueError(
                    f"latent site {name!r} has shape {tuple(value.shape)}, which does not vectorise "
                    f"over {num_particles} particles: does the model use more than "
                    f"max_plate_nesting={self.max_plate_nesting} plates, or reshape its samples?"
                )
            full[name] = tuple(value.shape[1:])
            shape = _strip_leading_ones(full[name], node["fn"].event_dim)
            transform = biject_to(fn.support)
            unconstrained = tuple(transform.inverse_shape(torch.Size(shape)))
            sites.append(SiteInfo(name, shape, unconstrained, transform))
        if not sites:
            raise ValueError("the model has no latent sample sites: there is nothing to infer")
        self._full_shapes = full
        return tuple(sites)

    def _evaluation(self, trace: poutine.Trace, u: torch.Tensor, num_particles: int) -> Evaluation:
        return Evaluation(
            u=u,
            log_prior=self._log_prior(trace, u, num_particles),
            log_likelihood=self._log_likelihood(trace, num_particles),
            outputs=self._outputs(trace, num_particles),
        )

    def _log_prior(self, trace: poutine.Trace, u: torch.Tensor, num_particles: int) -> torch.Tensor:
        total = torch.zeros(num_particles)
        offset = 0
        for site in self.sites:
            node = trace.nodes[site.name]
            total = total + self._per_particle(node["log_prob"], num_particles, site.name)
            chunk = u[:, offset : offset + site.numel].reshape(num_particles, *site.unconstrained_shape)
            x = site.transform(chunk)
            ladj = site.transform.log_abs_det_jacobian(chunk, x)
            total = total + ladj.reshape(num_particles, -1).sum(-1)
            offset += site.numel
        return total

    def _log_likelihood(self, trace: poutine.Trace, num_particles: int) -> torch.Tensor:
        latent = {s.name for s in self.sites}
        total = torch.zeros(num_particles)
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or name in latent or not node["is_observed"]:
                continue
            if node["infer"].get("_deterministic") or site_is_subsample(node):
                continue
            total = total + self._per_particle(node["log_prob"], num_particles, name)
        return total

    def _outputs(self, trace: poutine.Trace, num_particles: int) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, node in trace.nodes.items():
            if node["type"] == "sample" and node["infer"].get("_deterministic"):
                value = node["value"]
                outputs[name] = value.expand(num_particles, *value.shape[1:]).reshape(
                    num_particles, *_strip_leading_ones(tuple(value.shape[1:]), node["fn"].event_dim)
                )
        return outputs

    def _per_particle(self, log_prob: torch.Tensor, num_particles: int, name: str) -> torch.Tensor:
        batch_ndim = self.max_plate_nesting + 1
        if log_prob.ndim > batch_ndim:
            raise ValueError(
                f"site {name!r} has log_prob shape {tuple(log_prob.shape)} with more batch dims than "
                f"max_plate_nesting={self.max_plate_nesting} allows; declare its dims with "
                "pyro.plate or .to_event()"
            )
        log_prob = log_prob.reshape((1,) * (batch_ndim - log_prob.ndim) + tuple(log_prob.shape))
        if log_prob.shape[0] not in (1, num_particles):
            raise ValueError(
                f"site {name!r} has log_prob shape {tuple(log_prob.shape)}: its particle dim "
                f"{-batch_ndim} is {log_prob.shape[0]}, expected {num_particles}"
            )
        log_prob = log_prob.expand(num_particles, *log_prob.shape[1:])
        return log_prob.reshape(num_particles, -1).sum(-1)

    def _check_u(self, u: torch.Tensor) -> torch.Tensor:
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"u must have shape [P, D={self.dim}], got {tuple(u.shape)}")
        if u.shape[0] < 1:
            raise ValueError("u is empty: need at least one particle")
        return u


class _StopAfterSites(Messenger):
    """Exit the model (``NonlocalExit``) once every named sample site has been recorded.

    It sits inside ``poutine.trace``, so each site is fully processed and recorded by the
    time its post-processing here raises.
    """

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self._remaining = set(names)

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            self._remaining.discard(msg["name"])
            if not self._remaining:
                raise NonlocalExit(msg)


def _strip_leading_ones(shape: tuple[int, ...], event_dim: int) -> tuple[int, ...]:
    """Drop the singleton plate dims Pyro broadcasts into a site's batch shape."""
    batch, event = shape[: len(shape) - event_dim], shape[len(shape) - event_dim :]
    while batch and batch[0] == 1:
        batch = batch[1:]
    return tuple(batch) + tuple(event)
