"""WinoGrande prompt functions over llm-foundry's schema, equal to lm-eval's `preprocess_winogrande`.

lm-eval builds the choices as `sentence[:blank] + option` and the target as the text after the blank;
llm-foundry stores exactly those as `context_options` and `continuation`, with the gold index in `gold`.
"""

from __future__ import annotations

from typing import Any


def doc_to_text(doc: dict[str, Any]) -> int:
    return int(doc["gold"])


def doc_to_target(doc: dict[str, Any]) -> str:
    return str(doc["continuation"]).strip()


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["context_options"])
