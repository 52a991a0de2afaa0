"""The README's configuration table is generated from the settings class and must not drift from it."""

from pathlib import Path

from geocurate.cli.config_docs import BEGIN, END, readme_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_current():
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == readme_block(), "run: python -m geocurate.cli.config_docs --write"


def test_settings_read_environment_and_toml(tmp_path, monkeypatch):
    from geocurate.settings import reload_settings

    (tmp_path / "geocurate.toml").write_text('threshold = 0.25\nbatch_size = 7\n')
    monkeypatch.setenv("GEOCURATE_BATCH_SIZE", "9")
    settings = reload_settings()
    assert settings.threshold == 0.25  # from the toml file
    assert settings.batch_size == 9  # the environment wins over the file
