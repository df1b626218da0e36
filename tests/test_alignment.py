"""Alignment strategies (harness/signals/alignment.py) on hand-built token sequences with known answers, against
FuseLLM's rule on the whole-sequence DTW, through the teacher and through the signal cache key."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from harness.bench.align import make_texts, tokenize, tokenizer_pair
from harness.config import SignalSpec
from harness.errors import HarnessError
from harness.signals.align import Tokenization, align_naive
from harness.signals.alignment import available_alignments, get_alignment
from harness.signals.candidate_store import PairVocab
from harness.signals.encoding import Encoded
from harness.signals.teacher import AuditVocab, TeacherPass, aligned_teacher
from tests.test_align import by_pieces

# target 'x' | 'a' | 'ay' | EOS ; source 'xa' | 'a' | 'y' | EOS: only EOS has the same span, but the DTW path
# is the diagonal and pairs the two 'a' (same text, different spans) and 'x' with 'xa'
TEXT = "xaay\x00"
TARGET = by_pieces(TEXT, ["x", "a", "ay", "\x00"])
SOURCE = by_pieces(TEXT, ["xa", "a", "y", "\x00"])
TARGET_IDS = np.array([10, 11, 12, 13])
SOURCE_IDS = np.array([50, 51, 52, 53])


def mined_map() -> np.ndarray:
    vmap = np.full(60, -1, dtype=np.int64)
    vmap[50] = 10  # 'xa' -> 'x' by minimum edit distance
    vmap[51] = 11  # 'a' -> 'a' exactly
    vmap[52] = 19  # 'y' -> some other target token, not 'ay'
    vmap[53] = 13  # EOS -> EOS
    return vmap


@pytest.mark.parametrize(
    "name,expected",
    [
        ("span", [-1, -1, -1, 3]),  # only identical spans
        ("dtw-exact", [-1, 1, -1, 3]),  # 1:1 path pairs whose texts match: the two 'a' too
        ("dtw-mined", [0, 1, -1, 3]),  # and 'x' <- 'xa', whose id maps onto 'x' through the mined map
        ("dtw-mined-fusellm", [0, 1, -1, 3]),
    ],
)
def test_each_strategy_pairs_the_known_tokens(name: str, expected: list[int]) -> None:
    got = get_alignment(name).match(TARGET, SOURCE, TARGET_IDS, SOURCE_IDS, mined_map())
    assert got.tolist() == expected


def test_a_target_token_with_two_source_tokens_on_the_path_is_not_one_to_one() -> None:
    # target 'ab' | 'c' | EOS ; source 'a' | 'b' | 'c' | EOS: 'ab' takes two source tokens, so only 'c' and EOS pair
    text = "abc\x00"
    target, source = by_pieces(text, ["ab", "c", "\x00"]), by_pieces(text, ["a", "b", "c", "\x00"])
    vmap = np.arange(60)
    for name in ("dtw-exact", "dtw-mined"):
        got = get_alignment(name).match(target, source, np.array([5, 6, 7]), np.array([1, 2, 6, 7]), vmap)
        assert got.tolist() == [-1, 2, 3], name


def test_empty_pieces_never_pair() -> None:
    # a filler with an empty span on each side (Llama-2's space before </s>) has no text to predict
    text = "ab\x00"
    target = Tokenization(text, np.array([[0, 2], [2, 2], [2, 3]]))
    source = Tokenization(text, np.array([[0, 2], [2, 2], [2, 3]]))
    got = get_alignment("dtw-exact").match(target, source, np.array([1, 2, 3]), np.array([1, 2, 3]), np.arange(5))
    assert got.tolist() == [0, -1, 2]


def fusellm_rule(target: Tokenization, source: Tokenization, mapped_equal: np.ndarray | None) -> list[int]:
    """FuseLLM's transform_step_logits, literally, on the whole-sequence DTW: a target token with exactly one
    source token on the path, whose strings match (hard) or whose source maps onto it (soft)."""
    path = align_naive(target, source)
    groups = path.groups()
    out = []
    for i, g in enumerate(groups):
        ok = len(g) == 1 and target.piece(i) != "" and target.piece(i) == source.piece(g[0])
        if len(g) == 1 and mapped_equal is not None:
            ok = ok or bool(mapped_equal[i, g[0]])
        out.append(g[0] if ok else -1)
    return out


def test_windowed_strategies_equal_fusellm_rule_on_the_whole_sequence_dtw() -> None:
    target_tok, source_tok = tokenizer_pair()
    rng = random.Random(7)
    pool = make_texts(300, 5)
    for _ in range(6):
        text = " ".join(rng.choice(pool) for _ in range(3))
        t, s = tokenize(target_tok, text), tokenize(source_tok, text)
        t_ids = np.arange(len(t)) + 1000  # ids such that the mined map pairs every third source token
        s_ids = np.arange(len(s))
        vmap = np.full(len(s), -1, dtype=np.int64)
        vmap[::3] = (np.arange(len(s))[::3] % len(t)) + 1000
        mapped_equal = vmap[s_ids][None, :] == t_ids[:, None]
        assert get_alignment("dtw-exact").match(t, s, t_ids, s_ids, vmap).tolist() == fusellm_rule(t, s, None)
        assert get_alignment("dtw-mined").match(t, s, t_ids, s_ids, vmap).tolist() == fusellm_rule(t, s, mapped_equal)
        span = get_alignment("span").match(t, s, t_ids, s_ids, vmap)
        assert (span >= 0).sum() > 0.5 * len(t)


def encoded(ids: np.ndarray, tok: Tokenization, prompt: int = 2) -> Encoded:
    return Encoded(np.concatenate([np.arange(prompt) + 900, ids]), prompt, tok)


def teacher() -> TeacherPass:
    top_ids = np.array([[50, 51, 52], [51, 50, 52], [52, 51, 50], [53, 50, 51]])
    top_logp = np.log(np.tile([0.6, 0.3, 0.1], (4, 1))).astype(np.float32)
    return TeacherPass(1.0, top_ids, top_logp, np.ones(4, dtype=bool))


def test_fallback_is_on_the_next_token_and_fusellm_reference_on_the_current_one() -> None:
    target, source = encoded(TARGET_IDS, TARGET), encoded(SOURCE_IDS, SOURCE)
    vmap = mined_map()
    ids, logp, n = aligned_teacher(target, source, teacher(), vmap, 3, get_alignment("dtw-mined"))
    assert n == 3
    assert ids[2].tolist() == [12, 0, 0] and logp[2, 0] == 0 and np.isneginf(logp[2, 1:]).all()  # token 2 itself
    ids_ref, logp_ref, _ = aligned_teacher(target, source, teacher(), vmap, 3, get_alignment("dtw-mined-fusellm"))
    assert ids_ref[2, 0] == 11  # FuseLLM: the token at the predicting position, one before
    assert np.array_equal(ids_ref[[0, 1, 3]], ids[[0, 1, 3]])  # aligned rows are the same
    # the first response token falls back onto the last prompt token in the reference behaviour
    ids_span, _, _ = aligned_teacher(target, source, teacher(), vmap, 3, get_alignment("span"))
    assert ids_span[:3, 0].tolist() == [10, 11, 12]


def test_exact_vocabulary_drops_the_mined_ids_and_their_mass() -> None:
    source_text = [b"xa", b"a", b"y", b"</s>"]
    target_text = [b"x", b"a", b"ay", b"</s>"]
    vmap = np.array([0, 1, 0, 3])  # 'y' -> 'x' by edit distance, an ordinary mined entry
    vocab = PairVocab(vmap, AuditVocab(source_text, target_text, frozenset({3}), frozenset({3})),
                      frozenset({3}), None, frozenset({3}))  # fmt: skip
    assert vocab.exact_map().tolist() == [-1, 1, -1, 3]
    text = "a\x00"
    tok = by_pieces(text, ["a", "\x00"])
    pass_ = TeacherPass(1.0, np.array([[1, 0, 2], [3, 1, 0]]), np.log(np.tile([0.6, 0.3, 0.1], (2, 1))).astype(np.float32),
                        np.ones(2, dtype=bool))  # fmt: skip
    target = encoded(np.array([1, 3]), tok)
    source = encoded(np.array([2, 3]), tok)  # other ids: not the target as its own candidate
    ids, logp, _ = aligned_teacher(target, source, pass_, vmap, 3, get_alignment("dtw-exact"), vocab.exact_map())
    assert ids[0, 0] == 1 and math.isclose(math.exp(logp[0, 0]), 0.6, rel_tol=1e-5) and np.isneginf(logp[0, 1])
    ids_m, logp_m, _ = aligned_teacher(target, source, pass_, vmap, 3, get_alignment("span"))
    assert ids_m[0, :2].tolist() == [1, 0] and np.allclose(np.exp(logp_m[0, :2]), [0.6, 0.4])  # 0.3 + 0.1 on 'x'


def test_registry_lists_the_strategies_and_names_the_choices_on_a_typo() -> None:
    assert {"span", "dtw-exact", "dtw-mined", "dtw-mined-fusellm"} <= set(available_alignments())
    assert SignalSpec().alignment == "span"
    with pytest.raises(HarnessError, match="unknown alignment 'dtw'; choose one of .*dtw-exact"):
        get_alignment("dtw")


def test_align_compare_cli_on_sandbox_tokenizers(micro_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from harness.cli import main

    corpus = tmp_path / "texts.jsonl"
    lines = [json.dumps({"prompt": "Say it.", "reference": t}) for t in make_texts(6, 2)]
    corpus.write_text("\n".join(lines) + "\n")
    args = ["align", "compare", "-T", "sandbox:llama-knowledge", "-S", "sandbox:gpt2-safety", "--texts", str(corpus),
            "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["strategy"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(available_alignments())
    for r in rows.values():
        assert r["target_tokens"] > 50 and 0 < r["coverage"] < 1 and r["tokens_per_s"] > 0
    # the mined strategies pair what span and dtw-exact pair and more; exact vocabulary loses mass, mined none
    assert rows["dtw-mined"]["coverage"] >= rows["dtw-exact"]["coverage"]
    assert rows["dtw-mined"]["coverage"] == rows["dtw-mined-fusellm"]["coverage"]
    assert rows["span"]["lost_mass"] == rows["dtw-mined"]["lost_mass"] == 0
    assert rows["dtw-exact"]["lost_mass"] > 0
    bad = CliRunner().invoke(main, [*args[:-1], "--strategies", "span,nope"])
    assert bad.exit_code == 2 and "unknown alignment 'nope'" in bad.stderr


def test_bench_reports_every_strategy_and_dtw_stays_far_faster_than_the_naive_dp() -> None:
    from harness.bench.align import run

    figures = run(n_sequences=1, sentences=15, fast_repeats=4)
    for name in available_alignments():
        key = name.replace("-", "_")
        assert figures[f"align_{key}_tokens_per_s"] > figures["align_naive_tokens_per_s"]
        assert 0.5 < figures[f"align_{key}_coverage"] <= 1
    for key in ("dtw_exact", "dtw_mined"):  # the windows between anchors keep DTW off the quadratic path
        assert figures[f"align_{key}_speedup_vs_naive"] >= 20, figures
