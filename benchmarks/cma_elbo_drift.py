"""Why CMA-ELBO's Gaussian ends up wider than the prior: search noise in ``log s``.

A diagnostic for a finding of the suite: on every task the selected ``q = N(m, diag(s^2))``
has ``||s||`` of 27 to 45, against ``sqrt(500) = 22.4`` for the N(0, I) prior. CMA-ES
searches ``theta = (m, log s)`` (``2D = 1000`` coordinates) with ``popsize`` 20 for about
24 iterations at the common budget, and ranks candidates by a Monte Carlo ELBO of four
draws. This script prints three tables:

1. **cells**: for each cached ``cma-elbo`` cell, the root-mean-square coordinate of ``m``
   (``||m|| / sqrt(D)``) and the spread of ``log s`` implied by ``||s||`` (if the ``log s``
   coordinates are ``N(0, v)``, then ``E ||s||^2 = D exp(2 v)``, so
   ``sqrt(v) = sqrt(log(||s|| / sqrt(D)))``). The two halves of ``theta`` moved equally far.
2. **noise**: the same CMA-ES (same dimension, population, step size and iterations) told
   pure noise as fitness: the mean walks by the same amount in both halves, and
   ``||exp(log s)||`` grows fast (``exp`` of a spread ``log s`` inflates the norm).
3. **linear-Gaussian**: the engine itself, at the suite's settings and with a 16 times longer
   run, on a conjugate model of the same dimension whose best mean-field ``s`` is known in
   closed form (the run is cheap: the forward map is linear); and the engine with one
   scale for all coordinates (``scale="isotropic"``) at the suite's settings, against its
   own closed-form optimum.

Usage::

    python -m benchmarks.cma_elbo_drift                 # all three tables
    python -m benchmarks.cma_elbo_drift --no-linear     # the cheap ones (seconds)

No API call is made; the cells are read from ``--cells``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_CELLS = Path(__file__).parent / "results" / "cells"
CHECKPOINTS = (5, 10, 15, 20, 24)


def cell_rows(cells: Path, dim: int) -> list[dict[str, float | str]]:
    """One row per cached ``cma-elbo`` cell (latent dimension ``dim``): the drift of each half of theta."""
    rows = []
    for path in sorted(cells.glob("*__cma-elbo__*.json")):
        record = json.loads(path.read_text())
        rows.append(_summary_row(f"{record['task']} seed {record['seed']}", record["summary"], dim))
    return rows


def noise_rows(
    dim: int, popsize: int, sigma0: float, iterations: int, seeds: Sequence[int]
) -> list[dict[str, float | str]]:
    """CMA-ES on ``theta = (m, log s)`` told pure Gaussian noise: drift of each half by iteration."""
    from bayesprompt.inference.cma.bbt import new_strategy

    rows = []
    for seed in seeds:
        strategy = new_strategy(np.zeros(2 * dim), sigma0, popsize, seed, False)
        noise = np.random.default_rng(seed)
        for iteration in range(1, iterations + 1):
            candidates = strategy.ask()
            strategy.tell(candidates, list(noise.normal(size=len(candidates))))
            if iteration in CHECKPOINTS or iteration == iterations:
                rows.append(_theta_row(f"noise seed {seed}", iteration, np.asarray(strategy.mean), dim))
    return rows


def linear_gaussian_rows(
    dim: int, num_obs: int, noise_scale: float, popsize: int,
    runs: Sequence[tuple[float, int, str]], seed: int = 0,
) -> list[dict[str, float | str]]:
    """The engine on a conjugate model whose KL-optimal ``q`` of each family is known.

    ``runs`` lists ``(kl_weight, iterations, scale)`` triples (``scale`` as in
    :class:`~bayesprompt.inference.cma.CMAELBO`); each run costs ``popsize * 4`` calls of
    the (cheap, linear) forward map per iteration.
    """
    from bayesprompt.inference.base import run
    from bayesprompt.inference.cma import CMAELBO
    from bayesprompt.models.potential import Potential
    from bayesprompt.testing import LinearGaussian

    problem = LinearGaussian.random(dim=dim, num_obs=num_obs, seed=seed, noise_scale=noise_scale)
    precision = torch.linalg.inv(problem.posterior_cov())
    optima = {  # norm of the KL(q || posterior)-optimal s: s_j = L_jj^-1/2, or s^2 = D / trace(L)
        "diagonal": float(precision.diagonal().rsqrt().norm()),
        "isotropic": dim / math.sqrt(float(precision.trace())),
    }
    rows: list[dict[str, float | str]] = [
        {"cell": f"{scale} optimum (kl_weight 1)", "iterations": 0, "mean_rms": math.nan,
         "log_std_spread": math.nan, "std_norm": optimum}
        for scale, optimum in optima.items()
    ]
    for weight, iterations, scale in runs:
        engine = CMAELBO(popsize=popsize, num_mc_samples=4, kl_weight=weight, max_iterations=iterations, scale=scale)
        posterior = run(engine, Potential(problem.model), seed=seed, progress=False)
        rows.append(_summary_row(f"{scale}, kl_weight {weight:g}", posterior.summary, dim))
    return rows


def format_table(title: str, rows: Sequence[dict[str, float | str]]) -> str:
    """A markdown table of drift rows."""
    lines = [
        f"### {title}", "",
        "| run | iterations | rms of m | spread of log s | norm of s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['cell']} | {row['iterations']} | {_fmt(row['mean_rms'])} "
            f"| {_fmt(row['log_std_spread'])} | {_fmt(row['std_norm'], 1)} |"
        )
    return "\n".join(lines)


def _summary_row(label: str, summary: dict, dim: int) -> dict[str, float | str]:
    """A drift row from a CMA-ELBO posterior summary (``q_mean_norm``, ``q_std_norm``)."""
    return {
        "cell": label,
        "iterations": summary["iterations"],
        "mean_rms": summary["q_mean_norm"] / math.sqrt(dim),
        "log_std_spread": _implied_log_std_spread(summary["q_std_norm"], dim),
        "std_norm": summary["q_std_norm"],
    }


def _theta_row(label: str, iteration: int, theta: np.ndarray, dim: int) -> dict[str, float | str]:
    mean, log_std = theta[:dim], theta[dim:]
    return {
        "cell": label,
        "iterations": iteration,
        "mean_rms": float(np.sqrt(np.mean(mean**2))),
        "log_std_spread": float(np.sqrt(np.mean(log_std**2))),
        "std_norm": float(np.linalg.norm(np.exp(log_std))),
    }


def _implied_log_std_spread(std_norm: float, dim: int) -> float:
    """``sqrt(v)`` with ``||s||^2 = D exp(2 v)``; ``nan`` when ``||s||`` is below ``sqrt(D)``."""
    ratio = std_norm / math.sqrt(dim)
    return math.sqrt(math.log(ratio)) if ratio >= 1 else math.nan


def _fmt(value: float | str, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cells", type=Path, default=DEFAULT_CELLS, help="folder of cached cells")
    parser.add_argument("--dim", type=int, default=500, help="dimension D of z (theta has 2D)")
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--sigma0", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--long-iterations", type=int, default=400,
                        help="iterations of the long linear-Gaussian run (kl_weight 1)")
    parser.add_argument("--no-linear", action="store_true", help="skip the linear-Gaussian table")
    args = parser.parse_args(argv)
    if not args.cells.is_dir():
        parser.error(f"--cells: no folder {args.cells}")
    tables = [
        format_table("Cached cma-elbo cells", cell_rows(args.cells, args.dim)),
        format_table("CMA-ES told pure noise", noise_rows(args.dim, args.popsize, args.sigma0, args.iterations, args.seeds)),
    ]
    if not args.no_linear:
        runs = [
            (1e-3, args.iterations, "diagonal"),
            (1.0, args.iterations, "diagonal"),
            (1.0, args.long_iterations, "diagonal"),
            (1.0, args.iterations, "isotropic"),
        ]
        rows = linear_gaussian_rows(args.dim, 32, 5.0, args.popsize, runs)
        tables.append(format_table("CMA-ELBO on a linear-Gaussian model (32 observations, noise 5)", rows))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
