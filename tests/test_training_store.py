"""training_runs rows on SQLite and PostgreSQL: a run is started, records its checkpoint, fails, is found again to
resume, finishes with metrics, and gets evaluation metrics attached without losing its own."""

from db import training as runs
from db.engine import session_scope
from db.models import Export


def test_a_run_is_tracked_from_start_to_resume_to_done(store_url, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    adapter = str(tmp_path / "adapters" / "location")
    with session_scope(store_url) as s:
        s.add(Export(name="tiny", threshold=0.4, params={}, path=str(export), status="done"))
    with session_scope(store_url) as s:
        export_id = runs.export_id_for_path(s, export)
        assert export_id is not None
        assert runs.export_id_for_path(s, tmp_path / "elsewhere") is None
        run_id = runs.start_run(s, stage="location", export_path=str(export), export_id=export_id,
                                config={"lora_rank": 8}, adapter_path=adapter, export_name="tiny",
                                base_model="/models/qwen2-vl-2b")
    with session_scope(store_url) as s:
        runs.set_checkpoint(s, run_id, "/ckpt/checkpoint-2")
        runs.fail_run(s, run_id, "KeyboardInterrupt: simulated")
    with session_scope(store_url) as s:
        found = runs.resumable_run(s, stage="location", export_path=str(export), adapter_path=adapter)
        assert found.id == run_id and found.checkpoint_path == "/ckpt/checkpoint-2" and found.status == "failed"
        assert runs.resumable_run(s, stage="reasoning", export_path=str(export), adapter_path=adapter) is None
        runs.restart_run(s, run_id, {"lora_rank": 8})
    with session_scope(store_url) as s:
        assert runs.get_run(s, run_id).status == "running" and runs.get_run(s, run_id).error is None
        runs.finish_run(s, run_id, {"steps": 4, "last_loss": 0.1}, adapter_sha256="ab" * 32)
    with session_scope(store_url) as s:
        assert runs.resumable_run(s, stage="location", export_path=str(export), adapter_path=adapter) is None
        done = runs.latest_done_run(s, stage="location", adapter_path=adapter)
        assert done.id == run_id and done.finished_at is not None and done.export_id == export_id
        assert (done.export_name, done.base_model, done.adapter_sha256) == ("tiny", "/models/qwen2-vl-2b", "ab" * 32)
        assert runs.latest_done_run(s, stage="location", export_name="tiny").id == run_id
        assert runs.latest_done_run(s, stage="location", export_name="tiny-v2") is None
        runs.add_metrics(s, run_id, "test", {"country_accuracy": 0.5})
    with session_scope(store_url) as s:
        assert runs.get_run(s, run_id).metrics == {"steps": 4, "last_loss": 0.1, "test": {"country_accuracy": 0.5}}
