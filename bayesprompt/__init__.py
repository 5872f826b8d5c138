"""bayesprompt: Bayesian soft prompts for black-box language models.

A soft prompt is a Pyro latent variable ``z`` mapped by a fixed random projection into
the model's input-embedding space; the black-box model is the likelihood. Gradient-free
engines (tempered SMC, ABC-SMC, ensemble Kalman methods, MCMC, CMA-ES families) return
weighted posterior samples of prompts, whose ensemble predictions come with calibrated
uncertainty.

Subpackages
-----------
lm
    Black-box backends (``PromptBlackBox``), the query ``Meter`` and budget, the
    label-only view.
data
    Tasks, loaders and few-shot sampling.
models
    The random projection, the Pyro prompt models and the ``Potential`` bridge.
inference
    The engines and the ``Posterior`` result.
"""

__version__ = "0.1.0"
