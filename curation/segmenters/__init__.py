"""Where class ratios come from: SAM masks named by open_clip (`sam`) or an ADE20K segmentation model (`maskformer`)."""

from __future__ import annotations

from curation.segmenters.base import Segmentation, Segmenter, StageTimer, ratios_from_label_map


def build_segmenter(settings, clip=None) -> Segmenter:
    """The segmenter named by `settings.segmenter`, with its models loaded once."""
    if settings.segmenter == "sam":
        from curation.segmenters.sam import SamSegmenter

        return SamSegmenter.from_settings(settings, clip)
    if settings.segmenter == "maskformer":
        from curation.segmenters.maskformer import MaskFormerSegmenter

        return MaskFormerSegmenter.from_settings(settings)
    raise ValueError(f"unknown segmenter {settings.segmenter!r}: expected 'sam' or 'maskformer'")


__all__ = ["Segmentation", "Segmenter", "StageTimer", "build_segmenter", "ratios_from_label_map"]
