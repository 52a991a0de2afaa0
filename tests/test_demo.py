"""`make demo`'s job end to end on the embedded default: a fresh directory, SQLite, in-process workers, demo models.

One demo run per module (it takes half a minute); each test checks one part of what it left. The tests share an
xdist group, so the run happens once even under `pytest -n`."""

import json
import os
import re
import sqlite3
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
    env["COLUMNS"] = "200"  # the summary's cells on one line each
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
    (adapters,) = (cwd / "adapters").glob("demo-*")  # the export's own adapter set
    assert (adapters / "reasoning").is_dir() and (adapters / "location").is_dir()
    assert adapters.name == reports[0].parent.name  # named after the export


def test_demo_trains_with_the_small_preset_and_the_loss_falls(demo_run):
    result, cwd = demo_run
    assert "training preset small" in result.stdout
    with sqlite3.connect(cwd / "geocurate.db") as db:
        rows = db.execute("SELECT stage, metrics, adapter_sha256, config FROM training_runs "
                          "WHERE stage IN ('reasoning', 'location') ORDER BY id").fetchall()
    assert [stage for stage, *_ in rows] == ["reasoning", "location"]
    for stage, metrics, sha256, config in rows:
        metrics, config = json.loads(metrics), json.loads(config)
        assert config["warmup_ratio"] == 0 and config["logging_steps"] == 1
        assert metrics["steps"] >= 12 and len(metrics["loss_curve"]) == metrics["steps"]
        # The summary shows the same fall the run recorded (the defaults showed "loss 7.47 -> 7.47").
        assert metrics["last_loss"] < 0.85 * metrics["first_loss"], (stage, metrics["loss_curve"])
        shown = re.search(rf"training {stage}\s*│\s*done, loss (\d+\.\d+) -> (\d+\.\d+) in (\d+) steps",
                          result.stdout)
        assert shown, result.stdout[-3000:]
        assert float(shown[1]) == pytest.approx(metrics["first_loss"], abs=0.0051)
        assert float(shown[2]) == pytest.approx(metrics["last_loss"], abs=0.0051)
        assert int(shown[3]) == metrics["steps"]
        assert len(sha256) == 64
