"""Pure ensemble linear algebra shared by :class:`~.eki.EKI` and :class:`~.eks.EKS`.

Every function here works in *ensemble space*: with ``J`` members and ``M``
observations, no ``M x M`` (nor ``D x M`` gain) matrix is ever formed; the costs are
``O(J^2 M)`` time and ``O(J M)`` memory, linear in ``M``. All inputs are float64.

The Kalman increment uses the thin SVD of the scaled forward anomalies
``A_g = U S V^T`` (``[J, M]``). From ``A_g (A_g^T A_g + lam I_M)^-1 = U S (S^2 + lam)^-1 V^T``
(write ``A_g^T A_g + lam I = V (S^2 + lam) V^T + lam (I - V V^T)``),

    C^{uG} (C^{GG} + lam I)^-1 r = A_u^T U diag(S / (S^2 + lam)) V^T r,

with ``C^{uG} = A_u^T A_g`` and ``C^{GG} = A_g^T A_g``. The filter ``S / (S^2 + lam)``
stays bounded as ``lam -> 0`` (it becomes the pseudo-inverse), so huge steps are safe.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "EnsembleFailure",
    "anomalies",
    "data_misfit_step",
    "kalman_increments",
    "misfits",
    "refill",
    "require_survivors",
    "spread",
]

#: Singular values of the forward anomalies below this fraction of the largest are dropped.
_SVD_RTOL = 1e-12


class EnsembleFailure(RuntimeError):
    """Too few ensemble members have finite forward outputs to estimate covariances."""


def anomalies(x: torch.Tensor, ddof: int) -> torch.Tensor:
    """Centred rows of ``x [J, n]`` divided by ``sqrt(J - ddof)``.

    ``ddof=1`` gives the unbiased ensemble covariance ``A^T A``; ``ddof=0`` the ``1/J`` one.

    Examples
    --------
    >>> anomalies(torch.tensor([[0.0], [2.0]]), ddof=1).tolist()
    [[-1.0], [1.0]]
    >>> anomalies(torch.tensor([[0.0], [2.0]]), ddof=0).squeeze(1)
    tensor([-0.7071,  0.7071])
    """
    centred = x - x.mean(0, keepdim=True)
    return centred / math.sqrt(x.shape[0] - ddof)


def kalman_increments(
    u_anom: torch.Tensor, g_anom: torch.Tensor, residuals: torch.Tensor, ridge: float
) -> torch.Tensor:
    """``Delta u_j = C^{uG} (C^{GG} + ridge I)^-1 r_j`` for all members, in ensemble space.

    Parameters
    ----------
    u_anom : Tensor ``[J, D]``
        Scaled parameter anomalies (``C^{uu} = u_anom^T u_anom``).
    g_anom : Tensor ``[J, M]``
        Scaled anomalies of the (whitened) forward map.
    residuals : Tensor ``[J, M]``
        ``r_j`` (e.g. perturbed data minus ``G(u_j)``, whitened).
    ridge : float
        ``lam >= 0``: ``1 / Delta t`` for EKI with whitened noise.

    Returns
    -------
    Tensor ``[J, D]``

    Examples
    --------
    One member-pair, identity forward map, no ridge: the update closes the residual.

    >>> u = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    >>> residuals = torch.full((2, 1), 0.5, dtype=torch.float64)
    >>> kalman_increments(anomalies(u, 1), anomalies(u, 1), residuals, 0.0).squeeze(1)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    left, singular, right_h = torch.linalg.svd(g_anom, full_matrices=False)
    keep = singular > _SVD_RTOL * singular.max().clamp_min(torch.finfo(singular.dtype).tiny)
    filt = torch.where(keep, singular / (singular**2 + ridge), torch.zeros_like(singular))
    return ((residuals @ right_h.T) * filt) @ (left.T @ u_anom)


def misfits(forward_w: torch.Tensor, data_w: torch.Tensor) -> torch.Tensor:
    """``Phi_j = 0.5 ||y - G(u_j)||^2`` (whitened inputs), ``[J]``."""
    return 0.5 * (forward_w - data_w).square().sum(-1)


def data_misfit_step(phi: torch.Tensor, num_obs: int, remaining: float, max_step: float) -> float:
    """The data-misfit controller's step (Iglesias & Yang 2021; EKP's ``DataMisfitController``).

    ``h = min(max(M / (2 mean Phi), sqrt(M / (2 Var Phi))), remaining, max_step)``, with the
    unbiased variance over members. Capping by ``remaining = T - t`` makes the steps' sum
    reach ``T`` exactly (with ``T = 1``: ``sum 1/alpha_n = 1``, the tempering from prior to
    posterior). A zero mean or variance makes its term infinite.

    Examples
    --------
    >>> data_misfit_step(torch.tensor([10.0, 10.0]), num_obs=4, remaining=1.0, max_step=1e12)
    1.0
    >>> data_misfit_step(torch.tensor([50.0, 150.0]), num_obs=100, remaining=1.0, max_step=1e12)
    0.5
    """
    phi = phi.double()
    mean = float(phi.mean())
    var = float(phi.var()) if phi.numel() > 1 else 0.0
    by_mean = num_obs / (2.0 * mean) if mean > 0 else math.inf
    by_var = math.sqrt(num_obs / (2.0 * var)) if var > 0 else math.inf
    return min(max(by_mean, by_var), remaining, max_step)


def refill(survivors: torch.Tensor, count: int, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """``count`` new members: copies of random survivors plus ``N(0, jitter^2 C)`` noise.

    ``C`` is the survivors' (``1/J``) covariance, drawn as ``jitter * A^T xi / sqrt(J)``
    from their anomalies ``A`` (no ``D x D`` factorisation).

    Examples
    --------
    >>> refill(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), 3, torch.Generator().manual_seed(0), 0.1).tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    num = survivors.shape[0]
    parents = torch.randint(num, (count,), generator=generator)
    centred = survivors - survivors.mean(0, keepdim=True)
    xi = torch.randn(count, num, generator=generator, dtype=survivors.dtype)
    return survivors[parents] + jitter * (xi @ centred) / math.sqrt(num)


def require_survivors(ok: torch.Tensor, engine: str, iteration: int) -> None:
    """Raise :class:`EnsembleFailure` when fewer than 2 members have finite outputs."""
    alive = int(ok.sum())
    if alive < 2:
        raise EnsembleFailure(
            f"{engine}: only {alive} of {ok.numel()} ensemble members have finite forward outputs "
            f"at iteration {iteration} (the others gave NaN / inf); at least 2 are needed to estimate "
            "ensemble covariances -- check the model for regions where it returns NaN, or narrow the prior"
        )


def spread(u: torch.Tensor) -> float:
    """RMS ensemble standard deviation ``sqrt(tr C / D)`` (``1/J`` covariance)."""
    return float(u.double().var(0, correction=0).mean().sqrt())
