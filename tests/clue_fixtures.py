"""One gazetteer per test session (building it takes seconds; every test then reuses the same pipeline)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gazetteer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gazetteer-cache")


@pytest.fixture(scope="session")
def gazetteer(gazetteer_dir: Path):
    from curation.clues.gazetteer import get_gazetteer
    from geocurate.settings import Settings

    # the process-wide gazetteer: commands run in tests get it from get_gazetteer(settings) instead of rebuilding it
    return get_gazetteer(Settings(data_dir=gazetteer_dir, spacy_model=None))
