"""Rough compute and memory per stage of a planned run, for `--dry-run`: what to ask a cluster for.

Parameters come from each model's config (built on the meta device, nothing downloaded) where this machine has
it, else from a size in its name ("7b", "270m"). FLOPs follow the usual accounting: 2 x parameters per token
for a forward pass (teacher passes, generation), 6 x for a training step; hours assume one H100 at 40% of its
989 TFLOP/s dense bf16 peak. Memory: bf16 weights for passes; full fine-tuning keeps fp32 master weights,
gradients and two AdamW moments (16 bytes per parameter), split over the processes under FSDP / ZeRO-3.
Signals hold at most `CHUNK_LOGITS` logits at a time (harness/signals/teacher.py), so a vocabulary adds little.
Training does not chunk: each micro-batch holds the student's logits, their log-softmax and both gradients, fp32
[batch, max_length, vocab] each, per view (`LOGIT_COPIES`). With a 262k vocabulary this is the peak: Gemma-3-270M at
batch 8 x 384 tokens with two views needs about 26 GB, and was killed on a 24 GB machine (docs/results.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.modes import Signal

H100_FLOPS = 989e12 * 0.4
LOGIT_COPIES = 4  # logits, log-softmax and the gradient of each, fp32, live together in the backward pass


def training_logits_bytes(batch_size: int, max_length: int, vocab: int | None, views: int) -> float | None:
    """Peak bytes of one micro-batch's student logits and what the loss and backward pass make of them."""
    return None if vocab is None else float(LOGIT_COPIES * 4 * batch_size * max_length * vocab * views)


_SIZE = re.compile(r"(?<![0-9a-z])(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


def parameters(spec: str, sandbox_models: dict[str, Path] | None = None) -> tuple[float | None, str]:
    """(parameter count, where it came from) of a model spec; (None, 'unknown') when neither source has it."""
    config = _local_config(spec, sandbox_models)
    if config is not None:
        try:
            return float(_count(config)), "config"
        except Exception:  # an architecture transformers cannot build here: fall back to the name
            pass
    found = _SIZE.findall(spec.split("/")[-1])
    if found:
        value, unit = found[-1]
        return float(value) * (1e9 if unit.lower() == "b" else 1e6), "name"
    return None, "unknown"


def vocabulary(spec: str, sandbox_models: dict[str, Path] | None = None) -> int | None:
    """The model's vocabulary size from its config where this machine has it (the logits' last dimension)."""
    from harness.models import ALIASES

    if spec in ALIASES:
        return ALIASES[spec].vocab_size
    config = _local_config(spec, sandbox_models)
    if config is None:
        return None
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return int(size) if size else None


def _local_config(spec: str, sandbox_models: dict[str, Path] | None) -> dict[str, Any] | None:
    from harness.models import ALIASES, resolve

    if spec in ALIASES or spec.startswith(("sandbox", "gguf:")):
        return None
    try:
        resolved = resolve(spec, sandbox_models, convert=False)
    except Exception:
        return None
    folder = Path(resolved.pretrained)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(resolved.pretrained, "config.json")
    except Exception:
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def _count(config: dict[str, Any]) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def _fmt(n: float | None, unit: str) -> str:
    if n is None:
        return "?"
    prefixes = ((1e9, "B"), (1e6, "M")) if unit == "" else ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"))
    for scale, prefix in prefixes:
        if n >= scale:
            return f"{n / scale:.1f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def estimates(p: Any, n_examples: int, sandbox_models: dict[str, Path] | None = None) -> list[str]:
    """One line per stage: FLOPs, time on one H100 and memory per process, for the plan `p`."""
    exp = p.exp
    target_n, target_src = parameters(exp.target.path, sandbox_models)
    sources = [parameters(s.path, sandbox_models) for s in exp.sources]
    candidates = ([target_n] if exp.method.target_is_candidate else []) + [n for n, _ in sources]
    known = [n for n in candidates if n is not None]
    biggest = max(known) if known else None
    lines = [f"parameters: {exp.target.name} {_fmt(target_n, '')} ({target_src}); "
             + "; ".join(f"{s.name} {_fmt(n, '')} ({src})" for s, (n, src) in zip(exp.sources, sources, strict=True))]  # fmt: skip

    def hours(flops: float | None) -> str:
        if flops is None:
            return "?"
        seconds = flops / H100_FLOPS
        return f"~{seconds / 3600:.1f} GPU-h" if seconds >= 3600 else f"~{max(1, round(seconds / 60))} GPU-min"

    ref_tokens = n_examples * exp.signals.max_length / 2  # as the storage estimate: half the window
    every = None if len(known) < len(candidates) else sum(known)
    if Signal.TRAINING in p.method_cls.needs:
        flops = None if every is None else 2 * every * ref_tokens
        mem = None if biggest is None else 2 * biggest
        lines.append(f"signals, training mode: {_fmt(flops, 'FLOP')}, {hours(flops)}; {_fmt(mem, 'B')} per process (bf16 weights; logits chunked)")
    if Signal.INFERENCE in p.method_cls.needs:
        flops = None if every is None else 2 * every * n_examples * exp.signals.max_new_tokens
        mem = None if biggest is None else 2 * biggest
        lines.append(f"signals, inference mode (generation): {_fmt(flops, 'FLOP')}, {hours(flops)} at full use "
                     f"(decoding rarely gets there); {_fmt(mem, 'B')} weights + KV cache per process")  # fmt: skip
    views = len(p.method_cls.needs)
    train_tokens = n_examples * exp.train.max_length / 2 * exp.train.epochs * views
    flops = None if target_n is None else 6 * target_n * train_tokens
    if exp.train.lora is not None:
        mem = None if target_n is None else 2 * target_n
        how = "bf16 frozen weights + LoRA adapters"
    else:
        mem = None if target_n is None else 16 * target_n
        how = "fp32 weights, gradients and AdamW moments; divide by the processes under FSDP / ZeRO-3"
    logits = training_logits_bytes(exp.train.batch_size, exp.train.max_length, vocabulary(exp.target.path, sandbox_models), views)
    lines.append(f"train: {_fmt(flops, 'FLOP')}, {hours(flops)}; {_fmt(mem, 'B')} ({how}) + {_fmt(logits, 'B')} of logits "
                 f"per micro-batch ({LOGIT_COPIES} fp32 copies of [{exp.train.batch_size}, {exp.train.max_length}, vocab] "
                 f"x {views} view(s); lower train.batch_size and raise train.grad_accum to shrink it) + other activations")  # fmt: skip
    mem = None if biggest is None and target_n is None else 2 * max(biggest or 0, target_n or 0)
    lines.append(f"evaluate: {_fmt(mem, 'B')} per process (bf16 weights of the largest model evaluated)")
    return lines
