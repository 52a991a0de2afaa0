"""Turning the model's text into a Prediction. The model is asked for {"country", "city", "reasons"} JSON but a
small or half-trained model writes code fences, single quotes, trailing commas, stops mid-string or rambles after
the object. What can be repaired is; what cannot is kept as an unparsed Prediction with its raw text, so one bad
answer never costs the batch."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from geocurate.countries import country_code


@dataclass
class Prediction:
    raw: str  # the model's text, as generated
    parsed: bool  # a country, city or reasons could be read from it
    country: str | None = None  # English name as the model wrote it
    country_code: str | None = None  # ISO alpha-2, None when the name is not a known country
    city: str | None = None
    reasons: str | None = None
    repaired: bool = False  # parsed only after fixing the JSON
    error: str | None = None  # why nothing could be read (unparsed answers, unreadable images)
    unreadable: bool = False  # the input image could not be opened: bad input, not a model answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
FIELD = re.compile(r"""["']?(country|city|reasons)["']?\s*:\s*(?:"((?:[^"\\]|\\.)*)"?|'([^']*)'?|(null|None))""",
                   re.IGNORECASE)


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _from_object(raw: str, data: dict[str, Any], repaired: bool) -> Prediction:
    lowered = {str(k).lower(): v for k, v in data.items()}
    country = _text_or_none(lowered.get("country"))
    code = country_code(country) if country else None
    reasons = lowered.get("reasons")
    if isinstance(reasons, list):
        reasons = "; ".join(str(r) for r in reasons)
    answered = any(k in lowered for k in ("country", "city", "reasons"))
    return Prediction(
        raw=raw, parsed=answered,
        country=country, country_code=code,
        city=_text_or_none(lowered.get("city")), reasons=_text_or_none(reasons), repaired=repaired,
        error=None if answered else "JSON without the answer keys",
    )


def _candidates(text: str) -> list[str]:
    """The JSON object the answer most likely contains, then progressively repaired versions of it."""
    fenced = FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    if start < 0:
        return []
    end = body.rfind("}")
    obj = body[start : end + 1] if end > start else body[start:]
    fixed = re.sub(r",\s*([}\]])", r"\1", obj)  # trailing commas
    fixed = re.sub(r"\bNone\b", "null", fixed)
    if '"' not in fixed:
        fixed = fixed.replace("'", '"')
    closed = fixed
    if closed.count('"') % 2:  # cut off inside a string
        closed += '"'
    closed += "}" * max(closed.count("{") - closed.count("}"), 0)
    return [obj, fixed, closed]


def parse_answer(text: str) -> Prediction:
    for attempt, candidate in enumerate(_candidates(text)):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return _from_object(text, data, repaired=attempt > 0)
    fields: dict[str, Any] = {}
    for match in FIELD.finditer(text):
        key = match.group(1).lower()
        if key not in fields:
            value = match.group(2) if match.group(2) is not None else match.group(3)
            fields[key] = value.replace('\\"', '"') if value is not None else None
    if fields:
        return _from_object(text, fields, repaired=True)
    return Prediction(raw=text, parsed=False, error="answer is not JSON and has no country/city/reasons fields")
