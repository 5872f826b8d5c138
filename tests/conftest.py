"""Test configuration: offline Hugging Face, headless matplotlib, the shared data copies."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The project's data copies sit beside the checkout (../shared/data); an explicit
# BAYESPROMPT_DATA wins.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "BAYESPROMPT_DATA" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["BAYESPROMPT_DATA"] = str(_SHARED_DATA)


@pytest.fixture
def fake_backend(monkeypatch):
    """The pipeline builds a fake black box instead of loading MiniLM, and draws no plots (tested in test_cli)."""
    from bayesprompt import pipeline
    from bayesprompt.testing import FakeBlackBox

    monkeypatch.setattr(
        pipeline, "_backend",
        lambda config, task, meter: FakeBlackBox(task, embed_dim=8, seed=0, meter=meter, precision=config.precision),
    )
    monkeypatch.setattr(pipeline, "plot_run", lambda directory: [])
