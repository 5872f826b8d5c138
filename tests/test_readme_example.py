"""The README's "Using it from Python" example runs as written, at a few seconds' size."""

import ast
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using it from Python"

#: The README's sizes, shrunk to a run of seconds: each text must occur in the example
#: exactly once, so an edit of the README that drops one fails here instead of running full size.
SHRUNK = {
    "Meter(budget=2000)": "Meter(budget=24)",
    "intrinsic_dim=500": "intrinsic_dim=8",
    "TemperedSMC(num_particles=32)": "TemperedSMC(num_particles=4, max_moves=1)",
    'load_split(task, "test", "../shared/data")': 'load_split(task, "test", "../shared/data")[:12]',
}


def readme_example(readme: Path = README) -> str:
    """The first ``python`` code block after the README's "Using it from Python" heading."""
    text = readme.read_text()
    assert SECTION in text, f"{readme}: heading {SECTION!r} not found"
    block = text.split(SECTION, 1)[1]
    assert "```python\n" in block, f"{readme}: no ```python block after {SECTION!r}"
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def shrunk(code: str, data_dir: str) -> str:
    """``code`` with :data:`SHRUNK` applied and the README's data folder replaced by ``data_dir``."""
    for text, replacement in SHRUNK.items():
        assert code.count(text) == 1, f"README example: expected {text!r} once, found it {code.count(text)} times"
        code = code.replace(text, replacement)
    assert '"../shared/data"' in code, "README example: the data folder '../shared/data' is gone"
    return code.replace('"../shared/data"', repr(data_dir))


def test_readme_example_is_python():
    ast.parse(readme_example())


def test_readme_example_runs(capsys):
    data_dir = os.environ.get("BAYESPROMPT_DATA")
    if not data_dir or not (Path(data_dir) / "sst2").is_dir():
        pytest.skip("needs the shared data copies (BAYESPROMPT_DATA or ../shared/data)")
    namespace: dict = {}
    exec(compile(shrunk(readme_example(), data_dir), str(README), "exec"), namespace)
    assert namespace["posterior"].api_calls["calls"] <= 24  # the meter reading when the engine stopped
    assert namespace["predictions"].labels.shape == (12,)
    printed = capsys.readouterr().out
    assert "'accuracy':" in printed and "'nll':" in printed, printed
