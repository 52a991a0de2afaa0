"""The `sam` segmenter: segment-anything's automatic mask generator proposes class-agnostic masks; open_clip names
each mask zero-shot against one prompt per ADE20K class.

Overlap rule: masks are painted largest first, so where masks overlap the smallest one owns the pixel (a sign on a
wall counts as sign, not wall). Pixels no mask covers stay unlabeled and add nothing to locatability. A mask that
ends up owning no pixel cannot change the score, so it is not sent to CLIP at all.

Production path vs. the straightforward one (kept as knobs so bench/score_throughput.py measures both on the same
models): image-encoder passes batched across images, global attention computed in query chunks (the stock code
materialises a 4096×4096 matrix per head, several GB per image on the CPU), hidden masks skipped, and all mask crops
of a batch of images named by CLIP in batches of `clip_batch_size` instead of one call per mask.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from curation.clip import ClipModel, file_digest, load_clip
from geocurate.device import resolve_device, resolve_dtype
from curation.locatability import NUM_CLASSES, short_name
from curation.scoring import to_working_size
from curation.segmenters.base import UNLABELED, Segmentation, StageTimer, folder_digest, ratios_from_label_map
from geocurate.errors import UserError

CROP_RULE = "bbox-square-gray"  # how a mask becomes a CLIP input; part of the scorer version
OVERLAP_RULE = "smallest-mask-wins"
BACKGROUND = (124, 116, 104)  # CLIP's mean colour: masked-out pixels carry no signal
ATTENTION_CHUNK_BYTES = 24 << 20  # below glibc's mmap threshold, so chunks reuse heap memory instead of page-faulting
MASK_CHUNK_BYTES = 64 << 20  # full-size float mask logits upscaled at once (FastMaskGenerator)


def sam_builders() -> dict[str, Any]:
    from segment_anything import sam_model_registry

    from curation.demo_models import build_tiny_sam

    return {**sam_model_registry, "tiny": build_tiny_sam}


def load_sam(model_type: str, checkpoint: Path | None, demo: bool) -> tuple[torch.nn.Module, str]:
    """(model, identity). Real weights come from `sam_checkpoint`; their sha256 is the identity."""
    if demo:
        from curation.demo_models import DEMO_SEED, build_tiny_sam

        return build_tiny_sam(), f"demo:tiny:seed{DEMO_SEED}"
    builders = sam_builders()
    if model_type not in builders:
        raise UserError(f"unknown SAM model type {model_type!r}: expected one of {', '.join(sorted(builders))}")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise UserError(
            f"SAM checkpoint {checkpoint or '(unset)'} not found: set GEOCURATE_SAM_CHECKPOINT to the {model_type} "
            "weights (e.g. sam_vit_b_01ec64.pth), or GEOCURATE_DEMO_MODELS=true for random-weight demo models"
        )
    model = builders[model_type](checkpoint=str(checkpoint))
    return model.eval(), f"{model_type}:sha256={file_digest(Path(checkpoint))}"


def _chunked_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's image-encoder Attention.forward, computed a few query rows at a time with
    scaled_dot_product_attention and the decomposed relative-position bias as its mask. Same result up to float
    rounding; peak memory per global block drops from heads×N² floats to one chunk."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
    bh, tokens, dim = q.shape
    rel_h = rel_w = None
    if self.use_rel_pos:
        r_q = q.reshape(bh, height, width, dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(height, height, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(width, width, self.rel_pos_w))
    rows = max(1, ATTENTION_CHUNK_BYTES // (bh * width * tokens * q.element_size()))
    out = torch.empty_like(q)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        bias = None
        if rel_h is not None:
            bias = (rel_h[:, r0:r1, :, :, None] + rel_w[:, r0:r1, :, None, :]).reshape(bh, (r1 - r0) * width, tokens)
        out[:, r0 * width : r1 * width] = F.scaled_dot_product_attention(
            q[:, r0 * width : r1 * width], k, v, attn_mask=bias, scale=self.scale
        )
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)


def use_chunked_attention(sam: torch.nn.Module) -> None:
    for block in sam.image_encoder.blocks:
        block.attn.forward = types.MethodType(_chunked_attention_forward, block.attn)


def _unpack_kept(parts: list, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean masks of the candidates NMS kept; `keep` indexes the concatenation of the parts' packed masks, which
    is never built (it would double the largest array of the crop)."""
    starts = np.cumsum([0] + [len(part["masks"]) for part in parts])
    index = keep.cpu().numpy()
    owners = np.searchsorted(starts, index, side="right") - 1  # an empty part shares its start with the next one
    rows = [parts[owner]["masks"][i - starts[owner]] for owner, i in zip(owners, index)]
    packed = np.stack(rows) if rows else parts[0]["masks"][:0]
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=width).view(bool))


def fast_mask_generator_class():
    """SamAutomaticMaskGenerator that keeps masks as boolean tensors from decoder to output, in bounded memory.

    The stock generator run-length-encodes every candidate mask before NMS (a Python loop that is quadratic in the
    number of masks, then deep-copied per batch) and decodes the survivors again. Keeping tensors gives the same
    masks; RLEs are only built for the survivors when min_mask_region_area needs them.

    Memory: the stock step upscales a whole batch of decoder logits at once (64 points x 3 masks of full-size floats:
    600 MB at 1024x768) and keeps every candidate as a full-size bool until NMS, concatenating them batch by batch
    (twice the candidates at the last batch: 1.6 GB at points_per_side 16). Here logits are upscaled
    MASK_CHUNK_BYTES at a time and each candidate is kept as packed bits (1/8 of a bool) until NMS has picked the
    survivors. The decoder still runs on the same batches, and the per-mask steps are elementwise, so the masks and
    their order are the stock ones."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        batch_iterator,
        batched_mask_to_box,
        calculate_stability_score,
        is_box_near_crop_edge,
        mask_to_rle_pytorch,
        rle_to_mask,
        uncrop_boxes_xyxy,
        uncrop_masks,
        uncrop_points,
    )
    from torchvision.ops.boxes import batched_nms

    class FastMaskGenerator(SamAutomaticMaskGenerator):
        @torch.no_grad()
        def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
            data = self._generate_masks(image)
            if self.min_mask_region_area > 0 and len(data["masks"]):
                data["rles"] = mask_to_rle_pytorch(torch.as_tensor(data["masks"]))
                data = self.postprocess_small_regions(
                    data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
                )
                masks = [rle_to_mask(rle) for rle in data["rles"]]
            else:
                masks = list(data["masks"])
            scores = data["iou_preds"]
            return [{"segmentation": mask, "predicted_iou": float(scores[i])} for i, mask in enumerate(masks)]

        def _process_crop(self, image, crop_box, crop_layer_idx, orig_size) -> MaskData:
            x0, y0, x1, y1 = crop_box
            cropped_im = image[y0:y1, x0:x1, :]
            cropped_im_size = cropped_im.shape[:2]
            self.predictor.set_image(cropped_im)
            points_for_image = self.point_grids[crop_layer_idx] * np.array(cropped_im_size)[None, ::-1]
            parts = [part for (points,) in batch_iterator(self.points_per_batch, points_for_image)
                     for part in self._process_batch(points, cropped_im_size, crop_box, orig_size)]
            self.predictor.reset_image()
            data = MaskData(**{key: torch.cat([part[key] for part in parts]) for key, _ in parts[0].items()
                               if key != "masks"})  # NMS needs boxes and scores only
            keep_by_nms = batched_nms(
                data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                iou_threshold=self.box_nms_thresh,
            )
            data.filter(keep_by_nms)
            data["masks"] = _unpack_kept(parts, keep_by_nms, cropped_im_size[1])
            data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
            data["points"] = uncrop_points(data["points"], crop_box)
            data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["masks"]))])
            data["masks"] = uncrop_masks(data["masks"], crop_box, *orig_size)
            return data

        def _process_batch(self, points, im_size, crop_box, orig_size) -> list[MaskData]:
            """Candidates of one decoder batch, in chunks whose masks are packed bits (in crop coordinates)."""
            low_res, iou_preds = self._decode(points, im_size)
            data = MaskData(low_res=low_res.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                            points=torch.as_tensor(points.repeat(low_res.shape[1], axis=0)))
            if self.pred_iou_thresh > 0.0:
                data.filter(data["iou_preds"] > self.pred_iou_thresh)
            model = self.predictor.model
            mask_bytes = 4 * (model.image_encoder.img_size ** 2 + int(np.prod(im_size)))  # upscaled twice
            per_chunk = max(1, MASK_CHUNK_BYTES // mask_bytes)
            return [self._binarize(MaskData(**{key: value[start : start + per_chunk] for key, value in data.items()}),
                                   crop_box, orig_size)
                    for start in range(0, max(1, len(data["iou_preds"])), per_chunk)]

        def _decode(self, points: np.ndarray, im_size) -> tuple[torch.Tensor, torch.Tensor]:
            """SamPredictor.predict_torch up to the mask decoder: low-resolution logits and predicted IoUs."""
            predictor, model = self.predictor, self.predictor.model
            coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
            labels = torch.ones(len(coords), dtype=torch.int, device=coords.device)
            sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
            return model.mask_decoder(
                image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            )

        def _binarize(self, chunk: MaskData, crop_box, orig_size) -> MaskData:
            """The stock per-mask steps on one chunk: full-size logits, stability score, binary mask, box, and the
            stability and crop-edge filters. The float logits live only inside this call."""
            model = self.predictor.model
            logits = model.postprocess_masks(chunk["low_res"][:, None], self.predictor.input_size,
                                             self.predictor.original_size)[:, 0]
            del chunk["low_res"]
            chunk["stability_score"] = calculate_stability_score(
                logits, model.mask_threshold, self.stability_score_offset
            )
            masks = logits > model.mask_threshold
            del logits
            chunk["boxes"] = batched_mask_to_box(masks)
            chunk["masks"] = np.packbits(masks.cpu().numpy(), axis=-1)
            keep = ~is_box_near_crop_edge(chunk["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
            if self.stability_score_thresh > 0.0:
                keep &= chunk["stability_score"] >= self.stability_score_thresh
            chunk.filter(keep)
            return chunk

    return FastMaskGenerator


def _preset_predictor(sam: torch.nn.Module):
    """A SamPredictor whose set_image() reuses image-encoder features computed for the whole batch beforehand."""
    from segment_anything import SamPredictor

    class PresetPredictor(SamPredictor):
        preset: tuple[tuple[int, ...], torch.Tensor, tuple[int, int]] | None = None

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            if self.preset is not None and image.shape == self.preset[0]:  # the whole image, not a crop layer
                self.reset_image()
                self.original_size = image.shape[:2]
                self.features, self.input_size = self.preset[1], self.preset[2]
                self.is_image_set = True
                return
            super().set_image(image, image_format)

        @torch.no_grad()
        def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
            """Crop layers: the stock method, with the input cast to the encoder's dtype (bf16 on GPUs)."""
            self.reset_image()
            self.original_size = original_image_size
            self.input_size = tuple(transformed_image.shape[-2:])
            encoder = self.model.image_encoder
            pixels = self.model.preprocess(transformed_image).to(next(encoder.parameters()).dtype)
            self.features = encoder(pixels).float()
            self.is_image_set = True

    return PresetPredictor(sam)


@dataclass
class _Masks:
    owner: np.ndarray  # per pixel: index of the mask that owns it, or UNLABELED
    masks: list[np.ndarray]  # boolean HxW


def resolve_overlaps(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Owner map under OVERLAP_RULE: paint largest first so smaller masks end on top."""
    owner = np.full(shape, UNLABELED, dtype=np.int32)
    areas = [int(m.sum()) for m in masks]
    for index in sorted(range(len(masks)), key=lambda i: (-areas[i], i)):
        owner[masks[index]] = index
    return owner


def mask_crop(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The mask's bounding box, masked-out pixels in BACKGROUND, centred on a square canvas (so CLIP's
    resize-and-centre-crop keeps all of it)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    region = image[y0:y1, x0:x1].copy()
    region[~mask[y0:y1, x0:x1]] = BACKGROUND
    height, width = region.shape[:2]
    side = max(height, width)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = BACKGROUND
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = region
    return Image.fromarray(canvas)


class SamSegmenter:
    def __init__(
        self,
        sam: torch.nn.Module,
        clip: ClipModel,
        *,
        sam_identity: str,
        prompt_template: str,
        points_per_side: int = 16,
        crop_n_layers: int = 0,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        min_mask_region_area: int = 0,
        device: str = "auto",
        dtype: str = "auto",
        clip_batch_size: int = 128,
        encoder_batch_size: int = 4,
        chunked_attention: bool = True,
        fast_masks: bool = True,
        skip_hidden_masks: bool = True,
        image_embeddings: bool = True,
        max_side: int | None = None,
    ) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.device = resolve_device(device)
        self.encoder_dtype = resolve_dtype(dtype, self.device)
        self.sam = sam.to(self.device)
        if self.encoder_dtype != torch.float32:
            self.sam.image_encoder.to(self.encoder_dtype)  # the dominant cost; decoder and prompts stay fp32
        if chunked_attention:
            use_chunked_attention(self.sam)
        self.clip = clip
        self.clip_batch_size = clip_batch_size
        self.encoder_batch_size = encoder_batch_size
        self.skip_hidden_masks = skip_hidden_masks
        self.image_embeddings = image_embeddings
        self.max_side = max_side
        generator_class = fast_mask_generator_class() if fast_masks else SamAutomaticMaskGenerator
        self.generator = generator_class(
            self.sam, points_per_side=points_per_side, crop_n_layers=crop_n_layers, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, min_mask_region_area=min_mask_region_area,
            output_mode="binary_mask",
        )
        self.generator.predictor = _preset_predictor(self.sam)
        prompts = [prompt_template.format(name=short_name(i)) for i in range(NUM_CLASSES)]
        self.text_embeddings = torch.from_numpy(clip.encode_texts(prompts))
        self.timer = StageTimer()
        self.params: dict[str, Any] = {
            "segmenter": "sam", "sam": sam_identity, "sam_encoder_dtype": str(self.encoder_dtype),
            "points_per_side": points_per_side, "crop_n_layers": crop_n_layers, "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh, "min_mask_region_area": min_mask_region_area,
            "clip": clip.version, "prompt_template": prompt_template, "crop_rule": CROP_RULE,
            "overlap_rule": OVERLAP_RULE, "max_side": max_side,
        }

    @classmethod
    def from_settings(cls, settings, clip: ClipModel | None = None, **overrides: Any) -> "SamSegmenter":
        from curation.demo_models import DEMO_SAM_FILTERS

        sam, identity = load_sam(settings.sam_model_type, settings.sam_checkpoint, settings.demo_models)
        filters = dict(pred_iou_thresh=settings.sam_pred_iou_thresh,
                       stability_score_thresh=settings.sam_stability_score_thresh)
        if settings.demo_models:
            filters.update(DEMO_SAM_FILTERS)
        options = dict(
            sam_identity=identity, prompt_template=settings.clip_prompt_template,
            points_per_side=settings.sam_points_per_side, crop_n_layers=settings.sam_crop_n_layers,
            min_mask_region_area=settings.sam_min_mask_region_area, device=settings.device, dtype=settings.score_dtype,
            clip_batch_size=settings.clip_batch_size, encoder_batch_size=settings.score_batch_size,
            max_side=settings.score_max_side, **filters,
        )
        options.update(overrides)
        segmenter = cls(sam, clip or load_clip(settings), **options)
        if settings.clip_model.startswith("local-dir:") and not settings.demo_models:
            segmenter.params["clip_weights"] = folder_digest(Path(settings.clip_model.removeprefix("local-dir:")))
        return segmenter

    @torch.inference_mode()
    def encode(self, arrays: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Image-encoder features per image, computed `encoder_batch_size` images per forward pass."""
        transform = self.generator.predictor.transform
        results: list[tuple[torch.Tensor, tuple[int, int]]] = []
        for start in range(0, len(arrays), self.encoder_batch_size):
            inputs, sizes = [], []
            for array in arrays[start : start + self.encoder_batch_size]:
                resized = transform.apply_image(array)
                pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
                inputs.append(self.sam.preprocess(pixels.float()))
                sizes.append(tuple(resized.shape[:2]))
            features = self.sam.image_encoder(torch.cat(inputs).to(self.encoder_dtype)).float()
            results.extend((features[i : i + 1], sizes[i]) for i in range(len(sizes)))
        return results

    def propose(self, array: np.ndarray, features: tuple[torch.Tensor, tuple[int, int]]) -> _Masks:
        predictor = self.generator.predictor
        predictor.preset = (array.shape, *features)
        try:
            records = self.generator.generate(array)
        finally:
            predictor.preset = None
        masks = [record["segmentation"] for record in records]
        return _Masks(resolve_overlaps(masks, array.shape[:2]), masks)

    @torch.inference_mode()
    def name_masks(self, arrays: list[np.ndarray], proposals: list[_Masks],
                   images: list[Image.Image]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """ADE20K class per mask (-1 for masks skipped as hidden) and, optionally, whole-image embeddings; every
        crop of the batch goes through CLIP in `clip_batch_size` chunks."""
        jobs: list[tuple[int, int]] = []  # (image, mask) or (image, -1) for the whole image
        classes = [np.full(len(p.masks), UNLABELED, dtype=np.int64) for p in proposals]
        for image_index, proposal in enumerate(proposals):
            owners = proposal.owner
            wanted = np.unique(owners[owners >= 0]) if self.skip_hidden_masks else range(len(proposal.masks))
            jobs.extend((image_index, int(m)) for m in wanted if proposal.masks[m].any())
            if self.image_embeddings:
                jobs.append((image_index, -1))
        embeddings: list[np.ndarray | None] = [None] * len(arrays)
        for start in range(0, len(jobs), self.clip_batch_size):
            chunk = jobs[start : start + self.clip_batch_size]
            pixels = torch.stack([
                self.clip.preprocess(images[i] if m < 0 else mask_crop(arrays[i], proposals[i].masks[m]))
                for i, m in chunk
            ])
            vectors = self.clip.encode_pixels(pixels)
            best = (torch.from_numpy(vectors) @ self.text_embeddings.T).argmax(dim=1).numpy()
            for (i, m), vector, label in zip(chunk, vectors, best):
                if m < 0:
                    embeddings[i] = vector
                else:
                    classes[i][m] = label
        return classes, embeddings

    def segment(self, images: list[Image.Image]) -> list[Segmentation]:
        """Masks are generated at the working size: every candidate mask is a full-size array, so the file's pixel
        count would otherwise set the memory."""
        images = [to_working_size(im, self.max_side) for im in images]
        arrays = [np.asarray(im) for im in images]
        with self.timer.stage("sam_encoder"):
            features = self.encode(arrays)
        with self.timer.stage("sam_masks"):
            proposals = [self.propose(array, feats) for array, feats in zip(arrays, features)]
        with self.timer.stage("clip_naming"):
            classes, embeddings = self.name_masks(arrays, proposals, images)
        results = []
        for proposal, mask_classes, embedding in zip(proposals, classes, embeddings):
            labels = np.where(proposal.owner >= 0, mask_classes[np.maximum(proposal.owner, 0)], UNLABELED) \
                if len(mask_classes) else proposal.owner
            results.append(Segmentation(ratios_from_label_map(labels), embedding, size=labels.shape[::-1]))
        return results
