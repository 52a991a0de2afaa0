"""Curated, versioned export folders (format: geocurate/export_format.py) built from the store.

    params = ExportParams.from_settings(settings, "poland-v1", threshold=0.4)
    result = build_export(params, settings.database_url)

The modules, in the order an export uses them: params (the request, as values), guard (one builder per name),
selection (kept images → places → splits, near-duplicates via duplicates), placement (images/ and its listing; the
symlinks are made by the linker child process), answers (the JSONL lines), location and reasoning (the two stages'
files), manifest (file hashes and the content hash), build (the recipe).
"""

from curation.export.answers import evidence_sentence
from curation.export.build import ExportResult, build_export
from curation.export.manifest import FORMAT_VERSION
from curation.export.params import ClipSettings, ExportParams

__all__ = ["FORMAT_VERSION", "ClipSettings", "ExportParams", "ExportResult", "build_export", "evidence_sentence"]
