"""LoRA through the shared backend: only adapters train, the merged model is a plain model with new weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import collate, synthetic_items, tiny_model  # tests/ is on sys.path (rootdir-relative)

from harness.config import LoraSpec, MethodSpec, TrainSpec
from harness.errors import HarnessError
from harness.registry import get_method
from harness.training.loop import train
from harness.training.lora import parse_lora, unwrap_for_saving, wrap

pytest.importorskip("peft")


def test_parse_lora_flag() -> None:
    assert parse_lora("r=8,alpha=16,targets=q_proj+v_proj,merge=false") == {
        "r": "8", "alpha": "16", "targets": ["q_proj", "v_proj"], "merge": False}
    with pytest.raises(HarnessError, match="KEY=VALUE"):
        parse_lora("r8")


def test_lora_trains_adapters_only_and_merges(tmp_path: Path) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = LoraSpec(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"], merge=False)
    wrapped = wrap(model, spec)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    method = get_method("fusellm")(MethodSpec(name="fusellm"))
    result = train(
        wrapped, None, synthetic_items(16), collate, method, TrainSpec(max_steps=6, batch_size=4, lr=1e-2), tmp_path,
        seed=0, progress=False,
    )
    merged = unwrap_for_saving(result.model, spec, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    after = merged.state_dict()
    assert set(after) == set(before)  # a plain model again: no adapter weights left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


def test_missing_chat_template_is_a_one_line_error() -> None:
    from harness.chat import render_prompt

    class NoTemplate:
        chat_template = None

    with pytest.raises(HarnessError) as info:
        render_prompt(NoTemplate(), "hi", name="my-model")
    assert "my-model" in info.value.one_line() and "chat_template" in info.value.one_line()
