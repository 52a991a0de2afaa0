"""The two labeling interfaces (Label Studio XML) and the mapping between their choices and the store's labels.

Everything that depends on a control's name lives here: the XML, the machine's pre-annotations built for it, and
the reading of an annotator's result, so renaming a control cannot silently break push or pull. `validate()` checks
each config and a sample prediction with the SDK's own label-interface parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_CONFIG = """<View>
  <Header value="Could someone tell where this street view was taken?"/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <Text name="machine_score" value="$machine_score"/>
  <Text name="top_classes" value="$top_classes"/>
  <Choices name="locatability" toName="image" choice="single" showInLine="true" required="true">
    <Choice value="locatable" hint="signs, markings, scripts, bollards, plates, vegetation or buildings tell the place"/>
    <Choice value="not locatable" hint="a usable photo that shows nothing place-specific"/>
    <Choice value="unusable (blurred, indoor, broken)" hint="not a usable street view"/>
  </Choices>
  <Header value="Evidence (optional): draw boxes around what tells the place"/>
  <RectangleLabels name="evidence" toName="image">
    <Label value="sign"/>
    <Label value="road marking"/>
    <Label value="bollard"/>
    <Label value="plate"/>
    <Label value="script"/>
    <Label value="vegetation"/>
    <Label value="architecture"/>
  </RectangleLabels>
  <Header value="Country (ISO code or English name), if you can tell"/>
  <TextArea name="country" toName="image" maxSubmissions="1" editable="true" placeholder="e.g. PL or Poland"/>
</View>"""

CLUE_CONFIG = """<View>
  <Header value="Does this text point to a place?"/>
  <Labels name="places" toName="clue">
    <Label value="country"/>
    <Label value="city"/>
    <Label value="region"/>
    <Label value="demonym"/>
  </Labels>
  <Text name="clue" value="$clue"/>
  <Choices name="geo" toName="clue" choice="single" showInLine="true" required="true">
    <Choice value="geo clue" hint="names or describes something that narrows down the country"/>
    <Choice value="no geo clue" hint="nothing in the text tells the place"/>
  </Choices>
  <Header value="Country the clue points to (ISO code or English name)"/>
  <TextArea name="country" toName="clue" maxSubmissions="1" editable="true" placeholder="e.g. PL or Poland"/>
</View>"""

# The clues part's entity kinds (curation.clues Place.kind, or spaCy labels) → the span labels shown to the annotator.
ENTITY_SPAN_LABELS = {
    "country": "country", "gpe": "country", "city": "city", "loc": "region", "region": "region",
    "continent": "region", "norp": "demonym", "demonym": "demonym",
}


@dataclass(frozen=True)
class ReviewInterface:
    kind: str  # image / clue: the review_tasks.item_kind it serves
    title: str  # the project's title after the store's prefix (review_project_prefix)
    xml: str
    object_name: str  # the tag the controls point to
    choice_control: str
    choices: dict[str, str]  # choice shown to the annotator → label stored in review_tasks.final_label
    country_control: str = "country"
    span_control: str | None = None
    description: str = ""
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.choices.values()))

    def project_title(self, prefix: str) -> str:
        """Projects are found by title, so the prefix keeps the projects of stores sharing a Label Studio apart."""
        return f"{prefix}: {self.title}"

    def choice_for(self, label: str) -> str:
        return {v: k for k, v in self.choices.items()}[label]

    def choice_result(self, label: str) -> dict[str, Any]:
        return {"from_name": self.choice_control, "to_name": self.object_name, "type": "choices",
                "value": {"choices": [self.choice_for(label)]}}

    def country_result(self, country: str) -> dict[str, Any]:
        return {"from_name": self.country_control, "to_name": self.object_name, "type": "textarea",
                "value": {"text": [country]}}

    def read_result(self, result: list[dict[str, Any]]) -> tuple[str | None, str | None]:
        """(label, country text as typed) from an annotation's result; None where the annotator left it empty."""
        label = country = None
        for region in result or []:
            value = region.get("value") or {}
            if region.get("from_name") == self.choice_control and value.get("choices"):
                label = self.choices.get(value["choices"][0])
            elif region.get("from_name") == self.country_control and value.get("text"):
                text = " ".join(t for t in value["text"] if t).strip()
                country = text or None
        return label, country


IMAGE_REVIEW = ReviewInterface(
    kind="image",
    title="locatability review",
    xml=IMAGE_CONFIG,
    object_name="image",
    choice_control="locatability",
    choices={"locatable": "locatable", "not locatable": "not_locatable",
             "unusable (blurred, indoor, broken)": "unusable"},
    description="Borderline street views: is the place recognisable? Labeled images override the machine's score.",
)

CLUE_REVIEW = ReviewInterface(
    kind="clue",
    title="clue review",
    xml=CLUE_CONFIG,
    object_name="clue",
    choice_control="geo",
    choices={"geo clue": "geo_clue", "no geo clue": "no_geo_clue"},
    span_control="places",
    description="Doubtful clue texts from geo-guessing games: does the text point to a place, and which country?",
)

INTERFACES = {IMAGE_REVIEW.kind: IMAGE_REVIEW, CLUE_REVIEW.kind: CLUE_REVIEW}


def interface_for(kind: str) -> ReviewInterface:
    try:
        return INTERFACES[kind]
    except KeyError:
        raise ValueError(f"unknown review kind {kind!r}; expected one of {sorted(INTERFACES)}") from None


def span_results(interface: ReviewInterface, text: str, entities: list[Any]) -> list[dict[str, Any]]:
    """The recognised places as span pre-annotations; entities without a usable span are left out."""
    results = []
    for entity in entities or []:
        if not isinstance(entity, dict):
            continue
        kind = str(entity.get("label") or entity.get("kind") or entity.get("type") or "").lower()
        span_label = ENTITY_SPAN_LABELS.get(kind)
        start, end = entity.get("start"), entity.get("end")
        if span_label is None or not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(text):
            continue
        results.append({"from_name": interface.span_control, "to_name": interface.object_name, "type": "labels",
                        "value": {"start": start, "end": end, "text": text[start:end], "labels": [span_label]}})
    return results


def validate(interface: ReviewInterface) -> None:
    """Raise ValueError when the XML or a prediction built for it does not parse as Label Studio would."""
    from label_studio_sdk.label_interface import LabelInterface

    parsed = LabelInterface(interface.xml)
    try:
        parsed.validate()
    except Exception as exc:  # noqa: BLE001 - the SDK raises assorted types
        raise ValueError(f"{interface.kind} labeling config is invalid: {exc}") from exc
    control = parsed.get_control(interface.choice_control)
    offered = set(control.labels)
    if offered != set(interface.choices):
        raise ValueError(f"{interface.kind} config offers {sorted(offered)}, mapping expects {sorted(interface.choices)}")
    sample = {"result": [interface.choice_result(label) for label in interface.labels[:1]]
              + [interface.country_result("PL")]}
    errors = parsed.validate_prediction(sample, return_errors=True)
    if errors is not True and errors:
        raise ValueError(f"{interface.kind} prediction does not fit its config: {errors}")
