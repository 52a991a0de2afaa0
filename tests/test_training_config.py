"""The typed training config: defaults, JSON round trip next to an adapter, partial overrides from the settings'
file, and a clear error for unknown keys."""

import json

import pytest

from geocurate.errors import UserError
from geocurate.settings import reload_settings
from training.config import LANGUAGE_LORA_TARGETS, TrainingConfig, config_from_settings


def test_defaults_follow_the_paper_recipe_and_round_trip(tmp_path):
    config = TrainingConfig()
    assert (config.lora_rank, config.lora_alpha, config.freeze_vision) == (64, 16, True)
    assert config.target_modules == LANGUAGE_LORA_TARGETS
    config.save(tmp_path)
    assert TrainingConfig.load(tmp_path) == config
    assert config.replace(lora_rank=8).fingerprint() != config.fingerprint()


def test_settings_file_overrides_some_knobs(tmp_path, monkeypatch):
    path = tmp_path / "training.json"
    path.write_text(json.dumps({"lora_rank": 16, "epochs": 1}))
    monkeypatch.setenv("GEOCURATE_TRAINING_CONFIG", str(path))
    config = config_from_settings(reload_settings())
    assert (config.lora_rank, config.epochs, config.lora_alpha) == (16, 1, 16)

    path.write_text(json.dumps({"lora_rnk": 16}))
    with pytest.raises(UserError, match="lora_rnk"):
        config_from_settings(reload_settings())
