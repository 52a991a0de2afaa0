"""Which export an adapter folder belongs to, and proof that it is the folder its training run wrote.

Every export trains its own adapter set, `<adapters_dir>/<export name>/<stage>/`, so training a second export never
overwrites the first one's weights. A stage folder carries `stage.json` (export, run id, base model) and its run's
row in the store records the sha256 over the folder's files. Evaluation and inference check both before loading:
a folder trained for another export, or changed after its run (overwritten, half copied, retrained elsewhere), is
refused with one line that says whose it is and what to do, instead of silently scoring the wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geocurate.errors import UserError
from geocurate.export_format import MANIFEST

ADAPTER_WEIGHTS = "adapter_model.safetensors"
STAGE_INFO = "stage.json"
CHUNK = 1 << 20


class AdapterMismatch(UserError):
    """An adapter folder that belongs to another export or no longer matches its training run."""


@dataclass
class AdapterCheck:
    path: Path
    stage: str
    run_id: int
    export_name: str
    sha256: str
    base_model: str | None


def export_name_of(export_dir: Path) -> str:
    """The export's name as its manifest states it (a copied or renamed folder keeps it), else the folder's name."""
    try:
        name = json.loads((Path(export_dir) / MANIFEST).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name) if name else Path(export_dir).name


def adapter_set_dir(adapters_dir: Path, export_name: str) -> Path:
    """The default adapter set of an export: one folder per export, with a folder per stage inside."""
    if not export_name or "/" in export_name or export_name in (".", ".."):
        raise UserError(f"export name {export_name!r} cannot name an adapters folder")
    return Path(adapters_dir) / export_name


def adapter_digest(folder: Path) -> str:
    """sha256 over every file of the folder, in sorted relative-path order, names included (a renamed or missing
    file changes it, as a changed byte does)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def read_stage_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((Path(folder) / STAGE_INFO).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterMismatch(f"{folder} has no readable {STAGE_INFO} ({exc}): it was not written by "
                              f"`geocurate train`; train the export again") from None
    if not isinstance(info, dict):
        raise AdapterMismatch(f"{folder}/{STAGE_INFO} is not a JSON object: train the export again")
    return info


def check_stacking(checks: list[AdapterCheck]) -> None:
    """A stage trained on top of an earlier one (location on reasoning) is only right with that very run merged
    first: refuse a set whose reasoning was retrained, added or removed after its location stage."""
    for earlier, later in zip(checks, checks[1:]):
        merged = read_stage_info(later.path).get("merged_run_id", earlier.run_id)
        if merged != earlier.run_id:
            raise AdapterMismatch(
                f"{later.path} (training run {later.run_id}) was trained on {earlier.stage} run {merged}, but "
                f"{earlier.path} is run {earlier.run_id}: train {later.stage} again "
                f"(`geocurate train {later.export_name} --stage {later.stage}`)")
    if len(checks) == 1 and read_stage_info(checks[0].path).get("merged_run_id") is not None:
        only = checks[0]
        raise AdapterMismatch(
            f"{only.path} (training run {only.run_id}) was trained on a reasoning adapter that is not in its set "
            f"any more: put it back or train again (`geocurate train {only.export_name}`)")


def refuse_foreign(folder: Path, export_name: str) -> None:
    """Refuse to train into a stage folder that holds another export's adapter (it would be overwritten)."""
    if not (Path(folder) / STAGE_INFO).is_file():
        return
    info = read_stage_info(folder)
    owner = info.get("export_name") or Path(str(info.get("export", ""))).name
    if owner != export_name:
        raise AdapterMismatch(
            f"{folder} holds export {owner!r}'s adapter (training run {info.get('run_id')}): training "
            f"{export_name!r} there would overwrite it; leave out --adapters (each export gets its own set) or name "
            f"an empty folder")


def check_adapter(folder: Path, export_name: str, database_url: str) -> AdapterCheck:
    """The adapter folder's run, after checking that it was trained for `export_name` and that its files are the
    ones that run recorded. Raises AdapterMismatch (one line: whose folder it is, how to fix) otherwise."""
    from db.engine import session_scope
    from db.training import get_run

    folder = Path(folder)
    info = read_stage_info(folder)
    owner, run_id = info.get("export_name") or Path(str(info.get("export", ""))).name, info.get("run_id")
    retrain = f"train it (`geocurate train {export_name}`)"
    if owner != export_name:
        raise AdapterMismatch(
            f"{folder} belongs to export {owner!r} (training run {run_id}), not {export_name!r}: "
            f"evaluate it with that export, or use {export_name!r}'s own adapters (--adapters) or {retrain}")
    with session_scope(database_url) as session:
        run = get_run(session, int(run_id)) if isinstance(run_id, int) else None
        if run is None:
            raise AdapterMismatch(f"{folder} names training run {run_id!r}, which this store does not have: "
                                  f"use the store it was trained with, or {retrain}")
        recorded = dict(status=run.status, export_name=run.export_name, sha256=run.adapter_sha256,
                        base_model=run.base_model, stage=run.stage)
    if recorded["export_name"] != export_name or recorded["stage"] != info.get("stage"):
        raise AdapterMismatch(
            f"{folder} names training run {run_id}, which trained {recorded['stage']} for export "
            f"{recorded['export_name']!r}, not this folder's {info.get('stage')} for {export_name!r}: {retrain}")
    if recorded["status"] != "done" or not recorded["sha256"]:
        raise AdapterMismatch(f"training run {run_id} that wrote {folder} did not finish ({recorded['status']}): "
                              f"{retrain}")
    actual = adapter_digest(folder)
    if actual != recorded["sha256"]:
        raise AdapterMismatch(
            f"{folder} does not match training run {run_id} of export {export_name!r} (sha256 {actual[:12]} on disk, "
            f"{recorded['sha256'][:12]} recorded): the files changed after the run; {retrain}")
    return AdapterCheck(path=folder, stage=str(info.get("stage")), run_id=int(run_id), export_name=export_name,
                        sha256=actual, base_model=recorded["base_model"])
