"""The fixed random projection from the low-dimensional prompt z to soft prompts.

As in Black-Box Tuning (Sun et al., 2022), a prompt is ``A z`` with a fixed random
matrix ``A``: R^k -> R^(n_tokens x d). With BBT's "normal" initialisation the entries
of ``A`` are drawn i.i.d. from ``N(0, sigma_A^2)`` with

    sigma_A = embedding_std / (sqrt(k) * z_scale),

so that a prompt drawn with ``z ~ N(0, z_scale^2 I)`` has the same per-coordinate spread
as the model's own input embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RandomProjection"]


@dataclass(frozen=True)
class RandomProjection:
    """A seeded random linear map ``z [.., k] -> prompt [.., n_tokens, d]``.

    Build it with :meth:`from_embeddings`; it is fully determined by its fields, which
    are saved with every result (the matrix itself too, see :meth:`save`).

    Parameters
    ----------
    matrix : Tensor ``[k, n_tokens * d]``
        The projection.
    n_tokens, embed_dim : int
        Prompt length and embedding width.
    seed : int
        Seed the matrix was drawn with.
    std : float
        Standard deviation the entries were drawn with.

    Examples
    --------
    >>> emb = torch.randn(100, 8) * 0.05
    >>> proj = RandomProjection.from_embeddings(emb, intrinsic_dim=4, n_tokens=3, seed=0)
    >>> proj(torch.zeros(5, 4)).shape
    torch.Size([5, 3, 8])
    """

    matrix: torch.Tensor
    n_tokens: int
    embed_dim: int
    seed: int
    std: float

    def __post_init__(self) -> None:
        expected = self.n_tokens * self.embed_dim
        if self.matrix.ndim != 2 or self.matrix.shape[1] != expected:
            raise ValueError(
                f"matrix must have shape [k, n_tokens*embed_dim] = [k, {expected}], "
                f"got {tuple(self.matrix.shape)}"
            )

    @property
    def intrinsic_dim(self) -> int:
        """The dimension ``k`` of z."""
        return int(self.matrix.shape[0])

    @classmethod
    def from_embeddings(
        cls,
        embeddings: torch.Tensor,
        intrinsic_dim: int = 500,
        n_tokens: int = 10,
        seed: int = 0,
        z_scale: float = 1.0,
    ) -> "RandomProjection":
        """Draw ``A`` from the statistics of a model's input embeddings (BBT "normal").

        Parameters
        ----------
        embeddings : Tensor ``[V, d]``
            The model's input word-embedding table.
        intrinsic_dim : int
            Dimension ``k`` of z (BBT default 500).
        n_tokens : int
            Number of prompt vectors.
        seed : int
            Seed of the matrix (independent of any other seed).
        z_scale : float
            Prior scale of z that the projection is calibrated for.
        """
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [vocab, d], got {tuple(embeddings.shape)}")
        for name, value in (("intrinsic_dim", intrinsic_dim), ("n_tokens", n_tokens)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if z_scale <= 0:
            raise ValueError(f"z_scale must be > 0, got {z_scale}")
        embed_dim = int(embeddings.shape[1])
        std = float(embeddings.float().std()) / (math.sqrt(intrinsic_dim) * z_scale)
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(intrinsic_dim, n_tokens * embed_dim, generator=generator) * std
        return cls(matrix=matrix, n_tokens=n_tokens, embed_dim=embed_dim, seed=seed, std=std)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Map ``z [..., k]`` to prompts ``[..., n_tokens, d]``."""
        if z.shape[-1] != self.intrinsic_dim:
            raise ValueError(
                f"z has last dimension {z.shape[-1]}, the projection expects k={self.intrinsic_dim}"
            )
        flat = z.to(self.matrix.dtype) @ self.matrix
        return flat.reshape(*z.shape[:-1], self.n_tokens, self.embed_dim)

    def save(self, path: str) -> None:
        """Write the projection to an ``.npz`` file."""
        np.savez(
            path,
            matrix=self.matrix.numpy(),
            n_tokens=self.n_tokens,
            embed_dim=self.embed_dim,
            seed=self.seed,
            std=self.std,
        )

    @classmethod
    def load(cls, path: str) -> "RandomProjection":
        """Read a projection written by :meth:`save`."""
        try:
            with np.load(path) as data:
                return cls(
                    matrix=torch.from_numpy(data["matrix"]),
                    n_tokens=int(data["n_tokens"]),
                    embed_dim=int(data["embed_dim"]),
                    seed=int(data["seed"]),
                    std=float(data["std"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"cannot read projection file {path}: {err}") from err

    def metadata(self) -> dict:
        """JSON-serialisable description (everything but the matrix)."""
        return {
            "intrinsic_dim": self.intrinsic_dim,
            "n_tokens": self.n_tokens,
            "embed_dim": self.embed_dim,
            "seed": self.seed,
            "std": self.std,
        }
