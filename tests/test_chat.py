"""Every model is taught and scored in its own chat format: the token ids the harness builds for one user turn
and one assistant turn are the ids `apply_chat_template(..., tokenize=True)` gives for the same conversation,
for the five template families (ChatML, Llama-2 [INST], Vicuna, Gemma, the sandbox format), cut after the
end-of-turn token; the response span is found in that rendering.

The tokenizers are small real `tokenizers` BPEs in the shapes of the real ones (special tokens and their roles,
BOS added by the tokenizer or not); tests/test_real_pair.py repeats the check on the real SmolLM2 and Gemma.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from harness.bench.align import tokenizer_pair, with_specials
from harness.chat import (
    GEMMA3_CHAT_TEMPLATE,
    display,
    end_of_turn,
    end_of_turn_id,
    expects_bos,
    render_example,
    render_prompt,
    tokenize_chat,
)
from harness.config import load_experiment
from harness.errors import HarnessError
from harness.sandbox.build import CHAT_TEMPLATE as SANDBOX_TEMPLATE
from harness.signals.encoding import EOS_SENTINEL, encode_example

# SmolLM2-135M-Instruct's own template (its GGUF's tokenizer.chat_template)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# meta-llama/Llama-2-7b-chat-hf's tokenizer_config chat_template
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

PAPER = load_experiment("paper")
VICUNA_TEMPLATE = PAPER.target.chat_template
MPT_TEMPLATE = PAPER.sources[1].chat_template


@pytest.fixture(scope="module")
def bases() -> tuple[Any, Any]:
    return tokenizer_pair()


def _family(name: str, bases: tuple[Any, Any]) -> tuple[Any, str | None]:
    """(tokenizer, template) of one template family, in the shape of the real models that use it."""
    bytelevel, sentencepiece = bases
    if name == "chatml-smollm2":  # SmolLM2: bos <|im_start|>, eos = pad <|im_end|>, unk <|endoftext|>
        roles = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                 "unk_token": "<|endoftext|>"}  # fmt: skip
        return with_specials(bytelevel, roles, template=SMOLLM2_TEMPLATE), None
    if name == "chatml-mpt":  # MPT: eos = bos = unk <|endoftext|>, ChatML markers as extra special tokens
        roles = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        return with_specials(bytelevel, roles, ("<|im_start|>", "<|im_end|>")), MPT_TEMPLATE
    llama_roles = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if name == "llama2":  # Llama-2-chat: the tokenizer adds <s>; its own [INST] template
        return with_specials(sentencepiece, llama_roles, add_bos=True, template=LLAMA2_TEMPLATE), None
    if name == "vicuna":  # Vicuna v1.5: a Llama tokenizer (pads with <unk>), the paper preset's template
        return with_specials(sentencepiece, {**llama_roles, "pad_token": "<unk>"}, add_bos=True), VICUNA_TEMPLATE
    if name == "gemma":  # Gemma 3: <bos> added by the tokenizer, turns end with <end_of_turn>; the harness's template
        roles = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
        tok = with_specials(sentencepiece, roles, ("<start_of_turn>", "<end_of_turn>"), add_bos=True)
        return tok, GEMMA3_CHAT_TEMPLATE
    if name == "sandbox":  # the sandbox world's format: "Question: ...\nAnswer: ..." + eos + blank line
        roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
        return with_specials(bytelevel, roles, template=SANDBOX_TEMPLATE), None
    raise KeyError(name)


FAMILIES = ("chatml-smollm2", "chatml-mpt", "llama2", "vicuna", "gemma", "sandbox")
END_OF_TURN = {"chatml-smollm2": "<|im_end|>", "chatml-mpt": "<|im_end|>", "llama2": "</s>", "vicuna": "</s>",
               "gemma": "<end_of_turn>", "sandbox": "</s>"}  # fmt: skip
EXAMPLES = [
    ("What is 2+3?", "2+3 = 5. The answer is 5."),
    ("Name a colour.", " Blue, like the sea.\n"),  # leading space, trailing newline: trimmed by Gemma and Llama-2
    ("Say nothing.", ""),
]


def template_ids(tok: Any, template: str | None, prompt: str, response: str) -> list[int]:
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    kwargs = {"chat_template": template} if template else {}
    return list(tok.apply_chat_template(conversation, tokenize=True, return_dict=False, **kwargs))


def assert_own_format(tok: Any, template: str | None, prompt: str, response: str, eot: str, name: str) -> None:
    """The harness's ids are the template's, BOS where the tokenizer adds one, cut after the end of turn."""
    enc = encode_example(tok, prompt, response, template, 10_000, name)
    ids = enc.ids.tolist()
    expected = template_ids(tok, template, prompt, response)
    bos = [tok.bos_token_id] if expects_bos(tok) and expected[:1] != [tok.bos_token_id] else []
    expected = bos + expected
    assert ids == expected[: len(ids)], f"{name}: ids differ from apply_chat_template"
    assert tok.decode(expected[len(ids) :]).strip() == "", f"{name}: more than a turn separator was cut"
    assert ids[-1] == tok.convert_tokens_to_ids(eot), f"{name}: the example does not end with its end of turn"
    assert ids[:2] != [tok.bos_token_id] * 2  # never a doubled BOS
    # the response span: the tokens after the prompt spell the (trimmed) response, then the end of turn
    body = tok.decode(ids[enc.resp_start :], skip_special_tokens=True)
    assert body.strip() == response.strip()
    # relative spans tile the response and put the end of turn on the sentinel
    spans = enc.response.spans
    assert enc.response.text == response + EOS_SENTINEL
    assert spans[-1].tolist() == [len(response), len(response) + 1]
    assert (spans[:, 0] <= spans[:, 1]).all() and (np.diff(spans[:, 0]) >= 0).all()
    if response.strip():  # the first token starts where the answer's characters do, after what the template trimmed
        trimmed = render_example(tok, prompt, response, template, name).lead
        assert spans[0, 0] == trimmed and spans[-2, 1] == len(response)


def _first_token_pairs(target: str, source: str, response: str, bases: tuple[Any, Any]) -> tuple[Any, Any, np.ndarray]:
    from harness.signals.alignment import get_alignment

    (t_tok, t_tpl), (s_tok, s_tpl) = _family(target, bases), _family(source, bases)
    t = encode_example(t_tok, "Say hi.", response, t_tpl, 10_000, target)
    s = encode_example(s_tok, "Say hi.", response, s_tpl, 10_000, source)
    match = get_alignment("span").match(t.response, s.response, t.ids[t.resp_start :], s.ids[s.resp_start :], None)
    return t, s, match


def test_a_first_token_that_covers_the_templates_space_is_not_paired_with_one_that_does_not(bases: tuple[Any, Any]) -> None:
    """Vicuna's `ASSISTANT: ` puts its space inside the answer's first token (`▁than`); ChatML puts `\n` before
    the answer, so SmolLM2's first token is `than`. They cover the same answer characters but not the same text:
    the source's distribution there ranks the no-space variants, so it must not teach Vicuna's first token."""
    t, s, match = _first_token_pairs("vicuna", "chatml-smollm2", "than zen quater", bases)
    assert t.response.lead == " " and t.response.piece(0) == " than" and s.response.lead == ""
    assert s.response.piece(0) == "than"
    assert match[0] == -1  # no teacher across the template's space
    assert (match[1:-1] >= 0).any()  # the rest of the answer still pairs
    # two formats that both put a space before the answer do share the first token
    t, s, match = _first_token_pairs("vicuna", "llama2", "than zen quater", bases)
    assert t.response.lead == s.response.lead == " " and match[0] == 0


def test_a_trimmed_answer_starts_after_what_the_template_trimmed(bases: tuple[Any, Any]) -> None:
    """Gemma's `| trim` drops the reference's leading space: its first token is `quater`, answer characters
    [1, 7), where SmolLM2 keeps the space (`Ġquater`, [0, 7)). They must not pair."""
    t, s, match = _first_token_pairs("gemma", "chatml-smollm2", " quater zen", bases)
    assert t.response.spans[0].tolist() == [1, 7] and s.response.spans[0].tolist() == [0, 7]
    assert t.response.piece(0) == "quater" and s.response.piece(0) == " quater"
    assert match[0] == -1


def test_an_end_of_turn_added_without_the_special_flag_is_still_the_end_of_turn(bases: tuple[Any, Any]) -> None:
    """MPT's `<|im_end|>` may be an added token that is not flagged special: it still ends the turn, the example is
    cut after it, and a source's stop mass lands on it as the target's end of turn."""
    from harness.signals.align import build_vocab_map, special_tokens

    bytelevel, sentencepiece = bases
    roles = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tok = with_specials(bytelevel, roles, unflagged=("<|im_start|>", "<|im_end|>"))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert not tok.added_tokens_decoder[im_end].special
    assert end_of_turn(tok, MPT_TEMPLATE) == "<|im_end|>" and end_of_turn_id(tok, MPT_TEMPLATE) == im_end
    enc = encode_example(tok, "Hi", "Hello there", MPT_TEMPLATE, 10_000, "mpt")
    assert enc.ids[-1] == im_end and enc.response.spans[-1].tolist() == [11, 12]
    assert im_end in special_tokens(tok, im_end).stop
    gemma, gemma_template = _family("gemma", bases)
    vmap = build_vocab_map(gemma, tok, target_end_of_turn=im_end, source_end_of_turn=end_of_turn_id(gemma, gemma_template))
    assert vmap[gemma.convert_tokens_to_ids("<end_of_turn>")] == im_end == vmap[gemma.eos_token_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cut_off_response_is_encoded_without_its_end_of_turn(family: str, bases: tuple[Any, Any]) -> None:
    """A generation stopped by max_new_tokens did not end: no end-of-turn token, no sentinel to align it to."""
    tok, template = _family(family, bases)
    eot = tok.convert_tokens_to_ids(END_OF_TURN[family])
    done = encode_example(tok, "Count.", "one two three", template, 10_000, family)
    cut = encode_example(tok, "Count.", "one two three", template, 10_000, family, ended=False)
    assert done.ids[-1] == eot and eot not in cut.ids[cut.resp_start :].tolist()
    assert cut.response.text == "one two three" and cut.response.spans[-1, 1] == len("one two three")
    assert tok.decode(cut.ids[cut.resp_start :], skip_special_tokens=True).strip() == "one two three"


@pytest.mark.parametrize("family", FAMILIES)
def test_examples_are_the_templates_own_rendering(family: str, bases: tuple[Any, Any]) -> None:
    tok, template = _family(family, bases)
    for prompt, response in EXAMPLES:
        assert_own_format(tok, template, prompt, response, END_OF_TURN[family], family)
    assert end_of_turn(tok, template) == END_OF_TURN[family]
    assert end_of_turn_id(tok, template) == tok.convert_tokens_to_ids(END_OF_TURN[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prompt_is_the_generation_prompt_of_the_template(family: str, bases: tuple[Any, Any]) -> None:
    tok, template = _family(family, bases)
    kwargs = {"chat_template": template} if template else {}
    own = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True,
                                  **kwargs)  # fmt: skip
    rendered = render_prompt(tok, "Hi", template, family)
    assert rendered == own
    full = render_example(tok, "Hi", "Hello there", template, family)
    assert full.text.startswith(rendered)  # what generation continues is what teacher forcing reads


def test_spaces_and_trimming_are_the_formats_own(bases: tuple[Any, Any]) -> None:
    """Vicuna and Llama-2 put a space between the prompt and the answer; Gemma trims the answer."""
    tok, template = _family("vicuna", bases)
    ex = render_example(tok, "Hi", "Hello there", template, "vicuna")
    assert ex.text.endswith(" ASSISTANT: Hello there</s>") and ex.text.startswith("A chat")
    tok, _ = _family("llama2", bases)
    ex = render_example(tok, "Hi", "Hello there", None, "llama2")
    assert ex.text == "<s>[INST] Hi [/INST] Hello there </s>" and ex.end_of_turn == "</s>"
    tok, template = _family("gemma", bases)
    ex = render_example(tok, "Hi", "  Hello there\n", template, "gemma")
    assert ex.text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello there<end_of_turn>"
    assert ex.text[ex.content_start : ex.content_end] == "Hello there" and ex.lead == 2


def test_a_template_without_bos_gets_the_one_its_tokenizer_adds(bases: tuple[Any, Any]) -> None:
    """Vicuna's format has no BOS in its text; FastChat trains it as `tokenizer(text)`, which adds one."""
    tok, template = _family("vicuna", bases)
    enc = encode_example(tok, "Hi", "Hello", template, 10_000, "vicuna")
    ids = enc.ids.tolist()
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[1:] == template_ids(tok, template, "Hi", "Hello")
    text = render_example(tok, "Hi", "Hello", template).text
    assert ids == tok(text, add_special_tokens=True)["input_ids"]  # the first word keeps its '▁' marker
    prompt = render_prompt(tok, "Hi", template)
    assert tokenize_chat(tok, prompt)["input_ids"] == tok(prompt, add_special_tokens=True)["input_ids"]
    assert display(tok, prompt).startswith("<s>A chat")


def test_generation_stops_at_the_end_of_turn(bases: tuple[Any, Any]) -> None:
    from harness.signals.generate import _eos_ids

    tok, template = _family("gemma", bases)
    ids = _eos_ids(None, tok, template)
    assert tok.convert_tokens_to_ids("<end_of_turn>") in ids and tok.eos_token_id in ids


def test_templates_that_hide_the_response_are_refused(bases: tuple[Any, Any]) -> None:
    tok, _ = _family("sandbox", bases)
    broken = "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(HarnessError, match="rewrites the response"):
        render_example(tok, "Hi", "Hello", broken + "{% if not add_generation_prompt %}!{% endif %}", "broken")
    moving = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    with pytest.raises(HarnessError, match="does not continue its generation prompt"):
        render_example(tok, "Hi", "Hello", moving, "moving")


def test_the_paper_presets_dry_run_shows_each_models_rendered_example(bases: tuple[Any, Any], tmp_path, shared_data) -> None:  # type: ignore[no-untyped-def]
    """With local copies of the three tokenizers (the hub is offline here), the dry run shows the first corpus
    example as Vicuna, Llama-2-chat and MPT read it, and writes nothing."""
    import os
    import subprocess
    import sys
    from importlib import resources

    folders = {}
    for name, family in (("vicuna", "vicuna"), ("llama2", "llama2"), ("mpt", "chatml-mpt")):
        tok, _ = _family(family, bases)
        folders[name] = tmp_path / name
        tok.save_pretrained(folders[name])
        # a model folder as the plan checks it (config.json); a dry run loads no weights
        (folders[name] / "config.json").write_text('{"model_type": "llama"}')
    text = resources.files("harness.presets").joinpath("paper.yaml").read_text()
    text = (text.replace("hf:lmsys/vicuna-7b-v1.5", str(folders["vicuna"]))
            .replace("hf:meta-llama/Llama-2-7b-chat-hf", str(folders["llama2"]))
            .replace("hf:mosaicml/mpt-7b-8k-chat", str(folders["mpt"])))  # fmt: skip
    for judge in ("OpenAssistant/reward-model-deberta-v3-large-v2", "Ray2333/GRM-Llama3.2-3B-rewardmodel-ft",
                  "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"):  # the hub is offline here: local stand-ins
        text = text.replace(f"hf:{judge}", str(folders["vicuna"]))
    preset = tmp_path / "paper-local.yaml"
    preset.write_text(text)
    cache = tmp_path / "cache"
    env = dict(os.environ, HARNESS_DATA_DIR=str(shared_data), HARNESS_CACHE_DIR=str(cache), COLUMNS="250")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--preset", str(preset), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stderr
    first = load_corpus_first(shared_data)
    assert out.count(first.prompt.splitlines()[0]) == 3  # every model shows the example
    assert "      | <s>A chat between a curious user" in out  # Vicuna: the BOS its tokenizer adds
    assert " ASSISTANT: [[" in out and "[/INST] [[" in out
    assert "      | <|im_start|>assistant" in out and "<|im_end|>]]" in out and "</s>]]" in out
    assert not (tmp_path / "results").exists() and not cache.exists()


def load_corpus_first(data):  # type: ignore[no-untyped-def]
    from harness.signals import load_corpus

    return load_corpus(data / "instruct" / "alpaca_en_demo.llamafactory.json", limit=1)[0]
