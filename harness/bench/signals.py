"""Signal benchmark: extraction tokens/s and bytes on disk per response token, per source, at k = 10.

Runs on the micro sandbox world when it is already built in the default cache (`harness sandbox build`), else
on tiny random-weight models built here (`tiny_models`, also used by the tests): a GPT-2 target with a
byte-level BPE, a Llama source with a SentencePiece-style BPE and a GPT-2 source with a second byte-level BPE.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench.align import bytelevel_tokenizer, make_texts, sentencepiece_tokenizer
from harness.config import SignalSpec
from harness.models import ResolvedModel
from harness.modes import Signal
from harness.signals import CorpusRow, ModelHandle, extract_signals, load_corpus

TINY = {
    "target": ("gpt2", "bytelevel", 700),
    "llama-sp": ("llama", "sentencepiece", 900),
    "gpt2-bl": ("gpt2", "bytelevel", 500),
}


def tiny_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight tiny causal LMs with three different tokenizers, saved as model folders under `root`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    texts = make_texts(900, seed)
    out = {}
    for i, (name, (arch, kind, vocab)) in enumerate(TINY.items()):
        folder = Path(root) / name
        out[name] = folder
        if (folder / "config.json").is_file():
            continue
        part = texts[i::3]
        tok = (
            bytelevel_tokenizer(part, vocab) if kind == "bytelevel" else sentencepiece_tokenizer(part, vocab)
        )
        ids = {
            "bos_token_id": tok.bos_token_id or tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
        torch.manual_seed(seed + i)
        if arch == "llama":
            llama = LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=512,
                **ids,
            )
            model: Any = LlamaForCausalLM(llama)
        else:
            gpt2 = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids)
            model = GPT2LMHeadModel(gpt2)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return out


def tiny_corpus(n: int, seed: int = 0) -> list[CorpusRow]:
    """Prompts and references of generated text, with three skills."""
    rng = random.Random(seed)
    texts = make_texts(2 * n, seed + 7)
    skills = ("knowledge", "reasoning", "safety")
    return [
        CorpusRow(f"ex{i}", texts[2 * i], texts[2 * i + 1] + " " + rng.choice(texts), skills[i % 3])
        for i in range(n)
    ]


def _world() -> tuple[dict[str, Path], str, list[CorpusRow]] | None:
    try:
        from harness.sandbox.build import load_world

        world = load_world("micro")
    except Exception:  # the sandbox is optional here
        return None
    if world is None:
        return None
    return world.models, world.target, load_corpus(world.corpus_path)


def bench_models(tmp: Path, n_examples: int) -> tuple[dict[str, Path], str, list[CorpusRow], str]:
    """(model folders, target name, corpus, which): the micro world's when it is built, else tiny random models
    saved under `tmp` with a generated corpus of n_examples."""
    found = _world()
    if found is not None:
        paths, target_name, corpus = found
        return paths, target_name, corpus, "sandbox-micro"
    return tiny_models(Path(tmp) / "models"), "target", tiny_corpus(n_examples), "tiny-random"


def run(n_examples: int = 96) -> dict[str, Any]:
    """Per source: `signal_bytes_per_token` (parquet bytes / response tokens), `extraction_tokens_per_s`."""
    spec = SignalSpec(
        top_k=10, max_length=256, batch_size=16
    )  # default shard size: per-file overhead amortised
    with tempfile.TemporaryDirectory() as tmp:
        paths, target_name, corpus, where = bench_models(Path(tmp), n_examples)
        corpus = corpus[:n_examples]
        handles = {n: ModelHandle(n, ResolvedModel(str(p))) for n, p in paths.items()}
        target = handles[target_name]
        bytes_per_token, tokens_per_s = {}, {}
        for name, handle in handles.items():
            start = time.perf_counter()
            sset = extract_signals(
                Signal.TRAINING, target, [handle], corpus, spec, None, Path(tmp) / "cache", progress=False
            )
            seconds = time.perf_counter() - start
            store = sset.stores()[name]
            tokens = store.n_response_tokens()
            bytes_per_token[name] = round(store.bytes_on_disk() / tokens, 2)
            tokens_per_s[name] = round(tokens / seconds)
    return {
        "signal_bench_models": where,
        "signal_bytes_per_token": bytes_per_token,
        "signal_bytes_per_token_max": max(bytes_per_token.values()),
        "extraction_tokens_per_s": tokens_per_s,
    }
