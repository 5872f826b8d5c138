"""The ``bayesprompt`` command line.

Examples
--------
Fit a posterior over prompts on SST-2 with the embedded MiniLM model, print test metrics
and write the run directory (checkpointed after every engine step)::

    bayesprompt fit --task sst2 --engine smc --budget 2000 --out runs/sst2-smc

Centre the prior on a prompt tuned on the dev split first (empirical Bayes; half the
budget goes to that CMA-ES stage)::

    bayesprompt fit --task agnews --engine smc --budget 2000 --prior-centre dev --out runs/agnews-dev

Continue a killed run from its last checkpoint (same result as an uninterrupted run)::

    bayesprompt fit --resume runs/sst2-smc

Evaluate the ensemble on the test split and detect IMDB reviews as out-of-distribution,
then draw the calibration, risk-coverage and uncertainty plots::

    bayesprompt evaluate runs/sst2-smc --ood imdb
    bayesprompt plot runs/sst2-smc

Ship the ensemble: predict new inputs (JSON Lines with ``text``, ``text_pair`` for pair
tasks, and optionally ``label``) with class probabilities and uncertainty scores::

    bayesprompt predict runs/sst2-smc --input reviews.jsonl --out reviews.predictions.jsonl

Weigh two prompt models of the same split by their SMC evidence and score their Bayesian
model average (no query)::

    bayesprompt fit --task rte --out runs/rte
    bayesprompt fit --task rte --latent-temperature 1 --out runs/rte-tau
    bayesprompt compare runs/rte runs/rte-tau

Errors in the input (unknown task, bad option, missing or corrupt run files) exit with
status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["main", "build_parser"]

_FIT_DESCRIPTION = (
    "Fit a posterior over soft prompts on a few-shot task, evaluate the ensemble on the test "
    "split and write a run directory (config.json, projection.npz, checkpoint.npz after every "
    "engine step, prior_centre.npz and dev_centre/ (the dev stage's checkpoints) with --prior-centre dev, diagnostics.jsonl, posterior.{json,npz}, "
    "meter.json, metrics.json, "
    "predictions.npz, plots/). With --resume RUN, continue RUN from its last checkpoint "
    "instead; the config is read from RUN/config.json, so no other option may be given."
)
_EVALUATE_DESCRIPTION = (
    "Recompute the ensemble predictions of a finished run on its test split (and on the test "
    "splits of OOD tasks, rendered with their own template and scored with the run's "
    "verbalizers). Prints and saves (metrics.json, predictions.npz) the classification report, "
    "the uncertainty-based selective-prediction report, the OOD report per OOD task (AUROC, "
    "FPR at 95% TPR, risk-rejection AURC) and the ArviZ summary. Queries are metered, not budgeted."
)
_PREDICT_DESCRIPTION = (
    "Predict new inputs with the posterior of a finished run. The input is JSON Lines with the "
    "fields of the run's task (text, and text_pair for pair tasks); a label is optional and, "
    "where given, is checked and copied to the output. Each output line holds the "
    "predicted class (predicted, predicted_name), the ensemble's class probabilities (smoothed vote "
    "shares for likelihood-free runs) and the uncertainty scores (predictive and expected "
    "entropy, mutual information, 1 - max p, 1 - vote margin). A summary goes to stderr. "
    "Queries are metered, not budgeted: one call per distinct posterior sample and chunk of inputs."
)
_COMPARE_DESCRIPTION = (
    "Weigh finished runs fitted to the same few-shot training examples (task, k, data seed, and "
    "the examples' fingerprints in metrics.json) and evaluated on the same test set by their log "
    "evidence, which tempered SMC estimates: posterior model probabilities p(M | y) under "
    "uniform (or given) prior model weights. Prints each run's evidence, "
    "probability and test metrics, then the metrics of the Bayesian model average: the runs' "
    "saved test (and common OOD) predictions mixed with those probabilities. No query is made."
)
_PLOT_DESCRIPTION = (
    "Draw the plots of a run's saved predictions into RUN/plots/: PAV reliability diagram "
    "(binary tasks), top-label reliability diagram, risk-coverage curves and, when OOD "
    "predictions exist, histograms of every uncertainty score, in-distribution vs OOD."
)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, unless X is None/False/empty or already described."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == []
        if empty or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option documented for ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="bayesprompt",
        description="Bayesian soft prompts for black-box language models. "
        "Run `bayesprompt COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="fit, evaluate, predict, plot or compare")
    _add_fit(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_plot(sub)
    _add_compare(sub)
    return parser


def _add_fit(sub: argparse._SubParsersAction) -> None:
    from bayesprompt.data import TASKS
    from bayesprompt.pipeline import ENGINE_NAMES, PRIOR_CENTRES, FitConfig

    defaults = FitConfig()
    fit = sub.add_parser(
        "fit",
        help="fit a posterior over prompts and evaluate it on the test split (or resume a run)",
        description=_FIT_DESCRIPTION,
        formatter_class=_DefaultsFormatter,
    )
    fit.add_argument("--task", default=defaults.task, help=f"task name ({', '.join(sorted(TASKS))})")
    fit.add_argument("--engine", default=defaults.engine, choices=ENGINE_NAMES, help="inference engine")
    fit.add_argument("--budget", type=int, default=defaults.budget, help="API-call budget for inference (one call = one prompt on one batch)")
    fit.add_argument("--out", default=None, help="run directory to write (a previous run's files there are replaced)")
    fit.add_argument("--resume", default=None, metavar="RUN", help="continue the run directory RUN from its last checkpoint (no other option allowed)")
    fit.add_argument("--data-dir", default=None, help="data root with <task>/{train,dev,test}.jsonl (default: $BAYESPROMPT_DATA)")
    fit.add_argument("--k", type=int, default=defaults.k, help="training examples per class")
    fit.add_argument("--dev-k", type=int, default=defaults.dev_k, help="dev examples per class")
    fit.add_argument("--data-seed", type=int, default=defaults.data_seed, help="seed of the few-shot split and test subsample")
    fit.add_argument("--seed", type=int, default=defaults.seed, help="engine seed")
    fit.add_argument("--projection-seed", type=int, default=defaults.projection_seed, help="seed of the random projection")
    fit.add_argument("--backend", default=defaults.backend, choices=("encoder", "mlm"), help="sentence encoder or masked LM")
    fit.add_argument("--model", default=None, help="local path or hub id of the model (default: embedded all-MiniLM-L6-v2)")
    fit.add_argument("--bf16", action="store_true", help="run the black box under bf16 autocast (about 3x faster on CPUs with bf16 units, "
                     "AVX-512 BF16 or AMX; elsewhere bf16 arithmetic at about fp32 speed)")
    fit.add_argument("--n-tokens", type=int, default=defaults.n_tokens, help="prompt length in tokens")
    fit.add_argument("--intrinsic-dim", type=int, default=defaults.intrinsic_dim, help="dimension k of the latent prompt z")
    fit.add_argument("--prior-scale", type=float, default=defaults.prior_scale, help="scale of the Normal prior on z")
    fit.add_argument(
        "--prior-centre", default=defaults.prior_centre, choices=PRIOR_CENTRES,
        help="centre of the prior on z: 0, or 'dev' (empirical Bayes: a CMA-ES prompt tuned on the dev split first)",
    )
    fit.add_argument(
        "--prior-centre-share", type=float, default=defaults.prior_centre_share, metavar="SHARE",
        help="share of the budget for the dev stage of --prior-centre dev",
    )
    fit.add_argument(
        "--latent-temperature", type=float, default=defaults.temperature_prior_scale, metavar="SCALE",
        help="add a likelihood temperature ~ LogNormal(0, SCALE) to the posterior (score engines; default: none)",
    )
    fit.add_argument("--particles", type=int, default=defaults.num_particles, help="population size (particles, walkers or CMA-ES popsize)")
    fit.add_argument("--test-size", type=int, default=None, help="class-balanced test subsample size (default: whole test split)")
    fit.add_argument(
        "--vote-smoothing", type=_smoothing, default=defaults.vote_smoothing, metavar="ALPHA|dev",
        help="Dirichlet smoothing of the votes of likelihood-free engines: a number, or 'dev' to fit it on the dev split (default)",
    )
    fit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra engine option (JSON value), repeatable")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(handler=_fit)


_RUN_HELP = "run directory written by `bayesprompt fit --out RUN`"


def _add_run_command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, run_help: str = _RUN_HELP
) -> argparse.ArgumentParser:
    """A subcommand that works on a run directory (its first argument, ``RUN``)."""
    command = sub.add_parser(name, help=summary, description=description, formatter_class=_DefaultsFormatter)
    command.add_argument("run", metavar="RUN", help=run_help)
    return command


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    evaluate = _add_run_command(
        sub, "evaluate", "recompute test (and OOD) predictions and metrics of a run", _EVALUATE_DESCRIPTION
    )
    evaluate.add_argument("--ood", nargs="+", action="extend", default=[], metavar="TASK", help="out-of-distribution task(s) whose test split is scored with the run's verbalizers (repeatable)")
    evaluate.add_argument("--ood-size", type=int, default=None, help="class-balanced subsample of each OOD test split (default: the run's --test-size)")
    evaluate.add_argument("--data-dir", default=None, help="data root (default: the run's --data-dir, then $BAYESPROMPT_DATA)")
    evaluate.add_argument("--json", action="store_true", help="print only the metrics, as JSON, instead of a summary")
    evaluate.set_defaults(handler=_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    predict = _add_run_command(
        sub, "predict", "predict new inputs with a run's posterior (probabilities and uncertainty, JSON Lines)",
        _PREDICT_DESCRIPTION,
    )
    predict.add_argument("--input", required=True, metavar="FILE", help="JSON Lines inputs of the run's task")
    predict.add_argument("--out", default=None, metavar="FILE", help="JSON Lines output (default: standard output)")
    predict.set_defaults(handler=_predict)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    plot = _add_run_command(
        sub, "plot", "draw calibration, risk-coverage and uncertainty plots of a run", _PLOT_DESCRIPTION,
        run_help="run directory with predictions.npz (from fit or evaluate)",
    )
    plot.set_defaults(handler=_plot)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="weigh runs by their evidence and score their Bayesian model average",
        description=_COMPARE_DESCRIPTION, formatter_class=_DefaultsFormatter,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="finished runs (smc) of the same task and split")
    compare.add_argument("--prior", nargs="+", type=float, default=None, metavar="P", help="prior weights of the models, one per run, normalised; put it after the runs (default: uniform)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    compare.set_defaults(handler=_compare)


# ---------------------------------------------------------------------------- commands
def _smoothing(text: str) -> float | str:
    """``--vote-smoothing``: ``dev`` or a number >= 0."""
    if text == "dev":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'dev', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'dev', got {text!r}")
    return value


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bayesprompt.pipeline import FitConfig, fit, resume

    if args.resume is not None:
        result = resume(args.resume, progress=not args.quiet)
    else:
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
            prior_centre=args.prior_centre,
            prior_centre_share=args.prior_centre_share,
            temperature_prior_scale=args.latent_temperature,
            num_particles=args.particles,
            test_size=args.test_size,
            vote_smoothing=args.vote_smoothing,
            engine_options=_parse_options(args.option),
        )
        for warning in _unused_options(config, args.typed):
            print(f"bayesprompt: warning: {warning}", file=sys.stderr)
        result = fit(config, progress=not args.quiet)
    metrics = result.metrics
    calls = metrics["inference_api_calls"]["calls"]
    print(f"task={metrics['task']} engine={metrics['engine']} status={metrics['status']} api_calls={calls}")
    print(_test_line(metrics) + f" (n={metrics['test']['num_examples']}, samples={metrics['num_samples']})")
    if result.run_dir is not None:
        print(f"run written to {result.run_dir}")
    return 0


def _check_resume_alone(args: argparse.Namespace) -> None:
    """``--resume`` reads the config from the run: any other option (but --quiet) is an error."""
    given = [flag for flag in args.typed if flag not in ("--resume", "--quiet")]
    if given:
        raise ValueError(
            f"--resume reads the config from {args.resume}/config.json; do not pass {', '.join(given)}"
        )


def _typed_options(parser: argparse.ArgumentParser, command: str, argv: Sequence[str] | None) -> list[str]:
    """The options of ``command`` given in ``argv`` (even at their default value), as flags.

    The command line is parsed once more with every default of ``command`` suppressed, so
    that only what was typed (abbreviations and ``--flag=value`` included) sets a value.
    """
    sub = _subparser(parser, command)
    defaults = {action: action.default for action in sub._actions}
    try:
        for action in sub._actions:
            action.default = argparse.SUPPRESS
        typed = vars(parser.parse_args(argv))
    finally:
        for action, default in defaults.items():
            action.default = default
    return [a.option_strings[-1] for a in sub._actions if a.option_strings and a.dest in typed and a.dest != "help"]


def _unused_options(config: Any, typed: Sequence[str]) -> list[str]:
    """Warnings for options given on the command line that have no effect on this ``config``."""
    warnings = []
    if "--particles" in typed and config.engine == "rw-mcmc":
        warnings.append("--particles has no effect on rw-mcmc (its chains: --option num_chains=N)")
    if "--particles" in typed and config.engine == "ensemble-mcmc" and config.num_particles % 2:
        warnings.append(f"ensemble-mcmc needs an even number of walkers: it runs {config.num_particles + 1}")
    if "--prior-centre-share" in typed and config.prior_centre != "dev":
        warnings.append("--prior-centre-share has no effect without --prior-centre dev")
    if "--vote-smoothing" in typed and not config.likelihood_free:
        warnings.append(f"--vote-smoothing has no effect on {config.engine}, which sees scores (not votes)")
    return warnings


#: Config fields set by a flag of another name (other fields: ``--`` + the field with dashes).
_FIELD_FLAGS = {
    "num_particles": "--particles",
    "temperature_prior_scale": "--latent-temperature",
    "engine_options": "--option",
}


def _with_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A ``fit`` error with the snake_case config fields it names written as their flags."""
    flags = {a.dest.replace("-", "_"): a.option_strings[-1] for a in _subparser(parser, "fit")._actions if a.option_strings}
    flags.update(_FIELD_FLAGS)
    return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda m: flags.get(m.group(0), m.group(0)), message)


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bayesprompt.pipeline import evaluate_run

    metrics = evaluate_run(args.run, ood=args.ood, ood_size=args.ood_size, data_dir=args.data_dir)
    if args.json:
        from bayesprompt.runs import jsonable

        print(json.dumps(jsonable(metrics), indent=1))
        return 0
    print(_evaluation_summary(metrics))
    print(f"metrics written to {args.run}/metrics.json, predictions to {args.run}/predictions.npz")
    return 0


def _predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bayesprompt.metrics import classification_report
    from bayesprompt.pipeline import predict_run
    from bayesprompt.runs import atomic_write_text

    forecast = predict_run(args.run, args.input)
    lines = "".join(json.dumps(row) + "\n" for row in forecast.rows())
    if args.out is None:
        sys.stdout.write(lines)
    else:
        atomic_write_text(args.out, lines)
    samples, inputs = forecast.predictions.probs.shape[:2]
    summary = f"predicted {inputs} inputs with {samples} posterior samples, {forecast.api_calls} API calls"
    labelled = forecast.labelled
    if labelled.any():
        report = classification_report(forecast.probs[labelled], forecast.predictions.labels[labelled])
        summary += f"; on the {int(labelled.sum())} labelled: accuracy={report['accuracy']:.4f} nll={report['nll']:.4f}"
    print(summary + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bayesprompt.pipeline import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bayesprompt.pipeline import compare_runs
    from bayesprompt.runs import jsonable

    comparison = compare_runs(args.runs, prior_probabilities=args.prior)
    if args.json:
        print(json.dumps(jsonable(comparison), indent=1))
        return 0
    for row in comparison["runs"]:
        print(f"{row['run']} ({row['engine']}): log evidence={row['log_evidence']:.3f} "
              f"p(M | y)={row['probability']:.4f}; {_test_line(row)}")
    print(f"model average: {_evaluation_summary(comparison['average'])}")
    return 0


# ---------------------------------------------------------------------------- output
def _test_line(metrics: Mapping[str, Any]) -> str:
    test = metrics["test"]
    line = f"test accuracy={test['accuracy']:.4f} nll={test['nll']:.4f} brier={test['brier']:.4f} ece={test['ece']:.4f}"
    if "f1" in test:
        line += f" f1={test['f1']:.4f}"
    return line


def _evaluation_summary(metrics: Mapping[str, Any]) -> str:
    """A readable summary of :func:`~bayesprompt.pipeline.evaluate_run`'s metrics."""
    lines = [_test_line(metrics) + f" (n={metrics['test']['num_examples']})"]
    selective = metrics["selective"]
    scores = [key.removesuffix("/auroc") for key in selective if key.endswith("/auroc")]
    lines.append(f"selective prediction ({selective['num_errors']} errors): score, misclassification AUROC, AURC")
    lines += [f"  {name:<24} {selective[name + '/auroc']:.4f}  {selective[name + '/aurc']:.4f}" for name in scores]
    for task, report in metrics.get("ood", {}).items():
        lines.append(
            f"OOD {task} (n_in={report['num_in']}, n_ood={report['num_ood']}): score, AUROC, FPR95, risk-rejection AURC"
        )
        lines += [
            f"  {name:<24} {report[name + '/auroc']:.4f}  {report[name + '/fpr95']:.4f}  "
            f"{report[name + '/risk_rejection_aurc']:.4f}"
            for name in scores
        ]
    arviz = metrics.get("arviz")
    if arviz is None:
        return "\n".join(lines)
    lines.append("arviz: " + ", ".join(f"{k}={_short(v)}" for k, v in arviz.items() if not isinstance(v, Mapping)))
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesprompt`` command; returns the exit status (2 for bad input)."""
    from bayesprompt.lm.meter import BudgetExhausted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            args.typed = _typed_options(parser, "fit", argv)
            if args.resume is not None:
                _check_resume_alone(args)
        return args.handler(args, parser)
    except (ValueError, OSError, KeyError, BudgetExhausted) as err:
        message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        if args.command == "fit":
            message = _with_flags(message, parser)
        print(f"bayesprompt: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
