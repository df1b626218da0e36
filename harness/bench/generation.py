"""Generation benchmark: the signal stage's inference-mode generation against a bare batched `model.generate`.

`generation_overhead_vs_generate` = (CPU seconds of the signal stage's call, `Responder.per_shard` ->
harness/signals/generate.py: chat rendering, tokenizing, length-sorted left-padded batches, decoding, stop and
EOS cuts) / (seconds of `model.generate` alone over the same token ids, in the same batches, with the same EOS
ids and the same number of new tokens), summed over the candidate models, each measured in the same run with
the two interleaved and the fastest of `repeats` kept. Torch runs on one thread and the clock is that thread's
CPU time, so that other jobs on a shared machine do not enter the figure; `generation_overhead_wall` is the
same ratio of wall seconds, which they do enter. Goal: at most 1.15.

Models and prompts: the micro sandbox world's three specialists and its corpus when the world is built in the
default cache (`harness sandbox build --size micro`), else the tiny random-weight models of bench/signals.py;
the sandbox preset's generation settings (96 new tokens, batches of 32).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench.signals import bench_models
from harness.config import SignalSpec
from harness.models import ResolvedModel, load_model, load_tokenizer
from harness.signals import CorpusRow, ModelHandle
from harness.signals.inference_mode import Responder

SPEC = SignalSpec(max_new_tokens=96, batch_size=32)  # the sandbox preset's generation settings


def prepared_batches(tokenizer: Any, prompts: list[str], batch_size: int) -> list[tuple[list[int], Any]]:
    """(input indices, left-padded tensors) per batch, formed as harness/signals/generate.py forms them: the
    rendered prompts' token ids, longest first."""
    from harness.chat import render_prompt, tokenize_chat
    from harness.signals.generate import _eos_ids, _left_padded

    encoded = [list(tokenize_chat(tokenizer, render_prompt(tokenizer, p))["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    eos = _eos_ids(None, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out = []
    with _left_padded(tokenizer, pad_id):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out.append((idx, tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt")))
    return out


def bare_generate(model: Any, tokenizer: Any, batches: list[tuple[list[int], Any]], n: int, max_new_tokens: int) -> list[list[int]]:
    """The baseline: `model.generate` alone (greedy, the stage's EOS ids) over prepared batches; each of the n
    prompts' new tokens, in input order."""
    import torch

    from harness.signals.generate import _eos_ids

    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    new: list[list[int]] = [[] for _ in range(n)]
    with torch.inference_mode():
        for idx, batch in batches:
            gen = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                eos_token_id=eos, pad_token_id=pad_id, do_sample=False,
            )
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                new[i] = gen[row, width:].tolist()
    return new


def responses(model: Any, tokenizer: Any, prompts: list[str], new: list[list[int]]) -> list[str]:
    """The texts the signal stage makes of new tokens (cut at the first EOS id, decoded after the prompt)."""
    from harness.chat import render_prompt, tokenize_chat
    from harness.signals.generate import _decode_response, _eos_ids, finish_response

    eos = _eos_ids(model, tokenizer)
    out: list[str] = []
    for prompt, ids in zip(prompts, new, strict=True):
        cut = next((j for j, t in enumerate(ids) if t in eos), len(ids))
        prompt_ids = list(tokenize_chat(tokenizer, render_prompt(tokenizer, prompt))["input_ids"])
        out.append(finish_response(_decode_response(tokenizer, prompt_ids, ids[:cut]), [], tokenizer.eos_token))
    return out


def _time(fn: Any) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) of fn(). With torch on one thread every operation runs on this
    thread, so the CPU seconds are the work done, whatever else the machine is doing."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def measure(paths: dict[str, Path], corpus: list[CorpusRow], repeats: int = 5) -> dict[str, Any]:
    """Seconds of the stage's generation and of the bare `model.generate` per model (fastest of `repeats`), and
    whether the two gave the same responses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(paths, corpus, repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(paths: dict[str, Path], corpus: list[CorpusRow], repeats: int) -> dict[str, Any]:
    import torch

    responder = Responder(SPEC, 0, None)
    prompts = [r.prompt for r in corpus]
    stage_s: dict[str, tuple[float, float]] = {}
    bare_s: dict[str, tuple[float, float]] = {}
    answers: list[list[str]] = []
    tokens: list[list[list[int]]] = []
    same = True
    for name, folder in paths.items():
        handle = ModelHandle(name, ResolvedModel(str(folder)))
        tok = load_tokenizer(handle.model)
        model = load_model(handle.model, "float32", "cpu")
        batches = prepared_batches(tok, prompts, SPEC.batch_size)
        torch.manual_seed(0)
        responder.per_shard(model, tok, handle, corpus[: SPEC.batch_size])  # warm-up: first-call costs
        stage, bare = [], []
        for _ in range(repeats):  # interleaved, so that a burst of load falls on both
            stage.append(_time(lambda: answers.append(responder.per_shard(model, tok, handle, corpus))))  # noqa: B023
            bare.append(_time(lambda: tokens.append(bare_generate(model, tok, batches, len(prompts), SPEC.max_new_tokens))))  # noqa: B023
        stage_s[name], bare_s[name] = min(stage), min(bare)  # (CPU, wall) of the fastest
        same &= answers[-1] == responses(model, tok, prompts, tokens[-1])  # the baseline did the same work
        answers.clear()
        tokens.clear()
    return {"stage_s": stage_s, "bare_s": bare_s, "same_responses": same}


def run(n_examples: int = 128) -> dict[str, Any]:
    """`generation_overhead_vs_generate` (CPU time, all models), the wall-time ratio beside it, and the seconds
    behind them per model."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, _, corpus, where = bench_models(Path(tmp), n_examples)
        seconds = measure(paths, corpus[:n_examples])
    stage, bare = seconds["stage_s"], seconds["bare_s"]

    def ratio(i: int) -> float:
        return round(sum(v[i] for v in stage.values()) / sum(v[i] for v in bare.values()), 3)

    return {
        "generation_bench_models": where,
        "generation_bench_prompts": min(n_examples, len(corpus)),
        "generation_bench_threads": 1,
        "generation_overhead_vs_generate": ratio(0),
        "generation_overhead_wall": ratio(1),
        "generation_bench_same_responses": seconds["same_responses"],
        "generation_stage_cpu_s": {k: round(v[0], 3) for k, v in stage.items()},
        "generation_bare_generate_cpu_s": {k: round(v[0], 3) for k, v in bare.items()},
    }
