"""`make demo`'s job end to end on the embedded default: a fresh directory, SQLite, in-process workers, demo models."""

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_job_and_ends_with_a_summary(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOCURATE_")}
    result = subprocess.run([sys.executable, "-m", "geocurate.cli", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "demo models — scores are not meaningful" in out
    assert "geocurate demo finished" in out
    for step in ("ingest", "score", "route", "export", "train:reasoning", "train:location"):
        assert step in out
    assert (tmp_path / "geocurate.db").is_file()
    reports = list((tmp_path / "geocurate-data" / "reports").glob("demo-*/report.html"))
    assert len(reports) == 1
    adapters = tmp_path / "adapters"
    assert (adapters / "reasoning").is_dir() and (adapters / "location").is_dir()
