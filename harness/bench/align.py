"""Alignment benchmark: offsets + windowed DP against FuseLLM's whole-sequence DP, on the same sequences, and
every alignment strategy's pairing (harness/signals/alignment.py) against that same naive DP, in the same run.

Also home of the two small heterogeneous tokenizers the alignment and signal tests use: a GPT-2-style
byte-level BPE and a SentencePiece-style BPE ('▁' word markers, split digits, '<0xNN>' byte fallback), trained
on different halves of a generated text so that they cut words differently.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import numpy as np

from harness.signals.align import Tokenization, align, align_naive, build_vocab_map, tile_offsets
from harness.signals.alignment import available_alignments

# Two chat formats of the usual shapes: a Zephyr-like one ending turns with EOS and a newline, Llama-2's [INST].
BYTELEVEL_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n<|assistant|>\n"
    "{% else %}{{ m['content'] + eos_token }}\n{% endif %}{% endfor %}"
)
SENTENCEPIECE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ter",
    "an",
    "su",
    "ri",
    "pe",
    "do",
    "qua",
    "zen",
    "el",
    "or",
    "th",
    "is",
    "ve",
)
_EXTRA = ("é", "ß", "→", "naïve", "über", "日本")


def make_texts(n: int, seed: int = 0, words: tuple[int, int] = (4, 16)) -> list[str]:
    """Sentences of invented words with numbers, punctuation and a little non-ASCII text."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(*words)):
            r = rng.random()
            if r < 0.08:
                parts.append(str(rng.randint(0, 9999)))
            elif r < 0.11:
                parts.append(rng.choice(_EXTRA))
            else:
                parts.append(rng.choice(lexicon).capitalize() if rng.random() < 0.1 else rng.choice(lexicon))
        line = " ".join(parts)
        lines.append(line + rng.choice([".", "?", "!", ",", ": 3+4=7.", " (ok)."]))
    return lines


def bytelevel_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE ('Ġ' marks spaces): a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = BYTELEVEL_TEMPLATE
    return fast


def sentencepiece_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A SentencePiece-style BPE ('▁' word markers, split digits, '<0xNN>' byte-fallback vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):  # byte-fallback pieces are ordinary vocabulary entries, as in Llama's tokenizer
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = SENTENCEPIECE_TEMPLATE
    return fast


def gemma_shaped(tokenizer: Any) -> Any:
    """A SentencePiece-style tokenizer (`sentencepiece_tokenizer`) in the shape of Gemma's tokenizer.json: the
    256 byte-fallback pieces `<0x00>`..`<0xFF>` at low ids, right after the special tokens (Gemma, Llama-2 and
    Vicuna keep them there, so every single character has two ids: its own piece and its byte), spaces turned into
    '▁' by a `Replace` normalizer with no dummy prefix, and a `Replace` / `ByteFallback` / `Fuse` decoder."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    specials = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t in ("<unk>", "<s>", "</s>")]
    rest = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials and t not in byte_pieces]
    spec["model"]["vocab"] = {t: i for i, t in enumerate([*specials, *byte_pieces, *rest])}
    spec["added_tokens"] = [{**a, "id": spec["model"]["vocab"][a["content"]]} for a in spec.get("added_tokens", [])]
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    spec["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    ]}  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>",
    )
    fast.chat_template = tokenizer.chat_template
    return fast


def with_specials(
    tokenizer: Any, roles: dict[str, str], extra: tuple[str, ...] = (), add_bos: bool = False, template: str | None = None,
    unflagged: tuple[str, ...] = (),
) -> Any:
    """The same vocabulary in another shape: special-token `roles` (e.g. {"eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>"}), `extra` special tokens (end-of-turn markers), BOS added to plain text by the
    tokenizer itself (`add_bos`, as Llama and Gemma tokenizers do) and a chat template. New strings become
    special tokens at the end of the vocabulary; `unflagged` ones become added tokens without the special flag."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    names = list(dict.fromkeys([*roles.values(), *extra]))
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in names])
    backend.add_tokens([AddedToken(s, special=False, normalized=False) for s in unflagged])
    if add_bos:
        bos = roles["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    else:
        backend.post_processor = None
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    fast.chat_template = template
    return fast


def tokenizer_pair(seed: int = 0, sizes: tuple[int, int] = (700, 900), n_texts: int = 600) -> tuple[Any, Any]:
    """(byte-level BPE, SentencePiece-style BPE), each trained on its own half of the generated text."""
    texts = make_texts(n_texts, seed)
    return bytelevel_tokenizer(texts[::2], sizes[0]), sentencepiece_tokenizer(texts[1::2], sizes[1])


def tokenize(tokenizer: Any, text: str) -> Tokenization:
    return tokenize_with_ids(tokenizer, text)[0]


def tokenize_with_ids(tokenizer: Any, text: str) -> tuple[Tokenization, np.ndarray]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    spans = tile_offsets(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2))
    return Tokenization(text, spans), np.asarray(enc["input_ids"], dtype=np.int64)


def _best_of(repeats: int, fn: Any) -> tuple[float, Any]:
    """The fastest of `repeats` calls (a shared machine slows some calls down) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(
    n_sequences: int = 12, sentences: int = 30, fast_repeats: int = 20, seed: int = 1
) -> dict[str, float]:
    """Tokens aligned per second (fast path, and each strategy's pairing) and the speed-up over the naive DP,
    asserting identical paths; the naive DP runs once, in the same process, on the same sequences."""
    target_tok, source_tok = tokenizer_pair()
    rng = random.Random(seed)
    pool = make_texts(2000, seed + 100)
    pairs, ids = [], []
    for _ in range(n_sequences):
        text = " ".join(rng.choice(pool) for _ in range(sentences))
        (t, t_ids), (s, s_ids) = tokenize_with_ids(target_tok, text), tokenize_with_ids(source_tok, text)
        pairs.append((t, s))
        ids.append((t_ids, s_ids))
    vmap = build_vocab_map(source_tok, target_tok)
    t_fast, fast = _best_of(fast_repeats, lambda: [align(t, s) for t, s in pairs])
    start = time.perf_counter()
    naive = [align_naive(t, s) for t, s in pairs]
    t_naive = time.perf_counter() - start
    for f, n in zip(fast, naive, strict=True):
        assert f.path() == n.path() and np.array_equal(f.same_span, n.same_span), (
            "fast and naive alignments differ"
        )
    n_target = sum(len(t) for t, _ in pairs)
    figures: dict[str, float] = {
        "align_tokens_per_s": round(n_target / t_fast),
        "align_speedup_vs_naive": round(t_naive / t_fast, 1),
        "align_mean_target_tokens": round(n_target / len(pairs), 1),
        "align_same_span_fraction": round(float(np.mean([(f.same_span >= 0).mean() for f in fast])), 3),
        "align_naive_tokens_per_s": round(n_target / t_naive),
    }
    for name, cls in available_alignments().items():
        strategy = cls()
        took, matched = _best_of(
            max(3, fast_repeats // 4),
            lambda strategy=strategy: [
                strategy.match(t, s, ti, si, vmap) for (t, s), (ti, si) in zip(pairs, ids, strict=True)
            ],
        )
        key = name.replace("-", "_")
        figures[f"align_{key}_tokens_per_s"] = round(n_target / took)
        figures[f"align_{key}_speedup_vs_naive"] = round(t_naive / took, 1)
        figures[f"align_{key}_coverage"] = round(sum(int((m >= 0).sum()) for m in matched) / n_target, 3)
    return figures
