"""`make demo`'s job end to end on the embedded default: a fresh directory, SQLite, in-process workers, demo models.

One demo run per module (it takes half a minute); each test checks one part of what it left. The tests share an
xdist group, so the run happens once even under `pytest -n`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """(`geocurate demo`'s result, the fresh directory it ran in)."""
    cwd = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOCURATE_")}
    result = subprocess.run([sys.executable, "-m", "geocurate.cli", "demo"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    return result, cwd


def test_demo_runs_the_whole_job_and_ends_with_a_summary(demo_run):
    result, _ = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "demo models — scores are not meaningful" in out
    assert "geocurate demo finished" in out
    for step in ("ingest", "score", "route", "export", "train:reasoning", "train:location"):
        assert step in out


def test_demo_leaves_its_store_report_and_both_adapters_in_the_directory(demo_run):
    result, cwd = demo_run
    assert (cwd / "geocurate.db").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    reports = list((cwd / "geocurate-data" / "reports").glob("demo-*/report.html"))
    assert len(reports) == 1
    adapters = cwd / "adapters"
    assert (adapters / "reasoning").is_dir() and (adapters / "location").is_dir()
