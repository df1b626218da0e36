"""The GPU check (`nox -s gpu`): a bf16 training step on a ~1B-parameter Llama-shaped model, tokens/s and MFU.

MFU = achieved model FLOP/s / peak bf16 FLOP/s, with the usual 6 * parameters * tokens FLOPs per training step
(attention FLOPs left out, as in the PaLM accounting). Peak defaults to the H100/H200 dense bf16 figure and can be
given with --peak-tflops. Writes its figures to results/gpu.json; run it whenever a GPU machine is available.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.store import atomic_write_json, package_versions


def run(batch: int = 8, length: int = 1024, steps: int = 10, peak_tflops: float = 989.0) -> dict[str, object]:
    if not torch.cuda.is_available():
        raise HarnessError("the GPU check needs a CUDA device; none is visible", "gpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=length,
    )  # fmt: skip
    # PreTrainedModel.to is `@wraps(nn.Module.to)`; typeshed's functools._Wrapped is not a descriptor, so the
    # stub reads the device as the unbound `self`
    model = LlamaForCausalLM(config).to("cuda", dtype=torch.bfloat16)  # type: ignore[arg-type]
    model.gradient_checkpointing_enable()
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (batch, length), device="cuda")
    times = []
    for step in range(steps + 2):  # two warm-up steps
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    tokens_per_s = batch * length / step_s
    mfu = 6 * params * tokens_per_s / (peak_tflops * 1e12)
    return {
        "gpu": torch.cuda.get_device_name(), "params": params, "batch": batch, "length": length,
        "step_s_median": round(step_s, 4), "tokens_per_s": round(tokens_per_s), "mfu": round(mfu, 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2), "peak_tflops_assumed": peak_tflops,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/gpu.json"))
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    try:
        figures = run(peak_tflops=args.peak_tflops)
    except HarnessError as exc:
        raise SystemExit(exc.one_line()) from None
    atomic_write_json(args.out, {"figures": figures, "packages": package_versions()})
    print(figures)


if __name__ == "__main__":
    main()
