"""Query metering and the API budget.

Every black-box query is charged to a :class:`Meter` *before* the model runs, so a
query that would exceed the budget raises :class:`BudgetExhausted` and is never
half-answered.

One **API call** is one prompt scored on one batch of examples (the unit used by BBT
and by Shen et al.): scoring a population of ``P`` prompts on a batch costs ``P``
calls, ``P * B`` sequences and the tokens of those sequences.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

__all__ = ["BudgetExhausted", "Meter", "MeterSnapshot", "ProbeInterrupt"]


class BudgetExhausted(Exception):
    """Raised when a query would exceed the API-call budget.

    It derives from ``Exception`` directly (not ``RuntimeError``), so it passes through
    Pyro's trace handlers unchanged and is never confused with a model error.

    Attributes
    ----------
    budget : int
        The budget in API calls.
    used : int
        Calls already spent when the query was refused.
    requested : int
        Calls the refused query needed.
    """

    def __init__(self, budget: int, used: int, requested: int) -> None:
        self.budget = budget
        self.used = used
        self.requested = requested
        super().__init__(
            f"API budget exhausted: {used} of {budget} calls used, the next query needs "
            f"{requested} (only {budget - used} left)"
        )


class ProbeInterrupt(Exception):
    """Raised by :meth:`Meter.charge` inside :meth:`Meter.probe`: a query was about to run.

    Used to run a model up to (not including) its first black-box query, e.g. to learn
    its latent sites for free.
    """


@dataclass(frozen=True)
class MeterSnapshot:
    """An immutable reading of a :class:`Meter` (what gets saved with results)."""

    calls: int
    sequences: int
    tokens: int
    queries: int
    budget: int | None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


class Meter:
    """Counts API calls, sequences and tokens, and enforces an optional budget.

    Parameters
    ----------
    budget : int or None
        Maximum number of API calls; ``None`` means unlimited.

    Examples
    --------
    >>> meter = Meter(budget=10)
    >>> meter.charge(calls=8, sequences=8 * 32, tokens=8 * 32 * 20)
    >>> meter.remaining
    2
    >>> meter.charge(calls=4, sequences=4, tokens=4)
    Traceback (most recent call last):
    ...
    bayesprompt.lm.meter.BudgetExhausted: API budget exhausted: 8 of 10 calls used, ...
    """

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative int or None, got {budget!r}")
        self.budget = budget
        self.calls = 0
        self.sequences = 0
        self.tokens = 0
        self.queries = 0
        self._probing = False
        self._listeners: list[Callable[[Meter], None]] = []

    @contextlib.contextmanager
    def probe(self) -> Iterator[None]:
        """Within this block any query raises :class:`ProbeInterrupt` instead of running."""
        previous, self._probing = self._probing, True
        try:
            yield
        finally:
            self._probing = previous

    @contextlib.contextmanager
    def watching(self, listener: Callable[["Meter"], None]) -> Iterator[None]:
        """Within this block, call ``listener(meter)`` after every charged query.

        :func:`bayesprompt.inference.run` uses it to move its progress bar with each
        query rather than once per engine step.

        Examples
        --------
        >>> meter, seen = Meter(), []
        >>> with meter.watching(lambda m: seen.append(m.calls)):
        ...     meter.charge(calls=3, sequences=3, tokens=3)
        ...     meter.charge(calls=2, sequences=2, tokens=2)
        >>> meter.charge(calls=1, sequences=1, tokens=1)
        >>> seen
        [3, 5]
        """
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)

    @contextlib.contextmanager
    def capped(self, calls: int) -> Iterator[int]:
        """Within this block, allow at most ``calls`` more calls (never beyond the budget).

        Yields the temporary budget; the budget is restored on exit, also after
        :class:`BudgetExhausted`. Used to give one stage of a method its share.

        Examples
        --------
        >>> meter = Meter(budget=10)
        >>> with meter.capped(4) as cap:
        ...     meter.charge(calls=3, sequences=3, tokens=3)
        ...     meter.can_afford(2), cap
        (False, 4)
        >>> meter.budget, meter.can_afford(2)
        (10, True)
        """
        if calls < 0:
            raise ValueError(f"calls must be >= 0, got {calls}")
        total = self.budget
        cap = self.calls + calls
        self.budget = cap if total is None else min(cap, total)
        try:
            yield self.budget
        finally:
            self.budget = total

    @property
    def remaining(self) -> int | None:
        """Calls left before the budget is hit (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self.calls

    def can_afford(self, calls: int) -> bool:
        """Whether a query of ``calls`` API calls fits in the remaining budget."""
        return self.budget is None or self.calls + calls <= self.budget

    def charge(self, calls: int, sequences: int, tokens: int) -> None:
        """Record one batched query, or raise :class:`BudgetExhausted` without recording it."""
        if calls < 0 or sequences < 0 or tokens < 0:
            raise ValueError("charge() needs non-negative counts")
        if self._probing:
            raise ProbeInterrupt("query attempted while probing the model")
        if not self.can_afford(calls):
            raise BudgetExhausted(self.budget, self.calls, calls)
        self.calls += calls
        self.sequences += sequences
        self.tokens += tokens
        self.queries += 1
        for listener in tuple(self._listeners):
            listener(self)

    def snapshot(self) -> MeterSnapshot:
        """Return the current counts as an immutable record."""
        return MeterSnapshot(self.calls, self.sequences, self.tokens, self.queries, self.budget)

    def restore(self, snapshot: MeterSnapshot | dict) -> None:
        """Set the counts from a snapshot (used when resuming a run)."""
        data = snapshot.to_dict() if isinstance(snapshot, MeterSnapshot) else dict(snapshot)
        self.calls = int(data["calls"])
        self.sequences = int(data["sequences"])
        self.tokens = int(data["tokens"])
        self.queries = int(data["queries"])

    def __repr__(self) -> str:
        return f"Meter(calls={self.calls}, budget={self.budget}, sequences={self.sequences})"
