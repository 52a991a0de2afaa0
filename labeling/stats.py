"""Review statistics per project: how much is left, how well annotators agree, how long a task takes.

Agreement is computed on tasks that several annotators answered: Cohen's kappa when exactly two people labeled
every such task (the classic two-rater case), Fleiss' kappa otherwise (any number of raters, same count per task;
tasks with a different count than the most common one are left out). Kappa is undefined with fewer than two such
tasks or when everyone always chose the same label.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from db.review import annotations_by_task, state_counts
from labeling.configs import INTERFACES


@dataclass
class ProjectStats:
    kind: str
    project_title: str
    states: dict[str, int] = field(default_factory=dict)
    annotations: int = 0
    multi_annotated_tasks: int = 0
    kappa: float | None = None
    kappa_kind: str | None = None  # "cohen" / "fleiss"
    mean_seconds_per_task: float | None = None
    median_seconds_per_annotation: float | None = None


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    if len(pairs) < 2:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[label] * second[label] for label in set(first) | set(second)) / (n * n)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa over items that each carry the same number (≥ 2) of labels."""
    if len(items) < 2:
        return None
    raters = len(items[0])
    if raters < 2 or any(len(item) != raters for item in items):
        return None
    n_items = len(items)
    totals: Counter[str] = Counter()
    agreement = 0.0
    for item in items:
        counts = Counter(item)
        totals.update(counts)
        agreement += (sum(c * c for c in counts.values()) - raters) / (raters * (raters - 1))
    p_bar = agreement / n_items
    p_e = sum((c / (n_items * raters)) ** 2 for c in totals.values())
    return None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


def agreement(tasks: Sequence[Sequence[tuple[str, str]]]) -> tuple[float | None, str | None, int]:
    """(kappa, which kappa, tasks used) from each task's (annotator, label) answers."""
    multi = [task for task in tasks if len(task) >= 2]
    if not multi:
        return None, None, 0
    annotators = {who for task in multi for who, _ in task}
    if len(annotators) == 2 and all(len(task) == 2 and len({who for who, _ in task}) == 2 for task in multi):
        first, second = sorted(annotators)
        pairs = [(dict(task)[first], dict(task)[second]) for task in multi]
        return cohen_kappa(pairs), "cohen", len(multi)
    common = Counter(len(task) for task in multi).most_common(1)[0][0]
    used = [[label for _, label in task] for task in multi if len(task) == common]
    return fleiss_kappa(used), "fleiss", len(used)


def review_stats(session: Session, project_prefix: str) -> list[ProjectStats]:
    """Per review project (titled after settings.review_project_prefix): task states, annotations, agreement and
    annotation time."""
    counts = state_counts(session)
    result = []
    for kind, interface in INTERFACES.items():
        stats = ProjectStats(kind=kind, project_title=interface.project_title(project_prefix),
                             states=counts.get(kind, {}))
        grouped = annotations_by_task(session, kind)
        answers = [[(a.annotator or f"annotation {a.ls_annotation_id}", a.label) for a in annotations if a.label]
                   for annotations in grouped.values()]
        stats.annotations = sum(len(annotations) for annotations in grouped.values())
        stats.kappa, stats.kappa_kind, stats.multi_annotated_tasks = agreement(answers)
        per_task = [sum(a.lead_time for a in annotations if a.lead_time) for annotations in grouped.values()]
        per_task = [seconds for seconds in per_task if seconds]
        per_annotation = [a.lead_time for annotations in grouped.values() for a in annotations if a.lead_time]
        stats.mean_seconds_per_task = statistics.fmean(per_task) if per_task else None
        stats.median_seconds_per_annotation = statistics.median(per_annotation) if per_annotation else None
        result.append(stats)
    return result
