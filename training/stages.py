"""GeoReasoner's two LoRA stages on an export folder.

Stage 1, *reasoning*, trains adapter `reasoning` on clue text–image pairs. Stage 2, *location*, loads the base model,
merges the reasoning adapter into its weights (the recommended way to stack LoRA stages: the first stage becomes part
of a frozen base), and trains a new adapter `location` on the locatable geo-tagged images. Inference applies both in
the same order (training/inference.py).

Each export trains its own adapter set, `<settings.adapters_dir>/<export name>/` unless a folder is given, so a
second export never overwrites the first one's weights:

    <set>/reasoning/            adapter_model.safetensors, adapter_config.json, training_config.json, stage.json
    <set>/location/             the same
    <set>/checkpoints/<stage>/  Trainer checkpoints while a stage runs (removed when it finishes)

The run's row records the export's name, the base model and the sha256 over the stage folder's files
(training/adapters.py), which evaluation and inference check before loading.

Each stage is a training_runs row in the store of the settings the stage is given (never the process's global
settings: a caller that trains for another store gets its rows there). A stage that crashed is resumed from its last
checkpoint by the next call with the same export, adapters folder and configuration; a changed configuration starts
over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geocurate.errors import UserError
from training.adapters import ADAPTER_WEIGHTS, STAGE_INFO, adapter_digest, adapter_set_dir, export_name_of
from training.config import TrainingConfig, config_from_settings

log = logging.getLogger(__name__)

STAGES = ("reasoning", "location")
RESUME_KEY = "resume.json"


@dataclass
class StageResult:
    stage: str
    status: str  # done / skipped
    run_id: int | None = None
    adapter_path: str | None = None
    resumed_from: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # over the adapter folder's files, as recorded on the run's row


def adapter_dir(adapter_set: Path, stage: str) -> Path:
    return Path(adapter_set) / stage


def resolve_adapter_set(adapters: Path | None, export_name: str, settings) -> Path:
    """The adapter set folder to use: the one given, else the export's own under settings.adapters_dir."""
    return Path(adapters or adapter_set_dir(settings.adapters_dir, export_name)).resolve()


def has_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def checkpoint_dir(adapter_set: Path, stage: str) -> Path:
    return Path(adapter_set) / "checkpoints" / stage


def last_checkpoint(directory: Path) -> Path | None:
    checkpoints = [p for p in Path(directory).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resolve_precision(config: TrainingConfig, device) -> str:
    if config.precision != "auto":
        return config.precision
    from geocurate.device import resolve_dtype
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype("auto", device), "fp32")


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def lora_config(config: TrainingConfig, family):
    from peft import LoraConfig

    targets = list(config.target_modules)
    if not config.freeze_vision:
        targets += [t for t in family.vision_lora_targets if t not in targets]
    return LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM",
    )


def load_stage_base(base_path: str, family, dtype, device, merge_from: Path | None):
    """The base model, with an earlier stage's adapter merged into its weights when given."""
    model = family.load_model(base_path, dtype=dtype, device=device)
    if merge_from is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(merge_from)).merge_and_unload()
    return model


def resume_identity(export_dir: Path, stage: str, base_path: str, config: TrainingConfig,
                    merged: Path | None) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed rather than thrown away."""
    merged_stamp = None
    if merged is not None:
        weights = merged / ADAPTER_WEIGHTS
        merged_stamp = weights.stat().st_mtime_ns if weights.exists() else None
    return {"export": str(export_dir), "stage": stage, "base_model": base_path, "config": config.fingerprint(),
            "merged": str(merged) if merged else None, "merged_stamp": merged_stamp}


def prepare_checkpoints(directory: Path, identity: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, or None after clearing checkpoints that belong to another run."""
    marker = directory / RESUME_KEY
    if directory.exists():
        try:
            same = json.loads(marker.read_text()) == identity
        except (OSError, ValueError):
            same = False
        if same:
            return last_checkpoint(directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity, sort_keys=True))
    return None


def quarantine_rejects(rejected, session_url: str) -> None:
    if not rejected:
        return
    from db.engine import session_scope
    from db.quarantine import quarantine

    with session_scope(session_url) as session:
        for reject in rejected:
            quarantine(session, "training_example", reject.reference, reject.reason, reject.detail)
    log.warning("%d export lines left out of training (quarantined): first %s", len(rejected), rejected[0].reference)


def training_arguments(config: TrainingConfig, output_dir: Path, precision: str, device):
    import inspect

    from transformers import TrainingArguments

    extra = {}
    if config.gradient_checkpointing:  # renamed activation_checkpointing in recent transformers
        parameters = inspect.signature(TrainingArguments.__init__).parameters
        extra["activation_checkpointing" if "activation_checkpointing" in parameters else "gradient_checkpointing"] = True
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a value below 1 is a ratio of the total steps
        lr_scheduler_type=config.lr_scheduler,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )


def checkpoint_recorder(run_id: int, session_url: str):
    """A Trainer callback writing each new checkpoint's path to the run's row (where a resume will start)."""
    from transformers import TrainerCallback

    class RecordCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            from db.engine import session_scope
            from db.training import set_checkpoint

            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            with session_scope(session_url) as session:
                set_checkpoint(session, run_id, str(path))

    return RecordCheckpoint()


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    summary: dict[str, Any] = {"loss_curve": losses}
    if losses:
        summary.update(first_loss=losses[0][1], last_loss=losses[-1][1])
    evals = [entry["eval_loss"] for entry in log_history if "eval_loss" in entry]
    if evals:
        summary["val_loss"] = evals[-1]
    return summary


def train_stage(export_dir, stage: str, settings, config: TrainingConfig | None = None,
                export_id: int | None = None, adapters_dir: Path | None = None,
                callbacks: list | None = None) -> StageResult:
    """Train one stage on an export folder; returns its run id, adapter folder and metrics. The base model, device
    and the store the run is recorded in are those of `settings`. `adapters_dir` is the adapter set folder (stage
    folders inside); None means the export's own, `<settings.adapters_dir>/<export name>/`.

    `callbacks` are extra transformers TrainerCallbacks (progress reporting, tests that simulate a crash)."""
    from db import training as runs
    from db.engine import session_scope
    from training.data import load_examples
    from training.adapters import check_adapter, refuse_foreign
    from training.model_family import base_model_path

    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    url = settings.database_url
    config = config or config_from_settings(settings)
    export_dir = Path(export_dir).resolve()
    if not export_dir.is_dir():
        raise UserError(f"export folder {export_dir} does not exist")
    export_name = export_name_of(export_dir)
    adapters_dir = resolve_adapter_set(adapters_dir, export_name, settings)
    output = adapter_dir(adapters_dir, stage)
    refuse_foreign(output, export_name)  # a set folder given by hand may hold another export's adapter

    examples, rejected = load_examples(export_dir, stage, "train")
    quarantine_rejects(rejected, url)
    if not examples and stage == "reasoning":
        # An export without clue pairs is still trainable: stage 2 then starts from the plain base model.
        log.warning("export %s has no usable reasoning examples: stage 1 skipped", export_dir)
        return StageResult(stage=stage, status="skipped", metrics={"examples": 0, "rejected": len(rejected)})
    if not examples:
        raise UserError(f"no usable {stage} training examples in {export_dir} ({len(rejected)} rejected)")
    val_examples: list = []
    if stage == "location":
        val_examples, val_rejected = load_examples(export_dir, stage, "val")
        quarantine_rejects(val_rejected, url)

    merged = adapter_dir(adapters_dir, "reasoning") if stage == "location" else None
    if merged is not None and not has_adapter(merged):
        log.warning("no reasoning adapter in %s: the location stage starts from the plain base model", adapters_dir)
        merged = None
    # Never stack another export's (or a changed) reasoning stage; remember which run it was (inference checks it).
    merged_run = check_adapter(merged, export_name, url).run_id if merged is not None else None
    base_path = base_model_path(settings)
    identity = resume_identity(export_dir, stage, base_path, config, merged)
    checkpoints = checkpoint_dir(adapters_dir, stage)
    resume_from = prepare_checkpoints(checkpoints, identity)

    with session_scope(url) as session:
        if export_id is None:
            export_id = runs.export_id_for_path(session, export_dir)
        previous = runs.resumable_run(session, stage=stage, export_path=str(export_dir), adapter_path=str(output))
        if previous is not None and resume_from is not None:
            run_id = previous.id
            runs.restart_run(session, run_id, config.to_dict())
        else:
            if previous is not None:
                runs.fail_run(session, previous.id, previous.error or "superseded by a new run (no usable checkpoint)")
            run_id = runs.start_run(session, stage=stage, export_path=str(export_dir), export_id=export_id,
                                    config=config.to_dict(), adapter_path=str(output), export_name=export_name,
                                    base_model=base_path)

    try:
        result = _run_trainer(
            stage=stage, settings=settings, config=config, export_dir=export_dir, examples=examples,
            val_examples=val_examples, base_path=base_path, merged=merged, checkpoints=checkpoints,
            resume_from=resume_from, output=output, run_id=run_id, callbacks=callbacks or [], export_name=export_name,
            merged_run=merged_run,
        )
    except BaseException as exc:
        with session_scope(url) as session:
            runs.fail_run(session, run_id, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    result.metrics.update(examples=len(examples), rejected=len(rejected), reasoning_merged=merged is not None)
    result.sha256 = adapter_digest(output)
    with session_scope(url) as session:
        runs.finish_run(session, run_id, result.metrics, adapter_path=str(output), adapter_sha256=result.sha256)
    shutil.rmtree(checkpoints, ignore_errors=True)
    result.run_id = run_id
    return result


def _run_trainer(*, stage, settings, config, export_dir, examples, val_examples, base_path, merged, checkpoints,
                 resume_from, output, run_id, callbacks, export_name, merged_run) -> StageResult:
    from peft import get_peft_model
    from transformers import Trainer, set_seed

    from geocurate.device import resolve_device
    from training.data import AnswerOnlyCollator, ExampleDataset
    from training.model_family import family_for

    device = resolve_device(settings.device)
    precision = resolve_precision(config, device)
    family = family_for(base_path)
    processor = family.load_processor(base_path, config.min_pixels, config.max_pixels)
    set_seed(config.seed)
    base = load_stage_base(base_path, family, torch_dtype(precision), "cpu", merged)
    model = get_peft_model(base, lora_config(config, family))
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    trainer = Trainer(
        model=model,
        args=training_arguments(config, checkpoints, precision, device),
        train_dataset=ExampleDataset(examples, export_dir),
        eval_dataset=ExampleDataset(val_examples, export_dir) if val_examples else None,
        data_collator=AnswerOnlyCollator(processor, family, config.max_length),
        callbacks=[checkpoint_recorder(run_id, settings.database_url), *callbacks],
    )
    if resume_from is not None:
        log.info("stage %s resumes from %s", stage, resume_from)
    started_step = int(resume_from.name.split("-")[-1]) if resume_from is not None else 0
    started = time.perf_counter()
    outcome = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    seconds = time.perf_counter() - started
    steps_run = max(trainer.state.global_step - started_step, 1)
    metrics: dict[str, Any] = {
        "train_loss": outcome.training_loss, "steps": trainer.state.global_step, "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / steps_run, 4), "device": str(device), "precision": precision,
        "base_model": base_path, "family": family.name,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if val_examples:
        metrics["val_loss"] = trainer.evaluate()["eval_loss"]
    metrics.update(loss_summary(trainer.state.log_history))

    if output.exists():
        shutil.rmtree(output)
    model.save_pretrained(str(output))
    config.save(output)
    (output / STAGE_INFO).write_text(json.dumps({
        "stage": stage, "base_model": base_path, "family": family.name, "export": str(export_dir),
        "export_name": export_name, "merged_before": str(merged) if merged else None, "merged_run_id": merged_run,
        "run_id": run_id,
    }, indent=2))
    return StageResult(stage=stage, status="done", adapter_path=str(output),
                       resumed_from=str(resume_from) if resume_from else None, metrics=metrics)


def train_both(export_dir, settings, config: TrainingConfig | None = None, export_id: int | None = None,
               adapters_dir: Path | None = None, callbacks: list | None = None) -> list[StageResult]:
    """Stage 1 then stage 2 (stage 1 is skipped, with a warning, when the export has no clue pairs)."""
    return [train_stage(export_dir, stage, settings, config, export_id, adapters_dir, callbacks) for stage in STAGES]
