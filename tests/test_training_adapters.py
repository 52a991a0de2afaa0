"""One adapter set per export: training v2 leaves v1's adapters untouched, each run records the sha256 of the files it
wrote, and eval / predict / stage 2 refuse a folder that belongs to another export or changed after its run (exit 1,
one line naming the folder's export and run)."""

from __future__ import annotations

import json
import shutil

from sqlalchemy import select
from typer.testing import CliRunner

from db.engine import session_scope
from db.models import TrainingRun
from tests.test_training import TINY, demo_settings, tiny_model_dir  # noqa: F401 - fixtures
from tests.training_exports import build_export
from training.adapters import adapter_digest, export_name_of

QUICK = TINY.replace(max_steps=2, batch_size=4)


def test_the_digest_covers_every_byte_and_name_but_not_the_folder_path(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "adapter_model.safetensors").write_bytes(b"\x00weights")
    (a / "adapter_config.json").write_text("{}")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert adapter_digest(a) == adapter_digest(b)  # a copied set still matches its run
    (b / "adapter_config.json").write_text("{} ")
    assert adapter_digest(a) != adapter_digest(b)
    (b / "adapter_config.json").write_text("{}")
    (b / "adapter_config.json").rename(b / "other.json")
    assert adapter_digest(a) != adapter_digest(b)


def test_the_export_name_comes_from_the_manifest(tmp_path):
    export = build_export(tmp_path / "copied-folder", train=1, val=0, test=0, reasoning=0)
    (export / "manifest.json").write_text(json.dumps({"name": "poland-v1"}))
    assert export_name_of(export) == "poland-v1"
    (export / "manifest.json").unlink()
    assert export_name_of(export) == "copied-folder"


def location_run(settings, name: str) -> TrainingRun:
    with session_scope(settings.database_url) as s:
        return s.scalars(select(TrainingRun).where(TrainingRun.stage == "location", TrainingRun.export_name == name)
                         .order_by(TrainingRun.id.desc())).first()


def test_each_export_trains_its_own_set_and_eval_predict_refuse_another_exports(demo_settings, tmp_path):
    from geocurate.cli import app
    from training.stages import train_both, train_stage

    exports = tmp_path / "exports"
    v1 = build_export(exports / "v1", train=4, val=0, test=2, reasoning=2)
    v2 = build_export(exports / "v2", train=4, val=0, test=2, reasoning=0)
    root = demo_settings.adapters_dir

    first = train_both(v1, demo_settings, config=QUICK)
    v1_digests = {r.stage: adapter_digest(root / "v1" / r.stage) for r in first}
    second = train_both(v2, demo_settings, config=QUICK.replace(seed=7))
    assert [r.status for r in first] == ["done", "done"] and [r.status for r in second] == ["skipped", "done"]
    assert {r.stage: r.adapter_path for r in first} == {s: str((root / "v1" / s).resolve()) for s in v1_digests}
    assert second[1].adapter_path == str((root / "v2" / "location").resolve())
    # v2's training left v1's files as v1's runs recorded them.
    assert {s: adapter_digest(root / "v1" / s) for s in v1_digests} == v1_digests
    assert {r.stage: r.sha256 for r in first} == v1_digests
    assert location_run(demo_settings, "v1").adapter_sha256 == v1_digests["location"]
    assert location_run(demo_settings, "v2").adapter_sha256 == adapter_digest(root / "v2" / "location")
    assert v1_digests["location"] != location_run(demo_settings, "v2").adapter_sha256

    runner = CliRunner()
    evaluated = runner.invoke(app, ["eval", "v1", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["adapter_runs"] == {"reasoning": first[0].run_id, "location": first[1].run_id}
    assert location_run(demo_settings, "v1").metrics["test"]["run_id"] == metrics["run_id"]
    assert "test" not in location_run(demo_settings, "v2").metrics

    wrong = runner.invoke(app, ["eval", "v1", "--adapters", str(root / "v2")])
    assert wrong.exit_code == 1
    assert "belongs to export 'v2'" in wrong.output and f"training run {second[1].run_id}" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1

    predicted = runner.invoke(app, ["predict", str(v1 / "images" / "test-0-PL.png"), "--export", "v2",
                                    "--adapters", str(root / "v1")])
    assert predicted.exit_code == 1 and "belongs to export 'v1'" in predicted.output and predicted.stdout == ""

    # A copy of v1's set is still v1's; once a file in it changes, it no longer matches v1's run.
    copy = tmp_path / "copy-of-v1"
    shutil.copytree(root / "v1", copy)
    assert runner.invoke(app, ["predict", str(v1 / "images" / "test-0-PL.png"), "--export", "v1",
                               "--adapters", str(copy)]).exit_code == 0
    with open(copy / "location" / "adapter_model.safetensors", "ab") as handle:
        handle.write(b"\0")
    changed = runner.invoke(app, ["eval", "v1", "--adapters", str(copy)])
    assert changed.exit_code == 1
    assert f"does not match training run {first[1].run_id} of export 'v1'" in changed.output

    # Stage 2 never stacks on another export's reasoning adapter.
    refused = runner.invoke(app, ["train", "v2", "--stage", "location", "--adapters", str(root / "v1")])
    assert refused.exit_code == 1 and "export 'v1'" in refused.output and "overwrite" in refused.output
    assert {s: adapter_digest(root / "v1" / s) for s in v1_digests} == v1_digests
    assert train_stage(v2, "location", demo_settings, config=QUICK).status == "done"  # its own set still trains

    # Retraining stage 1 alone leaves a stage 2 that was trained on the old stage 1: refused until it is retrained.
    retrained = train_stage(v1, "reasoning", demo_settings, config=QUICK.replace(seed=3))
    stale = runner.invoke(app, ["eval", "v1"])
    assert stale.exit_code == 1
    assert (f"was trained on reasoning run {first[0].run_id}, but" in stale.output
            and f"is run {retrained.run_id}" in stale.output and "--stage location" in stale.output)
    again = train_stage(v1, "location", demo_settings, config=QUICK)
    assert json.loads((root / "v1" / "location" / "stage.json").read_text())["merged_run_id"] == retrained.run_id
    assert runner.invoke(app, ["eval", "v1"]).exit_code == 0
    assert location_run(demo_settings, "v1").id == again.run_id
