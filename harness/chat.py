"""Rendering a conversation in a model's own chat format: the prompt a model answers, and prompt + response as
the model reads it when it is taught or scored.

Every model sees exactly what its own chat template renders for one user turn and one assistant turn:
teacher-forced passes, generation and training all go through `render_prompt` / `render_example`. The
response is found inside the rendering of the whole conversation, never appended to the prompt, so the space
a template puts before the answer (`[/INST] `, `ASSISTANT: `), its trimming of the answer, and the token that
ends the turn (`<|im_end|>`, `<end_of_turn>`, ` </s>`) are the model's own.

What the response span covers: the assistant content plus the template's text up to and including the first
special token after it, the end of turn. What a template writes after that token (ChatML's and Gemma's
"\\n", the sandbox format's "\\n\\n") only separates turns: generation stops at the end-of-turn token and never
produces it, so the rendered text is cut right after the end of turn. Token ids therefore equal
`apply_chat_template(conversation, tokenize=True)` up to that point.

BOS: where a template does not write one but the tokenizer adds one to plain text (Llama-style tokenizers,
`add_bos_token`), the model was trained with it, so `tokenize_chat` puts the BOS id in front, exactly as
`tokenizer(text)` would (the text itself is tokenized as if it began the sequence: a SentencePiece tokenizer
marks its first word with '▁' there, which writing "<s>" into the text would not). Nothing else adds special
tokens, so no BOS is ever doubled.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

# Google's Gemma 3 chat template (the `chat_template` of the google/gemma-3-* tokenizers), for Gemma models whose
# files carry none, such as the Gemma-3-270M GGUF: a turn ends with `<end_of_turn>`, the assistant is "model".
GEMMA3_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

_PROBE = ("Say hi.", "Hi there")  # a conversation to find what a format writes around an answer
_per_tokenizer: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class RenderedExample:
    """One (prompt, response) as a model reads it: `text` ends right after the end-of-turn token (or right after
    the response content, for a format that writes none).

    The response content is `text[content_start:content_end]`, which equals `response[lead:lead + length]`:
    a template that trims the answer drops `lead` characters in front of it (and maybe some behind)."""

    text: str
    content_start: int
    content_end: int
    lead: int
    end_of_turn: str | None

    @property
    def turn_end_start(self) -> int:
        """Where the end-of-turn token starts in `text` (= len(text) when the format writes none)."""
        return len(self.text) - len(self.end_of_turn or "")


def _memo(tokenizer: Any) -> dict[Any, Any]:
    try:
        return _per_tokenizer.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no memo
        return {}


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str | None, name: str, generation: bool) -> str:
    kwargs: dict[str, Any] = {"chat_template": template} if template else {}
    if not (template or getattr(tokenizer, "chat_template", None)):
        raise HarnessError(
            f"tokenizer of '{name}' has no chat template; set `chat_template` for it in the experiment config", "model"
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)
    except Exception as exc:  # jinja errors, raise_exception() of the template
        raise HarnessError(f"the chat template of '{name}' does not render: {str(exc).splitlines()[0]}", "model") from None
    return str(text)


def expects_bos(tokenizer: Any) -> str | None:
    """The BOS text a model expects in front of everything: the tokenizer adds BOS to plain text by itself.

    Decided by behaviour, not by the `add_bos_token` attribute (a Gemma tokenizer loaded from a folder says
    False and still adds BOS)."""
    memo = _memo(tokenizer)
    if "bos" not in memo:
        bos_id, bos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "bos_token", None)
        found = None
        if bos_id is not None and bos:
            with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
            plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
            if with_special[:1] == [bos_id] and plain[:1] != [bos_id]:
                found = str(bos)
        memo["bos"] = found
    result: str | None = memo["bos"]
    return result


def missing_bos(tokenizer: Any, text: str) -> int | None:
    """The BOS id to put in front of `text` (the model expects one and the text does not start with it), or None."""
    bos = expects_bos(tokenizer)
    return int(tokenizer.bos_token_id) if bos and not text.startswith(bos) else None


def tokenize_chat(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    """Rendered chat text -> the model's tokens: no special tokens added, except the BOS id where the model
    expects one and the template did not write it (character offsets (0, 0) for it)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    bos = missing_bos(tokenizer, text)
    if bos is None:
        return enc
    enc["input_ids"] = [bos, *enc["input_ids"]]
    if "attention_mask" in enc:
        enc["attention_mask"] = [1, *enc["attention_mask"]]
    if offsets:
        enc["offset_mapping"] = [(0, 0), *enc["offset_mapping"]]
    return enc


def display(tokenizer: Any, text: str) -> str:
    """Rendered chat text as the model reads it, for people: with the BOS `tokenize_chat` puts in front."""
    return (str(tokenizer.bos_token) if missing_bos(tokenizer, text) is not None else "") + text


def render_prompt(tokenizer: Any, prompt: str, template: str | None = None, name: str = "model") -> str:
    """The text a model is given before its response: the user turn and the generation prompt (tokenize it with
    `tokenize_chat`)."""
    return _render(tokenizer, [{"role": "user", "content": prompt}], template, name, True)


def marker_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every token a template can end a turn with, longest first: the special tokens (named roles and added
    tokens flagged special) and the other added tokens too, since a tokenizer may add its end-of-turn marker
    without the special flag (MPT's `<|im_end|>` can be one)."""
    memo = _memo(tokenizer)
    if "markers" not in memo:
        found = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
            found.add(str(token.content))
        memo["markers"] = tuple(sorted((s for s in found if s), key=lambda s: (-len(s), s)))
    result: tuple[str, ...] = memo["markers"]
    return result


def _first_special(tokenizer: Any, text: str) -> tuple[int, str] | None:
    """(position, token text) of the first turn marker in `text` (the longest one where several start there)."""
    best: tuple[int, str] | None = None
    for s in marker_strings(tokenizer):
        pos = text.find(s)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best


def _locate(full: str, after: int, response: str) -> tuple[int, int, int]:
    """(content start, content end, lead): where the response's text stands in `full`, after the prompt.

    Templates may trim the answer (Gemma's `| trim`, Llama-2's `.strip()`), so the stripped forms are tried
    when the response itself is not there."""
    for lead, content in (
        (0, response),
        (len(response) - len(response.lstrip()), response.strip()),
        (len(response) - len(response.lstrip()), response.lstrip()),
        (0, response.rstrip()),
    ):
        pos = full.find(content, after)
        if pos >= 0:
            return pos, pos + len(content), lead
    raise ValueError("response not found")


def render_example(
    tokenizer: Any, prompt: str, response: str, template: str | None = None, name: str = "model"
) -> RenderedExample:
    """The model's own rendering of (user: prompt, assistant: response), cut after the end of turn."""
    head = render_prompt(tokenizer, prompt, template, name)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = _render(tokenizer, messages, template, name, False)
    if not full.startswith(head):
        raise HarnessError(
            f"the chat template of '{name}' renders an answered turn that does not continue its generation prompt, "
            "so the response cannot be located; give a `chat_template` that does", "model",
        )
    try:
        start, end, lead = _locate(full, len(head), response)
    except ValueError:
        raise HarnessError(
            f"the chat template of '{name}' rewrites the response beyond trimming it; give a `chat_template` that "
            "keeps the answer's text", "model",
        ) from None
    special = _first_special(tokenizer, full[end:])
    if special is None:
        return RenderedExample(full[:end], start, end, lead, None)
    pos, token = special
    return RenderedExample(full[: end + pos + len(token)], start, end, lead, token)


def end_of_turn(tokenizer: Any, template: str | None = None, name: str = "model") -> str | None:
    """The token that ends an assistant turn in this format (`<|im_end|>`, `<end_of_turn>`, `</s>`), or None."""
    memo = _memo(tokenizer)
    key = ("eot", template or getattr(tokenizer, "chat_template", None))
    if key not in memo:
        memo[key] = render_example(tokenizer, *_PROBE, template, name).end_of_turn
    result: str | None = memo[key]
    return result


def end_of_turn_id(tokenizer: Any, template: str | None = None, name: str = "model") -> int | None:
    """The id of `end_of_turn`, or None when the format has none (or the tokenizer has no chat template)."""
    if not (template or getattr(tokenizer, "chat_template", None)):
        return None
    token = end_of_turn(tokenizer, template, name)
    if token is None:
        return None
    found = tokenizer.convert_tokens_to_ids(token)
    return int(found) if isinstance(found, int) else None
