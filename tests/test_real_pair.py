"""The real heterogeneous pair, SmolLM2-135M-Instruct (target) <- Gemma-3-270M (source), from the packaged
GGUF files (skipped without them; slow: Gemma's 262k-token tokenizer alone takes seconds to load).

Bounds of the signal audit, and why:
- top-1 agreement >= 95% on anchored positions: where both tokenizers cut the same piece of text, the source's
  most likely next token is ordinary text that the target's byte-level BPE almost always has verbatim; a
  lower figure means the vocabulary map (or the marker handling of '▁' / 'Ġ') is wrong.
- EOS to EOS: all of Gemma's mass on its stop tokens (<eos>, <end_of_turn>) must land on SmolLM2's
  <|im_end|> (its EOS and end of turn): by construction of the map, so anything less is a bug. (There is
  little of it: Gemma-3-270M is a base model, and after an answer in the Gemma format it predicts "\n" with
  0.17-0.47 and <end_of_turn> hardly at all, where SmolLM2 predicts <|im_end|> with 0.77-0.85.)
- the aligned fraction is above 60%: the two tokenizers split digits alike and words mostly alike on English
  text; measured 0.92 on these examples, the bound leaves room for other text.
- mass lost to unmapped ids below 1%: only special tokens SmolLM2 lacks (<start_of_turn>, <unused..>) map
  nowhere, and a teacher puts almost no mass on them inside an answer (measured: 0).
Measured on these 24 examples (1,164 target tokens): aligned 0.921, top-1 agreement 0.986, stop -> stop 1.0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.models import ALIASES, package_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(package_folder(p) is None for p in ("gguf", ALIASES["gemma3-270m"].package, ALIASES["smollm2-135m-instruct"].package)),
        reason="the model packages are not installed (README: the --no-deps install)",
    ),
]

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"


@pytest.fixture(scope="module")
def pair(session_cache: Path) -> dict[str, Any]:
    from harness.models import load_tokenizer, resolve
    from harness.signals import ModelHandle

    out: dict[str, Any] = {}
    for name in (SMOL, GEMMA):
        resolved = resolve(name, cache_dir=session_cache)
        out[name] = ModelHandle(name, resolved)
        out[f"{name}:tok"] = load_tokenizer(resolved)
    return out


def test_packaged_models_convert_once_into_folders_named_by_their_hash(pair: dict[str, Any], session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from harness import models

    monkeypatch.setattr(models, "_convert", lambda *a: pytest.fail("converted a second time"))
    for name in (SMOL, GEMMA):
        again = models.resolve(name, cache_dir=session_cache)
        assert again == pair[name].model and Path(again.pretrained).parent == session_cache / "models"
    gemma = Path(pair[GEMMA].model.pretrained)
    assert gemma.name.startswith("gemma3-270m-a5fd3b62230aa5ec")  # the GGUF's published sha256
    assert json.loads((gemma / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    assert (gemma / "chat_template.jinja").is_file()
    for name in (SMOL, GEMMA):  # what the dry run's memory estimate reads before anything is converted
        config = json.loads((Path(pair[name].model.pretrained) / "config.json").read_text())
        assert config.get("vocab_size", config.get("text_config", {}).get("vocab_size")) == ALIASES[name].vocab_size


def test_real_templates_give_the_ids_of_apply_chat_template(pair: dict[str, Any]) -> None:
    from harness.chat import end_of_turn_id
    from harness.signals.encoding import encode_example

    conversation = [{"role": "user", "content": "Name two colours."}, {"role": "assistant", "content": "Red and blue."}]
    for name, eot in ((SMOL, 2), (GEMMA, 106)):
        tok = pair[f"{name}:tok"]
        expected = list(tok.apply_chat_template(conversation, tokenize=True, return_dict=False))
        enc = encode_example(tok, "Name two colours.", "Red and blue.", None, 10_000, name)
        assert enc.ids.tolist() == expected[:-1] and tok.decode(expected[-1:]) == "\n"  # cut after the end of turn
        assert enc.ids[-1] == eot == end_of_turn_id(tok)
        assert tok.decode(enc.ids[enc.resp_start :], skip_special_tokens=True) == "Red and blue."
    assert pair[f"{GEMMA}:tok"].decode(encode_example(pair[f"{GEMMA}:tok"], "Hi", "Yo", None, 99, GEMMA).ids[:2]) == "<bos><start_of_turn>"


def test_signal_audit_of_the_real_pair_is_within_bounds(pair: dict[str, Any], shared_data: Path, tmp_path: Path) -> None:
    from harness.config import SignalSpec
    from harness.modes import Signal
    from harness.signals import extract_signals, load_corpus, signal_audit

    rows = load_corpus(shared_data / "instruct" / "alpaca_en_demo.llamafactory.json", limit=12)
    # short answers too, so that end-of-turn positions fall inside max_length
    rows += [type(r)(f"short{i}", r.prompt, r.reference.split("\n")[0][:120]) for i, r in enumerate(rows[:12])]
    spec = SignalSpec(top_k=10, max_length=160, batch_size=8, shard_size=12)
    sset = extract_signals(Signal.TRAINING, pair[SMOL], [pair[GEMMA]], rows, spec, None, tmp_path, progress=False)
    audit = signal_audit([sset])["training"][GEMMA]
    assert audit["target_tokens"] > 1000
    assert audit["aligned_fraction"] > 0.6, audit
    assert audit["top1_agreement"] >= 0.95, audit
    assert audit["stop_mass"] > 0 and audit["stop_to_stop"] >= 0.999, audit
    assert audit["lost_mass"] < 0.01, audit


def test_gemma_generation_stops_at_its_end_of_turn(pair: dict[str, Any]) -> None:
    from harness.models import load_model
    from harness.signals.generate import _eos_ids, generate

    tok = pair[f"{GEMMA}:tok"]
    model = load_model(pair[GEMMA].model)
    assert 106 in _eos_ids(model, tok) and 1 in _eos_ids(model, tok)
    out = generate(model, tok, ["What is the capital of France? Answer in one word."], max_new_tokens=24,
                   progress=False, backend="hf")  # fmt: skip
    assert "<end_of_turn>" not in out[0] and "<start_of_turn>" not in out[0]


PUNCTUATED = "Hello, world! In 2024: 3.14 + 27 = 30.14 (A-B); ok? Yes. X: \"Q\" & Z."


@pytest.mark.parametrize("source,target", [(SMOL, GEMMA), (GEMMA, SMOL)])
def test_each_source_token_maps_to_the_id_the_target_itself_writes(pair: dict[str, Any], source: str, target: str) -> None:
    """Punctuation, digits and capitals: a SentencePiece target (Gemma) keeps byte-fallback tokens `<0x2C>`... at
    low ids beside its own `,`; the map must send SmolLM2's `,` to the `,` Gemma writes, never to `<0x2C>`.
    Checked where both tokenizers cut the text at the same place: the mapped id is the target's own token there."""

    from harness.signals.align import build_vocab_map, byte_fallback_mask

    s_tok, t_tok = pair[f"{source}:tok"], pair[f"{target}:tok"]
    vmap = build_vocab_map(s_tok, t_tok)
    s_enc = s_tok(PUNCTUATED, add_special_tokens=False, return_offsets_mapping=True)
    t_enc = t_tok(PUNCTUATED, add_special_tokens=False, return_offsets_mapping=True)
    written = {tuple(o): i for i, o in zip(t_enc["input_ids"], t_enc["offset_mapping"], strict=True)}
    same = [(i, written[tuple(o)]) for i, o in zip(s_enc["input_ids"], s_enc["offset_mapping"], strict=True) if tuple(o) in written]
    assert len(same) >= 20  # most of the text is cut alike: punctuation, digits, capitals, words
    assert [int(vmap[i]) for i, _ in same] == [t for _, t in same]
    fallback = byte_fallback_mask(t_tok)
    assert fallback.sum() == (256 if target == GEMMA else 0)
    assert not fallback[vmap[s_enc["input_ids"]]].any()
    if target == GEMMA:  # 234 SmolLM2 ids used to land on byte-fallback ids; only bytes no piece covers may
        from harness.signals.align import token_bytes

        def printable(b: bytes) -> bool:
            try:
                return b.decode("utf-8").isprintable()
            except UnicodeDecodeError:  # a partial character (byte-level BPE's 0x80-0xff pieces)
                return False

        texts = token_bytes(s_tok)
        on_fallback = [i for i in range(len(s_tok)) if vmap[i] >= 0 and fallback[vmap[i]]]
        assert not [texts[i] for i in on_fallback if printable(texts[i])]


def test_gemma_is_recognised_as_sentencepiece(pair: dict[str, Any]) -> None:
    from harness.signals.align import _marker_style

    assert _marker_style(pair[f"{GEMMA}:tok"]) == "metaspace"
    assert _marker_style(pair[f"{SMOL}:tok"]) == "bytelevel"
