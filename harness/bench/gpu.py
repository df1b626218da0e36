"""The GPU check (`nox -s gpu`): one prepared script, under 8 minutes on one H100, that checks itself.

Sections, each timed, each with pass/fail checks, all written to results/gpu.json (exit 1 if a check fails):
1. fusion_step: a bf16 fusion training step (FuseLLM's loss, top-k teacher at every response token; the code
   harness/training/loop.py runs, via bench/fusion_step.py) of a ~1B-parameter Llama-shaped model built from a
   config (random init, nothing downloaded): tokens/s and MFU = 6 * parameters * tokens/s / peak bf16 FLOP/s
   (attention FLOPs left out, as in the PaLM accounting; --peak-tflops, default the H100 SXM dense figure).
2. extraction: the teacher pass of harness/signals/teacher.py on that model in bf16 with a 128,256-token vocabulary
   (Llama-3's): tokens/s and peak memory above the weights, chunked, against the same pass with full logits.
3. generation: HF `generate` against vLLM on the sandbox world's target (new tokens/s), where vLLM is installed.
4. pipeline: `harness run` on the sandbox world on CUDA (a short run: 256 corpus examples, 20 updates, 20
   documents per task); checks it finishes and trained on cuda.
5. fsdp: the same run under `--num-processes N --accelerate-config fsdp` over the N GPUs present (N >= 2).

`--tiny` runs sections 1-2 on a tiny model on whatever device there is (CPU included) and skips 3-5: the test
suite runs it, so the script's own logic is checked without a GPU. Run the full check whenever a GPU machine is
available and put its figures, with the card, in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.store import atomic_write_json, package_versions

FULL = {"vocab": 32000, "hidden": 2048, "layers": 16, "batch": 8, "length": 1024, "prompt": 256, "k": 10}
TINY = {"vocab": 4096, "hidden": 64, "layers": 2, "batch": 4, "length": 128, "prompt": 16, "k": 10}
EXTRACTION_VOCAB = {"full": 128256, "tiny": 32768}
TINY_CHUNK_LOGITS = 2**20  # --tiny: a batch's 16M logits go through the head in chunks of 1M, as a real vocabulary's would
PIPELINE = ["run", "--method", "profuser", "--tasks", "sandbox", "--limit", "20", "-q", "--set", "corpus.limit=256",
            "--set", "train.max_steps=20", "--set", "eval.compare_sources=false"]  # fmt: skip


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fusion_step(setup: dict[str, Any], peak_tflops: float, steps: int) -> dict[str, Any]:
    from harness.bench.fusion_step import _steps

    device = _device()
    step = _steps(setup, device)["fusellm"]  # bf16 autocast over fp32 master weights on CUDA, as the loop runs
    params = sum(p.numel() for p in _model_params(setup))
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    tokens_per_s = setup["batch"] * setup["length"] / median
    return {
        "params": params, "step_s_median": round(median, 4), "tokens_per_s": round(tokens_per_s),
        "mfu": float(f"{6 * params * tokens_per_s / (peak_tflops * 1e12):.3g}"), "peak_tflops_assumed": peak_tflops,
        "setup": setup,
    }  # fmt: skip


def _model_params(setup: dict[str, Any]) -> list[torch.nn.Parameter]:
    from harness.bench.fusion_step import _model

    with torch.device("meta"):
        return list(_model(**setup).parameters())


def extraction(setup: dict[str, Any], vocab: int) -> dict[str, Any]:
    """Chunked teacher pass against full logits on the same batch: tokens/s and peak memory above the weights."""
    import numpy as np

    from harness.bench.fusion_step import _model
    from harness.signals.encoding import Encoded
    from harness.signals.teacher import padded_batches, teacher_forced

    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = _model(**{**setup, "vocab": vocab}).to(device=device, dtype=dtype).eval()
    rng = np.random.default_rng(0)
    n, length, prompt = setup["batch"], setup["length"], setup["prompt"]
    examples = [Encoded(rng.integers(0, vocab, length), prompt, None) for _ in range(n)]  # type: ignore[arg-type]

    def full() -> None:
        with torch.inference_mode():
            for _, ids, mask in padded_batches(examples, n):
                rows = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, prompt - 1 : -1].float()
                rows.topk(setup["k"], dim=-1), rows.logsumexp(-1)

    out: dict[str, Any] = {"vocab": vocab, "dtype": str(dtype).rsplit(".", 1)[-1]}
    for name, fn in (("chunked", lambda: teacher_forced(model, examples, setup["k"], n)), ("full_logits", full)):
        fn()  # warm-up
        peak_before = _peak_reset(device)
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds = time.perf_counter() - start
        out[name] = {"tokens_per_s": round(n * length / seconds), "peak_extra_mb": round((_peak(device) - peak_before) / 2**20, 1)}
    return out


def _peak_reset(device: torch.device) -> int:
    """Reset the peak-memory mark; returns the memory resident now (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    Path("/proc/self/clear_refs").write_text("5")
    return _rss("VmRSS")


def _peak(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else _rss("VmHWM")


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def generation(n_prompts: int = 64, max_new_tokens: int = 64) -> dict[str, Any]:
    """New tokens/s of HF generate and of vLLM on the sandbox world's target, the same prompts greedy."""
    from harness.sandbox.build import build_world
    from harness.signals import load_corpus
    from harness.signals.generate import generate, vllm_available

    world = build_world(size="default", seed=0, progress=False)  # the packaged reference world: seconds
    prompts = [r.prompt for r in load_corpus(world.corpus_path, limit=n_prompts)]
    path = str(world.models[world.target])
    out: dict[str, Any] = {"model": world.target, "prompts": len(prompts), "max_new_tokens": max_new_tokens}
    backends = ["hf"] + (["vllm"] if vllm_available() else [])
    for backend in backends:
        generate(path, None, prompts[:2], max_new_tokens=4, backend=backend, progress=False)  # load, warm up
        start = time.perf_counter()
        texts = generate(path, None, prompts, max_new_tokens=max_new_tokens, batch_size=32, backend=backend, progress=False)
        seconds = time.perf_counter() - start
        from harness.models import ResolvedModel, load_tokenizer

        tok = load_tokenizer(ResolvedModel(path))
        new = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        out[backend] = {"new_tokens_per_s": round(new / seconds), "seconds": round(seconds, 2)}
    if "vllm" not in out:
        out["vllm"] = "not installed"
    return out


def harness_run(extra: list[str], timeout: int) -> dict[str, Any]:
    """`harness run` on the sandbox world in a fresh cache and results folder; rc, seconds, training engine."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HARNESS_CACHE_DIR": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "harness.cli", *PIPELINE, "--out", str(Path(tmp) / "out"), *extra],
                              env=env, capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
        seconds = time.perf_counter() - start
        runs = sorted((Path(tmp) / "out").glob("*/manifest.json"))
        manifest = json.loads(runs[-1].read_text()) if runs else {}
    return {"rc": proc.returncode, "seconds": round(seconds, 1), "training": manifest.get("training"),
            "status": manifest.get("status"), "stderr_tail": proc.stderr[-600:] if proc.returncode else ""}  # fmt: skip


def checks(figures: dict[str, Any], tiny: bool) -> dict[str, bool]:
    """What must hold for the check to pass: finite, plausible figures; the chunked pass smaller than full logits."""
    out: dict[str, bool] = {}
    step = figures.get("fusion_step", {})
    out["fusion_step runs, 0 < MFU < 1"] = isinstance(step, dict) and 0 < step.get("mfu", 0) < 1
    ext = figures.get("extraction", {})
    if isinstance(ext, dict) and "chunked" in ext:
        out["extraction: chunked peak below full logits"] = ext["chunked"]["peak_extra_mb"] < ext["full_logits"]["peak_extra_mb"]
    if not tiny:
        out["fusion_step on cuda"] = figures.get("device") == "cuda"
        gen = figures.get("generation", {})
        out["generation: HF runs"] = isinstance(gen, dict) and gen.get("hf", {}).get("new_tokens_per_s", 0) > 0
        run = figures.get("pipeline", {})
        out["pipeline finishes on cuda"] = run.get("rc") == 0 and (run.get("training") or {}).get("device") == "cuda"
        fsdp = figures.get("fsdp", {})
        if isinstance(fsdp, dict) and "rc" in fsdp:
            out["fsdp over the GPUs finishes"] = fsdp["rc"] == 0 and "FSDP" in (fsdp.get("training") or {}).get("engine", "")
    return out


def run(tiny: bool = False, peak_tflops: float = 989.0) -> dict[str, Any]:
    device = _device()
    figures: dict[str, Any] = {"device": device.type, "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                               "gpus": torch.cuda.device_count(), "tiny": tiny}  # fmt: skip
    setup = TINY if tiny else FULL
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("fusion_step", lambda: fusion_step(setup, peak_tflops, 3 if tiny else 10)),
        ("extraction", lambda: extraction(setup, EXTRACTION_VOCAB["tiny" if tiny else "full"])),
    ]
    from harness.signals import teacher

    chunk = teacher.CHUNK_LOGITS
    if tiny:
        teacher.CHUNK_LOGITS = TINY_CHUNK_LOGITS
    else:
        sections += [("generation", generation), ("pipeline", lambda: harness_run([], 240))]
        if torch.cuda.device_count() >= 2:
            n = str(torch.cuda.device_count())
            sections.append(("fsdp", lambda: harness_run(["--num-processes", n, "--accelerate-config", "fsdp"], 240)))
        else:
            figures["fsdp"] = f"skipped: {torch.cuda.device_count()} GPU here, FSDP needs 2 or more"
    seconds: dict[str, float] = {}
    for name, fn in sections:
        start = time.perf_counter()
        try:
            figures[name] = fn()
        except Exception as exc:  # a failed section is a failed check, and the others still run
            figures[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        seconds[name] = round(time.perf_counter() - start, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    teacher.CHUNK_LOGITS = chunk
    figures["section_seconds"] = seconds
    figures["checks"] = checks(figures, tiny)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/gpu.json"))
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--tiny", action="store_true", help="A tiny model on any device, sections 1-2 only (seconds).")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("harness: gpu: the GPU check needs a CUDA device and none is visible (--tiny runs its logic on CPU)")
    start = time.perf_counter()
    figures = run(args.tiny, args.peak_tflops)
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(args.out, {"figures": figures, "packages": package_versions()})
    print(json.dumps(figures, indent=2, default=str))
    failed = [name for name, ok in figures["checks"].items() if not ok]
    if failed:
        raise SystemExit(f"harness: gpu: {len(failed)} check(s) failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
