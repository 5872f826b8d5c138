"""Where does BBT's prompt sit relative to the tempered-SMC posterior?

A diagnostic for the benchmark's bad news (AG News: BBT beats the posterior). On one
task and split seed of the suite (same data, backend, projection and test subsample as
the benchmark cells) it runs BBT (CMA-ES, best-dev prompt) and tempered SMC, and prints
one table row per set of prompts:

- the norm of z, the prior log density and the training log-likelihood (mean over the set;
  the SMC particles also as min / max), which show how much prior mass the posterior
  would have to give up to reach BBT's point and how much likelihood it would gain;
- test accuracy and NLL of the set's equally weighted ensemble (SMC: weighted);
- BBT's z with isotropic noise added, and scaled along its ray, which show whether the
  likelihood cares about the norm of z or only about its direction;
- with ``--dev-centre-budget N``: the prompt CMA-ES tunes on the dev log-likelihood in N
  calls (:func:`~bayesprompt.inference.empirical_bayes.fit_dev_centre`) and the SMC
  particles under the prior ``N(z_dev, prior_scale^2 I)`` (the ``smc-devprior`` method),
  which show whether the dev prompt itself or the posterior around it is to blame.

Usage::

    python -m benchmarks.point_vs_posterior --task agnews --seed 0 --point-budget 500 --test-size 300
    python -m benchmarks.point_vs_posterior --task sst2 --seed 0 --dev-centre-budget 1000 \
        --posterior-budget 1000 --no-probes --test-size 0

Each row costs one API call per prompt on the training batch and one per prompt on the
test batch; the two fits cost their budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.methods import prompt_predictor
from benchmarks.run import BenchmarkConfig, Resources, preset
from bayesprompt.data import get_task
from bayesprompt.inference import run
from bayesprompt.inference.cma import CMAES
from bayesprompt.inference.empirical_bayes import fit_dev_centre
from bayesprompt.inference.smc import TemperedSMC
from bayesprompt.lm import Meter
from bayesprompt.metrics import classification_report
from bayesprompt.models import Potential, PromptModel
from bayesprompt.inference.selection import dev_accuracy_score
from bayesprompt.predict import predict

__all__ = ["Row", "compare", "format_table", "main"]


@dataclass(frozen=True)
class Row:
    """One set of prompts: its z statistics (means weighted by the posterior weights of a
    weighted sample) and its ensemble's test metrics."""

    name: str
    size: int
    norm: float
    log_prior: float
    log_likelihood: float
    log_likelihood_range: tuple[float, float]
    test_accuracy: float
    test_nll: float


def compare(
    config: BenchmarkConfig,
    task_name: str,
    seed: int,
    point_budget: int = 500,
    posterior_budget: int = 2000,
    noise_scales: Sequence[float] = (0.25, 0.5, 1.0),
    ray_scales: Sequence[float] = (0.5, 2.0),
    num_noise: int = 16,
    dev_centre_budget: int = 0,
) -> list[Row]:
    """Fit BBT and tempered SMC on one cell of the suite and describe their prompts.

    Parameters
    ----------
    config : BenchmarkConfig
        Data, backend, projection, prior scale, particles and test subsample (as the suite).
    task_name : str
        The task.
    seed : int
        Split and engine seed.
    point_budget, posterior_budget : int
        API budgets of BBT and of SMC.
    noise_scales : sequence of float
        Standard deviations of the isotropic noise added to BBT's z (``num_noise`` draws each).
    ray_scales : sequence of float
        Factors ``t`` of the points ``t * z_BBT``.
    num_noise : int
        Noise draws per scale.
    dev_centre_budget : int
        If positive, also tune a prompt on the dev log-likelihood in this many calls and
        sample the training posterior under the prior centred on it (``posterior_budget``
        calls), as the ``smc-devprior`` method does.

    Returns
    -------
    list of Row
    """
    if point_budget < 1 or posterior_budget < 1:
        raise ValueError(f"point_budget and posterior_budget must be >= 1, got {point_budget} and {posterior_budget}")
    if num_noise < 1:
        raise ValueError(f"num_noise must be >= 1, got {num_noise}")
    if dev_centre_budget < 0:
        raise ValueError(f"dev_centre_budget must be >= 0 (0: skip the dev-centred rows), got {dev_centre_budget}")
    task = get_task(task_name)
    resources = Resources(config)
    meter = Meter()
    backend = resources.backend(task, meter)
    projection = resources.projection(task, backend)
    train_examples, dev_examples = resources.few_shot(task, seed)
    train, dev = backend.encode(train_examples), backend.encode(dev_examples)
    test, _ = resources.evaluation_batch(task, backend)
    potential = Potential(PromptModel(backend, projection, prior_scale=config.prior_scale), (train,), meter=meter)

    def fit(engine, budget: int, target: Potential = potential):
        before = meter.calls
        with meter.capped(budget):
            return run(engine, target, seed=seed, meter=meter, progress=False), meter.calls - before

    point, point_calls = fit(CMAES(popsize=20, dev_score=dev_accuracy_score(potential, dev)), point_budget)
    posterior, posterior_calls = fit(TemperedSMC(num_particles=config.num_particles), posterior_budget)
    z_point = point.samples["z"].reshape(1, -1).float()
    noise = torch.randn(num_noise, z_point.shape[-1], generator=torch.Generator().manual_seed(seed + 1))

    def row(name: str, z: torch.Tensor, probs: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> Row:
        evaluation = potential.evaluate(z)
        if probs is None:
            probs = prompt_predictor(backend, projection(z))(test).mean()
        report = classification_report(probs, test.labels)
        log_lik = evaluation.log_likelihood.double()
        w = torch.full_like(log_lik, 1.0 / len(log_lik)) if weights is None else weights.double()
        return Row(
            name, z.shape[0], float(w @ z.double().norm(dim=-1)), float(w @ evaluation.log_prior.double()),
            float(w @ log_lik), (float(log_lik.min()), float(log_lik.max())), report["accuracy"], report["nll"],
        )

    z_particles = posterior.samples["z"].reshape(posterior.num_samples, -1).float()
    smc_probs = predict(posterior, potential.with_args(test), test).mean()
    z_mean = (posterior.weights[:, None].double() * z_particles.double()).sum(0, keepdim=True).float()
    rows = [
        row("z = 0 (the projection's offset prompt)", torch.zeros_like(z_point)),
        row(f"BBT, {point_calls} calls", z_point),
        row(f"SMC particles ({posterior_calls} calls)", z_particles, smc_probs, posterior.weights),
        row("SMC posterior mean of z", z_mean),
    ]
    rows += [row(f"BBT z + N(0, {s:g}^2 I)", z_point + s * noise) for s in noise_scales]
    rows += [row(f"{t:g} x BBT z", t * z_point) for t in ray_scales]
    if dev_centre_budget:
        centre = fit_dev_centre(PromptModel(backend, projection, prior_scale=config.prior_scale), dev,
                                dev_centre_budget, meter=meter, seed=seed, progress=False)
        centred = Potential(PromptModel(backend, projection, prior=centre.prior(config.prior_scale)), (train,), meter=meter)
        around, around_calls = fit(TemperedSMC(num_particles=config.num_particles), posterior_budget, centred)
        z_around = around.samples["z"].reshape(around.num_samples, -1).float()
        rows += [
            row(f"dev-tuned z ({centre.api_calls} calls; dev log-lik {centre.dev_log_likelihood:.1f})", centre.z[None]),
            row(f"SMC particles, prior N(z_dev, I) ({around_calls} calls)", z_around,
                predict(around, centred.with_args(test), test).mean(), around.weights),
        ]
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of ``rows``."""
    lines = [
        "| prompts | n | mean norm of z | mean log prior | train log-lik, mean (min, max) | test accuracy | test NLL |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        low, high = r.log_likelihood_range
        spread = f" ({low:.1f}, {high:.1f})" if r.size > 1 else ""
        lines.append(
            f"| {r.name} | {r.size} | {r.norm:.1f} | {r.log_prior:.0f} | {r.log_likelihood:.1f}{spread} "
            f"| {r.test_accuracy:.3f} | {r.test_nll:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.point_vs_posterior", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="agnews", help="task (default: agnews)")
    parser.add_argument("--seed", type=int, default=0, help="split and engine seed")
    parser.add_argument("--point-budget", type=int, default=500, help="BBT's API budget")
    parser.add_argument("--posterior-budget", type=int, default=2000, help="tempered SMC's API budget")
    parser.add_argument("--dev-centre-budget", type=int, default=0,
                        help="also tune a prompt on dev in this many calls and sample around it (0: skip)")
    parser.add_argument("--no-probes", action="store_true", help="skip the noise and ray probes around BBT's z")
    parser.add_argument("--test-size", type=int, default=300, help="class-balanced test subsample (0: whole test set)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--config", choices=("smoke", "full"), default="full", help="benchmark preset for the rest")
    parser.add_argument("--data-dir", default=None, help="data root (default: $BAYESPROMPT_DATA)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = dataclasses.replace(
        preset(args.config),
        precision=args.precision,
        test_size=args.test_size or None,
        length_bucket=64,
        **({"data_dir": args.data_dir} if args.data_dir else {}),
    )
    probes = {"noise_scales": (), "ray_scales": ()} if args.no_probes else {}
    rows = compare(config, args.task, args.seed, args.point_budget, args.posterior_budget,
                   dev_centre_budget=args.dev_centre_budget, **probes)
    print(format_table(rows))
    if args.json:
        payload: list[dict[str, Any]] = [dataclasses.asdict(r) for r in rows]
        with open(args.json, "w") as handle:
            json.dump({"task": args.task, "seed": args.seed, "rows": payload}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
