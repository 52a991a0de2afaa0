"""Real loading paths: a saved open_clip folder, a SAM checkpoint file and a transformers folder load through the
settings, exactly as a user's real weights would, and give the scores of the models that were saved."""

import json

import pytest
import torch
from safetensors.torch import save_file

from curation.clip import TINY_CLIP_CONFIG, build_clip
from curation.demo_models import build_tiny_sam, build_tiny_segformer
from curation.scoring import Scorer
from geocurate.errors import UserError
from geocurate.settings import Settings
from tests.scoring_images import street_image

FAST = dict(sam_points_per_side=4, score_dtype="float32")


def save_open_clip_folder(folder):
    clip = build_clip("unused", None, demo=True, dtype="float32")
    folder.mkdir()
    model_cfg = json.loads(TINY_CLIP_CONFIG.read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, folder / "open_clip_model.safetensors")


def save_tiny_segformer(directory):
    """The tiny SegFormer as a transformers folder: what `maskformer_model=/path` loads."""
    model, processor = build_tiny_segformer()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_saved_clip_and_sam_checkpoints_load_through_settings(tmp_path):
    save_open_clip_folder(tmp_path / "clip")
    torch.save(build_tiny_sam().state_dict(), tmp_path / "sam_tiny.pth")
    real = Settings(**FAST, clip_model=f"local-dir:{tmp_path / 'clip'}", clip_pretrained=None, sam_model_type="tiny",
                    sam_checkpoint=tmp_path / "sam_tiny.pth", sam_pred_iou_thresh=0, sam_stability_score_thresh=0)
    loaded = Scorer.from_settings(real)
    demo = Scorer.from_settings(Settings(**FAST, demo_models=True))
    assert loaded.params["sam"].startswith("tiny:sha256=")
    assert "clip_weights" in loaded.params
    assert loaded.version != demo.version
    images = [street_image(seed) for seed in range(2)]
    assert [r.class_ratios for r in loaded.score(images)] == [r.class_ratios for r in demo.score(images)]


def test_saved_segmentation_model_loads_through_settings(tmp_path):
    folder = save_tiny_segformer(tmp_path / "segformer")
    loaded = Scorer.from_settings(Settings(**FAST, segmenter="maskformer", maskformer_model=str(folder)))
    demo = Scorer.from_settings(Settings(**FAST, segmenter="maskformer", demo_models=True))
    assert loaded.params["model"].startswith("local:segformer:sha256=")
    images = [street_image(seed) for seed in range(2)]
    assert [r.class_ratios for r in loaded.score(images)] == [r.class_ratios for r in demo.score(images)]


def test_missing_models_say_what_to_set(tmp_path):
    with pytest.raises(UserError, match="GEOCURATE_SAM_CHECKPOINT"):
        Scorer.from_settings(Settings(**FAST, clip_pretrained=None, sam_checkpoint=tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="unknown SAM model type 'vit_q'"):
        Scorer.from_settings(Settings(**FAST, clip_pretrained=None, sam_model_type="vit_q",
                                      sam_checkpoint=tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="GEOCURATE_MASKFORMER_MODEL"):
        Scorer.from_settings(Settings(**FAST, segmenter="maskformer", maskformer_model=str(tmp_path / "absent")))
