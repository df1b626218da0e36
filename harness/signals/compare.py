"""The alignment strategies side by side on one source -> target pair, the same texts and the same teacher pass.

The source is teacher-forced once on every (prompt, response) in its own chat format, exactly as training mode
does; then each strategy moves that teacher onto the target's tokens and vocabulary. Per strategy, over all
target response tokens:
- coverage: the fraction with an aligned teacher distribution (the rest get the one-hot fallback);
- top-1 agreement: among those, the fraction whose aligned top-1 reads as the source's own top-1 (its text, or
  both stop tokens);
- lost mass: the share of the aligned rows' top-k mass on ids that map to no target id;
- tokens/s: target tokens aligned per second (position pairing, vocabulary mapping, top-k merge; not the audit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.models import load_model, load_tokenizer
from harness.signals.alignment import available_alignments, get_alignment
from harness.signals.candidate_store import pair_vocab_of, source_vocab_size
from harness.signals.encoding import encode_example
from harness.signals.inputs import CorpusRow, ModelHandle
from harness.signals.teacher import aligned_teacher, aligned_teacher_with_audit, teacher_forced


@dataclass(frozen=True)
class StrategyFigures:
    """One strategy's figures over all texts."""

    strategy: str
    target_tokens: int
    coverage: float
    top1_agreement: float | None
    lost_mass: float | None
    tokens_per_s: float


def compare_alignments(
    target: ModelHandle, source: ModelHandle, rows: Sequence[CorpusRow], cache_dir: Path, *,
    strategies: Sequence[str] | None = None, top_k: int = 10, max_length: int = 256, batch_size: int = 8,
    repeats: int = 3,
) -> list[StrategyFigures]:
    """Every strategy (default: all registered) on `rows`; alignment timed as the best of `repeats` passes."""
    names = list(strategies) if strategies else list(available_alignments())
    chosen = [get_alignment(n) for n in names]  # an unknown name fails before any model loads
    target_tok = load_tokenizer(target.model, target.trust_remote_code)
    source_tok = load_tokenizer(source.model, source.trust_remote_code)
    model = load_model(source.model, "float32", "cpu", trust_remote_code=source.trust_remote_code)
    src = [encode_example(source_tok, r.prompt, r.reference, source.chat_template, max_length, source.name) for r in rows]
    tgt = [encode_example(target_tok, r.prompt, r.reference, target.chat_template, max_length, target.name) for r in rows]
    passes = teacher_forced(model, src, top_k, batch_size, pad_id=source_tok.pad_token_id or 0)
    vocab = pair_vocab_of(target, target_tok, source, source_tok, source_vocab_size(model, source_tok), cache_dir)
    del model
    vocab.resolve(np.concatenate([p.top_ids.reshape(-1) for p in passes] + [e.ids for e in src]))
    exact = vocab.exact_map()
    n_target = sum(t.n_response for t in tgt)
    out = []
    for strategy in chosen:
        top_map = exact if strategy.vocab == "exact" else None
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            for t, s, p in zip(tgt, src, passes, strict=True):
                aligned_teacher(t, s, p, vocab.vmap, top_k, strategy, top_map)
            best = min(best, time.perf_counter() - start)
        aligned = same = mass = lost = 0.0
        for t, s, p in zip(tgt, src, passes, strict=True):
            _, _, n_aligned, audit = aligned_teacher_with_audit(t, s, p, vocab.vmap, top_k, vocab.audit, strategy, top_map)
            aligned += n_aligned
            same += audit["audit_top1_same"]
            mass += audit["audit_mass"]
            lost += audit["audit_lost_mass"]
        out.append(StrategyFigures(
            strategy.name, n_target, aligned / max(n_target, 1), same / aligned if aligned else None,
            lost / mass if mass else None, n_target / best if best > 0 else float("inf"),
        ))  # fmt: skip
    return out


def as_dicts(figures: Sequence[StrategyFigures]) -> list[dict[str, object]]:
    return [asdict(f) for f in figures]
