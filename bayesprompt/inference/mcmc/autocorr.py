"""Integrated autocorrelation time of MCMC output (emcee's estimator, in torch).

For a stationary chain ``x_t`` with normalised autocorrelation function ``rho(k)`` the
integrated autocorrelation time is ``tau = 1 + 2 sum_{k>=1} rho(k)``: ``N`` correlated
draws estimate a mean as well as ``N / tau`` independent ones. It is estimated as in
emcee (Foreman-Mackey et al., 2013; ``emcee.autocorr``):

1. :func:`autocorr_function`: the empirical ``rho`` by FFT (zero-padded to a power of
   two at least twice the length, so there is no circular wrap-around);
2. with several chains (ensemble walkers, MCMC chains) the functions are averaged over
   chains before summing (Goodman & Weare's recommendation, as in emcee >= 3);
3. :func:`integrated_time`: ``tau(M) = 1 + 2 sum_{k=1}^{M} rho(k)`` with Sokal's automatic
   window, the smallest ``M`` with ``M >= c tau(M)`` (``c = 5``; Sokal, 1997).

The estimate is only trustworthy for chains much longer than ``tau``;
:func:`autocorr_reliable` applies emcee's rule ``N > tol * tau`` (``tol = 50``).
All functions are pure and accept tensors or arrays; results are float64 tensors.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["autocorr_function", "integrated_time", "autocorr_reliable"]


def autocorr_function(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Normalised autocorrelation function along the first axis, by FFT.

    Parameters
    ----------
    x : Tensor or array ``[N, ...]``
        One or more chains of length ``N`` (trailing axes are independent series).

    Returns
    -------
    Tensor ``[N, ...]`` (float64)
        ``rho(k)`` for lags ``k = 0 .. N-1`` with ``rho(0) = 1``; a constant series
        (zero variance) gives NaN.

    Examples
    --------
    >>> rho = autocorr_function(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    >>> rho[:2].tolist()
    [1.0, -0.75]
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim == 0 or x.shape[0] < 1:
        raise ValueError(f"x needs a first (time) axis of length >= 1, got shape {tuple(x.shape)}")
    n = x.shape[0]
    size = 2 * _next_pow_two(n)
    centred = x - x.mean(0, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:n]
    return acov / acov[:1]


def integrated_time(x: torch.Tensor | np.ndarray, c: float = 5.0, has_walkers: bool = True) -> torch.Tensor:
    """Integrated autocorrelation time per coordinate, with Sokal's automatic window.

    Parameters
    ----------
    x : Tensor or array
        ``[N]`` (one chain of one coordinate), ``[N, W]`` (``W`` chains of one coordinate
        if ``has_walkers``, else one chain of ``W`` coordinates) or ``[N, W, D]``
        (``W`` chains of ``D`` coordinates), as in ``emcee.autocorr.integrated_time``.
    c : float
        Window constant: the window is the smallest lag ``M`` with ``M >= c tau(M)``.
    has_walkers : bool
        How to read a 2-D ``x`` (see above).

    Returns
    -------
    Tensor ``[D]`` (float64)
        ``tau`` of each coordinate, in units of the draws given (thinned draws if the
        chains were thinned). NaN for a coordinate with a constant chain (as emcee). If
        no lag reaches the window (chains too short), the sum over all lags is returned,
        where emcee returns ``tau(0) = 1``.

    Examples
    --------
    >>> noise = torch.randn(4000, 8, 2, generator=torch.Generator().manual_seed(0))
    >>> tau = integrated_time(noise)
    >>> tau.shape, bool(((tau - 1.0).abs() < 0.1).all())
    (torch.Size([2]), True)
    """
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c}")
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim == 1:
        x = x[:, None, None]
    elif x.ndim == 2:
        x = x[:, :, None] if has_walkers else x[:, None, :]
    elif x.ndim != 3:
        raise ValueError(f"x must have 1 to 3 dimensions [N, W, D], got shape {tuple(x.shape)}")
    rho = autocorr_function(x).mean(1)  # average over chains: [N, D]
    taus = 2.0 * torch.cumsum(rho, 0) - 1.0  # tau(M) for windows M = 0 .. N-1
    return _windowed(taus, c)


def autocorr_reliable(tau: torch.Tensor | float, num_draws: int, tol: float = 50.0) -> bool:
    """Whether chains of ``num_draws`` are long enough (``num_draws > tol * tau``) for every tau.

    emcee raises ``AutocorrError`` when this fails; here it is a flag to report. NaN
    taus count as unreliable.

    Examples
    --------
    >>> autocorr_reliable(torch.tensor([2.0, 3.0]), num_draws=1000)
    True
    >>> autocorr_reliable(30.0, num_draws=1000)
    False
    """
    tau = torch.as_tensor(tau, dtype=torch.float64)
    return bool((num_draws > tol * tau).all())


def _windowed(taus: torch.Tensor, c: float) -> torch.Tensor:
    """``taus[M]`` at the first ``M`` with ``M >= c taus[M]`` (the last lag if none), per column."""
    lags = torch.arange(taus.shape[0], dtype=torch.float64).unsqueeze(1)
    beyond = lags >= c * taus  # NaN taus compare False
    window = torch.where(beyond.any(0), beyond.double().argmax(0), taus.shape[0] - 1)
    return taus.gather(0, window.unsqueeze(0)).squeeze(0)


def _next_pow_two(n: int) -> int:
    """Smallest power of two ``>= n``."""
    return 1 << max(int(n) - 1, 0).bit_length()
