"""LoRA through peft for every method: wrap the target before training, merge (or keep the adapter) after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import LoraSpec
from harness.errors import HarnessError


def parse_lora(text: str) -> dict[str, Any]:
    """`r=16,alpha=32,targets=q_proj+v_proj,merge=false` -> LoraSpec fields (validated by pydantic later)."""
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise HarnessError(f"--lora expects KEY=VALUE pairs such as r=16,alpha=32, got '{part}'", "cli")
        key, value = (x.strip() for x in part.split("=", 1))
        if key == "targets":
            fields[key] = [t for t in value.split("+") if t]
        elif key == "merge":
            fields[key] = value.lower() in ("1", "true", "yes")
        else:
            fields[key] = value
    return fields


def wrap(model: Any, spec: LoraSpec) -> Any:
    """The model with trainable LoRA adapters (all other weights frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise HarnessError("LoRA needs peft: pip install 'fusion-harness[lora]'", "train") from None
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.targets, task_type="CAUSAL_LM"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise HarnessError(f"LoRA: {exc}".splitlines()[0], "train") from None


def unwrap_for_saving(model: Any, spec: LoraSpec, adapter_dir: Path) -> Any:
    """The plain model to save: adapters merged; with merge=false the adapter is also written to `adapter_dir`."""
    if not spec.merge:
        model.save_pretrained(adapter_dir)
    return model.merge_and_unload()
