"""``benchmarks/lane.sh``: parking unfinished fits and taking in finished records."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "lane.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("realpath") is None,
                                reason="needs bash and realpath")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the script in a bare tree with an empty committed-cells folder."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results" / "cells").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "benchmarks" / "lane.sh")
    return root


def lane(repo: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "benchmarks" / "lane.sh"), *args], cwd=cwd or repo,
                          capture_output=True, text=True, check=False)


def cell(out: Path, name: str, status: str | None = None, fit: bool = False) -> None:
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    if status is not None:
        (cells / f"{name}.json").write_text(json.dumps({"status": status}))
    if fit:
        (cells / f"{name}.fit" / "steps").mkdir(parents=True, exist_ok=True)
        (cells / f"{name}.fit" / "steps" / "checkpoint.npz").write_bytes(b"state")


def test_park_then_done_keeps_a_fit_until_its_record_is_ok(repo: Path, tmp_path: Path):
    committed = repo / "benchmarks" / "results" / "cells"
    out = tmp_path / "out"
    cell(out, "c1", fit=True)
    parked = lane(repo, "park", "out", cwd=tmp_path)  # a relative OUT works from anywhere
    assert parked.returncode == 0 and "parked c1.fit" in parked.stdout
    assert (committed / "c1.fit" / "steps" / "checkpoint.npz").read_bytes() == b"state"

    cell(out, "c1", status="error")  # a failed cell keeps its fit for the rerun
    assert lane(repo, "done", str(out)).returncode == 0
    assert not (committed / "c1.json").exists() and (committed / "c1.fit").is_dir()

    cell(out, "c1", status="ok")
    done = lane(repo, "done", str(out))
    assert done.returncode == 0 and "new record c1.json" in done.stdout
    assert json.loads((committed / "c1.json").read_text())["status"] == "ok" and not (committed / "c1.fit").exists()


def test_done_replaces_a_committed_error_record_but_not_an_ok_one(repo: Path, tmp_path: Path):
    committed = repo / "benchmarks" / "results" / "cells"
    (committed / "bad.json").write_text(json.dumps({"status": "error"}))
    (committed / "good.json").write_text(json.dumps({"status": "ok", "seed": 0}))
    out = tmp_path / "out"
    cell(out, "bad", status="ok")
    (out / "cells" / "good.json").write_text(json.dumps({"status": "ok", "seed": 1}))
    assert lane(repo, "done", str(out)).returncode == 0
    assert json.loads((committed / "bad.json").read_text())["status"] == "ok"
    assert json.loads((committed / "good.json").read_text())["seed"] == 0


def test_done_on_an_empty_output_and_park_of_the_repository_itself(repo: Path, tmp_path: Path):
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert lane(repo, "done", str(tmp_path / "empty")).returncode == 0
    cell(repo / "benchmarks" / "results", "c2", fit=True)
    refused = lane(repo, "park", str(repo / "benchmarks" / "results"))
    assert refused.returncode == 0 and "repository's own results folder" in refused.stderr
    assert (repo / "benchmarks" / "results" / "cells" / "c2.fit" / "steps" / "checkpoint.npz").exists()


def test_park_refuses_a_fit_over_the_size_limit_and_usage_exits_2(repo: Path, tmp_path: Path):
    out = tmp_path / "out"
    cell(out, "big", fit=True)
    (out / "cells" / "big.fit" / "steps" / "checkpoint.npz").write_bytes(b"\0" * (3 << 20))
    result = subprocess.run(["bash", str(repo / "benchmarks" / "lane.sh"), "park", str(out)], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "BAYESPROMPT_PARK_LIMIT_MB": "1"}, check=False)
    assert result.returncode == 0 and "not parked" in result.stderr
    assert not (repo / "benchmarks" / "results" / "cells" / "big.fit").exists()
    usage = lane(repo, "frobnicate")
    assert usage.returncode == 2 and "benchmarks/lane.sh run OUT TASK METHOD" in usage.stderr


def fit_with_steps(cells: Path, name: str, steps: int) -> None:
    folder = cells / f"{name}.fit" / "steps"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diagnostics.jsonl").write_text("".join(f'{{"step": {i}}}\n' for i in range(steps)))


def test_run_seeds_the_lane_with_records_and_only_its_own_parked_fits(repo: Path, tmp_path: Path):
    committed = repo / "benchmarks" / "results" / "cells"
    (committed / "done.json").write_text(json.dumps({"status": "ok"}))
    own = ["dbpedia__smc__seed1__budget2000__abc", "dbpedia__smc__seed2__budgetnone__abc"]
    others = ["dbpedia__smc__seed0__budget2000__abc", "dbpedia__smc-temp__seed1__budget2000__abc",
              "agnews__smc__seed1__budget2000__abc", "dbpedia__smc__seed1__budget500__abc"]
    for name in own + others:
        fit_with_steps(committed, name, 1)
    fake_bin = tmp_path / "bin"  # stands in for python: records its arguments
    fake_bin.mkdir()
    (fake_bin / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\n')
    (fake_bin / "python").chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(repo / "benchmarks" / "lane.sh"), "run", str(out), "dbpedia", "smc", "1 2",
                             "2000"], capture_output=True, text=True, env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
                            check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "cells").glob("*.fit")) == sorted(f"{name}.fit" for name in own)
    assert (out / "cells" / "done.json").exists()
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--seeds") + 1:args.index("--budgets")] == ["1", "2"]


def test_park_refuses_a_fit_behind_its_parked_copy_or_with_an_ok_record(repo: Path, tmp_path: Path):
    committed = repo / "benchmarks" / "results" / "cells"
    fit_with_steps(committed, "c3", 3)
    out = tmp_path / "out"
    for stage in ("dev_centre", "smc"):  # a chained fit, one step in each stage: a stale copy (2 < 3)
        (out / "cells" / "c3.fit" / "steps" / stage).mkdir(parents=True)
        (out / "cells" / "c3.fit" / "steps" / stage / "diagnostics.jsonl").write_text('{"step": 0}\n')
    refused = lane(repo, "park", str(out))
    assert refused.returncode == 0 and "2 steps, the parked copy 3" in refused.stderr
    assert len((committed / "c3.fit" / "steps" / "diagnostics.jsonl").read_text().splitlines()) == 3
    fit_with_steps(out / "cells", "c3", 2)  # steps of every stage count: 2 + 1 + 1 > 3
    assert "parked c3.fit" in lane(repo, "park", str(out)).stdout
    assert (committed / "c3.fit" / "steps" / "smc" / "diagnostics.jsonl").is_file()
    (committed / "c3.json").write_text(json.dumps({"status": "ok"}))  # another lane finished the cell
    shutil.rmtree(committed / "c3.fit")
    finished = lane(repo, "park", str(out))
    assert "has an ok record" in finished.stderr and not (committed / "c3.fit").exists()


def test_park_compares_white_box_fits_by_their_checkpoint_step(repo: Path, tmp_path: Path):
    torch = pytest.importorskip("torch")
    committed = repo / "benchmarks" / "results" / "cells"
    (committed / "wb.fit" / "steps").mkdir(parents=True)
    torch.save({"step": 40}, committed / "wb.fit" / "steps" / "whitebox.pt")
    out = tmp_path / "out"
    (out / "cells" / "wb.fit" / "steps").mkdir(parents=True)
    torch.save({"step": 20}, out / "cells" / "wb.fit" / "steps" / "whitebox.pt")
    refused = lane(repo, "park", str(out))
    assert "20 steps, the parked copy 40" in refused.stderr
    assert torch.load(committed / "wb.fit" / "steps" / "whitebox.pt")["step"] == 40
    torch.save({"step": 60}, out / "cells" / "wb.fit" / "steps" / "whitebox.pt")
    assert "parked wb.fit" in lane(repo, "park", str(out)).stdout
    assert torch.load(committed / "wb.fit" / "steps" / "whitebox.pt")["step"] == 60
