"""The reasoning stage's file: accepted clues with their paired images, the clue's text as the answer's reasons.
A pair whose image lies in a val or test place is held out, so no street of an evaluation place is trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from geocurate.countries import country_name
from curation.decisions import kept_for_reasoning
from curation.export.answers import example_line
from curation.export.hashed_file import HashedWriter
from curation.export.placement import ImagePlacer
from curation.splits import split_of_image
from db import exports as store
from db.quarantine import quarantine
from geocurate.export_format import PROMPT, Answer, Example, reasoning_file


def write_reasoning(session: Session, export_id: int, name: str, root: Path, placer: ImagePlacer,
                    split_of: dict[str, str], h3_resolution: int,
                    held_out_images: set[int] | frozenset[int] = frozenset()) -> tuple[HashedWriter, int]:
    """The file's writer and the number of pairs held out: pairs whose image lies in a val/test place, and pairs
    whose image is in `held_out_images` (near-duplicates removed in favour of a val/test image)."""
    reasoning = HashedWriter(reasoning_file(root))
    held_out = 0
    items: list[dict[str, Any]] = []
    for r in store.stream(session, store.accepted_clue_pairs().where(kept_for_reasoning())):
        if r.id in held_out_images or \
                (split_of_image(split_of, r.country_code, r.city, r.lat, r.lon, h3_resolution) or "train") != "train":
            held_out += 1
            continue
        relative = placer.place(r.sha256, r.uri)
        if relative is None:
            quarantine(session, "image", r.uri, "missing_at_export", f"export {name}")
            continue
        same_country = (r.country_code or "").upper() == r.clue_country.upper()
        example = Example(
            id=f"{r.clue_sha256[:16]}-{r.sha256[:16]}", image=relative, prompt=PROMPT,
            answer=Answer(country=country_name(r.clue_country), city=r.city if same_country else None, reasons=r.text),
            country_code=r.clue_country.upper(), city=r.city if same_country else None, lat=r.lat, lon=r.lon,
            meta={"clue_id": r.clue_id},
        )
        reasoning.write_line(example_line(example))
        items.append(dict(export_id=export_id, dataset="reasoning", split="train", image_id=r.id, clue_id=r.clue_id))
    store.add_export_items(session, items)
    return reasoning, held_out
