"""The location stage's files: one line per exported image in its place's split, the image placed beside it and
recorded as an export item. This loop runs once per exported image: lines come from a template, countries are
spelled once, and items go to the store through one COPY (db.exports.ItemAppender)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from geocurate.countries import country_name
from curation.export.answers import evidence_sentence, json_scalar, json_string, location_line
from curation.export.hashed_file import HashedWriter
from curation.export.placement import ImagePlacer
from curation.export.selection import Place
from db import exports as store
from db.quarantine import quarantine
from geocurate.export_format import SPLITS, location_file


@dataclass
class LocationFiles:
    writers: dict[str, HashedWriter]
    removed: int = 0  # near-duplicates
    places: Counter = field(default_factory=Counter)  # split → places
    per_country: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})


def write_location(session: Session, export_id: int, name: str, root: Path, placer: ImagePlacer,
                   batches: Iterable[list[Place]]) -> LocationFiles:
    files = LocationFiles({s: HashedWriter(location_file(root, s)) for s in SPLITS})
    per_country, writers = files.per_country, files.writers
    items: list[tuple[int, str, str, int]] = []
    append_item = items.append
    linked = placer.linking
    place_image = placer.list_linked if linked else placer.place  # a link requested in the first pass, or placed now
    countries: dict[str, tuple[str, str, str]] = {}  # metadata code → (upper code, its JSON, country name's JSON)
    appender = store.ItemAppender(session)
    try:
        for batch in batches:
            for place in batch:
                key, split_name, drop = place.key, place.split, place.duplicates
                files.places[split_name] += 1
                write_line, country_counts = writers[split_name].write_line, per_country[split_name]
                for image in place.images:
                    image_id, sha256, uri = image.id, image.sha256, image.uri
                    if image_id in drop:
                        files.removed += 1
                        if linked:
                            placer.unlink_later(sha256, uri)
                        continue
                    relative = place_image(sha256, uri)
                    if relative is None:
                        quarantine(session, "image", uri, "missing_at_export", f"export {name}")
                        continue
                    code = image.country_code
                    country = countries.get(code)
                    if country is None:
                        upper = code.upper()
                        country = countries[code] = (upper, json_string(upper), json_scalar(country_name(code)))
                    write_line(location_line(sha256, relative, country[2], country[1], image.city,
                                             evidence_sentence(image.class_ratios), image.lat, image.lon,
                                             image.locatability, key, image.human_label))
                    country_counts[country[0]] += 1
                    append_item((export_id, "location", split_name, image_id))
            appender.add(items)
            items.clear()
    except BaseException:
        appender.abort()
        raise
    appender.finish()
    return files
