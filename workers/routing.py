"""Which queue each task goes to, by machine role: scoring and training need a GPU machine, the rest is I/O work
that any machine can do. docker-compose.yml's workers subscribe to these queues (a test checks it)."""

GPU_QUEUES = ("score", "train")
IO_QUEUES = ("ingest", "review", "export")
QUEUES = GPU_QUEUES + IO_QUEUES

TASK_ROUTES = {
    "workers.tasks.ingest_batch": {"queue": "ingest"},
    "workers.tasks.score_batch": {"queue": "score"},
    "workers.tasks.route_for_review": {"queue": "review"},
    "workers.tasks.sync_annotations": {"queue": "review"},
    "workers.tasks.build_export": {"queue": "export"},
    "workers.tasks.train_stage": {"queue": "train"},
    "workers.tasks.reconcile": {"queue": "ingest"},
}
