"""Signal extraction: the per-example teachers a fusion method learns from, sharded and cached.

`extract_signals` checks its inputs, builds what both modes share (the target's tokenizer, the cache key's
common part, the process layout) and hands over to training mode (harness/signals/training_mode.py) or
inference mode (harness/signals/inference_mode.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.code_identity import code_hash
from harness.config import JudgeSpec, SignalSpec
from harness.errors import HarnessError
from harness.models import load_tokenizer
from harness.modes import Signal
from harness.signals.align import VOCAB_MAP_VERSION
from harness.signals.alignment import DEFAULT as DEFAULT_ALIGNMENT
from harness.signals.alignment import get_alignment
from harness.signals.candidate_store import Context, ShardCallback, device_of, precision_of, rank_world
from harness.signals.inference_mode import GenerateFn, JudgeLike, inference_stores
from harness.signals.inputs import CorpusRow, ModelHandle, corpus_hash, tokenizer_fingerprint, validate_corpus
from harness.signals.store import SignalSet
from harness.signals.training_mode import training_stores

# bump when what a store holds for the same inputs changes. 2: special tokens mapped by meaning (EOS had landed on
# the target's BOS / padding where roles were shared) and the per-example audit columns; 3: spans in the answer's
# own characters (a first token covering template text pairs only with the same), cut-off generations without an
# end of turn (`finished`), per-token log-probabilities for MinCE over the same text, byte-fallback audit
SIGNALS_VERSION = 3


def signals_code_hash(alignment: str) -> str:
    """The code behind a signal store: this module and what it imports (teacher passes, generation, judges,
    the built-in alignments), and the chosen alignment strategy's module (a plugin's lives elsewhere)."""
    return code_hash(__name__, type(get_alignment(alignment)).__module__)


def extract_signals(
    mode: Signal,
    target: ModelHandle,
    candidates: Sequence[ModelHandle],
    corpus: Sequence[CorpusRow | Mapping[str, Any]],
    spec: SignalSpec,
    judge_spec: JudgeSpec | None,
    cache_dir: Path,
    progress: bool = True,
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    generate_fn: GenerateFn | None = None,
    judge: JudgeLike | None = None,
    judge_models: Mapping[str, Path] | None = None,
    on_shard: ShardCallback | None = None,
) -> SignalSet:
    """Extract (or find in the cache) the signals of `mode` for `target` from `candidates`.

    `candidates` are the sources, plus the target itself when the method makes it a candidate (judges break ties
    by their margin, then by a draw seeded with `seed` and the example id, never by this order). Rank and world size default to accelerate's PartialState (one
    process without `accelerate launch`); with several processes each extracts its shards, then they wait for
    each other. Inference mode only: `generate_fn` (default harness.signals.generate.generate) answers the prompts,
    `judge` (default built from `judge_spec`, its `sandbox-rm:<i>` reward models found in `judge_models`) picks
    the winners. `on_shard(store, index)` is called after each
    shard is written.
    """
    rows = validate_corpus(corpus)
    if not candidates:
        raise HarnessError("signal extraction needs at least one candidate model", "signals")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise HarnessError(f"candidate names must be unique, got {', '.join(names)}", "signals")
    mode = Signal(mode)
    get_alignment(spec.alignment)  # an unknown name is one line before any model loads
    cache_dir = Path(cache_dir)
    rank_, world, state = rank_world(rank, world_size)
    target_tok = load_tokenizer(target.model, target.trust_remote_code)
    ctx = Context(rows, target, target_tok, spec, cache_dir, rank_, world, progress, on_shard, device_of(state))
    common = {
        "version": SIGNALS_VERSION,
        "target_tokens": tokenizer_fingerprint(target_tok, target.chat_template),
        "corpus": corpus_hash(rows),
        "top_k": spec.top_k,
        "max_length": spec.max_length,
        "precision": precision_of(ctx.device),  # bf16 on a GPU gives other numbers than fp32 on a CPU
        "vocab_map": VOCAB_MAP_VERSION,  # how source ids land on target ids
        "code": signals_code_hash(spec.alignment),  # an edited extraction or alignment recomputes the signals
    }
    if spec.alignment != DEFAULT_ALIGNMENT:  # the default stays out of the key: stores from before keep their key
        common["alignment"] = spec.alignment
    if mode is Signal.TRAINING:
        result = SignalSet(mode, target.name, training_stores(ctx, candidates, common))
    else:
        stores, selection = inference_stores(
            ctx, candidates, common, SIGNALS_VERSION, generate_fn, seed, judge_spec, judge, dict(judge_models or {})
        )
        result = SignalSet(mode, target.name, stores, selection)
    if state is not None and world > 1:
        state.wait_for_everyone()
    return result.save(cache_dir / "signals")
