"""The JSON schema of a drive analysis result, and its validation.

The same schema is sent to Ollama as the chat request's ``format`` (Ollama turns
it into a grammar, so the model can only emit JSON of this shape) and checked
again with ``jsonschema`` before anything is stored: Ollama's grammar does not
enforce every keyword (numeric bounds, for one), and a proxy or a different
server build might not enforce it at all.

The schema is kept small and flat (no ``$ref``) because grammar conversion of
JSON schema supports only a subset of it, and small models follow a flat
structure more reliably.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

RESULT_SCHEMA_VERSION = 1
CATEGORIES = (
    "fuel",
    "ignition",
    "air_intake",
    "boost",
    "cooling",
    "exhaust",
    "electrical",
    "drivetrain",
    "maintenance",
    "driving_style",
    "data_quality",
    "other",
)
SEVERITIES = ("info", "low", "medium", "high")
# Caps keep the answer well inside the tokens reserved for it (see ollama_client.NUM_PREDICT).
MAX_RECOMMENDATIONS = 6
MAX_ANOMALIES = 8

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "chi-companion drive analysis",
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "recommendations", "anomalies"],
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 800},
        "recommendations": {
            "type": "array",
            "maxItems": MAX_RECOMMENDATIONS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["rank", "category", "recommendation", "confidence", "evidence"],
                "properties": {
                    "rank": {"type": "integer", "minimum": 1, "maximum": MAX_RECOMMENDATIONS},
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                    "recommendation": {"type": "string", "minLength": 1, "maxLength": 500},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "evidence": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 5,
                        "items": {"type": "string", "minLength": 1, "maxLength": 300},
                    },
                },
            },
        },
        "anomalies": {
            "type": "array",
            "maxItems": MAX_ANOMALIES,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["parameter", "description", "severity"],
                "properties": {
                    "parameter": {"type": "string", "minLength": 1, "maxLength": 80},
                    "description": {"type": "string", "minLength": 1, "maxLength": 500},
                    "severity": {"type": "string", "enum": list(SEVERITIES)},
                    "when": {"type": "string", "maxLength": 80},
                },
            },
        },
    },
}

_VALIDATOR = Draft202012Validator(RESULT_SCHEMA)
Draft202012Validator.check_schema(RESULT_SCHEMA)


class InvalidOutput(Exception):
    """The model's text is not JSON, or not valid against RESULT_SCHEMA."""

    def __init__(self, reason: str, raw: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def _where(path: Any) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return f"${parts}"


def parse_result(raw: str) -> dict[str, Any]:
    """Parse and validate the model's answer; raise InvalidOutput saying what is wrong.

    Recommendations are returned sorted by rank and renumbered 1..n: a model
    that ranks two items equally (or skips a number) still gave a usable
    order, so that is repaired rather than thrown away.
    """
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidOutput(f"not valid JSON: {exc}", raw) from None
    errors = sorted(_VALIDATOR.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidOutput(
            f"does not match the result schema at {_where(first.absolute_path)}: "
            f"{first.message[:300]}{more}",
            raw,
        )
    ordered = sorted(
        enumerate(value["recommendations"]), key=lambda pair: (pair[1]["rank"], pair[0])
    )
    value["recommendations"] = [dict(rec, rank=i + 1) for i, (_, rec) in enumerate(ordered)]
    return dict(value)


def validate_result(value: Any) -> list[str]:
    """Every schema problem of an already-parsed result (empty when valid)."""
    return [f"{_where(e.absolute_path)}: {e.message}" for e in _VALIDATOR.iter_errors(value)]
