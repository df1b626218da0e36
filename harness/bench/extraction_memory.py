"""Peak memory of a teacher pass against the model's weights: Gemma-3-270M (262,144-token vocabulary), batch 8 x 512.

`extraction_peak_memory_vs_weights` = (peak resident memory during `teacher_forced` - resident memory before
it) / the bytes of the model's parameters. Goal <= 1.5: the chunked LM head (harness/signals/teacher.py) keeps
at most `CHUNK_LOGITS` logits at a time, where the full [8 x 512 x 262,144] float32 logits alone are 4.3 GB, about
4x the weights. `..._full_logits` is the same pass with the model's whole logits, for comparison.

Each figure comes from a fresh process (torch allocates outside Python, so tracemalloc does not see it): the
child loads the model, runs one short warm-up pass, resets the kernel's peak-RSS mark (/proc/self/clear_refs),
runs the pass and reads VmHWM. The machine's load average is recorded beside it: other jobs do not change a
process's own peak, but swapping would. Needs the Gemma-3 model packages; reports None without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from harness.models import ALIASES, package_folder

MODEL, BATCH, LENGTH, K = "gemma3-270m", 8, 512, 10


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(way: str, batch: int = BATCH, length: int = LENGTH) -> dict[str, Any]:
    """In a fresh process: one teacher pass of `batch` x `length` random tokens, `way` 'chunked' or 'full'."""
    import numpy as np
    import torch

    from harness.models import load_model, resolve
    from harness.signals.encoding import Encoded
    from harness.signals.teacher import padded_batches, teacher_forced

    torch.set_num_threads(1)
    model = load_model(resolve(MODEL)).eval()
    weights = sum({p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}.values())  # tied once
    vocab = model.get_output_embeddings().weight.shape[0]
    rng = np.random.default_rng(0)
    examples = [
        Encoded(rng.integers(0, vocab, length), length // 4, None)  # type: ignore[arg-type]  # spans unused here
        for _ in range(batch)
    ]

    def full() -> None:  # the pass before chunking: the model's whole logits, then the rows
        with torch.inference_mode():
            for _, ids, mask in padded_batches(examples, batch):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                rows = logits[:, length // 4 - 1 : -1].float()
                rows.topk(K, dim=-1), rows.logsumexp(-1)

    run = (lambda: teacher_forced(model, examples, K, batch)) if way == "chunked" else full
    teacher_forced(model, examples[:1], K, 1)  # warm-up: lazy allocations, the head check
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS") * 1024
    run()
    peak = _status_kb("VmHWM") * 1024
    return {"weights_bytes": weights, "rss_before": before, "peak": peak, "vocab": vocab}


def measure(way: str, batch: int = BATCH, length: int = LENGTH) -> dict[str, Any]:
    code = f"import json; from harness.bench.extraction_memory import child; print(json.dumps(child({way!r}, {batch}, {length})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"extraction memory child ({way}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run() -> dict[str, Any]:
    if package_folder(ALIASES[MODEL].package) is None or package_folder("gguf") is None:
        return {"extraction_peak_memory_vs_weights": None, "extraction_memory_note": "model packages not installed"}
    load = os.getloadavg()[0]
    out: dict[str, Any] = {}
    for way in ("chunked", "full"):
        m = measure(way)
        ratio = round((m["peak"] - m["rss_before"]) / m["weights_bytes"], 3)
        out["extraction_peak_memory_vs_weights" + ("" if way == "chunked" else "_full_logits")] = ratio
        out["extraction_weights_gb"] = round(m["weights_bytes"] / 1e9, 3)
    out["extraction_memory_setting"] = f"{MODEL} float32, batch {BATCH} x {LENGTH}, k {K}, 1 thread"
    out["extraction_memory_load_avg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return out
