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
    special = set(target.all_special_ids)
    exact = {b: i for i, b in reversed(list(enumerate(tgt))) if i not in special}
    n_exact = 0
    rng = random.Random(0)
    for i, b in enumerate(src):
        if i in source.all_special_ids:
            continue
        assert mapping[i] not in special  # ordinary tokens never land on special ones
        if b in exact:
            n_exact += 1
            assert mapping[i] == exact[b]
        elif rng.random() < 0.2:  # brute force on a sample of the rest
            best = min(edit_distance(b, t) for j, t in enumerate(tgt) if t and j not in special)
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


# ------------------------------------------------------------------------------------- special tokens by meaning

# Role shapes of real tokenizers: NeoX (eos = bos), Llama-2-chat and SmolLM2 (pad = eos), a tokenizer whose
# unknown token is its end of text (eos = unk), GPT-2 / MPT (eos = bos = pad = unk), and all distinct.
SHAPES = {
    "eos=bos": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>"},
    "eos=pad": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"},
    "eos=unk": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<pad>"},
    "eos=bos=pad=unk": {r: "<|endoftext|>" for r in ("bos_token", "eos_token", "pad_token", "unk_token")},
    "distinct": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
}


def shaped(base, shape: str):
    from harness.bench.align import with_specials

    return with_specials(base, SHAPES[shape])


@pytest.mark.parametrize("source_shape", list(SHAPES))
@pytest.mark.parametrize("target_shape", list(SHAPES))
@pytest.mark.parametrize("direction", ["bytelevel->sentencepiece", "sentencepiece->bytelevel"])
def test_special_tokens_map_by_meaning(pair, source_shape: str, target_shape: str, direction: str) -> None:
    """EOS lands on the target's EOS whatever roles either side shares; padding neither gives nor receives mass;
    BOS and UNK go to the target's own only where that is not its EOS or padding."""
    bytelevel, sentencepiece = pair
    src_base, tgt_base = (bytelevel, sentencepiece) if direction.startswith("bytelevel") else (sentencepiece, bytelevel)
    source, target = shaped(src_base, source_shape), shaped(tgt_base, target_shape)
    mapping = build_vocab_map(source, target)
    assert mapping[source.eos_token_id] == target.eos_token_id
    stop_or_pad = {target.eos_token_id, target.pad_token_id}
    if target.pad_token_id != target.eos_token_id:
        assert target.pad_token_id not in mapping.tolist()  # no source token ever lands on padding
    if source.pad_token_id not in (None, source.eos_token_id):
        assert mapping[source.pad_token_id] == -1
    for role in ("bos_token_id", "unk_token_id"):
        s_id, t_id = getattr(source, role), getattr(target, role)
        if s_id is None or s_id in (source.eos_token_id, source.pad_token_id):
            continue
        assert mapping[s_id] == (t_id if t_id is not None and t_id not in stop_or_pad else -1), role
    # only the EOS (and nothing ordinary) lands on the target's EOS
    assert set(np.flatnonzero(mapping == target.eos_token_id).tolist()) == {source.eos_token_id}


def test_end_of_turn_tokens_map_onto_the_targets_end_of_turn(pair) -> None:
    """A ChatML source (MPT: eos = bos = unk, turns end with <|im_end|>) into a Gemma-shaped target (turns end with
    <end_of_turn>): both of the source's ways to stop land on the target's end of turn, none on <eos>/<pad>."""
    from harness.bench.align import with_specials
    from harness.signals.align import special_tokens

    bytelevel, sentencepiece = pair
    mpt = with_specials(bytelevel, SHAPES["eos=bos=pad=unk"], ("<|im_start|>", "<|im_end|>"))
    gemma = with_specials(sentencepiece, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                          "unk_token": "<unk>"}, ("<start_of_turn>", "<end_of_turn>"))  # fmt: skip
    im_end, eot = mpt.convert_tokens_to_ids("<|im_end|>"), gemma.convert_tokens_to_ids("<end_of_turn>")
    forward = build_vocab_map(mpt, gemma, source_end_of_turn=im_end, target_end_of_turn=eot)
    assert forward[mpt.eos_token_id] == forward[im_end] == eot
    assert gemma.pad_token_id not in forward.tolist() and gemma.eos_token_id not in forward.tolist()
    assert forward[mpt.convert_tokens_to_ids("<|im_start|>")] == -1  # the target has no such token
    back = build_vocab_map(gemma, mpt, source_end_of_turn=eot, target_end_of_turn=im_end)
    assert back[gemma.eos_token_id] == back[eot] == im_end
    assert back[gemma.pad_token_id] == back[gemma.bos_token_id] == -1  # MPT's BOS is its EOS: no place for it
    assert special_tokens(gemma, eot).stop == {gemma.eos_token_id, eot}
    # one tokenizer in two formats: identity, except that stopping lands where the target's turn ends
    same = build_vocab_map(gemma, gemma, source_end_of_turn=eot)
    assert same[eot] == same[gemma.eos_token_id] == gemma.eos_token_id
    assert same[:10].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_nearest_matches_found_on_demand_equal_those_found_up_front(pair) -> None:
    from harness.signals.align import UNRESOLVED, resolve_nearest, special_tokens

    target, source = pair
    eager = build_vocab_map(source, target)
    lazy = build_vocab_map(source, target, nearest=False)
    unresolved = np.flatnonzero(lazy == UNRESOLVED)
    assert len(unresolved) > 10 and (lazy[lazy != UNRESOLVED] == eager[lazy != UNRESOLVED]).all()
    src, tgt = token_bytes(source), token_bytes(target)
    first = unresolved[: len(unresolved) // 2]
    assert resolve_nearest(lazy, np.concatenate([first, first, [0, 1]]), src, tgt, special_tokens(target).special) == len(first)
    assert (lazy[first] == eager[first]).all() and (lazy[unresolved[len(first) :]] == UNRESOLVED).all()
    resolve_nearest(lazy, np.arange(len(lazy)), src, tgt, special_tokens(target).special)
    assert lazy.tolist() == eager.tolist()


# ------------------------------------------------------------------------------------------------ byte fallback

PUNCTUATED = "Veri, zen! 2024: 3.14 + 27 = 30.14 (A+Z), mimi? Qua. Z: A."  # characters the small vocabularies have


def test_a_sentencepiece_target_gets_its_own_pieces_not_its_byte_fallback(pair) -> None:
    """Gemma keeps `<0x2C>` at a low id beside its own `,`: every source `,` must land on the `,` the target writes.
    Where both tokenizers cut the text alike, the mapped id is the target's own token there, and no teacher id of
    ordinary text is a byte-fallback id."""
    from harness.bench.align import gemma_shaped
    from harness.signals.align import _marker_style, byte_fallback_mask

    bytelevel, sentencepiece = pair
    target = gemma_shaped(sentencepiece)
    assert target.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    assert _marker_style(target) == "metaspace"  # Gemma's Replace('▁') decoder: a SentencePiece vocabulary
    fallback = byte_fallback_mask(target)
    assert fallback.sum() == 256
    vmap = build_vocab_map(bytelevel, target)
    s_enc = bytelevel(PUNCTUATED, add_special_tokens=False, return_offsets_mapping=True)
    t_enc = target(PUNCTUATED, add_special_tokens=False, return_offsets_mapping=True)
    assert not fallback[t_enc["input_ids"]].any()  # the target writes this text with its own pieces
    written = {tuple(o): i for i, o in zip(t_enc["input_ids"], t_enc["offset_mapping"], strict=True)}
    same = [(i, written[tuple(o)]) for i, o in zip(s_enc["input_ids"], s_enc["offset_mapping"], strict=True) if tuple(o) in written]
    assert len(same) >= 15
    assert [int(vmap[i]) for i, _ in same] == [t for _, t in same]
    comma = bytelevel.convert_tokens_to_ids(",")
    assert target.convert_ids_to_tokens(int(vmap[comma])) == ","
    # every single-character source token whose character the target has as a piece finds that piece (before the
    # fix, all of them landed on the byte at the lower id)
    texts, own = token_bytes(bytelevel), target.get_vocab()
    single = [i for i, b in enumerate(texts) if len(b) == 1 and b[0] < 128 and b.decode() in own]
    assert len(single) > 20
    assert [target.convert_ids_to_tokens(int(vmap[i])) for i in single] == [texts[i].decode() for i in single]


def test_nearest_matches_prefer_an_ordinary_piece_to_a_byte_fallback_at_the_same_distance() -> None:
    candidates = [b",", b"a", b"ab", b",", b"xyz"]
    avoid = [True, False, False, False, False]  # candidate 0 is a byte-fallback token standing for b","
    assert nearest_by_edit_distance([b",!"], candidates).tolist() == [0]  # lowest index without the rule
    assert nearest_by_edit_distance([b",!"], candidates, avoid=avoid).tolist() == [3]
    assert nearest_by_edit_distance([b"ab"], candidates, avoid=avoid).tolist() == [2]  # a nearer byte... never wins
