"""Why an OOD AUROC can fall below 0.5: confidence on the test set against the OOD sets.

The suite flags an example as out of distribution by its predictive entropy
(:data:`benchmarks.run.UNCERTAINTY_SCORE`). That works only if the black box is less sure
of foreign inputs than of its own task's. This script scores each task's evaluation set
and its OOD sets (:data:`benchmarks.run.OOD_PAIRS`, each rendered with its own template,
as in the suite) with no prompt, the zero-shot model that every prompt starts from, and
prints a markdown table: mean predictive entropy and maximum probability, the share of
each predicted class, and the OOD AUROC of the suite's uncertainty score. A row whose OOD set is *more* confident
than the test set explains an AUROC below 0.5 without any fault in the uncertainty.

Run ``python -m benchmarks.ood_confidence --tasks snli rte`` (embedded MiniLM, bf16; uses
``$BAYESPROMPT_DATA`` and the suite's test subsampling). No cache, no files written.

Examples
--------
>>> import torch
>>> profile = confidence_profile(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
>>> round(profile["max_prob"], 3), [round(s, 3) for s in profile["predicted_share"]]
(0.767, [0.667, 0.333])
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence

import torch

from bayesprompt.data.registry import get_task
from bayesprompt.lm import Meter
from bayesprompt.metrics import ood_auroc
from bayesprompt.predict import EnsemblePredictions
from bayesprompt.uncertainty import predictive_entropy
from benchmarks.methods import prompt_predictor
from benchmarks.run import UNCERTAINTY_SCORE, Resources, preset

__all__ = ["confidence_profile", "main"]


def confidence_profile(probs: torch.Tensor) -> dict[str, Any]:
    """Mean entropy and maximum probability of ``probs [B, C]``, and each class's share of the argmax."""
    counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1])
    return {
        "entropy": predictive_entropy(probs.unsqueeze(0)).mean().item(),
        "max_prob": probs.max(-1).values.mean().item(),
        "predicted_share": (counts / counts.sum()).tolist(),
    }


def _row(name: str, size: int, predictions: EnsemblePredictions, auroc: str) -> str:
    profile = confidence_profile(predictions.mean())
    shares = " / ".join(f"{share:.2f}" for share in profile["predicted_share"])
    return f"| {name} | {size} | {profile['entropy']:.3f} | {profile['max_prob']:.3f} | {shares} | {auroc} |"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one table row per test set and per OOD set of each task."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ood_confidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "snli", "rte", "mrpc", "dbpedia"])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    args = parser.parse_args(argv)
    config = dataclasses.replace(preset("full"), precision=args.precision)
    resources = Resources(config)
    print(f"| task: scored set | examples | mean entropy | mean max prob | predicted class shares | OOD AUROC ({UNCERTAINTY_SCORE}) |")
    print("|---|---:|---:|---:|---|---:|")
    for name in args.tasks:
        task = get_task(name)
        backend = resources.backend(task, Meter())
        zero_shot = prompt_predictor(backend, torch.zeros(1, 0, backend.embed_dim))  # the suite's zero-shot method
        batch, _ = resources.evaluation_batch(task, backend)
        inside = zero_shot(batch)
        print(_row(f"{name}: test", len(batch), inside, "—"), flush=True)
        for source in config.ood_for(name):
            ood_batch, _ = resources.evaluation_batch(task, backend, source)
            outside = zero_shot(ood_batch)
            auroc = ood_auroc(inside.uncertainty()[UNCERTAINTY_SCORE], outside.uncertainty()[UNCERTAINTY_SCORE])
            print(_row(f"{name}: OOD {source}", len(ood_batch), outside, f"{auroc:.3f}"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
