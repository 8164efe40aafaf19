"""Turning a drive digest into chat messages, from a versioned template file.

The template lives in ``prompts/<name>.txt`` (package data) so its wording can
be reviewed and changed without touching code; its name and a hash of its text
are stored with every result, so an answer can always be traced to the exact
prompt that produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

from .digest import PROFILE_BUCKETS, digest_text
from .result import CATEGORIES, MAX_ANOMALIES, MAX_RECOMMENDATIONS, SEVERITIES

PROMPT_VERSION = "drive_analysis_v1"
DEFAULT_FOCUS = "none in particular (review everything)"


class PromptError(Exception):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    sha256: str
    system: Template
    user: Template


@lru_cache(maxsize=4)
def load_template(name: str = PROMPT_VERSION) -> PromptTemplate:
    text = resources.files(__package__).joinpath("prompts", f"{name}.txt").read_text("utf-8")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.startswith("#"):
            raise PromptError(f"{name}: text before the first '### system' section")
    if set(sections) != {"system", "user"}:
        raise PromptError(f"{name}: needs exactly a '### system' and a '### user' section")
    return PromptTemplate(
        name=name,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        system=Template("\n".join(sections["system"]).strip()),
        user=Template("\n".join(sections["user"]).strip()),
    )


def render_messages(
    digest: dict[str, Any], focus: list[str], template: PromptTemplate | None = None
) -> list[dict[str, str]]:
    tpl = template or load_template()
    values = {
        "digest": digest_text(digest),
        "focus": ", ".join(focus) if focus else DEFAULT_FOCUS,
        "categories": ", ".join(CATEGORIES),
        "severities": ", ".join(SEVERITIES),
        "max_recommendations": str(MAX_RECOMMENDATIONS),
        "max_anomalies": str(MAX_ANOMALIES),
        "buckets": str(PROFILE_BUCKETS),
    }
    try:
        return [
            {"role": "system", "content": tpl.system.substitute(values)},
            {"role": "user", "content": tpl.user.substitute(values)},
        ]
    except (KeyError, ValueError) as exc:
        raise PromptError(f"{tpl.name}: bad placeholder {exc}") from None
