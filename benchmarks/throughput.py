"""Black-box scoring throughput: inside an engine loop vs a bare batched forward.

``python -m benchmarks.throughput [--task sst2] [--budget 512] [--particles 32] [--out DIR]``

For each precision (fp32, bf16) on the same model and the same shapes (``P`` prompts of
``n_tokens`` slots on the few-shot training batch of ``B`` examples):

* **bare forward**: the backend's batched model forward (``_score_chunked`` under
  ``inference_mode`` and the precision's autocast, i.e. :meth:`PromptBlackBox.score`
  without validation and metering), timed over a few repeats after a warm-up;
  throughput = ``P * B / median time`` sequences per second;
* **engine loop**: :class:`~bayesprompt.inference.smc.TemperedSMC` with ``P`` particles
  run to an API budget; throughput = sequences scored / wall time of the run.
  :meth:`PromptBlackBox.score` is timed on the instance during the run, so

      engine overhead = 1 - (time inside the black-box call) / (wall time),

  the fraction of the wall time spent outside the model (Pyro tracing, proposals,
  resampling, bookkeeping). It is flagged when above 10%.

Examples
--------
>>> rows = measure("sst2", precisions=("fp32",), budget=24, num_particles=4, n_tokens=2,
...                intrinsic_dim=4, k=2, backend="fake", repeats=2)   # doctest: +SKIP
>>> rows[0].engine_sequences                                          # doctest: +SKIP
96
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bayesprompt.data import few_shot_split, get_task, load_split
from bayesprompt.inference.base import run
from bayesprompt.lm import Meter, load_backend
from bayesprompt.lm.base import PromptBlackBox
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.models.prompt import PromptModel

__all__ = ["OVERHEAD_FLAG", "ThroughputRow", "bare_forward_throughput", "measure", "timed_method", "write_throughput", "main"]

#: Engine overhead above which a row is flagged.
OVERHEAD_FLAG = 0.10


@dataclass(frozen=True)
class ThroughputRow:
    """One precision's measurement (see the module docstring)."""

    task: str
    precision: str
    num_prompts: int
    batch_size: int
    sequence_length: int
    bare_seq_per_s: float
    engine_seq_per_s: float
    engine_calls: int
    engine_sequences: int
    wall_seconds: float
    blackbox_seconds: float
    overhead: float
    flagged: bool

    @property
    def relative(self) -> float:
        """Engine throughput as a fraction of the bare forward's."""
        return self.engine_seq_per_s / self.bare_seq_per_s


class _Stopwatch:
    """Accumulated seconds of the calls wrapped by :func:`timed_method`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


@contextlib.contextmanager
def timed_method(obj: object, name: str) -> Iterator[_Stopwatch]:
    """Time every call of ``obj.name`` within the block (instance attribute, restored after).

    Examples
    --------
    >>> class A:
    ...     def f(self, x):
    ...         return x + 1
    >>> a = A()
    >>> with timed_method(a, "f") as watch:
    ...     _ = a.f(1), a.f(2)
    >>> watch.calls, "f" in vars(a)
    (2, False)
    """
    original = getattr(obj, name)
    watch = _Stopwatch()

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            watch.seconds += time.perf_counter() - started
            watch.calls += 1

    setattr(obj, name, wrapper)
    try:
        yield watch
    finally:
        delattr(obj, name)


def bare_forward_throughput(backend: PromptBlackBox, prompts: torch.Tensor, batch, repeats: int = 3) -> float:
    """Sequences per second of the backend's batched forward on ``prompts`` x ``batch`` (median of repeats)."""
    times = []
    with torch.inference_mode(), backend._autocast():
        backend._score_chunked(prompts, batch)  # warm-up
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            backend._score_chunked(prompts, batch)
            times.append(time.perf_counter() - started)
    return prompts.shape[0] * len(batch) / statistics.median(times)


def measure(
    task: str = "sst2",
    precisions: Sequence[str] = ("fp32", "bf16"),
    budget: int = 512,
    num_particles: int = 32,
    n_tokens: int = 10,
    intrinsic_dim: int = 500,
    k: int = 16,
    seed: int = 0,
    data_dir: str | None = None,
    backend: str = "encoder",
    repeats: int = 3,
) -> list[ThroughputRow]:
    """Measure bare and in-engine throughput for each precision (see the module docstring)."""
    from bayesprompt.inference.smc import TemperedSMC

    spec = get_task(task)
    train, _ = few_shot_split(load_split(spec, "train", data_dir), spec.num_classes, k=k, dev_k=1, seed=seed)
    rows = []
    for precision in precisions:
        meter = Meter(budget)
        box = _backend(backend, spec, meter, precision)
        batch = box.encode(train)
        projection = RandomProjection.from_embeddings(box.embedding_table(), intrinsic_dim=intrinsic_dim, n_tokens=n_tokens, seed=0)
        prompts = projection(torch.randn(num_particles, intrinsic_dim, generator=torch.Generator().manual_seed(seed)))
        bare = bare_forward_throughput(box, prompts, batch, repeats)
        potential = Potential(PromptModel(box, projection), (batch,), meter=meter)
        with timed_method(box, "score") as watch:
            started = time.perf_counter()
            run(TemperedSMC(num_particles=num_particles), potential, seed=seed, meter=meter, progress=False)
            wall = time.perf_counter() - started
        overhead = 1.0 - watch.seconds / wall
        rows.append(ThroughputRow(
            task=task,
            precision=precision,
            num_prompts=num_particles,
            batch_size=len(batch),
            sequence_length=int(batch.input_ids.shape[1]) + n_tokens,
            bare_seq_per_s=bare,
            engine_seq_per_s=meter.sequences / wall,
            engine_calls=meter.calls,
            engine_sequences=meter.sequences,
            wall_seconds=wall,
            blackbox_seconds=watch.seconds,
            overhead=overhead,
            flagged=overhead > OVERHEAD_FLAG,
        ))
    return rows


def write_throughput(rows: Sequence[ThroughputRow], out: str | Path) -> Path:
    """Write ``throughput.json`` and ``throughput.md`` into ``out``; returns the markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    lines = [
        "### Black-box throughput: engine loop vs bare batched forward",
        "",
        "| Task | Precision | Prompts x batch | Seq. length | Bare (seq/s) | In engine (seq/s) | Engine / bare | Overhead | Flag |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.precision} | {r.num_prompts} x {r.batch_size} | {r.sequence_length} | {r.bare_seq_per_s:.0f} | "
            f"{r.engine_seq_per_s:.0f} | {r.relative:.2f} | {100 * r.overhead:.1f}% | {'> 10%' if r.flagged else ''} |"
        )
    lines += ["", "Overhead = 1 - (time inside the black-box call) / (wall time of the TemperedSMC run).", ""]
    path = out / "throughput.md"
    path.write_text("\n".join(lines))
    return path


def _backend(kind: str, task, meter: Meter, precision: str) -> PromptBlackBox:
    if kind == "fake":
        from bayesprompt.testing import FakeBlackBox

        return FakeBlackBox(task, embed_dim=16, meter=meter, precision=precision)
    return load_backend("encoder", task, meter=meter, precision=precision)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.throughput``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--budget", type=int, default=512, help="API calls of the engine run")
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--n-tokens", type=int, default=10)
    parser.add_argument("--intrinsic-dim", type=int, default=500)
    parser.add_argument("--k", type=int, default=16, help="training examples per class (batch size = k x classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    rows = measure(args.task, args.precisions, args.budget, args.particles, args.n_tokens, args.intrinsic_dim,
                   args.k, data_dir=args.data_dir, repeats=args.repeats)
    path = write_throughput(rows, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
