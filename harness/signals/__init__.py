"""Stage 2, signals: what each source teaches the target, per example, aligned to the target's tokens.

    inputs.py           the corpus and the models, and their fingerprints (cache identity)
    encoding.py         one example in one model's chat format, with the response's character spans
    teacher.py          teacher-forced passes and their alignment onto the target's tokens and vocabulary
    comparable_ce.py    MinCE over the same answer characters for every candidate
    align.py            cross-tokenizer alignment of positions and vocabularies
    alignment.py        the registry of alignment strategies (`signals.alignment`: span, dtw-exact, dtw-mined)
    compare.py          the strategies side by side on one pair (`harness align compare`)
    candidate_store.py  one candidate's sharded, resumable store (both modes)
    training_mode.py    training mode: teacher-forced on the reference (MinCE later picks per example)
    generate.py         inference mode's generation (HF batched generate or vLLM)
    judges.py           inference mode's judges (reference scorer, reward-model vote)
    inference_mode.py   inference mode: generate, teacher-force, judge, keep the winner
    store.py            the Parquet shard format and signal sets
    extract.py          extract_signals: the stage's entry point
    analysis.py         selection statistics (MinCE winners vs judged winners) and the signal audit
"""

from harness.signals.analysis import selection_stats, signal_audit, winner_reference_score
from harness.signals.extract import SIGNALS_VERSION, extract_signals
from harness.signals.inputs import CorpusRow, ModelHandle, load_corpus, validate_corpus
from harness.signals.store import SignalSet

__all__ = [
    "SIGNALS_VERSION",
    "CorpusRow",
    "ModelHandle",
    "SignalSet",
    "extract_signals",
    "load_corpus",
    "selection_stats",
    "signal_audit",
    "winner_reference_score",
    "validate_corpus",
]
