"""Few-shot sampling (the BBT protocol) and class-balanced subsampling.

:func:`few_shot_split` draws ``k`` examples per class for training and ``dev_k`` per
class for validation from a labelled pool, as in Black-Box Tuning (Sun et al., 2022)
and LM-BFF (Gao et al., 2021). :func:`balanced_subsample` shrinks a large evaluation
set while keeping the classes balanced. Both are pure functions of their arguments:
the same ``seed`` always gives the same result.

>>> from bayesprompt.data import Example, few_shot_split
>>> pool = [Example(f"text {i}", i % 2) for i in range(20)]
>>> train, dev = few_shot_split(pool, num_classes=2, k=2, dev_k=1, seed=0)
>>> len(train), len(dev)
(4, 2)
>>> sorted(e.label for e in train)
[0, 0, 1, 1]
>>> set(train).isdisjoint(dev)
True
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Sequence

import numpy as np

from bayesprompt.data.task import Example

__all__ = ["few_shot_split", "balanced_subsample", "examples_fingerprint"]


def _as_count(value: int, name: str, minimum: int) -> int:
    """Check that ``value`` is an integer (not ``bool``) ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _indices_by_class(examples: Sequence[Example], num_classes: int) -> list[np.ndarray]:
    """Positions of the examples of each class, in input order."""
    labels = np.fromiter((ex.label for ex in examples), dtype=np.int64, count=len(examples))
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"example {i} has label {int(labels[i])}, outside 0..{num_classes - 1} "
            f"for num_classes={num_classes} ({bad.size} such example(s))"
        )
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def few_shot_split(
    pool: Sequence[Example],
    num_classes: int,
    k: int = 16,
    dev_k: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], list[Example]]:
    """Draw a class-balanced few-shot train set and dev set from a labelled pool.

    For each class, the pool positions of that class are permuted with a
    :func:`numpy.random.default_rng` generator seeded by ``seed``; the first ``k`` go to
    train and the next ``dev_k`` to dev. Each set is then shuffled with the same
    generator, so classes are interleaved. Consequences:

    * train and dev are disjoint by pool position (duplicated texts in the pool may
      still land in both);
    * the train set does not depend on ``dev_k``, and for a fixed seed the train set
      for a smaller ``k`` is a subset of the one for a larger ``k``.

    Parameters
    ----------
    pool : sequence of Example
        Labelled examples, typically the ``train`` split. Not modified.
    num_classes : int
        Number of classes; every label must lie in ``0..num_classes - 1``.
    k : int
        Training examples per class (BBT uses 16).
    dev_k : int or None
        Dev examples per class; ``None`` means ``k``; ``0`` gives an empty dev set.
    seed : int
        Seed of the random generator.

    Returns
    -------
    train, dev : list of Example
        ``k * num_classes`` and ``dev_k * num_classes`` examples, in shuffled order.

    Raises
    ------
    ValueError
        If a class has fewer than ``k + dev_k`` examples (the message lists every such
        class with its count), if a label is out of range, or if ``k < 1`` or
        ``dev_k < 0``.
    TypeError
        If ``k``, ``dev_k`` or ``num_classes`` is not an integer.
    """
    num_classes = _as_count(num_classes, "num_classes", 1)
    k = _as_count(k, "k", 1)
    dev_k = k if dev_k is None else _as_count(dev_k, "dev_k", 0)
    by_class = _indices_by_class(pool, num_classes)
    need = k + dev_k
    short = [(c, idx.size) for c, idx in enumerate(by_class) if idx.size < need]
    if short:
        detail = ", ".join(f"class {c} has {n}" for c, n in short)
        raise ValueError(
            f"not enough examples for a {k}-shot train + {dev_k}-shot dev split: each class "
            f"needs k + dev_k = {need}, but {detail} (pool of {len(pool)} examples)"
        )
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(idx) for idx in by_class]
    train_idx = rng.permutation(np.concatenate([p[:k] for p in picks]))
    dev_idx = rng.permutation(np.concatenate([p[k:need] for p in picks]))
    return [pool[int(i)] for i in train_idx], [pool[int(i)] for i in dev_idx]


def _fair_quotas(counts: Sequence[int], n: int) -> list[int]:
    """Split ``n`` draws over classes as evenly as their sizes allow (water-filling).

    Classes smaller than the fair share contribute all their examples; the rest split
    what remains equally, the lowest class indices taking one extra for a remainder.
    Assumes ``n <= sum(counts)``.
    """
    quotas = [0] * len(counts)
    remaining, left = n, len(counts)
    by_size = sorted(range(len(counts)), key=lambda c: counts[c])
    taken = 0
    for c in by_size:
        if counts[c] * left > remaining:
            break
        quotas[c] = counts[c]
        remaining -= counts[c]
        left -= 1
        taken += 1
    rest = sorted(by_size[taken:])
    if rest:
        share, extra = divmod(remaining, len(rest))
        for rank, c in enumerate(rest):
            quotas[c] = share + (rank < extra)
    return quotas


def balanced_subsample(
    examples: Sequence[Example], num_classes: int, n: int, seed: int = 0
) -> list[Example]:
    """Draw a class-balanced subset of ``n`` examples (e.g. to shrink a test set).

    Each class gets ``n // num_classes`` examples (the first ``n % num_classes``
    classes one more); a class with too few examples contributes all of them and
    the shortfall is spread over the other classes. Within a class, examples are
    chosen uniformly without replacement with a generator seeded by ``seed``.

    Parameters
    ----------
    examples : sequence of Example
        The full set; labels must lie in ``0..num_classes - 1``.
    num_classes : int
        Number of classes.
    n : int
        Target size (``>= 1``). If ``n >= len(examples)`` all examples are returned.
    seed : int
        Seed of the random generator.

    Returns
    -------
    list of Example
        ``min(n, len(examples))`` examples, in their original relative order.

    Raises
    ------
    ValueError
        If ``n < 1`` or a label is out of range.

    Examples
    --------
    >>> from bayesprompt.data import Example
    >>> data = [Example(f"t{i}", 0) for i in range(8)] + [Example("u", 1), Example("v", 1)]
    >>> sub = balanced_subsample(data, num_classes=2, n=6, seed=0)
    >>> [e.label for e in sub].count(1), len(sub)
    (2, 6)
    """
    num_classes = _as_count(num_classes, "num_classes", 1)
    n = _as_count(n, "n", 1)
    by_class = _indices_by_class(examples, num_classes)
    if n >= len(examples):
        return list(examples)
    quotas = _fair_quotas([idx.size for idx in by_class], n)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(idx)[:q] for idx, q in zip(by_class, quotas)])
    return [examples[int(i)] for i in np.sort(chosen)]


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """SHA-256 of the examples' texts, text pairs and labels, in order (hex digest).

    Two runs conditioned on the same examples share it, whichever data directory or seed
    produced them; runs weighed by their evidence must (see
    :func:`bayesprompt.pipeline.compare_runs`).

    >>> a = examples_fingerprint([Example("good", 1), Example("bad", 0)])
    >>> a == examples_fingerprint([Example("good", 1), Example("bad", 0)]), len(a)
    (True, 64)
    >>> a == examples_fingerprint([Example("good", 1), Example("bad", 1)])
    False
    """
    rows = [[example.text, example.text_pair, example.label] for example in examples]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
