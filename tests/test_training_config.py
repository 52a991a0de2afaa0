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


def test_the_small_preset_gives_a_dozen_examples_steps_to_learn_from(tmp_path, monkeypatch):
    from training.config import PRESETS

    monkeypatch.setenv("GEOCURATE_TRAIN_PRESET", "small")
    config = config_from_settings(reload_settings())
    default = TrainingConfig()
    # 12 examples: the defaults make ceil(12 / 2 / 8) = 1 optimiser step per epoch, 3 in all, the first warming up.
    assert default.batch_size * default.gradient_accumulation == 16 and default.epochs == 3
    assert config.batch_size * config.gradient_accumulation <= 4  # >= 3 steps per epoch on 12 examples
    assert config.epochs * (12 // (config.batch_size * config.gradient_accumulation)) >= 15
    assert config.warmup_ratio == 0 and config.learning_rate > default.learning_rate
    assert config.logging_steps == 1  # a loss curve, not one point
    assert config == TrainingConfig(**PRESETS["small"])

    path = tmp_path / "training.json"
    path.write_text(json.dumps({"epochs": 2}))
    monkeypatch.setenv("GEOCURATE_TRAINING_CONFIG", str(path))
    assert config_from_settings(reload_settings()) == config.replace(epochs=2)  # the file overrides the preset

    from training.config import preset_config

    with pytest.raises(UserError, match="unknown training preset 'huge'"):
        preset_config("huge")
