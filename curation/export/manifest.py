"""manifest.json: what an export is (parameters, counts, every file's sha256) and its content hash, a hash of the
parameters and the files only, so the same inputs give the same hash whenever they are built."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curation.export.placement import IMAGES_DIR, IMAGES_LISTING
from geocurate.export_format import MANIFEST, SPLITS, location_file, reasoning_file

FORMAT_VERSION = "geocurate-export/1"


def content_hash(parameters: dict[str, Any], files: dict[str, str]) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, "parameters": parameters, "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_manifest(root: Path, name: str, parameters: dict[str, Any], counts: dict[str, Any], files: dict[str, str],
                   images: str, placed: int) -> str:
    """Writes the manifest; returns the content hash."""
    digest = content_hash(parameters, files)
    manifest = {
        "format": FORMAT_VERSION, "name": name, "created_at": datetime.now(timezone.utc).isoformat(),
        "scorer_version": parameters["scorer_version"], "threshold": parameters["threshold"],
        "parameters": parameters, "counts": counts, "files": files, "content_hash": digest,
        "images": {"mode": images, "listing": IMAGES_LISTING, "count": placed},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return digest


def freeze(root: Path, images: str) -> None:
    """Exports are never modified: their files become read-only (links are left alone)."""
    paths = [root / MANIFEST, root / IMAGES_LISTING, *(location_file(root, s) for s in SPLITS), reasoning_file(root)]
    if images == "copy":
        paths += list((root / IMAGES_DIR).iterdir())
    for path in paths:
        path.chmod(0o444)
