"""Benchmarks of bayesprompt against the black-box prompt-tuning peers.

One command runs the few-shot suite (``python -m benchmarks.run``); see
``benchmarks/README.md``. Modules:

* :mod:`benchmarks.methods` -- the method registry (zero-shot, BBT, white-box tuning,
  the paper's Prompt Ensembles and uniform ABC-SMC, and every bayesprompt engine), with
  graceful "unavailable" entries for engines that cannot be imported;
* :mod:`benchmarks.whitebox` -- the full-access reference: Adam on the soft prompt through
  the model's differentiable forward;
* :mod:`benchmarks.run` -- configurations, the per-cell runner with its on-disk cache,
  and the command line;
* :mod:`benchmarks.report` -- the overview and per-task markdown tables and the
  budget-sweep plots;
* :mod:`benchmarks.engine_defaults` -- the recorded engine constructor defaults that flag
  cached cells a default change may have made stale;
* :mod:`benchmarks.throughput` -- black-box scoring throughput inside an engine loop vs a
  bare batched forward.
"""
