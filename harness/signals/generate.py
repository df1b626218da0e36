"""Generation behind one interface: HF `model.generate` on CPU (or any in-memory model), vLLM on a CUDA GPU.

Inference mode needs every source to answer the same prompts. `generate` renders each raw prompt with the
model's own chat template (harness.chat.render_prompt), tokenizes it adding no special tokens but the BOS a
model expects where its template does not write one (harness.chat.tokenize_chat), and returns only the
response text: the new tokens, decoded, cut at the end of turn or EOS and at the first stop string. Both backends decode the response in the context of the
prompt, so a leading space the model generated is kept (sentencepiece would drop it when decoding alone).

Sampling is pure temperature sampling on both backends (no top-k / top-p), greedy when `do_sample=False`.

Backends (`select_backend`):
- `hf`: batched `model.generate` with left padding, prompts sorted by length (longest first, so an
  out-of-memory error shows up at once) and returned in input order; `torch.manual_seed(seed + batch index)`
  before each batch makes sampled outputs reproducible for the same inputs and batch size.
- `vllm`: `vllm.LLM(model=<path>, ...)` with `SamplingParams(max_tokens, temperature, stop, seed)`; needs a
  model *path* (vLLM loads weights itself) and a CUDA GPU. Tensor parallelism, memory and context length come
  from `VLLMOptions` (the experiment's `signals.vllm`, harness/config.py VLLMSpec). For data
  parallelism run one process per GPU (group), each on its shard of the prompts: the signal stage shards by
  rank, so nothing here needs to know about it.
- `auto`: vLLM when it is importable, a CUDA GPU is present and `model` is a path; HF otherwise.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.chat import end_of_turn_id, render_prompt, tokenize_chat
from harness.errors import HarnessError

BACKENDS = ("auto", "hf", "vllm")


class Generated(str):
    """A response's text that also says whether it ended by itself (end of turn, EOS or a stop string) or was
    cut off at max_new_tokens. A cut-off response must never be taught as finished: harness/signals/encoding.py
    encodes it without the end-of-turn token."""

    finished: bool

    def __new__(cls, text: str, finished: bool = True) -> Generated:
        out = super().__new__(cls, text)
        out.finished = finished
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (Generated, (str(self), self.finished))


@dataclass(frozen=True)
class VLLMOptions:
    """Engine settings handed to `vllm.LLM` (documented defaults are vLLM's own)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"

    def llm_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        return kwargs


def vllm_available() -> bool:
    """Whether `import vllm` would succeed, without importing it (importing vLLM takes seconds)."""
    if sys.modules.get("vllm") is not None:
        return True
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def select_backend(requested: str, model_is_path: bool) -> str:
    """`hf` or `vllm` for a requested backend (`auto`, `hf`, `vllm`); a HarnessError when vLLM cannot run."""
    if requested not in BACKENDS:
        raise HarnessError(f"unknown generation backend '{requested}'; choose one of {', '.join(BACKENDS)}", "signals")
    if requested == "hf":
        return "hf"
    usable = vllm_available() and cuda_available()
    if requested == "auto":
        return "vllm" if usable and model_is_path else "hf"
    if not model_is_path:
        raise HarnessError("backend 'vllm' needs a model path, not an in-memory model; use backend 'hf'", "signals")
    if not vllm_available():
        raise HarnessError("backend 'vllm' needs vLLM: `pip install 'fusion-harness[vllm]'` on a CUDA host", "signals")
    if not cuda_available():
        raise HarnessError("backend 'vllm' needs a CUDA GPU and none is visible; use backend 'hf'", "signals")
    return "vllm"


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    stop: list[str] | None = None,
    batch_size: int = 16,
    seed: int = 0,
    chat_template: str | None = None,
    backend: str = "auto",
    progress: bool = True,
    vllm_options: VLLMOptions | None = None,
) -> list[Generated]:
    """Responses of `model` to raw user `prompts`, in input order, as `Generated` strings (`.finished`: False
    where generation stopped at max_new_tokens).

    `model` is an in-memory transformers causal LM or a model folder / spec (str or Path, see harness.models;
    `sandbox:` specs must be resolved to their folder first); `tokenizer` may be None when `model` is a path
    (it is then loaded from there). A path on the HF backend loads in bfloat16 on a GPU, float32 on CPU.
    """
    if not prompts:
        return []
    if batch_size < 1 or max_new_tokens < 1:
        raise HarnessError("generation needs batch_size >= 1 and max_new_tokens >= 1", "signals")
    if do_sample and temperature <= 0:
        raise HarnessError("sampling needs temperature > 0 (use do_sample=False for greedy decoding)", "signals")
    is_path = isinstance(model, (str, Path))
    chosen = select_backend(backend, is_path)
    resolved = None
    if is_path:
        from harness.models import resolve

        resolved = resolve(str(model))
        if tokenizer is None:
            from harness.models import load_tokenizer

            tokenizer = load_tokenizer(resolved)
    if tokenizer is None:
        raise HarnessError("generate() needs a tokenizer for an in-memory model", "signals")
    texts = [render_prompt(tokenizer, p, chat_template) for p in prompts]
    stops = [s for s in (stop or []) if s]
    if chosen == "vllm":
        assert resolved is not None
        return _generate_vllm(
            resolved, tokenizer, texts, max_new_tokens, do_sample, temperature, stops, seed, progress,
            vllm_options or VLLMOptions(), chat_template,
        )
    if resolved is not None:
        from harness.models import load_model

        on_gpu = cuda_available()
        model = load_model(resolved, dtype="bfloat16" if on_gpu else "float32", device="cuda" if on_gpu else "cpu")
    return _generate_hf(
        model, tokenizer, texts, max_new_tokens, do_sample, temperature, stops, batch_size, seed, progress, chat_template
    )


def finish_response(text: str, stop: Sequence[str], eos_text: str | None, stopped: bool = True) -> Generated:
    """Cut decoded text at the first EOS text and the first stop string (whichever comes first); finished when
    it was cut there or the backend saw it stop (`stopped`)."""
    cuts = [text.find(s) for s in (*stop, *([eos_text] if eos_text else []))]
    cuts = [c for c in cuts if c >= 0]
    return Generated(text[: min(cuts)], True) if cuts else Generated(text, stopped)


def _eos_ids(model: Any, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """Where a response ends: EOS of the tokenizer and of the model's generation config, and the end-of-turn
    token of the chat format (Gemma ends turns with `<end_of_turn>`, not EOS)."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos, end_of_turn_id(tokenizer, chat_template)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


@contextmanager
def _left_padded(tokenizer: Any, pad_id: int) -> Iterator[None]:
    """Left padding (decoder-only batched generation needs it) and a pad token, restored afterwards."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def _decode_response(tokenizer: Any, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Decode new tokens in the context of the prompt, keeping the leading space the model generated."""
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
    if full.startswith(head):
        return full[len(head) :]
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not enabled, transient=True,
    )


def _generate_hf(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    stop: list[str],
    batch_size: int,
    seed: int,
    progress: bool,
    chat_template: str | None = None,
) -> list[Generated]:
    import torch

    eos_ids = _eos_ids(model, tokenizer, chat_template)
    if not eos_ids:
        raise HarnessError("the tokenizer has no EOS token; generation could not tell where a response ends", "model")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = [list(tokenize_chat(tokenizer, t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # stable: equal lengths keep input order
    sampling: dict[str, Any] = {"do_sample": False}
    if do_sample:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out: list[Generated] = [Generated("")] * len(texts)
    device = next(model.parameters()).device
    with torch.inference_mode(), _left_padded(tokenizer, pad_id), _progress_bar(progress) as bar:
        task = bar.add_task("generating", total=len(texts))
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt")
            torch.manual_seed(seed + b)
            gen = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                **({"stop_strings": stop, "tokenizer": tokenizer} if stop else {}),
                **sampling,
            )
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()
                cut = next((j for j, t in enumerate(new) if t in eos_ids), len(new))
                text = _decode_response(tokenizer, encoded[i], new[:cut])
                out[i] = finish_response(text, stop, tokenizer.eos_token, stopped=cut < len(new))
            bar.advance(task, len(idx))
    return out


def _generate_vllm(
    resolved: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    stop: list[str],
    seed: int,
    progress: bool,
    options: VLLMOptions,
    chat_template: str | None = None,
) -> list[Generated]:
    """One engine per call, released afterwards so the next source's engine finds the GPU memory free."""
    import vllm

    weights = str(Path(resolved.pretrained) / resolved.gguf_file) if resolved.gguf_file else resolved.pretrained
    llm = vllm.LLM(model=weights, tokenizer=resolved.pretrained, seed=seed, **options.llm_kwargs())
    params = vllm.SamplingParams(
        n=1,
        max_tokens=max_new_tokens,
        temperature=temperature if do_sample else 0.0,
        top_p=1.0,
        stop=stop or None,
        stop_token_ids=[i for i in [end_of_turn_id(tokenizer, chat_template)] if i is not None] or None,
        seed=seed,
    )
    # Token ids, not text: vLLM would otherwise add a second BOS in front of the rendered chat template.
    requests = [{"prompt_token_ids": list(tokenize_chat(tokenizer, t)["input_ids"])} for t in texts]
    try:
        results = llm.generate(requests, params, use_tqdm=progress)
        return [
            finish_response(r.outputs[0].text, stop, tokenizer.eos_token, stopped=r.outputs[0].finish_reason != "length")
            for r in results
        ]
    finally:
        del llm
        gc.collect()
        if cuda_available():
            import torch

            torch.cuda.empty_cache()
