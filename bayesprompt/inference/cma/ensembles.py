"""Prompt ensembles (Shen et al., EACL 2023 Findings): ``M`` independent BBT runs.

Each member is a full :class:`~bayesprompt.inference.cma.bbt.CMAES` run (the engine is
reused, not re-implemented) with its own seed derived from the run seed, and keeps its
selected prompt (best dev score, or best training loss without a dev split). The result
is a :class:`~bayesprompt.inference.posterior.Posterior` with one equally weighted sample
per member.

Budget
    The engine takes the black box's :class:`~bayesprompt.lm.meter.Meter`. At
    :meth:`PromptEnsembles.init` the budget still available (``meter.remaining``, after
    site discovery) is split into shares ``floor(total / M)``, the remainder going one
    call each to the first members; ``calls_per_member`` sets equal shares instead.
    While member ``i`` steps, the meter's budget is temporarily lowered to what member
    ``i`` may still spend, so the meter itself refuses the query that would overrun the
    share -- exactly as a standalone ``CMAES`` run with budget ``share_i`` would stop.
    Calls a member leaves unused (it stopped early) are not handed to later members.
    Without a meter (or with an unlimited one and no ``calls_per_member``) members run
    until their own stopping rule (``max_iterations`` or pycma's criteria).

Schedule
    Members run **sequentially**: member 0 to completion, then member 1, ... A member
    whose next query would overrun its share is finished (as are members stopped by
    ``max_iterations`` or pycma), and the ensemble ends with status ``finished`` once all
    are. If instead the *total* budget refuses a query that fits in the member's share
    (``calls_per_member * M`` exceeds the budget, or something else spent calls from the
    meter), the run stops with status ``budget_exhausted``: every earlier member is
    complete and kept, and the cut member's best prompt so far is kept if it completed
    an iteration.

One :meth:`PromptEnsembles.step` is one CMA-ES iteration of the current member (its
info record is the member's, plus ``member`` and ``member_calls``); a step that only
finds the remaining members' shares spent returns an info record without
``iteration``.

State size
    Only the running member holds a pycma strategy (with a ``D x D`` covariance and its
    eigenbasis, about 4 MB at ``D = 500``). A finished member keeps its selected prompt
    and scores, and its strategy is released; a member that has not started holds its
    initial point, and its strategy is built (from its seed, as at :meth:`init`) when it
    starts. So a checkpoint of the state holds one strategy, not ``M``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from bayesprompt.inference.base import Engine
from bayesprompt.inference.cma.bbt import CMAES, CMAState
from bayesprompt.inference.posterior import Posterior, Status
from bayesprompt.lm.meter import BudgetExhausted, Meter
from bayesprompt.models.potential import Potential

__all__ = ["PromptEnsembles", "EnsembleState", "split_budget"]


@dataclass(frozen=True)
class EnsembleState:
    """State of :class:`PromptEnsembles`.

    Attributes
    ----------
    members : tuple of CMAState
        One BBT state per member (members after ``current`` have not started). Only the
        running member's ``strategy`` is set; finished and unstarted members hold ``None``
        (see "State size" in the module docstring).
    seeds : tuple of int
        Member seeds (derived from the run seed by :meth:`PromptEnsembles.member_seeds`).
    current : int
        Index of the running member; ``len(members)`` once all are done.
    calls : tuple of int
        API calls spent by each member so far.
    shares : tuple of int or None
        Per-member API-call caps (``None``: uncapped).
    """

    members: tuple[CMAState, ...]
    seeds: tuple[int, ...]
    current: int
    calls: tuple[int, ...]
    shares: tuple[int, ...] | None

    @property
    def num_members(self) -> int:
        """Ensemble size ``M``."""
        return len(self.members)


def split_budget(total: int, num_members: int) -> tuple[int, ...]:
    """Split ``total`` calls into ``num_members`` shares: ``floor(total / M)``, remainder first.

    Examples
    --------
    >>> split_budget(103, 5)
    (21, 21, 21, 20, 20)
    """
    base, extra = divmod(int(total), num_members)
    return tuple(base + (i < extra) for i in range(num_members))


class PromptEnsembles(Engine[EnsembleState]):
    """``M`` independent BBT (CMA-ES) prompt searches sharing one API budget.

    Parameters
    ----------
    num_members : int
        Ensemble size ``M``.
    meter : Meter or None
        The meter the black box charges; needed to split the budget and cap members
        (see the module docstring). ``None``: members are uncapped.
    calls_per_member : int or None
        Equal per-member caps instead of splitting the remaining budget.
    **cmaes_options
        Passed to :class:`~bayesprompt.inference.cma.bbt.CMAES` (``popsize``, ``sigma0``,
        ``max_iterations``, ``dev_score``, ``dev_every``, ``map_objective``, ``diagonal``).

    Examples
    --------
    >>> from bayesprompt.inference.base import run
    >>> from bayesprompt.lm.meter import Meter
    >>> from bayesprompt.testing import LinearGaussian
    >>> meter = Meter(budget=300)
    >>> problem = LinearGaussian.random(dim=2, num_obs=8, seed=0, meter=meter)
    >>> engine = PromptEnsembles(num_members=3, meter=meter, popsize=6)
    >>> post = run(engine, Potential(problem.model, meter=meter), meter=meter, progress=False)
    >>> post.num_samples, post.status, post.summary["member_calls"]
    (3, 'finished', [96, 96, 96])
    """

    name = "ensembles"
    progress_keys = ("member", "iteration", "train_loss", "best_score")

    def __init__(
        self,
        num_members: int = 5,
        meter: Meter | None = None,
        calls_per_member: int | None = None,
        **cmaes_options: Any,
    ) -> None:
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        if calls_per_member is not None and (meter is None or calls_per_member < 1):
            raise ValueError("calls_per_member needs a meter and must be >= 1")
        self.num_members = num_members
        self.meter = meter
        self.calls_per_member = calls_per_member
        self.member = CMAES(**cmaes_options)

    def member_seeds(self, seed: int) -> tuple[int, ...]:
        """The ``M`` distinct member seeds derived from the run ``seed`` (``numpy.random.SeedSequence``).

        Examples
        --------
        >>> seeds = PromptEnsembles(num_members=4).member_seeds(0)
        >>> len(set(seeds))
        4
        """
        candidates = np.random.SeedSequence(int(seed)).generate_state(4 * self.num_members)
        seeds = tuple(dict.fromkeys(int(c) >> 1 for c in candidates))[: self.num_members]
        if len(seeds) < self.num_members:  # pragma: no cover - needs 3M collisions in 2^31
            raise RuntimeError(f"could not derive {self.num_members} distinct seeds from {seed}")
        return seeds

    def init(self, potential: Potential, seed: int) -> EnsembleState:
        """Initialise every member (no query once the sites are known) and fix the shares."""
        seeds = self.member_seeds(seed)
        first = self.member.init(potential, seeds[0])
        unstarted = _released(first)  # every member starts at the same point; its strategy is built when it starts
        members = (first,) + (unstarted,) * (self.num_members - 1)
        return EnsembleState(members, seeds, 0, (0,) * self.num_members, self._shares())

    def step(self, potential: Potential, state: EnsembleState) -> tuple[EnsembleState, dict[str, Any]]:
        """One CMA-ES iteration of the current member, moving on when a member is done."""
        current, calls, members = state.current, list(state.calls), list(state.members)
        while current < state.num_members:
            if members[current].strategy is None:  # a member starting now (see "State size")
                members[current] = self.member.init(potential, state.seeds[current])
            if self.member.stop_reason(members[current]) is not None:  # e.g. max_iterations=0
                members[current] = _released(members[current])
                current += 1
                continue
            before = self._calls()
            try:
                with self._member_cap(state, current, calls[current]):
                    member, info = self.member.step(potential, members[current])
            except _ShareSpent:
                calls[current] += self._calls() - before
                members[current] = _released(members[current])
                current += 1
                continue
            calls[current] += self._calls() - before
            done = self.member.stop_reason(member) is not None
            members[current] = _released(member) if done else member
            new = replace(state, members=tuple(members), current=current + done, calls=tuple(calls))
            return new, {"member": current, "member_calls": calls[current], **info}
        final = replace(state, members=tuple(members), current=current, calls=tuple(calls))
        return final, {"member": state.num_members - 1, "member_calls": calls[-1]}

    def stop_reason(self, state: EnsembleState) -> str | None:
        """``finished`` once every member is done."""
        return Status.FINISHED if state.current >= state.num_members else None

    def posterior(self, potential: Potential, state: EnsembleState) -> Posterior:
        """One equally weighted sample per member with a selected prompt.

        Finished members and the current one (if it completed an iteration) count. If no
        member completed an iteration, the result is the first member's initial point,
        as :class:`~bayesprompt.inference.cma.bbt.CMAES` returns.
        """
        used = [i for i in range(min(state.current + 1, state.num_members)) if state.members[i].iteration > 0]
        if used:
            u = torch.stack([state.members[i].best_u for i in used])
            samples = {k: v.detach() for k, v in potential.unpack(u).items()}
            posterior = Posterior(samples, torch.zeros(len(used)))
        else:
            posterior = self.member.posterior(potential, state.members[0])
        posterior.summary = self._summary(state, used)
        return posterior

    # ------------------------------------------------------------------ internals
    def _shares(self) -> tuple[int, ...] | None:
        if self.calls_per_member is not None:
            return (self.calls_per_member,) * self.num_members
        if self.meter is None or self.meter.remaining is None:
            return None
        return split_budget(self.meter.remaining, self.num_members)

    def _calls(self) -> int:
        return self.meter.calls if self.meter is not None else 0

    @contextlib.contextmanager
    def _member_cap(self, state: EnsembleState, index: int, spent: int) -> Iterator[None]:
        """Lower the meter's budget to member ``index``'s share while it steps.

        A refusal beyond the share becomes :class:`_ShareSpent` (the member is finished);
        one within the share but beyond the total budget is re-raised as the real
        :class:`BudgetExhausted`.
        """
        if state.shares is None or self.meter is None:
            yield
            return
        total = self.meter.budget
        share = max(state.shares[index] - spent, 0)
        cap = self.meter.calls + share
        with self.meter.capped(share):
            try:
                yield
            except BudgetExhausted as err:
                if err.used + err.requested > cap:
                    raise _ShareSpent from err
                raise BudgetExhausted(total, err.used, err.requested) from err

    def _summary(self, state: EnsembleState, used: list[int]) -> dict[str, Any]:
        members = state.members
        return {
            "num_members": state.num_members,
            "members_used": used,
            "member_seeds": list(state.seeds),
            "member_shares": None if state.shares is None else list(state.shares),
            "member_calls": list(state.calls),
            "member_best_scores": [members[i].best_score for i in used],
            "member_best_train_losses": [members[i].best_train_loss for i in used],
            "member_iterations": [m.iteration for m in members],
            "best_score": max((members[i].best_score for i in used), default=members[0].best_score),
        }


def _released(member: CMAState) -> CMAState:
    """``member`` without its pycma strategy: a finished member, or one that has not started."""
    return replace(member, strategy=None)


class _ShareSpent(Exception):
    """The current member's next query does not fit in its share of the budget."""
