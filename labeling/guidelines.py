"""Labeling guidelines shown to annotators in Label Studio (project instructions); the README repeats them for
the annotation team. Written once here so the two projects and the docs never disagree."""

from __future__ import annotations

IMAGE_GUIDELINES = [
    "<b>locatable</b>: something in the picture narrows down the country or region: language or script on signs, "
    "road markings and their colours, bollards, licence plates, utility poles, distinctive vegetation or "
    "architecture. You do not need to know the answer, only that the evidence is there.",
    "<b>not locatable</b>: a usable street view that could be almost anywhere (a generic road, fields, a wall).",
    "<b>unusable (blurred, indoor, broken)</b>: motion blur, indoors, a black or corrupt frame, mostly the car or "
    "the camera mount. Unusable images are dropped from every export.",
    "Optionally draw boxes around the evidence (sign, road marking, bollard, plate, script, vegetation, "
    "architecture). Type the country (ISO code such as PL, or an English name) only when you can tell it; it "
    "replaces the image's metadata country.",
    "The machine's score and its top segmentation classes are shown as a hint: the score is near the threshold, "
    "that is why you see the image. Decide from the picture, not the score.",
]

CLUE_GUIDELINES = [
    "<b>geo clue</b>: the text names or describes something that narrows down the country: a place name, a "
    "language, a demonym, a road-marking or bollard convention, a licence-plate colour.",
    "<b>no geo clue</b>: chatter, jokes, scores, or text about the game itself. Rejected clues never reach training.",
    "Pre-highlighted spans are the places the machine recognised (country, city, region, demonym); fix them if "
    "they are wrong, they are kept with your annotation.",
    "Type the country the clue points to (ISO code such as PL, or an English name) when it is clear; it replaces "
    "the machine's country.",
]


def guidelines_html(kind: str) -> str:
    items = IMAGE_GUIDELINES if kind == "image" else CLUE_GUIDELINES
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
