"""Training through the pipeline: `submit_training` runs stage 1 (reasoning), then stage 2 (location), in order."""

from sqlalchemy import select

from db.engine import session_scope
from db.models import Export, Run, TrainingRun
from tests.training_exports import build_export


def test_submit_training_runs_reasoning_then_location(sqlite_store, tmp_path, monkeypatch):
    from geocurate.settings import reload_settings
    from workers.pipeline import submit_training

    monkeypatch.setenv("GEOCURATE_DEMO_MODELS", "true")
    settings = reload_settings()
    export_dir = build_export(tmp_path / "tiny-export", train=4, val=1, test=2, reasoning=4)
    with session_scope(sqlite_store) as session:
        session.add(Export(name="tiny", threshold=0.4, params={}, path=str(export_dir), status="done"))

    run_id = submit_training("tiny", settings=settings)

    with session_scope(sqlite_store) as session:
        run = session.get(Run, run_id)
        stages = session.execute(select(TrainingRun.stage, TrainingRun.status).order_by(TrainingRun.id)).all()
    assert (run.status, run.step) == ("done", "done")
    assert [tuple(row) for row in stages] == [("reasoning", "done"), ("location", "done")]
