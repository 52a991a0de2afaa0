"""Two-stage LoRA training on a tiny random-weight Qwen2-VL (CPU, no downloads): both stages train, save adapters
that reload, the loss falls when over-fitting 8 examples, inference with both adapters returns parsed predictions,
evaluation is recorded, bad export lines are quarantined, and a crashed stage resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from db.engine import session_scope
from db.models import Quarantine, TrainingRun
from geocurate.export_format import PROMPT, location_file
from geocurate.export_format import Example
from tests.training_exports import PLACES, build_export
from training.adapters import adapter_digest
from training.config import TrainingConfig
from training.geo import geo_metrics

TINY = TrainingConfig(
    lora_rank=8, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2, batch_size=8, gradient_accumulation=1,
    max_pixels=112 * 112, min_pixels=56 * 56, precision="fp32", warmup_ratio=0.0, lr_scheduler="constant",
    max_steps=10, save_steps=1000, logging_steps=1, max_new_tokens=40, eval_batch_size=2,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from training.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("tiny-qwen2-vl") / "model")


@pytest.fixture
def demo_settings(tiny_model_dir, sqlite_store, monkeypatch, tmp_path):
    """demo_models on, with the session's tiny model linked where the settings look for it (built once), and the
    tiny training config given the way a user gives one: a JSON file named by GEOCURATE_TRAINING_CONFIG."""
    from geocurate.settings import reload_settings
    from training.demo_model import demo_model_dir

    torch.set_num_threads(2)
    monkeypatch.setenv("GEOCURATE_DEMO_MODELS", "true")
    (tmp_path / "training.json").write_text(json.dumps(TINY.to_dict()))
    monkeypatch.setenv("GEOCURATE_TRAINING_CONFIG", str(tmp_path / "training.json"))
    settings = reload_settings()
    target = demo_model_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(tiny_model_dir, target_is_directory=True)
    return settings


def runs(settings, stage: str) -> list[TrainingRun]:
    with session_scope(settings.database_url) as s:
        return list(s.scalars(select(TrainingRun).where(TrainingRun.stage == stage).order_by(TrainingRun.id)))


def test_train_and_eval_commands_run_both_stages_and_score_the_test_split(demo_settings, tmp_path):
    from peft import PeftModel

    from geocurate.cli import app
    from training.inference import predict
    from training.model_family import family_for

    export = build_export(tmp_path / "exports" / "tiny", train=8, val=2, test=4, reasoning=4)
    with open(location_file(export, "train"), "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"id": "gone", "image": "images/missing.png", "prompt": PROMPT,
                                 "answer": {"country": "Poland", "city": None, "reasons": ""}}) + "\n")
    runner = CliRunner()

    trained = runner.invoke(app, ["train", "tiny", "--stage", "both"])  # an export name under export_dir
    assert trained.exit_code == 0, trained.output
    assert "reasoning: run" in trained.output and "location: run" in trained.output

    (reasoning_run,), (location_run,) = runs(demo_settings, "reasoning"), runs(demo_settings, "location")
    assert reasoning_run.status == location_run.status == "done"
    assert location_run.metrics["reasoning_merged"] is True
    assert location_run.metrics["examples"] == 8 and location_run.metrics["rejected"] == 2
    assert location_run.config == TINY.to_dict()
    # Over-fitting 8 examples: the loss on the answer tokens falls well below where it started.
    assert location_run.metrics["last_loss"] < 0.5 * location_run.metrics["first_loss"]
    assert reasoning_run.metrics["last_loss"] < reasoning_run.metrics["first_loss"]
    with session_scope(demo_settings.database_url) as s:
        reasons = {r for (r,) in s.execute(select(Quarantine.reason).where(Quarantine.item_kind == "training_example"))}
    assert reasons == {"bad_training_example", "unreadable_image"}

    adapters = demo_settings.adapters_dir / "tiny"  # the export's own adapter set
    assert sorted(p.name for p in demo_settings.adapters_dir.iterdir()) == ["tiny"]
    for stage, run in (("reasoning", reasoning_run), ("location", location_run)):
        assert TrainingConfig.load(adapters / stage) == TINY
        info = json.loads((adapters / stage / "stage.json").read_text())
        assert (info["stage"], info["export_name"], info["run_id"]) == (stage, "tiny", run.id)
        assert run.adapter_path == str(adapters.resolve() / stage) and run.export_name == "tiny"
        assert run.adapter_sha256 == adapter_digest(adapters / stage)
        assert run.base_model == str((demo_settings.data_dir / "models" / "tiny-qwen2-vl-v1").resolve())
    assert not (adapters / "checkpoints" / "location").exists()  # removed once the stage is done

    # The reasoning adapter reloads onto the base and changes its output.
    base_path = str(demo_settings.data_dir / "models" / "tiny-qwen2-vl-v1")
    family = family_for(base_path)
    base = family.load_model(base_path, torch.float32, "cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(input_ids=ids).logits
    with_reasoning = PeftModel.from_pretrained(base, str(adapters / "reasoning"))
    assert not torch.allclose(before, with_reasoning(input_ids=ids).logits)

    evaluated = runner.invoke(app, ["eval", str(export)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "country accuracy" in evaluated.output and "within 2500 km" in evaluated.output
    (eval_run,) = runs(demo_settings, "eval")
    metrics = eval_run.metrics
    assert metrics["n"] == 4 and metrics["model"] == "base+reasoning+location"
    assert metrics["country_accuracy"] >= 0.75 and metrics["parse_failure_rate"] <= 0.25
    assert runs(demo_settings, "location")[0].metrics["test"]["n"] == 4  # attached to the run that made the adapters
    assert metrics["adapter_runs"] == {"reasoning": reasoning_run.id, "location": location_run.id}
    # The stored answers and the split's labels give back the same metrics.
    lines = [json.loads(line) for line in Path(metrics["predictions"]).read_text().splitlines()]
    labels = {e.id: e for e in (Example.from_line(line) for line in location_file(export, "test").read_text().splitlines())}
    assert sorted(line["id"] for line in lines) == sorted(labels)
    assert all(line["truth_code"] == labels[line["id"]].country_code for line in lines)
    recomputed = geo_metrics(lines)
    assert {k: metrics[k] for k in recomputed} == recomputed

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    images = [export / "images" / "test-0-PL.png", Image.open(export / "images" / "test-1-DE.png"), corrupt]
    predictions = predict(images, "tiny", demo_settings)
    assert [p.country_code for p in predictions[:2]] == [PLACES[0][0], PLACES[1][0]]
    assert predictions[0].city == "Krakow"
    assert not predictions[2].parsed and "unreadable image" in predictions[2].error and predictions[2].unreadable

    # The CLI: one JSON line per image; the corrupt one has its error and a quarantine record, and the exit is 1.
    answered = runner.invoke(app, ["predict", str(images[0]), str(corrupt), str(tmp_path / "missing.jpg"),
                                   "--export", "tiny"])
    assert answered.exit_code == 1, answered.output
    first, bad, missing = [json.loads(line) for line in answered.stdout.splitlines()]
    assert first["image"] == str(images[0]) and first["country"] == "Poland" and first["city"] == "Krakow"
    assert set(first) >= {"image", "country", "city", "reasons", "raw"} and "error" not in first
    assert "unreadable image" in bad["error"] and "missing.jpg" in missing["error"]
    with session_scope(demo_settings.database_url) as s:
        refs = set(s.scalars(select(Quarantine.reference).where(Quarantine.item_kind == "prediction_image")))
    assert refs == {str(corrupt.resolve()), str((tmp_path / "missing.jpg").resolve())}


def test_a_crashed_stage_resumes_from_its_last_checkpoint(demo_settings, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from training.stages import train_both, train_stage

    export = build_export(tmp_path / "export", train=4, val=0, test=0, reasoning=0)
    config = TINY.replace(batch_size=2, max_steps=4, save_steps=2, lora_dropout=0.1)

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):  # no clue pairs: stage 1 is skipped, stage 2 crashes at step 3
        train_both(export, demo_settings, config=config, callbacks=[Crash()])
    assert runs(demo_settings, "reasoning") == []
    (crashed,) = runs(demo_settings, "location")
    assert crashed.status == "failed" and "simulated crash" in crashed.error
    assert crashed.checkpoint_path.endswith("checkpoint-2") and Path(crashed.checkpoint_path).is_dir()

    resumed = train_stage(export, "location", demo_settings, config=config)
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.run_id == crashed.id and resumed.metrics["steps"] == 4
    assert resumed.metrics["reasoning_merged"] is False
    (row,) = runs(demo_settings, "location")
    assert row.status == "done" and row.error is None

    # The resumed run ends where an uninterrupted one does: same data order, RNG and optimiser state.
    straight = train_stage(export, "location", demo_settings, config=config, adapters_dir=tmp_path / "straight")
    assert straight.resumed_from is None and straight.run_id != crashed.id
    resumed_weights = load_file(Path(resumed.adapter_path) / "adapter_model.safetensors")
    straight_weights = load_file(Path(straight.adapter_path) / "adapter_model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for key in resumed_weights:
        torch.testing.assert_close(resumed_weights[key], straight_weights[key], rtol=1e-4, atol=1e-5)


def test_the_base_model_alone_is_evaluated_and_garbage_answers_never_break_the_batch(demo_settings, tmp_path):
    from training.evaluate import evaluate_export
    from training.inference import predict

    export = build_export(tmp_path / "export", train=0, val=0, test=3, reasoning=0)
    metrics = evaluate_export(export, base_only=True, settings=demo_settings)
    assert metrics["n"] == 3 and metrics["model"] == "base"
    assert metrics["parse_failure_rate"] == 1.0  # random weights write noise, recorded as unparsed
    assert metrics["mean_geoguessr"] < 1 and metrics["median_km"] > 20000
    assert all(f["error"] for f in metrics["failures"])
    (row,) = runs(demo_settings, "eval")
    assert row.status == "done" and row.metrics["n"] == 3

    from geocurate.errors import UserError

    with pytest.raises(UserError, match="no trained adapters for export 'export'"):
        predict([export / "images" / "test-0-PL.png"], "export", demo_settings)


def test_labels_cover_the_answer_tokens_only(tiny_model_dir, tmp_path):
    from training.data import IGNORE_INDEX, AnswerOnlyCollator, ExampleDataset, load_examples
    from training.model_family import family_for

    export = build_export(tmp_path / "export", train=2, val=0, test=0, reasoning=2)
    family = family_for(str(tiny_model_dir))
    processor = family.load_processor(str(tiny_model_dir), 56 * 56, 112 * 112)
    examples, rejected = load_examples(export, "reasoning")
    assert len(examples) == 2 and not rejected
    dataset = ExampleDataset(examples, export)
    batch = AnswerOnlyCollator(processor, family, max_length=2048)([dataset[0], dataset[1]])
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        answer_ids = labels[labels != IGNORE_INDEX]
        assert processor.tokenizer.decode(answer_ids) == example.answer.to_json() + "<|im_end|>\n"
        # Everything before the answer is masked, and padding (right side) carries no loss either.
        real = batch["attention_mask"][row].bool()
        assert (labels[~real] == IGNORE_INDEX).all()
        assert int((batch["input_ids"][row] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) > 0
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())


def test_the_vision_tower_gets_lora_only_when_unfrozen(tiny_model_dir):
    from peft import get_peft_model

    from training.model_family import family_for
    from training.stages import lora_config

    family = family_for(str(tiny_model_dir))
    for freeze, expect_vision in ((True, False), (False, True)):
        model = get_peft_model(family.load_model(str(tiny_model_dir), torch.float32, "cpu"),
                               lora_config(TINY.replace(freeze_vision=freeze), family))
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in name for name in trainable)
        assert any(family.is_vision_parameter(name) for name in trainable) is expect_vision
        assert any("language_model" in name for name in trainable)


def test_the_demo_model_is_deterministic(tiny_model_dir, tmp_path):
    from training.demo_model import build_demo_model

    again = build_demo_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
