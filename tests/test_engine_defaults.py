"""The engine-defaults record that guards the benchmark cache (``benchmarks/engine_defaults.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks import engine_defaults  # noqa: E402
from benchmarks.methods import SHARED_REQUIREMENTS, default_registry  # noqa: E402
from benchmarks.run import BENCHMARK_VERSION, engine_defaults_warnings, main  # noqa: E402


def test_record_matches_the_engines_and_version():
    """Fails when an engine default changes without bumping BENCHMARK_VERSION and re-recording."""
    assert engine_defaults_warnings(default_registry()) == []
    version, recorded = engine_defaults.load_record()
    assert version == BENCHMARK_VERSION
    requirements = [*SHARED_REQUIREMENTS, *(r for spec in default_registry().values() for r in spec.requires)]
    assert set(recorded) == set(engine_defaults.current_defaults(requirements))  # every engine and shared object
    assert set(SHARED_REQUIREMENTS) <= set(recorded)  # a mistyped shared entry would be skipped on both sides
    assert recorded["bayesprompt.inference.smc:TemperedSMC"]["target_ess"] == "0.5"
    assert recorded["bayesprompt.lm.sentence_encoder:SentenceEncoderBlackBox"]["scale"] == "25.0"
    assert recorded["bayesprompt.models.projection:RandomProjection.from_embeddings"]["intrinsic_dim"] == "500"


def test_a_changed_shared_default_is_reported(tmp_path):
    _, recorded = engine_defaults.load_record()
    recorded["bayesprompt.predict:predict"]["chunk_size"] = "128"
    record = engine_defaults.write_record(BENCHMARK_VERSION, recorded, tmp_path / "record.json")
    assert engine_defaults_warnings(default_registry(), record) == ["bayesprompt.predict:predict: chunk_size 128 -> 256"]


def test_dotted_requirements_resolve_and_bad_ones_are_left_out():
    defaults = engine_defaults.current_defaults(["bayesprompt.models.projection:RandomProjection.from_embeddings",
                                                 "bayesprompt.models.projection:RandomProjection.no_such_method"])
    assert list(defaults) == ["bayesprompt.models.projection:RandomProjection.from_embeddings"]
    assert defaults["bayesprompt.models.projection:RandomProjection.from_embeddings"]["n_tokens"] == "10"


def test_a_changed_default_and_an_old_version_are_reported(tmp_path):
    registry = default_registry()
    _, recorded = engine_defaults.load_record()
    recorded["bayesprompt.inference.smc:TemperedSMC"]["target_ess"] = "0.7"
    del recorded["bayesprompt.inference.kalman:EKS"]["nugget"]
    del recorded["bayesprompt.inference.kalman:EKI"]
    record = engine_defaults.write_record(BENCHMARK_VERSION - 1, recorded, tmp_path / "record.json")
    lines = engine_defaults_warnings(registry, record)
    assert lines == [
        f"{record}: recorded under BENCHMARK_VERSION {BENCHMARK_VERSION - 1}, the code has {BENCHMARK_VERSION}",
        "bayesprompt.inference.kalman:EKI: not recorded",
        "bayesprompt.inference.kalman:EKS: nugget <absent> -> 1e-08",
        "bayesprompt.inference.smc:TemperedSMC: target_ess 0.7 -> 0.5",
    ]


def test_callable_defaults_are_named_without_addresses():
    defaults = engine_defaults.current_defaults(["bayesprompt.inference.smc:ABCSMC", "no_such_module:Engine"])
    assert list(defaults) == ["bayesprompt.inference.smc:ABCSMC"]  # an unimportable engine is left out
    assert defaults["bayesprompt.inference.smc:ABCSMC"]["distance"] == "bayesprompt.inference.smc.abc.error_rate"
    assert " at 0x" not in json.dumps(engine_defaults.current_defaults(r for s in default_registry().values() for r in s.requires))


def test_unreadable_record_names_the_file(tmp_path):
    bad = tmp_path / "record.json"
    bad.write_text('{"defaults": {}}')
    with pytest.raises(ValueError, match=r"record\.json: cannot read the engine-defaults record"):
        engine_defaults.load_record(bad)


def test_main_warns_when_the_record_cannot_be_read(monkeypatch, capsys):
    def unreadable(registry):
        raise ValueError("engine_defaults.json: cannot read the engine-defaults record")

    monkeypatch.setattr("benchmarks.run.engine_defaults_warnings", unreadable)
    assert main(["--config", "smoke", "--budgets", "0"]) == 2
    assert "cannot check: engine_defaults.json: cannot read" in capsys.readouterr().err


def test_main_warns_about_stale_defaults(monkeypatch, capsys):
    monkeypatch.setattr("benchmarks.run.engine_defaults_warnings", lambda registry: ["x:Engine: alpha 1 -> 2"])
    assert main(["--config", "smoke", "--budgets", "0"]) == 2  # stops at the bad budget, after the warning
    err = capsys.readouterr().err
    assert "warning: engine defaults or code differ" in err and "x:Engine: alpha 1 -> 2" in err


def test_record_command_writes_the_current_defaults(monkeypatch, tmp_path, capsys):
    record = tmp_path / "engine_defaults.json"
    monkeypatch.setattr(engine_defaults, "RECORD_PATH", record)
    assert main(["--record-engine-defaults"]) == 0
    assert f"code fingerprints: {record}" in capsys.readouterr().out
    assert engine_defaults.load_record(record) == engine_defaults.load_record()  # the committed record is current
    assert engine_defaults.load_sources(record)[1] == engine_defaults.source_fingerprints()


# ---------------------------------------------------------------------- builders' fingerprints
def _fingerprint(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return engine_defaults.source_fingerprints([name])


def test_fingerprints_follow_code_not_comments_or_docstrings(tmp_path, monkeypatch):
    base = ('"""Module doc."""\nimport math\n\nSTEPS = 8\nA, B = 1, 2\n\ndef build(ctx):\n    """Doc."""\n'
            '    return ctx.engine(popsize=20)  # a note\n\nclass Spec:\n    pass\n')
    variants = {
        "reworded": base.replace('"""Doc."""', '"""Another doc."""').replace("# a note", "# another note")
                        .replace("Module doc.", "Another module doc."),
        "reformatted": base.replace("popsize=20", "popsize = 20").replace("STEPS = 8", "STEPS=8"),
        "constant": base.replace("popsize=20", "popsize=10"),
        "steps": base.replace("STEPS = 8", "STEPS = 4"),
        "import": base.replace("import math", "import cmath as math"),
        "tuple": base.replace("A, B = 1, 2", "A, B = 1, 3"),
    }
    prints = {label: _fingerprint(tmp_path, monkeypatch, f"builders_{i}", source)
              for i, (label, source) in enumerate({"base": base, **variants}.items())}
    short = {label: {key.split(":")[1]: value for key, value in p.items()} for label, p in prints.items()}
    assert set(short["base"]) == {"<imports>", "STEPS", "<other>", "build", "Spec"}
    assert short["base"] == short["reworded"] == short["reformatted"]
    expected = {"constant": "build", "steps": "STEPS", "import": "<imports>", "tuple": "<other>"}
    for label, name in expected.items():
        assert engine_defaults.changed_sources(short["base"], short[label]) == [f"{name}: code changed"]


def test_an_unreadable_module_is_named():
    with pytest.raises(ValueError, match="cannot read the source of no_such_module_xyz"):
        engine_defaults.source_fingerprints(["no_such_module_xyz"])


def test_the_record_fingerprints_the_method_builders_and_the_engines():
    python, sources = engine_defaults.load_sources()
    assert python is not None
    assert {"benchmarks.methods:_smc_engine", "benchmarks.methods:EKI_MDA_STEPS", "benchmarks.methods:<imports>"} <= set(sources)
    # the engines' code, what fits and scores a cell, and the runner's evaluation
    assert {"bayesprompt.inference.smc.abc:ABCSMC", "bayesprompt.inference.smc.tempered:TemperedSMC",
            "bayesprompt.lm.sentence_encoder:SentenceEncoderBlackBox", "bayesprompt.predict:predict",
            "bayesprompt.metrics:nll", "benchmarks.run:BENCHMARK_VERSION"} <= set(sources)
    assert engine_defaults.changed_sources(sources, engine_defaults.source_fingerprints()) == []


def test_fingerprinted_packages_expand_to_their_modules():
    modules = engine_defaults.fingerprinted_modules()
    assert "bayesprompt.inference.kalman.eks" in modules and "bayesprompt.lm.precision" in modules
    assert "bayesprompt.cli" not in modules and "bayesprompt.plotting" not in modules  # presentation only
    with pytest.raises(ValueError, match="cannot import no_such_package_xyz"):
        engine_defaults.fingerprinted_modules(["no_such_package_xyz"])


def test_a_changed_builder_is_reported_and_another_python_noted(tmp_path):
    version, recorded = engine_defaults.load_record()
    sources = {**engine_defaults.source_fingerprints(), "benchmarks.methods:_smc_engine": "000000000000"}
    record = engine_defaults.write_record(version, recorded, tmp_path / "record.json", sources)
    assert engine_defaults_warnings(default_registry(), record) == ["benchmarks.methods:_smc_engine: code changed"]
    data = json.loads(record.read_text())
    data["python"] = "2.7"
    record.write_text(json.dumps(data))
    [line] = engine_defaults_warnings(default_registry(), record)
    assert line.startswith("benchmarks.methods:_smc_engine: code changed (recorded under Python 2.7, this is 3.")
    del data["sources"], data["python"]  # a record from before the fingerprints
    record.write_text(json.dumps(data))
    assert engine_defaults.load_sources(record) == (None, {}) and engine_defaults_warnings(default_registry(), record) == []
