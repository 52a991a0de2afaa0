"""Tiny random-weight stand-ins for SAM and an ADE20K segmentation model, built from configs and seeded.

Model weights cannot be downloaded on every machine, so `demo_models=true` (demo and tests) swaps them in. They run
through exactly the code a real model takes, so scores are reproducible but carry no meaning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from curation.locatability import ADE20K_CLASSES

DEMO_SEED = 0
TINY_SAM_IMAGE_SIZE = 256
# Random-weight SAM masks never pass the real quality filters; demo scoring turns the filters off.
DEMO_SAM_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def build_tiny_sam(checkpoint: str | Path | None = None):
    """A SAM with a 256-px, 2-block image encoder. Same signature as segment-anything's registry builders, so a saved
    tiny checkpoint loads through the same path as sam_vit_b_01ec64.pth (`sam_model_type=tiny`)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(DEMO_SEED)
    patch = 16
    grid = TINY_SAM_IMAGE_SIZE // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_SAM_IMAGE_SIZE, patch_size=patch, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
            out_chans=32, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(TINY_SAM_IMAGE_SIZE,) * 2,
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


def build_tiny_segformer():
    """(model, image processor) of a 4-stage SegFormer with 8–64 channels and the 150 ADE20K labels."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(DEMO_SEED)
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 4], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32,
        num_labels=len(ADE20K_CLASSES), id2label=dict(enumerate(ADE20K_CLASSES)),
        label2id={name: i for i, name in enumerate(ADE20K_CLASSES)},
    )
    model = SegformerForSemanticSegmentation(config).eval()
    processor = SegformerImageProcessor(size={"height": 128, "width": 128}, do_reduce_labels=True)
    return model, processor
