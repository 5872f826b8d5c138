"""Time one training-batch query against the backends' ``length_bucket``.

A batch of more than ``length_bucket`` examples is sorted by length and scored in chunks of
that many, each padded only to its own longest example
(:class:`~bayesprompt.lm.base.PromptBlackBox`). This script times one metered call
(seconds per prompt) on each task's seed-0 few-shot training batch, for each bucket, and
prints a markdown table; it is how the suite's fitting bucket (16) was chosen.

Run ``python -m benchmarks.length_buckets --tasks dbpedia agnews snli`` (embedded MiniLM,
bf16, one thread; ``$BAYESPROMPT_DATA`` names the data root). No cache, no files written.

Examples
--------
>>> from bayesprompt.data.registry import get_task
>>> from bayesprompt.testing import FakeBlackBox
>>> backend = FakeBlackBox(get_task("sst2"), embed_dim=4, length_bucket=None)
>>> from bayesprompt.data.task import Example
>>> batch = backend.encode([Example(text="a b c " * i, label=i % 2) for i in range(1, 9)])
>>> times = seconds_per_call(backend, batch, buckets=(None, 2), num_prompts=2, num_tokens=1)
>>> sorted(times, key=str), backend.length_bucket is None
([2, None], True)
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from bayesprompt.data.fewshot import few_shot_split
from bayesprompt.data.loaders import load_split
from bayesprompt.data.registry import get_task
from bayesprompt.lm import load_backend
from bayesprompt.lm.base import EncodedBatch, PromptBlackBox
from benchmarks.run import scoring_length_bucket

__all__ = ["seconds_per_call", "main"]


def seconds_per_call(
    backend: PromptBlackBox,
    batch: EncodedBatch,
    buckets: Sequence[int | None] = (None, 32, 16),
    num_prompts: int = 8,
    num_tokens: int = 10,
    seed: int = 0,
) -> dict[int | None, float]:
    """Seconds per prompt of one :meth:`~PromptBlackBox.score` call on ``batch``, per bucket.

    Each bucket gets one warm-up call with one prompt, then one timed call with
    ``num_prompts`` random prompts (scale 0.05, seeded). The backend's own bucket is
    restored afterwards.
    """
    generator = torch.Generator().manual_seed(seed)
    prompts = 0.05 * torch.randn(num_prompts, num_tokens, backend.embed_dim, generator=generator)
    times = {}
    for bucket in buckets:
        with scoring_length_bucket(backend, bucket):
            backend.score(prompts[:1], batch)
            started = time.perf_counter()
            backend.score(prompts, batch)
            times[bucket] = (time.perf_counter() - started) / num_prompts
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print a markdown table of seconds per call (rows: tasks, columns: buckets)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.length_buckets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["dbpedia", "agnews", "snli"])
    parser.add_argument("--buckets", nargs="+", type=int, default=[0, 32, 16], help="0: contiguous")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    buckets = [b or None for b in args.buckets]
    labels = ["contiguous" if b is None else f"buckets of {b}" for b in buckets]
    print("| training batch (seed 0) | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(buckets))
    for name in args.tasks:
        task = get_task(name)
        train, _ = few_shot_split(load_split(task, "train"), task.num_classes, k=16, dev_k=16, seed=0)
        backend = load_backend("encoder", task, precision=args.precision)
        times = seconds_per_call(backend, backend.encode(train), buckets, num_prompts=args.prompts)
        print(f"| {name}, {len(train)} examples | " + " | ".join(f"{times[b]:.2f} s" for b in buckets) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
