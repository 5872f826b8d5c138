"""Test configuration: offline Hugging Face, headless matplotlib, the shared data copies."""

import os
from pathlib import Path

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
