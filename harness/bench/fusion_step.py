"""What a fusion training step costs next to a plain next-token step: same model, same batch, one run.

Steps measured (forward + backward + AdamW update, exactly the code harness/training/loop.py runs):
- plain:    the model's own next-token loss, `model(input_ids, attention_mask, labels=labels).loss`;
- fusellm:  one view, lam * CE(y) + (1 - lam) * CE(P_S, P_T) with a top-k (k=10) teacher at every response token;
- profuser: both views in one forward (ProFuser, simultaneous schedule: all four terms).

Figures:
- fusion_step_overhead = median time(fusellm) / median time(plain), same batch (the criterion, target <= 1.15);
- fusion_step_two_view_overhead = median time(profuser) / (2 x median time(plain)): two views cost two steps;
- fusion_step_memory_ratio = peak memory of the fusellm step / of the plain step (target <= 1.10);
- fusion_step_two_view_memory_ratio = profuser step / plain step on the two views concatenated.
Time: 2 warm-up steps, then the variants interleaved step by step (`reps` rounds) and the median taken, so
drift of a shared machine hits all variants alike. Memory: each variant runs in its own subprocess. The step's
memory is its peak above what is resident before it (model, AdamW state, batch): on CUDA
torch.cuda.max_memory_allocated after reset_peak_memory_stats; on CPU the kernel's peak RSS (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs) minus the RSS before the step, with glibc set to
return large blocks to the kernel at once (MALLOC_ENV), so allocator caching never blurs the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from harness.config import MethodSpec
from harness.training.loop import forward_views, pad_views
from methods.base import FusionBatch, SeqBatch, Signal
from methods.fusellm import FuseLLM
from methods.profuser import ProFuser
from methods.schedules import ScheduleSpec

SETUP = {"vocab": 32000, "hidden": 256, "layers": 2, "batch": 4, "length": 128, "prompt": 32, "k": 10}
VARIANTS = ("plain", "fusellm", "profuser", "plain_concat")
# glibc: a fixed mmap threshold returns every large freed block to the kernel at once, so RSS follows live
# tensors (with the adaptive default, the same step's peak RSS varied by +-30% between runs).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}


def _model(vocab: int, hidden: int, layers: int, **_: Any) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64), max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config)


def _view(gen: torch.Generator, vocab: int, batch: int, length: int, prompt: int, k: int) -> SeqBatch:
    input_ids = torch.randint(0, vocab, (batch, length), generator=gen)
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    topk_ids = torch.randint(0, vocab, (batch, length, k), generator=gen)
    topk_logp = torch.log_softmax(torch.randn(batch, length, k + 1, generator=gen), -1)[..., :k]
    return SeqBatch(input_ids, torch.ones_like(input_ids), labels, topk_ids, topk_logp)


def _batch(vocab: int, batch: int, length: int, prompt: int, k: int, **_: Any) -> FusionBatch:
    gen = torch.Generator().manual_seed(0)
    return FusionBatch({
        Signal.TRAINING: _view(gen, vocab, batch, length, prompt, k),
        Signal.INFERENCE: _view(gen, vocab, batch, length - 16, prompt, k),  # generated responses are shorter
    })


def _steps(setup: dict[str, Any], device: torch.device) -> dict[str, Callable[[], None]]:
    """One closure per variant, all sharing one model, optimizer and batch."""
    model = _model(**setup).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = _batch(**setup).to(device)
    both = frozenset({Signal.TRAINING, Signal.INFERENCE})
    padded = pad_views(batch, both)  # the same tokens as the two-view forward, as one plain batch
    plain_concat = SeqBatch(*(torch.cat([getattr(v, f.name) for v in padded.views.values()])
                              for f in fields(SeqBatch) if f.name != "index"))  # fmt: skip
    fusellm = FuseLLM(MethodSpec(name="fusellm"))
    profuser = ProFuser(MethodSpec.model_validate({"name": "profuser", "schedule": ScheduleSpec(name="simultaneous")}))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def update(loss: torch.Tensor) -> None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain(view: SeqBatch) -> Callable[[], None]:
        def step() -> None:
            with autocast:
                loss = model(input_ids=view.input_ids, attention_mask=view.attention_mask, labels=view.labels).loss
            update(loss)
        return step

    def fusion(method: FuseLLM | ProFuser, views: frozenset[Signal]) -> Callable[[], None]:
        def step() -> None:
            with autocast:
                padded, logits = forward_views(model, batch, views)
                total = method.loss(padded, logits, 0, 1).total
            del logits
            update(total)
        return step

    for p in model.parameters():  # materialise AdamW's state so that no variant pays for it
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "plain": plain(batch.views[Signal.TRAINING]),
        "fusellm": fusion(fusellm, frozenset({Signal.TRAINING})),
        "profuser": fusion(profuser, both),
        "plain_concat": plain(plain_concat),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _times(setup: dict[str, Any], device: torch.device, reps: int, warmup: int = 2) -> dict[str, float]:
    steps = _steps(setup, device)
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    seen: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            seen[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seen.items()}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def step_memory_mb(variant: str, setup: dict[str, Any], device: torch.device, steps: int = 2) -> float:
    """Peak memory of `variant`'s step above what is resident before it (run this in a fresh process)."""
    fn = _steps(setup, device)[variant]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    base = _rss_kb("VmRSS")
    for _ in range(steps):
        fn()
    return (_rss_kb("VmHWM") - base) / 1024


def _memory_in_subprocess(variant: str, setup: dict[str, Any]) -> float:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]), **MALLOC_ENV}
    out = subprocess.run(
        [sys.executable, "-m", "harness.bench.fusion_step", "--memory", variant, "--setup", json.dumps(setup)],
        capture_output=True, text=True, env=env, cwd=root, check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mb"])


def run(reps: int = 7, **overrides: Any) -> dict[str, Any]:
    """Time all variants in this process, measure each one's memory in its own process; the figures."""
    setup = {**SETUP, **overrides}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = _times(setup, device, reps)
    memory = {v: _memory_in_subprocess(v, setup) for v in VARIANTS}
    overhead = times["fusellm"] / times["plain"]
    memory_ratio = memory["fusellm"] / memory["plain"]
    return {
        "fusion_step_overhead": round(overhead, 3),
        "fusion_step_memory_ratio": round(memory_ratio, 3),
        "fusion_step_two_view_overhead": round(times["profuser"] / (2 * times["plain"]), 3),
        "fusion_step_two_view_memory_ratio": round(memory["profuser"] / memory["plain_concat"], 3),
        "fusion_step_targets_met": overhead <= 1.15 and memory_ratio <= 1.10,
        "fusion_step_seconds": {k: round(v, 4) for k, v in times.items()},
        "fusion_step_peak_mb": {k: round(v, 1) for k, v in memory.items()},
        "fusion_step_setup": {**setup, "device": device.type, "reps": reps, "threads": torch.get_num_threads(),
                              "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) delta"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", choices=VARIANTS, help="Measure one variant's step memory (internal: one process each).")
    parser.add_argument("--setup", default=json.dumps(SETUP), help="Model and batch sizes as JSON.")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    setup = {**SETUP, **json.loads(args.setup)}
    if args.memory:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps({"variant": args.memory, "mb": step_memory_mb(args.memory, setup, device)}))
    else:
        print(json.dumps(run(args.reps, **setup), indent=2))


if __name__ == "__main__":
    main()
