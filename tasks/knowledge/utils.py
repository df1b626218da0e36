"""MMLU over all subjects as one lm-eval task, with the built-in per-subject few-shot examples.

lm-eval's built-in `mmlu` is 57 subtasks, each taking the first k dev examples of its own subject. One task
over all subjects needs the sampler to know the subject of the document being evaluated, which lm-eval only
passes when few-shot and test splits coincide; the task below tells the sampler before each context is built.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.samplers import ContextSampler
from lm_eval.api.task import ConfigurableTask


class SubjectFirstNSampler(ContextSampler):
    """The first n dev examples of the current subject, in file order (lm-eval's `first_n` per subject)."""

    subject: str | None = None

    def sample(
        self, n: int, eval_doc: dict[str, Any] | None = None, df: Any = None, **kwargs: Any
    ) -> list[dict]:
        subject = (eval_doc or {}).get("subject", self.subject)
        pool = [d for d in self.fewshot_docs() if d["subject"] == subject]
        if n > len(pool):
            raise ValueError(
                f"mmlu: {n} few-shot examples requested but subject '{subject}' has {len(pool)} in dev"
            )
        return pool[:n]


class MMLUAllSubjects(ConfigurableTask):
    """A ConfigurableTask that sets the sampler's subject to the evaluated document's before each context."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        super().__init__(config=config, **kwargs)

    def fewshot_context(self, doc: dict, num_fewshot: int, **kwargs: Any) -> Any:
        if hasattr(self, "sampler"):
            self.sampler.subject = doc["subject"]
        return super().fewshot_context(doc=doc, num_fewshot=num_fewshot, **kwargs)
