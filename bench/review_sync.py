"""Review sync throughput against a real Label Studio: `push_tasks` (chunked imports with inline predictions) and
`pull_annotations` (paged task listings with annotations inline, one store transaction per task) against the
naive client a first version would write (one request per task to create it, one more for its prediction, one
per task to read its annotations), both measured in this run on the same server.

    .venv/bin/python bench/review_sync.py [--tasks 1000] [--baseline-tasks 100]

Needs `.venv-ls` (make install-ls). Prints tasks/s of each path and the ratio; the issue's target is 1,000 tasks
pushed and pulled in under 60 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from db.engine import dispose_all, session_scope  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Annotation, ReviewTask  # noqa: E402
from geocurate.settings import reload_settings  # noqa: E402
from labeling.client import make_client  # noqa: E402
from labeling.configs import IMAGE_REVIEW  # noqa: E402
from labeling.pull import pull_annotations  # noqa: E402
from labeling.push import image_tasks, push_tasks  # noqa: E402
from tests.labeling_seed import route, seed_images  # noqa: E402
from tests.labelstudio_server import reset, start_server, stop_server  # noqa: E402


def annotate_all(client, task_ids: list[int]) -> None:
    """Annotations as many annotators would leave them: bulk where the server offers it, else one by one."""
    halves = [(task_ids[::2], "locatable"), (task_ids[1::2], "unusable")]
    try:
        for ids, label in halves:
            if ids:
                client.annotations.create_bulk(tasks=ids, result=[IMAGE_REVIEW.choice_result(label)], lead_time=5.0)
    except Exception:  # noqa: BLE001 - the community edition may lack the bulk endpoint
        for ids, label in halves:
            for task_id in ids:
                client.annotations.create(id=task_id, result=[IMAGE_REVIEW.choice_result(label)], lead_time=5.0)


def naive_sync(url: str, n: int) -> tuple[float, float]:
    """Baseline: per-task requests for push and pull, on `n` tasks of the same store. Returns (push s, pull s)."""
    from db.review import unpushed
    from geocurate.settings import get_settings

    client = make_client(get_settings())
    project = client.projects.create(title="geocurate bench: naive", label_config=IMAGE_REVIEW.xml)

    with session_scope(url) as session:
        rows = unpushed(session, "image", n)
        tasks, _ = image_tasks(session, rows, get_settings())
    start = time.perf_counter()
    created = []
    for task in tasks:
        made = client.tasks.create(data=task["data"], project=project.id)
        prediction = task["predictions"][0]
        client.predictions.create(task=made.id, result=prediction["result"], score=prediction["score"],
                                  model_version=prediction["model_version"])
        created.append(made.id)
    push_s = time.perf_counter() - start
    annotate_all(client, created)
    start = time.perf_counter()
    for task_id in created:
        client.annotations.list(id=task_id)
    pull_s = time.perf_counter() - start
    return push_s, pull_s  # the project stays: Label Studio on SQLite would reuse its ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--baseline-tasks", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="geocurate-bench-") as tmp:
        base = Path(tmp)
        server = start_server(base)
        try:
            reset(server)
            url = f"sqlite:///{base / 'store.db'}"
            upgrade(url)
            os.environ.update({
                "GEOCURATE_DATABASE_URL": url, "GEOCURATE_LABEL_STUDIO_URL": server.url,
                "GEOCURATE_LABEL_STUDIO_API_KEY": server.token,
                "GEOCURATE_LABEL_STUDIO_IMAGE_ROOT": str(server.image_root),
            })
            settings = reload_settings()
            spread = [0.3 + 0.2 * (i + 0.5) / args.tasks for i in range(args.tasks)]  # all inside the band
            seed_images(url, server.image_root / "streets", spread)
            route(url)

            naive_push_s, naive_pull_s = naive_sync(url, args.baseline_tasks)

            start = time.perf_counter()
            pushed = push_tasks(url, settings=settings)
            push_s = time.perf_counter() - start
            with session_scope(url) as session:
                ids = list(session.scalars(select(ReviewTask.ls_task_id).where(ReviewTask.ls_task_id.is_not(None))))
            annotate_all(make_client(settings), ids)
            start = time.perf_counter()
            pulled = pull_annotations(url, settings=settings)
            pull_s = time.perf_counter() - start
            start = time.perf_counter()
            steady = pull_annotations(url, settings=settings)  # the periodic sync when nothing changed
            steady_s = time.perf_counter() - start
            with session_scope(url) as session:
                stored = session.scalar(select(func.count()).select_from(Annotation))
            assert pushed.created == args.tasks and pulled.tasks == args.tasks and stored == args.tasks, (
                pushed, pulled, stored)
        finally:
            dispose_all()
            stop_server(server)

    n, b = args.tasks, args.baseline_tasks
    print(f"push: {n} tasks in {push_s:.2f}s = {n / push_s:.0f} tasks/s; "
          f"naive per-task push: {b / naive_push_s:.1f} tasks/s; ratio {(n / push_s) / (b / naive_push_s):.1f}x")
    print(f"pull: {n} tasks in {pull_s:.2f}s = {n / pull_s:.0f} tasks/s; "
          f"naive per-task pull: {b / naive_pull_s:.1f} tasks/s; ratio {(n / pull_s) / (b / naive_pull_s):.1f}x")
    print(f"steady-state pull (nothing changed, {steady.unchanged} tasks skipped): {steady_s:.2f}s = "
          f"{n / steady_s:.0f} tasks/s")
    print(f"push + pull of {n} tasks: {push_s + pull_s:.1f}s (target < 60 s)")


if __name__ == "__main__":
    main()
