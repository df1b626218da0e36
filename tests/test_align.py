"""Cross-tokenizer alignment and vocabulary mapping, against the naive FuseLLM DP and brute force."""

from __future__ import annotations

import random

import numpy as np
import pytest

from harness.bench.align import make_texts, tokenize, tokenizer_pair
from harness.signals.align import (
    Tokenization,
    align,
    align_naive,
    build_vocab_map,
    dtw,
    edit_distance,
    nearest_by_edit_distance,
    tile_offsets,
    token_bytes,
    vocab_map,
)


@pytest.fixture(scope="module")
def pair():
    return tokenizer_pair()


def by_pieces(text: str, pieces: list[str]) -> Tokenization:
    """A tokenization of `text` that cuts it into `pieces` (which must spell it)."""
    spans, pos = [], 0
    for p in pieces:
        assert text[pos : pos + len(p)] == p
        spans.append((pos, pos + len(p)))
        pos += len(p)
    assert pos == len(text)
    return Tokenization(text, np.asarray(spans, dtype=np.int64))


def test_edit_distance_known_values() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance(b"ab", b"ab") == 0


def test_fast_alignment_equals_naive_dp_on_random_texts(pair) -> None:
    target_tok, source_tok = pair
    rng = random.Random(3)
    pool = make_texts(400, 11)
    for _ in range(12):
        text = " ".join(rng.choice(pool) for _ in range(4))
        t, s = tokenize(target_tok, text), tokenize(source_tok, text)
        assert t.spans.tolist() != s.spans.tolist()  # the two tokenizers really cut differently
        fast, naive = align(t, s), align_naive(t, s)
        assert fast.path() == naive.path()
        assert fast.same_span.tolist() == naive.same_span.tolist()
        anchored = np.flatnonzero(fast.same_span >= 0)
        assert 0.5 < len(anchored) / len(t) < 1.0
        for i in anchored:  # an anchor is the same piece of text in both
            assert t.piece(i) == s.piece(int(fast.same_span[i]))
            assert tuple(t.spans[i]) == tuple(s.spans[int(fast.same_span[i])])


def test_one_to_many_and_many_to_one() -> None:
    text = " hello world again"
    coarse = by_pieces(text, [" hello", " world", " again"])
    fine = by_pieces(text, [" hel", "lo", " world", " ag", "ain"])
    one_to_many = align(coarse, fine)
    assert one_to_many.groups() == [[0, 1], [2], [3, 4]]
    assert one_to_many.same_span.tolist() == [-1, 2, -1]
    many_to_one = align(fine, coarse)
    assert many_to_one.groups() == [[0], [0], [1], [2], [2]]
    assert many_to_one.same_span.tolist() == [-1, -1, 1, -1, -1]
    assert one_to_many.path() == align_naive(coarse, fine).path()
    assert many_to_one.path() == align_naive(fine, coarse).path()


def test_windows_follow_fuselm_dtw_costs() -> None:
    # the DP is FuseLLM's: a short piece joins whichever neighbour is cheaper by edit distance ('s' ~ ' sat')
    text = " the cats sat"
    target = by_pieces(text, [" the", " cats", " sat"])
    source = by_pieces(text, [" the", " cat", "s", " sat"])
    assert align(target, source).groups() == [[0], [1], [2, 3]]
    assert align(target, source).path() == align_naive(target, source).path()


def test_sentencepiece_and_bytelevel_tokens_of_the_same_text(pair) -> None:
    # '▁' and 'Ġ' are vocabulary markers only: offsets of both point at the real space in the text
    bytelevel, sentencepiece = pair
    text = " kalomi anter 42 naïve, quasu."
    t, s = tokenize(bytelevel, text), tokenize(sentencepiece, text)
    t_ids = bytelevel(text, add_special_tokens=False)["input_ids"]
    s_ids = sentencepiece(text, add_special_tokens=False)["input_ids"]
    t_tok, s_tok = bytelevel.convert_ids_to_tokens(t_ids), sentencepiece.convert_ids_to_tokens(s_ids)
    t_bytes, s_bytes = token_bytes(bytelevel), token_bytes(sentencepiece)
    result = align(t, s)
    pairs = [(i, int(j)) for i, j in enumerate(result.same_span) if j >= 0]
    assert any(t_tok[i].startswith("Ġ") and s_tok[j].startswith("▁") for i, j in pairs)
    for i, j in pairs:  # same span <=> same text <=> same bytes after normalising the markers
        assert t_bytes[t_ids[i]] == s_bytes[s_ids[j]] == t.piece(i).encode()
    assert result.path() == align_naive(t, s).path()


def test_identical_tokenizations_align_one_to_one() -> None:
    t = by_pieces(" a b c", [" a", " b", " c"])
    assert align(t, t).same_span.tolist() == [0, 1, 2]
    assert align(t, t).path() == [(0, 0), (1, 1), (2, 2)]


def test_shared_spans_of_partial_bytes_are_not_anchors() -> None:
    # byte-level BPE cuts 'é' into two tokens that both report the character's span
    text = " café ok"
    target = Tokenization(text, np.array([[0, 4], [4, 5], [4, 5], [5, 8]]))
    source = Tokenization(text, np.array([[0, 4], [4, 5], [5, 8]]))
    result = align(target, source)
    assert result.same_span.tolist() == [0, -1, -1, 2]
    assert result.path() == align_naive(target, source).path()


def test_naive_dp_can_leave_identical_spans_where_the_fast_path_keeps_them() -> None:
    # FuseLLM's edit-distance DTW dislikes long tokens: next to ' 3+4=7.' it maps ' when' onto ' go'
    text = " go when 3+4=7. number"
    target = by_pieces(text, [" go", " when", " 3", "+", "4", "=", "7", ".", " number"])
    source = by_pieces(text, [" go", " when", " 3+4=7.", " number"])
    fast, naive = align(target, source), align_naive(target, source)
    assert (1, 1) in fast.path() and fast.same_span.tolist()[:2] == [0, 1]
    assert (1, 1) not in naive.path()


def test_trimmed_offsets_are_tiled_back_onto_the_token() -> None:
    # a byte-level tokenizer with trim_offsets reports 'Ġan' as 'an' and a lone 'Ġ' as empty
    text = "kalomi anter  quasu"
    trimmed = np.array([[0, 2], [2, 4], [4, 6], [7, 9], [9, 12], [13, 13], [14, 17], [17, 19]])
    tiled = tile_offsets(trimmed)
    assert [text[a:b] for a, b in tiled] == ["ka", "lo", "mi", " an", "ter", " ", " qua", "su"]
    untrimmed = by_pieces(text, ["kalomi", " an", "ter", " ", " qua", "su"])
    result = align(Tokenization(text, tiled), untrimmed)
    assert result.same_span.tolist() == [-1, -1, -1, 1, 2, 3, 4, 5]
    assert tile_offsets(untrimmed.spans).tolist() == untrimmed.spans.tolist()  # nothing to do on tiled spans


def test_dtw_forces_both_ends_and_is_monotone() -> None:
    path = dtw(["ab", "c", "d"], ["a", "bcd"])
    assert path[0] == (0, 0) and path[-1] == (2, 1)
    assert all(i2 >= i1 and j2 >= j1 for (i1, j1), (i2, j2) in zip(path, path[1:], strict=False))


def test_alignment_rejects_different_texts() -> None:
    with pytest.raises(ValueError):
        align(by_pieces("ab", ["ab"]), by_pieces("ac", ["ac"]))


def test_empty_tokenization_aligns_to_nothing() -> None:
    t = by_pieces(" a", [" a"])
    empty = Tokenization(" a", np.zeros((0, 2), dtype=np.int64))
    assert align(t, empty).same_span.tolist() == [-1]
    assert align(empty, t).path() == []


# ------------------------------------------------------------------------------------------------ vocabulary


def test_token_bytes_normalises_markers(pair) -> None:
    bytelevel, sentencepiece = pair
    bl = dict(
        zip(bytelevel.convert_ids_to_tokens(list(range(len(bytelevel)))), token_bytes(bytelevel), strict=True)
    )
    sp = dict(
        zip(
            sentencepiece.convert_ids_to_tokens(list(range(len(sentencepiece)))),
            token_bytes(sentencepiece),
            strict=True,
        )
    )
    assert bl["Ġ"] == b" " and bl["Ċ"] == b"\n" and bl["Ã"] == b"\xc3"
    assert sp["▁"] == b" " and sp["<0x0A>"] == b"\n" and sp["<0xC3>"] == b"\xc3"
    word = next(t for t in sp if t.startswith("▁") and len(t) > 3 and "Ġ" + t[1:] in bl)
    assert sp[word] == bl["Ġ" + word[1:]] == (" " + word[1:]).encode()
    assert bl["<|endoftext|>"] == b"<|endoftext|>"  # special tokens stay literal


def test_vocab_map_exact_after_normalising_else_nearest(pair) -> None:
    target, source = pair
    mapping = build_vocab_map(source, target)
    src, tgt = token_bytes(source), token_bytes(target)
    assert mapping.shape == (len(source),)
    assert mapping[source.eos_token_id] == target.eos_token_id
    exact = {b: i for i, b in reversed(list(enumerate(tgt)))}
    n_exact = 0
    rng = random.Random(0)
    for i, b in enumerate(src):
        if i in (source.eos_token_id, source.bos_token_id, source.pad_token_id, source.unk_token_id):
            continue
        if b in exact:
            n_exact += 1
            assert mapping[i] == exact[b]
        elif rng.random() < 0.2:  # brute force on a sample of the rest
            best = min(edit_distance(b, t) for t in tgt if t)
            assert edit_distance(b, tgt[mapping[i]]) == best
    assert n_exact > len(source) // 2


def test_vocab_map_identity_for_the_same_tokenizer_and_padded_rows(pair) -> None:
    target, _ = pair
    mapping = build_vocab_map(target, target, source_size=len(target) + 8)
    assert mapping[: len(target)].tolist() == list(range(len(target)))
    assert mapping[len(target) :].tolist() == [-1] * 8


def test_vocab_map_is_cached_on_disk(pair, tmp_path, monkeypatch) -> None:
    target, source = pair
    first = vocab_map(source, target, tmp_path)
    assert len(list((tmp_path / "vocab_maps").glob("*.npy"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt instead of read from the cache")

    monkeypatch.setattr("harness.signals.align.build_vocab_map", boom)
    assert vocab_map(source, target, tmp_path).tolist() == first.tolist()


def test_nearest_by_edit_distance_matches_brute_force() -> None:
    rng = random.Random(5)
    alphabet = b"abcde "
    cands = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(300)]
    queries = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(80)] + [b""]
    found = nearest_by_edit_distance(queries, cands, block=5000)
    assert found[-1] == -1
    for q, idx in zip(queries[:-1], found[:-1], strict=True):
        dists = [edit_distance(q, c) for c in cands]
        assert dists[idx] == min(dists)
        # ties: the closest length first, then the lowest index
        tied = [i for i, d in enumerate(dists) if d == min(dists)]
        assert idx == min(tied, key=lambda i: (abs(len(cands[i]) - len(q)), len(cands[i]) > len(q), i))
