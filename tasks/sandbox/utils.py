"""Per-document metrics of the sandbox tasks: adapters from lm-eval's hooks to harness.sandbox.scoring."""

from __future__ import annotations

from typing import Any

from harness.sandbox.scoring import score


def process_knowledge(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": score("knowledge", results[0], doc["answer"])}


def process_reasoning(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": score("reasoning", results[0], doc["answer"])}


def process_safety(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": score("safety", results[0], doc["answer"])}
