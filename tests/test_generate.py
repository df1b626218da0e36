"""harness.signals.generate: HF batching/ordering/stops/seeds on a tiny random Llama, and the vLLM path via a fake module."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import harness.signals.generate as gen
from harness.chat import render_prompt
from harness.errors import HarnessError
from harness.signals.generate import VLLMOptions, finish_response, generate, select_backend

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = [
    "hi",
    "the quick brown fox jumps over the lazy dog and then some more words follow here",
    "what is two plus three",
    "a",
    "tell me about the lazy dog",
    "name the capital of the invented country of zorbia please",
    "ok",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A sentencepiece-like BPE (Metaspace): readable output, and a leading space that decoding alone would drop."""
    words = "the quick brown fox jumps over lazy dog what is two plus three tell me about name capital of invented"
    corpus = [words, "country zorbia please hi ok a and then some more words follow here", "0123456789 .,?!#"] * 5
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "</s>", "<pad>", "<unk>"])
    raw.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = TEMPLATE
    return tok


def make_model(tok: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tok = make_tokenizer()
    return make_model(tok), tok


def run(tiny: Any, prompts: list[str] = PROMPTS, **kw: Any) -> list[str]:
    model, tok = tiny
    kw.setdefault("max_new_tokens", 10)
    return generate(model, tok, prompts, backend="hf", progress=False, **kw)


def test_batched_greedy_equals_one_by_one_in_input_order(tiny: Any) -> None:
    single = [run(tiny, [p], batch_size=1)[0] for p in PROMPTS]
    batched = run(tiny, batch_size=3)
    assert len(batched) == len(PROMPTS)
    assert batched == single
    assert len(set(single)) > 1  # distinct prompts give distinct answers, so a reordering would show


def test_length_sorted_batches_pad_less_and_answer_as_input_order_batches(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts are batched by length so that padding wastes no compute, and the answers come back in input
    order equal to greedy decoding of the same prompts batched as given (left padded, no sorting)."""
    from harness.bench.generation import bare_generate, prepared_batches, responses
    from harness.chat import tokenize_chat

    model, tok = tiny
    shapes: list[tuple[int, int]] = []
    real = model.generate

    def spy(**kw: Any) -> Any:
        shapes.append(tuple(kw["input_ids"].shape))
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    sorted_out = run(tiny, batch_size=3)
    monkeypatch.setattr(model, "generate", real)
    lengths = [len(tokenize_chat(tok, render_prompt(tok, p))["input_ids"]) for p in PROMPTS]
    longest_first = sorted(lengths, reverse=True)
    padded = sum(rows * width for rows, width in shapes)
    assert padded == sum(longest_first[i] * len(longest_first[i : i + 3]) for i in range(0, len(PROMPTS), 3))
    assert padded < sum(max(lengths[i : i + 3]) * len(lengths[i : i + 3]) for i in range(0, len(PROMPTS), 3))

    unsorted = []
    for start in range(0, len(PROMPTS), 3):  # input order, as a plain batched loop would go
        part = PROMPTS[start : start + 3]
        new = bare_generate(model, tok, prepared_batches(tok, part, batch_size=3), len(part), max_new_tokens=10)
        unsorted += responses(model, tok, part, new)
    assert sorted_out == unsorted and len(set(unsorted)) > 1


def test_left_padding_and_pad_token_restored(tiny: Any) -> None:
    model, tok = tiny
    assert tok.padding_side == "right"
    run(tiny, batch_size=4)
    assert tok.padding_side == "right"
    nopad = make_tokenizer()
    nopad.pad_token = None
    nopad.padding_side = "right"
    out = generate(model, nopad, PROMPTS[:3], max_new_tokens=5, batch_size=3, backend="hf", progress=False)
    assert len(out) == 3
    assert nopad.pad_token is None and nopad.padding_side == "right"


def test_stop_strings_cut_at_first_occurrence(tiny: Any) -> None:
    full = run(tiny, max_new_tokens=16, batch_size=4)
    k, text = max(enumerate(full), key=lambda kv: len(kv[1]))
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), "the greedy answer is too short to pick a stop string from"
    cut = run(tiny, max_new_tokens=16, batch_size=4, stop=[stop])
    assert cut[k] == text[: text.find(stop)]
    for got, whole in zip(cut, full, strict=True):
        assert stop not in got and whole.startswith(got)


def test_generation_ends_at_any_eos_of_the_generation_config(tiny: Any) -> None:
    model, tok = tiny
    text = render_prompt(tok, PROMPTS[1])
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1] :]
    end_turn = int(new[3])  # treat the 4th generated token as an end-of-turn token
    first = new.tolist().index(end_turn)
    before = run(tiny, [PROMPTS[1]], max_new_tokens=6)[0]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, end_turn]
    try:
        after = run(tiny, [PROMPTS[1]], max_new_tokens=6)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert before.startswith(after) and len(after) < len(before)
    expected = tok.decode(ids[0].tolist() + new[:first].tolist(), skip_special_tokens=True)
    assert after == expected[len(tok.decode(ids[0].tolist(), skip_special_tokens=True)) :]
    # the response that ran to max_new_tokens is marked cut off, the one that met its end of turn finished
    assert (before.finished, after.finished) == (eos_in(model, tok, ids, 6), True)


def eos_in(model: Any, tok: Any, ids: torch.Tensor, n: int) -> bool:
    new = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1] :]
    return tok.eos_token_id in new.tolist()


def test_a_generation_stopped_by_max_new_tokens_is_marked_cut_off(tiny: Any) -> None:
    """`Generated.finished`: False only where generation ran to max_new_tokens without an end; a stop string ends it."""
    model, tok = tiny
    out = run(tiny, max_new_tokens=4, batch_size=2)
    for prompt, got in zip(PROMPTS, out, strict=True):
        ids = tok(render_prompt(tok, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert got.finished == eos_in(model, tok, ids, 4)
    assert not all(g.finished for g in out)  # random weights rarely say EOS in 4 tokens
    text = next(g for g in out if not g.finished and len(g.strip()) >= 2)
    stopped = run(tiny, max_new_tokens=4, batch_size=2, stop=[text.strip()[:2]])
    assert all(g.finished for g, o in zip(stopped, out, strict=True) if text.strip()[:2] in o)


def test_response_keeps_generated_leading_space() -> None:
    tok = make_tokenizer()
    prompt_ids = tok(render_prompt(tok, "hi"), add_special_tokens=False)["input_ids"]
    new = tok.convert_tokens_to_ids(["▁the", "▁dog"])
    assert tok.decode(new) == "the dog"  # what decoding alone gives
    assert gen._decode_response(tok, prompt_ids, new) == " the dog"


def test_sampling_is_reproducible_with_the_seed(tiny: Any) -> None:
    kw = {"do_sample": True, "temperature": 1.5, "batch_size": 3, "max_new_tokens": 12}
    a, b, c = run(tiny, seed=1, **kw), run(tiny, seed=1, **kw), run(tiny, seed=2, **kw)
    assert a == b
    assert a != c
    assert a != run(tiny, batch_size=3, max_new_tokens=12)  # sampling differs from greedy


def test_model_folder_on_hf_backend_matches_in_memory(tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    monkeypatch.setattr(gen, "cuda_available", lambda: False)
    from_folder = generate(tmp_path, None, PROMPTS[:4], max_new_tokens=8, batch_size=2, backend="auto", progress=False)
    assert from_folder == run(tiny, PROMPTS[:4], max_new_tokens=8, batch_size=2)


def test_finish_response_cuts_at_the_earliest_stop_or_eos() -> None:
    assert finish_response("abc STOP def</s>", ["STOP"], "</s>") == "abc "
    assert finish_response("abc</s>x STOP", ["STOP", "x"], "</s>") == "abc"
    assert finish_response("no markers", ["STOP"], None) == "no markers"


def test_bad_arguments_are_user_errors(tiny: Any) -> None:
    with pytest.raises(HarnessError, match="temperature"):
        run(tiny, do_sample=True, temperature=0.0)
    with pytest.raises(HarnessError, match="unknown generation backend"):
        select_backend("tgi", model_is_path=True)
    assert run(tiny, []) == []


# ---------------------------------------------------------------- backend selection and vLLM (faked)


def test_select_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "vllm_available", lambda: False)
    monkeypatch.setattr(gen, "cuda_available", lambda: True)
    assert select_backend("auto", True) == "hf"
    with pytest.raises(HarnessError, match="needs vLLM"):
        select_backend("vllm", True)
    monkeypatch.setattr(gen, "vllm_available", lambda: True)
    assert select_backend("auto", True) == "vllm"
    assert select_backend("auto", False) == "hf"  # in-memory model: vLLM cannot take it
    assert select_backend("hf", True) == "hf"
    with pytest.raises(HarnessError, match="model path"):
        select_backend("vllm", False)
    monkeypatch.setattr(gen, "cuda_available", lambda: False)
    assert select_backend("auto", True) == "hf"
    with pytest.raises(HarnessError, match="CUDA"):
        select_backend("vllm", True)


def test_fake_vllm_module_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    assert gen.vllm_available()


class _FakeVLLM:
    """Records what harness.signals.generate hands to vllm.LLM / SamplingParams / LLM.generate."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.llm_kwargs: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.requests: list[Any] = []
        self.module = types.ModuleType("vllm")
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                fake.params = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.llm_kwargs = kwargs

            def generate(self, requests: list[Any], params: Any, use_tqdm: bool = True) -> list[Any]:
                assert isinstance(params, SamplingParams)
                fake.requests = requests
                out = types.SimpleNamespace
                reasons = [("length" if a.endswith("...") else "stop") for a in fake.answers]
                return [out(outputs=[out(text=a.rstrip("."), finish_reason=r)])
                        for a, r in zip(fake.answers[: len(requests)], reasons, strict=False)]  # fmt: skip

        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams  # type: ignore[attr-defined]


def test_vllm_path_passes_settings_and_token_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    fake = _FakeVLLM(["plain answer", "cut here STOP rest", "ends</s>junk", "runs on and on..."])  # ...: length
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(gen, "cuda_available", lambda: True)
    prompts = ["hi", "tell me about the lazy dog", "ok", "go on"]
    opts = VLLMOptions(tensor_parallel_size=4, max_model_len=2048)
    out = generate(str(tmp_path), None, prompts, max_new_tokens=7, stop=["STOP"], seed=3, progress=False,
                   vllm_options=opts)

    assert out == ["plain answer", "cut here ", "ends", "runs on and on"]
    assert [o.finished for o in out] == [True, True, True, False]  # vLLM's finish_reason "length": cut off
    assert fake.llm_kwargs["model"] == str(tmp_path.resolve())
    assert fake.llm_kwargs["tensor_parallel_size"] == 4 and fake.llm_kwargs["max_model_len"] == 2048
    assert fake.llm_kwargs["seed"] == 3
    assert fake.params["max_tokens"] == 7 and fake.params["temperature"] == 0.0
    assert fake.params["stop"] == ["STOP"] and fake.params["seed"] == 3
    ids = [r["prompt_token_ids"] for r in fake.requests]
    assert ids == [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert all(row.count(tok.bos_token_id) == 1 and row[0] == tok.bos_token_id for row in ids)


def test_vllm_sampling_temperature_and_explicit_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    fake = _FakeVLLM(["x"])
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(gen, "cuda_available", lambda: True)
    opts = VLLMOptions(tensor_parallel_size=2, gpu_memory_utilization=0.5)
    generate(tmp_path, tok, ["hi"], do_sample=True, temperature=0.7, backend="vllm", progress=False, vllm_options=opts)
    assert fake.params["temperature"] == 0.7
    assert fake.llm_kwargs["tensor_parallel_size"] == 2 and fake.llm_kwargs["gpu_memory_utilization"] == 0.5
    assert "max_model_len" not in fake.llm_kwargs


def test_vllm_settings_are_validated_config() -> None:
    from pydantic import ValidationError

    from harness.config import SignalSpec

    spec = SignalSpec.model_validate({"vllm": {"tensor_parallel_size": 2, "max_model_len": 4096}})
    assert VLLMOptions(**spec.vllm.model_dump()).llm_kwargs() == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9, "dtype": "auto", "max_model_len": 4096}
    for bad in ({"gpu_memory_utilization": 1.5}, {"tensor_parallel_size": 0}, {"tp": 2}):
        with pytest.raises(ValidationError):
            SignalSpec.model_validate({"vllm": bad})
