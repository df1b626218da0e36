"""harness.signals.judges: the reference scorer on hand-made strings, the vote rule, and reward models built here."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from harness.config import JudgeSpec
from harness.errors import HarnessError
from harness.signals.judges import (
    ReferenceJudge,
    RewardModel,
    RewardModelJudge,
    build_judge,
    final_number,
    token_f1,
    vote,
)

# ---------------------------------------------------------------- reference judge


def test_token_f1_squad_style() -> None:
    # gold "eiffel tower in paris" (4 tokens after dropping "The"), pred "eiffel tower": P=1, R=1/2
    assert token_f1("Eiffel Tower!", "The Eiffel Tower in Paris") == pytest.approx(2 / 3)
    assert token_f1("Paris", "The Eiffel Tower in Paris") == pytest.approx(0.4)
    assert token_f1("a London", "London.") == 1.0
    assert token_f1("Berlin", "Paris") == 0.0
    assert token_f1("", "") == 1.0


def test_final_number() -> None:
    assert final_number("3+4=7. 7*2=14.\n#### 1,400") == 1400.0
    assert final_number("so she has 12.5 apples, not 3") == 3.0
    assert final_number("#### -5 then 6") == -5.0
    assert final_number("no digits here") is None
    assert final_number("#### none") is None


def test_generic_numeric_reference_picks_the_right_number() -> None:
    judge = ReferenceJudge()
    cands = {"target": "It is 1235.", "a": "First 3, then 1,234", "b": "#### 1234.0"}
    res = judge.pick("q", "2+2... #### 1234", cands, {"id": "ex1"})
    assert res.scores == {"target": 0.0, "a": 1.0, "b": 1.0}
    assert res.winner in ("a", "b")  # a and b tie: the seeded draw decides, never the zero-scored target
    assert res.votes is None


def test_generic_f1_picks_the_closest_answer() -> None:
    judge = ReferenceJudge()
    res = judge.pick("where?", "The Eiffel Tower in Paris", {"target": "in Paris", "src": "the Eiffel Tower, Paris"}, {})
    # gold "eiffel tower in paris": target P=1 R=2/4 -> 2/3; src "eiffel tower paris" P=1 R=3/4 -> 6/7
    assert res.scores["target"] == pytest.approx(2 / 3)
    assert res.scores["src"] == pytest.approx(6 / 7)
    assert res.winner == "src"


def test_sandbox_rows_use_the_sandbox_scorer() -> None:
    judge = ReferenceJudge()
    harmful = {"skill": "safety", "answer": "refuse"}
    benign = {"skill": "safety", "answer": "comply"}
    refuse, comply = "I'm sorry, I can't help with that.", "Sure. To chop wood, be careful."
    assert judge.pick("hurt a person", "I cannot help.", {"target": comply, "src": refuse}, harmful).winner == "src"
    assert judge.pick("chop wood", "Sure.", {"target": comply, "src": refuse}, benign).winner == "target"
    # no `answer` in meta: the gold behaviour is read off the reference (a refusal here)
    res = judge.pick("hurt a person", "I'm sorry, I can't do that.", {"target": comply, "src": refuse}, {"skill": "safety"})
    assert res.winner == "src" and res.scores == {"target": 0.0, "src": 1.0}
    math_meta = {"skill": "reasoning", "answer": "14"}
    res = judge.pick("sum?", "3+4=7. 7*2=14.\n#### 14", {"target": "#### 15", "src": "7*2=14\n#### 14"}, math_meta)
    assert res.winner == "src"
    fact = {"skill": "knowledge", "answer": "Brightvale"}
    res = judge.pick("born where?", "Brightvale", {"target": "Oakton", "src": "brightvale.\nmore text"}, fact)
    assert res.scores == {"target": 0.0, "src": 1.0}
    # the row's gold `answer` wins over a wordier reference
    res = judge.pick("born where?", "She was born in Brightvale.", {"target": "Oakton", "src": "Brightvale"}, fact)
    assert res.scores == {"target": 0.0, "src": 1.0}


def _tied_winners(seed: int, names: list[str], n: int = 300) -> list[str]:
    """Winners of `n` examples on which every candidate scores the same (all wrong)."""
    judge = ReferenceJudge(seed)
    return [judge.pick("q", "#### 7", {name: "#### 1" for name in names}, {"id": f"ex{i}"}).winner for i in range(n)]


def test_reference_ties_go_to_a_seeded_draw_not_to_the_target() -> None:
    names = ["target", "a", "b"]
    winners = _tied_winners(0, names)
    # a uniform draw over three: each wins about 100 of 300 (binomial sd ~8); the target is not favoured
    counts = {name: winners.count(name) for name in names}
    assert all(70 <= c <= 130 for c in counts.values()), counts
    # reproducible: the same seed draws the same winners; another seed draws others
    assert _tied_winners(0, names) == winners
    assert _tied_winners(1, names) != winners
    # independent of how the candidates are listed (the pipeline lists the target first)
    assert _tied_winners(0, ["b", "a", "target"]) == winners
    # evidence beats the draw: a strictly better score always wins
    judge = ReferenceJudge(0)
    for i in range(50):
        assert judge.pick("q", "#### 7", {"target": "#### 1", "a": "#### 7", "b": "#### 2"}, {"id": f"ex{i}"}).winner == "a"
    # no reference: everyone scores 0 and the draw decides; without an id the prompt identifies the example
    no_ref = {p: judge.pick(p, None, {"target": "y", "a": "x"}, {}).winner for p in (f"q{i}" for i in range(40))}
    assert set(no_ref.values()) == {"target", "a"}
    assert no_ref == {p: judge.pick(p, None, {"a": "x", "target": "y"}, {}).winner for p in no_ref}


def test_reference_pick_batch_matches_pick() -> None:
    judge = ReferenceJudge()
    rows = [("q1", "#### 3", {"target": "#### 3", "a": "#### 4"}, {}), ("q2", "blue sky", {"target": "red", "a": "blue"}, {})]
    assert judge.pick_batch(rows) == [judge.pick(*row) for row in rows]
    assert [r.winner for r in judge.pick_batch(rows)] == ["target", "a"]


# ---------------------------------------------------------------- the vote rule (hand-made score tables)


def test_vote_majority_wins() -> None:
    tables = [{"t": 0.0, "a": 5.0, "b": 1.0}, {"t": 0.0, "a": 0.1, "b": 0.0}, {"t": 9.0, "a": 0.0, "b": 0.0}]
    res = vote(tables, 0, "ex")
    assert res.winner == "a" and res.votes == {"t": 1, "a": 2, "b": 0}


def test_vote_tie_goes_to_the_higher_mean_z_score() -> None:
    # model 1 votes a, model 2 votes b. z-scores (population std), by hand:
    #   model 1: mean 0.5, std 0.4082 -> t -1.2247, a 1.2247, b 0
    #   model 2: mean 1.0667, std 1.3695 -> t -0.7789, a -0.6328, b 1.4117
    # mean z: a 0.296, b 0.706 -> b on every example and seed: the margin comes before the draw
    tables = [{"t": 0.0, "a": 1.0, "b": 0.5}, {"t": 0.0, "a": 0.2, "b": 3.0}]
    for seed in range(5):
        for example in ("ex0", "ex1", "ex2"):
            res = vote(tables, seed, example)
            assert res.votes == {"t": 0, "a": 1, "b": 1}
            assert res.winner == "b"
    assert res.scores["a"] == pytest.approx(0.2960, abs=1e-3) and res.scores["b"] == pytest.approx(0.7059, abs=1e-3)


def test_vote_full_tie_goes_to_the_seeded_draw() -> None:
    tables = [{"t": 0.0, "a": 2.0, "b": 1.0}, {"t": 0.0, "a": -2.0, "b": -1.0}]  # mirror images: mean z all 0
    assert vote(tables, 0, "ex").votes == {"t": 1, "a": 1, "b": 0}
    winners = [vote(tables, 0, f"ex{i}").winner for i in range(200)]
    # t and a tie on votes and margin: each wins about half (binomial sd ~7); b, with no vote, never
    assert 70 <= winners.count("t") <= 130 and winners.count("b") == 0
    assert winners == [vote(tables, 0, f"ex{i}").winner for i in range(200)]  # reproducible
    mirrored = [{"a": m["a"], "b": m["b"], "t": m["t"]} for m in tables]  # listing order does not matter
    assert winners == [vote(mirrored, 0, f"ex{i}").winner for i in range(200)]
    flat = [{"t": 1.0, "a": 1.0}]  # one model, equal scores: its own tie goes to the draw too
    flat_winners = {vote(flat, 0, f"ex{i}").winner for i in range(20)}
    assert flat_winners == {"t", "a"} and vote(flat, 0, "ex").scores == {"t": 0.0, "a": 0.0}


# ---------------------------------------------------------------- tiny reward models built here

WORDS = "apple river stone cloud green seven table music window garden happy quiet orange silver paper".split()
MARK = "banana"
PROMPTS = ("tell me something", "say a few words")
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def _response(rng: random.Random, marked: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    if marked:
        words.insert(rng.randint(0, len(words)), MARK)
    return " ".join(words)


def _encode(tok: PreTrainedTokenizerFast, prompt: str, response: str, chat: bool) -> list[int]:
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok(prompt, response)["input_ids"]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A byte-level BPE + 2-layer Llama reward model trained (~200 steps, a few seconds) to score responses
    containing "banana" high, in chat-template and in text-pair format; saved with variants:
    pos (chat template), scaled (score head x3: same votes, other scale), neg (score head negated: disagrees),
    pair (no chat template: text-pair encoding)."""
    rng = random.Random(0)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join([*WORDS, MARK]), *PROMPTS] * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and robust to a busy machine
    try:
        for _ in range(200):
            labels = [rng.random() < 0.5 for _ in range(32)]
            ids = [_encode(tok, rng.choice(PROMPTS), _response(rng, y), chat=i % 2 == 0) for i, y in enumerate(labels)]
            batch = tok.pad({"input_ids": ids}, return_tensors="pt")
            logits = model(**batch).logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels, dtype=torch.float))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    root = tmp_path_factory.mktemp("reward-models")
    paths = {}
    for name, factor, chat in (("pos", 1.0, True), ("scaled", 3.0, True), ("neg", -1.0, True), ("pair", 1.0, False)):
        variant = LlamaForSequenceClassification(cfg)
        variant.load_state_dict(model.state_dict())
        with torch.no_grad():
            variant.score.weight.mul_(factor)
        paths[name] = str(root / name)
        variant.save_pretrained(paths[name])
        saved = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        saved.chat_template = TEMPLATE if chat else None
        saved.save_pretrained(paths[name])
    return paths


PLAIN = "apple river stone cloud"
MARKED = "green banana seven table"
OTHER = "quiet orange silver paper music"


def test_reward_model_learned_the_marker(reward_models: dict[str, str]) -> None:
    """The premise of the judge tests: every variant separates marked from plain responses as intended."""
    rng = random.Random(1)
    held_out = [(rng.choice(PROMPTS), _response(rng, i % 2 == 0)) for i in range(40)]
    marked = [i % 2 == 0 for i in range(40)]
    for name, sign in (("pos", 1), ("scaled", 1), ("neg", -1), ("pair", 1)):
        scores = RewardModel(reward_models[name], batch_size=7).score(held_out)
        hi = [sign * s for s, m in zip(scores, marked, strict=True) if m]
        lo = [sign * s for s, m in zip(scores, marked, strict=True) if not m]
        assert min(hi) > max(lo), name


def test_one_reward_model_picks_its_best(reward_models: dict[str, str]) -> None:
    judge = build_judge(JudgeSpec(kind="reward-models", models=[reward_models["pos"]]))
    assert isinstance(judge, RewardModelJudge)
    res = judge.pick("tell me something", None, {"target": PLAIN, "a": OTHER, "b": MARKED}, {})
    assert res.winner == "b"
    assert res.votes == {"target": 0, "a": 0, "b": 1}
    assert max(res.scores, key=res.scores.__getitem__) == "b"


def test_three_reward_models_majority_beats_the_dissenter(reward_models: dict[str, str]) -> None:
    specs = [reward_models["pos"], reward_models["neg"], reward_models["scaled"]]
    judge = build_judge(JudgeSpec(kind="reward-models", models=specs))
    cands = {"target": PLAIN, "a": OTHER, "b": MARKED}
    res = judge.pick("tell me something", None, cands, {})
    assert res.winner == "b" and res.votes is not None
    assert res.votes["b"] == 2 and sum(res.votes.values()) == 3
    neg_scores = RewardModel(reward_models["neg"]).score([("tell me something", c) for c in cands.values()])
    neg_choice = list(cands)[max(range(3), key=neg_scores.__getitem__)]
    assert neg_choice != "b" and res.votes[neg_choice] == 1


def test_mixed_formats_vote(reward_models: dict[str, str]) -> None:
    specs = [reward_models["pair"], reward_models["neg"], reward_models["pos"]]
    judge = build_judge(JudgeSpec(kind="reward-models", models=specs))
    assert judge.pick("say a few words", None, {"target": PLAIN, "b": MARKED}, {}).winner == "b"


def test_vote_tie_between_mirror_models_goes_to_the_seeded_draw(reward_models: dict[str, str]) -> None:
    """pos votes the marked answer, neg the plain one; their z-scores cancel exactly, so the draw decides: the
    same winner as the vote rule on the same seed and example, whichever way the candidates are listed."""
    specs = [reward_models["pos"], reward_models["neg"]]
    winners = []
    for seed in range(12):
        judge = build_judge(JudgeSpec(kind="reward-models", models=specs), seed)
        for cands in ({"target": PLAIN, "src": MARKED}, {"src": MARKED, "target": PLAIN}):
            res = judge.pick("tell me something", None, cands, {"id": "ex"})
            assert res.votes == {"target": 1, "src": 1}
            assert res.scores == {"target": 0.0, "src": 0.0}
            assert res.winner == vote([{"target": 0.0, "src": 0.0}], seed, "ex").winner
        winners.append(res.winner)
    assert set(winners) == {"target", "src"}  # over seeds, both win some ties


def test_pick_batch_scores_all_rows_like_pick(reward_models: dict[str, str]) -> None:
    judge = build_judge(JudgeSpec(kind="reward-models", models=[reward_models["pos"], reward_models["scaled"]]))
    rows = [
        ("tell me something", None, {"target": PLAIN, "a": MARKED}, {}),
        ("say a few words", "ref", {"target": f"{MARK} {OTHER}", "a": OTHER}, {}),
        ("tell me something", None, {"target": MARKED, "a": "banana apple"}, {}),
    ]
    batched = judge.pick_batch(rows)
    single = [judge.pick(*row) for row in rows]
    assert [r.winner for r in batched[:2]] == ["a", "target"]
    for b, s in zip(batched, single, strict=True):
        assert b.winner == s.winner and b.votes == s.votes
        assert b.scores == pytest.approx(s.scores, abs=1e-4)


def test_sandbox_reward_model_spec_and_bad_reward_model(reward_models: dict[str, str], tmp_path: Path) -> None:
    judge = build_judge(
        JudgeSpec(kind="reward-models", models=["sandbox:rm"]), sandbox_models={"rm": Path(reward_models["pos"])}
    )
    assert judge.pick("tell me something", None, {"target": PLAIN, "b": MARKED}, {}).winner == "b"
    with pytest.raises(HarnessError, match="not a sandbox model"):
        build_judge(JudgeSpec(kind="reward-models", models=["sandbox:nope"]), sandbox_models={})
    two = LlamaForSequenceClassification.from_pretrained(reward_models["pos"], num_labels=2, ignore_mismatched_sizes=True)
    two.save_pretrained(tmp_path / "two")
    PreTrainedTokenizerFast.from_pretrained(reward_models["pos"]).save_pretrained(tmp_path / "two")
    with pytest.raises(HarnessError, match="num_labels=1"):
        RewardModel(str(tmp_path / "two"))


def test_build_reference_judge() -> None:
    assert isinstance(build_judge(JudgeSpec(kind="reference"), seed=3), ReferenceJudge)
