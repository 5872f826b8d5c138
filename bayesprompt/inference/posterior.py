"""The result every engine returns: weighted posterior samples plus diagnostics.

A :class:`Posterior` holds samples of every latent site (constrained values), their
normalised log weights, one info record per engine iteration, the API-call count, a
status and engine-specific summaries (e.g. the SMC log evidence). It saves to and loads
from a directory without pickling objects.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesprompt.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["ARCHIVE_ERRORS", "Posterior", "Status", "FORMAT_VERSION"]

#: What reading a damaged (truncated, corrupt) ``.npz`` archive from its bytes can raise.
ARCHIVE_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)

#: Version of the on-disk format written by :meth:`Posterior.save`.
FORMAT_VERSION = 1


class Status:
    """Why an engine stopped (plain strings, saved as such)."""

    FINISHED = "finished"
    BUDGET_EXHAUSTED = "budget_exhausted"
    MAX_ITERATIONS = "max_iterations"
    STALLED = "stalled"
    RUNNING = "running"


@dataclass
class Posterior:
    """Weighted samples from an engine.

    Parameters
    ----------
    samples : dict of Tensor
        ``{site: [S, *shape]}`` constrained values of every latent site.
    log_weights : Tensor ``[S]``
        Log importance weights (normalised on construction so they logsumexp to 0).
    diagnostics : list of dict
        One JSON-serialisable record per engine iteration (beta, ESS, acceptance, calls...).
    api_calls : dict
        The meter reading when the engine stopped (see ``MeterSnapshot.to_dict``).
    status : str
        One of :class:`Status`' values.
    engine : str
        Engine name.
    summary : dict
        Engine-level scalars such as ``log_evidence``.
    num_chains : int
        For MCMC output: samples are stored chain-major, ``S = num_chains * draws``
        (``samples[site].reshape(num_chains, draws, ...)``). 1 for particle engines.
    mcmc : bool
        The samples are Markov chains (``num_chains`` of them, one included), so their
        autocorrelation matters for effective sample sizes
        (:func:`bayesprompt.arviz.summarize`); ``False`` for independent weighted
        particles. Resampled and thinned copies are not chains.

    Examples
    --------
    >>> post = Posterior({"z": torch.randn(4, 2)}, torch.zeros(4), engine="demo")
    >>> post.num_samples, round(post.ess, 6)
    (4, 4.0)
    """

    samples: dict[str, torch.Tensor]
    log_weights: torch.Tensor
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    api_calls: dict[str, Any] = field(default_factory=dict)
    status: str = Status.FINISHED
    engine: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    num_chains: int = 1
    mcmc: bool = False

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("Posterior needs at least one latent site in samples")
        sizes = {name: int(v.shape[0]) for name, v in self.samples.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all sites need the same number of samples, got {sizes}")
        n = next(iter(sizes.values()))
        log_weights = torch.as_tensor(self.log_weights, dtype=torch.float64).reshape(-1)
        if log_weights.shape[0] != n:
            raise ValueError(f"log_weights has {log_weights.shape[0]} entries for {n} samples")
        if torch.isnan(log_weights).any() or not torch.isfinite(log_weights).any():
            raise ValueError("log_weights must contain no NaN and at least one finite value")
        self.log_weights = log_weights - torch.logsumexp(log_weights, 0)
        if self.num_chains < 1 or n % self.num_chains:
            raise ValueError(f"num_chains={self.num_chains} does not divide the {n} samples")

    @property
    def num_samples(self) -> int:
        """Number of samples ``S``."""
        return int(self.log_weights.shape[0])

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``[S]`` (float64)."""
        return self.log_weights.exp()

    @property
    def ess(self) -> float:
        """Kish effective sample size of the weights."""
        return float(1.0 / (self.weights**2).sum())

    def mean(self, site: str) -> torch.Tensor:
        """Weighted posterior mean of ``site``."""
        x = self.samples[site].double()
        w = self.weights.reshape(-1, *([1] * (x.ndim - 1)))
        return (w * x).sum(0)

    def resample(self, num_samples: int, generator: torch.Generator) -> "Posterior":
        """Draw an equally weighted posterior of ``num_samples`` by multinomial resampling."""
        index = torch.multinomial(self.weights.float(), num_samples, replacement=True, generator=generator)
        return Posterior(
            {k: v[index] for k, v in self.samples.items()},
            torch.zeros(num_samples),
            self.diagnostics,
            self.api_calls,
            self.status,
            self.engine,
            self.summary,
        )

    def subsample(self, max_samples: int, seed: int = 0) -> "Posterior":
        """At most ``max_samples`` samples, e.g. to bound the cost of ensemble predictions.

        Equally weighted samples (MCMC chains, ensembles) are thinned evenly;
        weighted ones are resampled multinomially with a seeded generator, which keeps
        posterior averages unbiased. A posterior that is small enough is returned as is.

        Examples
        --------
        >>> post = Posterior({"z": torch.arange(10.0).unsqueeze(-1)}, torch.zeros(10))
        >>> post.subsample(4).samples["z"].flatten().tolist()
        [0.0, 3.0, 6.0, 9.0]
        >>> post.subsample(20) is post
        True
        """
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be an int >= 1, got {max_samples!r}")
        size = self.num_samples
        if size <= max_samples:
            return self
        if not torch.allclose(self.weights, torch.full_like(self.weights, 1.0 / size)):
            return self.resample(max_samples, torch.Generator().manual_seed(int(seed)))
        index = torch.linspace(0, size - 1, max_samples).round().long()
        return dataclasses.replace(
            self,
            samples={k: v[index] for k, v in self.samples.items()},
            log_weights=torch.zeros(max_samples),
            num_chains=1,
            mcmc=False,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``posterior.npz`` and ``posterior.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"sample/{k}": v.detach().cpu().numpy() for k, v in self.samples.items()}
        arrays["log_weights"] = self.log_weights.numpy()
        archive = io.BytesIO()
        np.savez(archive, **arrays)
        atomic_write_bytes(directory / "posterior.npz", archive.getvalue())
        meta = {
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "status": self.status,
            "api_calls": self.api_calls,
            "summary": _jsonable(self.summary),
            "diagnostics": _jsonable(self.diagnostics),
            "num_chains": self.num_chains,
            "mcmc": self.mcmc,
        }
        atomic_write_text(directory / "posterior.json", json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> "Posterior":
        """Read a posterior written by :meth:`save`, with clear errors for bad files."""
        directory = Path(directory)
        meta_path, npz_path = directory / "posterior.json", directory / "posterior.npz"
        for path in (meta_path, npz_path):
            if not path.is_file():
                raise FileNotFoundError(f"missing posterior file: {path}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format_version {version!r}; this bayesprompt reads version {FORMAT_VERSION}"
            )
        try:
            with np.load(io.BytesIO(npz_path.read_bytes())) as data:  # a corrupt archive leaves no file open
                samples = {k[len("sample/") :]: torch.from_numpy(data[k]) for k in data.files if k.startswith("sample/")}
                log_weights = torch.from_numpy(data["log_weights"])
        except ARCHIVE_ERRORS as err:
            raise ValueError(
                f"{npz_path}: not a readable .npz archive ({type(err).__name__}: {err}); the file is truncated or corrupt"
            ) from err
        return cls(
            samples,
            log_weights,
            meta.get("diagnostics", []),
            meta.get("api_calls", {}),
            meta.get("status", Status.FINISHED),
            meta.get("engine", ""),
            meta.get("summary", {}),
            int(meta.get("num_chains", 1)),
            bool(meta.get("mcmc", int(meta.get("num_chains", 1)) > 1)),  # files before the flag: chains if several
        )


def _jsonable(value: Any) -> Any:
    """Convert tensors / numpy scalars inside nested containers to JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
