"""Rendering (prompt, response) pairs with a model's own chat template.

Every model sees prompts in its own format: teacher-forced passes, generation and training all go through
`render_prompt` / `render_example`, so the character span of the response is known in every tokenization.
"""

from __future__ import annotations

from typing import Any

from harness.errors import HarnessError


def render_prompt(tokenizer: Any, prompt: str, template: str | None = None, name: str = "model") -> str:
    """The text a model is given before its response (generation prompt included)."""
    kwargs: dict[str, Any] = {"chat_template": template} if template else {}
    if not (template or getattr(tokenizer, "chat_template", None)):
        raise HarnessError(
            f"tokenizer of '{name}' has no chat template; set `chat_template` for it in the experiment config", "model"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, **kwargs
    )
    return str(text)


def render_example(
    tokenizer: Any, prompt: str, response: str, template: str | None = None, name: str = "model"
) -> tuple[str, int, int]:
    """Full text of prompt + response (+ end of turn) and the character span [start, end) of the response.

    The response is appended to the rendered prompt followed by the tokenizer's EOS token, so that the
    response span is exact whatever the template does with assistant turns.
    """
    head = render_prompt(tokenizer, prompt, template, name)
    eos = tokenizer.eos_token or ""
    return head + response + eos, len(head), len(head) + len(response) + len(eos)
