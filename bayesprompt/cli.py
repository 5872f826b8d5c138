"""The ``bayesprompt`` command line.

Examples
--------
Fit a posterior over prompts on SST-2 with the embedded MiniLM model and print test
metrics::

    bayesprompt fit --task sst2 --engine smc --budget 2000 --out runs/sst2-smc
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option documented for ``--help``)."""
    from bayesprompt.pipeline import ENGINE_NAMES, FitConfig

    defaults = FitConfig()
    parser = argparse.ArgumentParser(
        prog="bayesprompt",
        description="Bayesian soft prompts for black-box language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = sub.add_parser(
        "fit",
        help="fit a posterior over prompts and evaluate it on the test split",
        description="Fit a posterior over soft prompts on a few-shot task, evaluate the "
        "ensemble on the test split and write a run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("--task", default=defaults.task, help="task name (sst2, imdb, agnews, dbpedia, mrpc, rte, snli)")
    fit.add_argument("--engine", default=defaults.engine, choices=ENGINE_NAMES, help="inference engine")
    fit.add_argument("--budget", type=int, default=defaults.budget, help="API-call budget for inference (one call = one prompt on one batch)")
    fit.add_argument("--out", default=None, help="run directory to write (config, projection, samples, metrics)")
    fit.add_argument("--data-dir", default=None, help="data root with <task>/{train,dev,test}.jsonl (default: $BAYESPROMPT_DATA)")
    fit.add_argument("--k", type=int, default=defaults.k, help="training examples per class")
    fit.add_argument("--dev-k", type=int, default=defaults.dev_k, help="dev examples per class")
    fit.add_argument("--data-seed", type=int, default=defaults.data_seed, help="seed of the few-shot split and test subsample")
    fit.add_argument("--seed", type=int, default=defaults.seed, help="engine seed")
    fit.add_argument("--projection-seed", type=int, default=defaults.projection_seed, help="seed of the random projection")
    fit.add_argument("--backend", default=defaults.backend, choices=("encoder", "mlm"), help="sentence encoder or masked LM")
    fit.add_argument("--model", default=None, help="local path or hub id of the model (default: embedded all-MiniLM-L6-v2)")
    fit.add_argument("--bf16", action="store_true", help="run the black box under bf16 autocast (about 3x faster on CPU)")
    fit.add_argument("--n-tokens", type=int, default=defaults.n_tokens, help="prompt length in tokens")
    fit.add_argument("--intrinsic-dim", type=int, default=defaults.intrinsic_dim, help="dimension k of the latent prompt z")
    fit.add_argument("--prior-scale", type=float, default=defaults.prior_scale, help="scale of the Normal prior on z")
    fit.add_argument("--particles", type=int, default=defaults.num_particles, help="population size (particles, walkers or CMA-ES popsize)")
    fit.add_argument("--test-size", type=int, default=None, help="class-balanced test subsample size (default: whole test split)")
    fit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra engine option (JSON value), repeatable")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _parse_options(pairs: Sequence[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"bayesprompt: --option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _fit(args: argparse.Namespace) -> int:
    from bayesprompt.pipeline import FitConfig, fit

    config = FitConfig(
        task=args.task,
        engine=args.engine,
        budget=args.budget,
        out=args.out,
        data_dir=args.data_dir,
        k=args.k,
        dev_k=args.dev_k,
        data_seed=args.data_seed,
        seed=args.seed,
        projection_seed=args.projection_seed,
        backend=args.backend,
        model=args.model,
        precision="bf16" if args.bf16 else "fp32",
        n_tokens=args.n_tokens,
        intrinsic_dim=args.intrinsic_dim,
        prior_scale=args.prior_scale,
        num_particles=args.particles,
        test_size=args.test_size,
        engine_options=_parse_options(args.option),
    )
    result = fit(config, progress=not args.quiet)
    metrics = result.metrics
    test = metrics["test"]
    calls = metrics["inference_api_calls"]["calls"]
    print(f"task={metrics['task']} engine={metrics['engine']} status={metrics['status']} api_calls={calls}")
    line = f"test accuracy={test['accuracy']:.4f} nll={test['nll']:.4f} brier={test['brier']:.4f} ece={test['ece']:.4f}"
    if "f1" in test:
        line += f" f1={test['f1']:.4f}"
    print(line + f" (n={test['num_examples']}, samples={metrics['num_samples']})")
    if args.out:
        print(f"run written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesprompt`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            return _fit(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"bayesprompt: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
