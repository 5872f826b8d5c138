"""Inference engines (one subpackage per family) and their shared result type.

Every engine follows ``init -> step -> ... -> posterior`` (see :mod:`.base`) and is run
with :func:`run`, which returns a :class:`Posterior`.
"""

from bayesprompt.inference.base import Engine, InitialBudgetError, run
from bayesprompt.inference.posterior import Posterior, Status

__all__ = ["Engine", "InitialBudgetError", "Posterior", "Status", "run"]
