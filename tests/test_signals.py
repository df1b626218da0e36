"""Signal extraction, storage and the fusion dataset on tiny random-weight models with other tokenizers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from harness.bench.signals import tiny_corpus, tiny_models
from harness.config import MethodSpec, SignalSpec
from harness.errors import HarnessError
from harness.models import ResolvedModel, load_model, load_tokenizer
from harness.signals import (
    CorpusRow,
    ModelHandle,
    extract_signals,
    load_corpus,
    selection_stats,
    validate_corpus,
)
from harness.signals.align import Tokenization
from harness.signals.encoding import Encoded, encode_example
from harness.signals.judges import JudgeResult
from harness.signals.store import (
    ExampleSignal,
    SignalSet,
    SignalStore,
    StoreMeta,
    example_from_table,
    id_type,
)
from harness.signals.teacher import TeacherPass, aligned_teacher, merge_topk, teacher_forced
from harness.training.dataset import build_fusion_dataset, collate
from methods.base import FusionMethod, LossParts, Signal

SPEC = SignalSpec(top_k=10, max_length=96, batch_size=4, shard_size=4, max_new_tokens=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelHandle]:
    paths = tiny_models(tmp_path_factory.mktemp("tiny-models"))
    return {name: ModelHandle(name, ResolvedModel(str(p))) for name, p in paths.items()}


@pytest.fixture(scope="module")
def corpus() -> list[CorpusRow]:
    return tiny_corpus(10)


def extract(models, corpus, cache: Path, names=("target", "llama-sp"), mode=Signal.TRAINING, **kw):
    return extract_signals(
        mode, models["target"], [models[n] for n in names], corpus, SPEC, None, cache, progress=False, **kw
    )


def shards(store: SignalStore) -> list[pa.Table]:
    return [store.read_shard(i) for i in range(store.meta.n_shards)]


# -------------------------------------------------------------------------------------------- unit semantics


def test_merge_topk_sums_duplicate_ids_and_pads() -> None:
    rows = np.array([0, 0, 0, 1])
    ids = np.array([5, 5, 7, -1])
    logp = np.log(np.array([0.2, 0.3, 0.1, 0.4]))
    out_ids, out_logp = merge_topk(rows, ids, logp, 2, 3)
    assert out_ids[0].tolist()[:2] == [5, 7]
    assert np.allclose(np.exp(out_logp[0, :2]), [0.5, 0.1])
    assert np.isneginf(out_logp[0, 2]) and np.isneginf(out_logp[1]).all()  # row 1: its only id maps nowhere


def test_aligned_teacher_uses_same_span_source_rows_else_one_hot_on_the_next_token() -> None:
    # target response 'a' | 'bc' | EOS ; source response 'a' | 'b' | 'c' | EOS
    target = Encoded(
        np.array([10, 11, 12, 13, 14]), 2, Tokenization("abc\x00", np.array([[0, 1], [1, 3], [3, 4]]))
    )
    source = Encoded(
        np.array([50, 51, 52, 53, 54, 55]),
        2,
        Tokenization("abc\x00", np.array([[0, 1], [1, 2], [2, 3], [3, 4]])),
    )
    top_ids = np.array([[100 + r, 200 + r, 300 + r] for r in range(4)])
    top_logp = np.log(np.tile([0.5, 0.3, 0.1], (4, 1))).astype(np.float32)
    teacher = TeacherPass(1.0, top_ids, top_logp, np.ones(4, dtype=bool))
    vmap = np.full(400, -1)
    for r in range(4):
        vmap[100 + r] = vmap[200 + r] = 20 + r  # two source ids onto one target id: probabilities add
    ids, logp, n_aligned = aligned_teacher(target, source, teacher, vmap, 3)
    assert n_aligned == 2
    assert ids[0, 0] == 20 and math.isclose(math.exp(logp[0, 0]), 0.8, rel_tol=1e-6)  # from source row 0
    assert (
        ids[1].tolist() == [13, 0, 0] and logp[1, 0] == 0 and np.isneginf(logp[1, 1:]).all()
    )  # token 13 itself
    assert ids[2, 0] == 23 and math.isclose(
        math.exp(logp[2, 0]), 0.8, rel_tol=1e-6
    )  # EOS from the source's EOS row


def test_teacher_forced_rows_predict_each_response_token_from_the_previous_position(models) -> None:
    handle = models["llama-sp"]
    tok = load_tokenizer(handle.model)
    model = load_model(handle.model)
    ex = encode_example(tok, "Say kalomi.", "Kalomi anter.", None, 96, "llama-sp")
    assert tok.decode(ex.ids[ex.resp_start :].tolist()).startswith("Kalomi anter.")
    other = Encoded(ex.ids[3:], 0, ex.response)  # no prompt: the first token has nothing before it
    (p, q) = teacher_forced(model, [ex, other], k=4, batch_size=2, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logp = model(torch.from_numpy(ex.ids)[None]).logits[0].log_softmax(-1)
    for r in range(ex.n_response):
        pos = ex.resp_start + r - 1  # the last prompt position predicts the first response token
        assert p.top_ids[r].tolist() == logp[pos].topk(4).indices.tolist()
        assert np.allclose(p.top_logp[r], logp[pos].topk(4).values.numpy(), atol=1e-5)
    nll = -logp[ex.resp_start - 1 : len(ex.ids) - 1].gather(
        -1, torch.tensor(ex.ids[ex.resp_start :])[:, None]
    )
    assert math.isclose(p.ce, float(nll.mean()), rel_tol=1e-5)
    assert not q.predicted[0] and q.predicted[1:].all()


def test_encode_example_windows_long_prompts_and_keeps_the_response(models) -> None:
    tok = load_tokenizer(models["target"].model)
    full = encode_example(tok, "kalomi " * 200, "anter quasu.", None, 10_000, "target")
    cut = encode_example(tok, "kalomi " * 200, "anter quasu.", None, 64, "target")
    assert len(cut.ids) == 64 and cut.n_response == full.n_response
    assert cut.ids[cut.resp_start :].tolist() == full.ids[full.resp_start :].tolist()
    assert cut.response.spans[-1].tolist() == [
        len("anter quasu."),
        len("anter quasu.") + 1,
    ]  # EOS on the sentinel


# ---------------------------------------------------------------------------------------------------- storage


def test_store_round_trip_keeps_real_tokens_in_small_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    meta = StoreMeta("k", "training", 3, 2, 4, 700, {})
    store = SignalStore.create(tmp_path, meta)
    rows = []
    for i, (n, r) in enumerate([(7, 3), (5, 1)]):
        ids = rng.integers(0, 700, (n - r, 4))
        logp = np.sort(np.log(rng.dirichlet(np.ones(4), n - r)), axis=1)[:, ::-1].astype(np.float32)
        logp[0, 3] = -np.inf
        rows.append(
            ExampleSignal(f"e{i}", "knowledge", 1.5 + i, rng.integers(0, 700, n), r, ids, logp, n - r - 1)
        )
    store.write_shard(0, rows, {"response": pa.array(["x", "y"])})
    table = store.read_shard(0)
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16())
    assert table.schema.field("topk_ids").type == pa.list_(pa.uint16())
    assert table.schema.field("topk_logp").type == pa.list_(pa.float16())
    assert table.schema.field("ce").type == pa.float32()
    assert [len(v) for v in table.column("topk_ids").to_pylist()] == [
        16,
        16,
    ]  # (T - resp_start) * k, no padding
    back = example_from_table(table, 0, 4)
    assert back.input_ids.tolist() == rows[0].input_ids.tolist() and back.resp_start == 3
    assert back.topk_ids.tolist() == rows[0].topk_ids.tolist()
    assert np.allclose(back.topk_logp, rows[0].topk_logp, atol=1e-2) and np.isneginf(back.topk_logp[0, 3])
    assert back.extras == {"response": "x"}
    assert id_type(700) == pa.uint16() and id_type(65536) == pa.uint16() and id_type(65537) == pa.uint32()
    with pytest.raises(ValueError):
        store.write_shard(1, rows)  # the last shard holds one example


def test_training_signals_layout_and_target_self_teacher(models, corpus, tmp_path) -> None:
    sset = extract(models, corpus, tmp_path)
    assert sset.complete() and sset.path is not None and sset.path.is_file()
    stores = sset.stores()
    own, other = stores["target"], stores["llama-sp"]
    assert own.meta.n_shards == 3 and own.path != other.path
    target_tok = load_tokenizer(models["target"].model)
    for a, b in zip(shards(own), shards(other), strict=True):
        assert a.column("id").to_pylist() == b.column("id").to_pylist()
        assert (
            a.column("input_ids").to_pylist() == b.column("input_ids").to_pylist()
        )  # the target's tokens for both
        assert a.column("n_aligned").to_pylist() == [
            n - r
            for n, r in zip(a.column("n_tokens").to_pylist(), a.column("resp_start").to_pylist(), strict=True)
        ]
        for r in range(a.num_rows):
            ex = row(b, r)
            one_hot = np.isneginf(ex.topk_logp[:, 1]) & (ex.topk_logp[:, 0] == 0)
            # unaligned rows teach the token itself; aligned rows are real distributions
            assert ex.topk_ids[one_hot, 0].tolist() == ex.input_ids[ex.resp_start :][one_hot].tolist()
            assert (~one_hot).sum() >= ex.n_aligned > 0
    first = corpus[0]
    text = target_tok.apply_chat_template(
        [{"role": "user", "content": first.prompt}], tokenize=False, add_generation_prompt=True
    )
    assert (
        target_tok.decode(own.read_shard(0).column("input_ids")[0].values.to_numpy())
        == text + first.reference + target_tok.eos_token
    )


def row(table: pa.Table, r: int) -> ExampleSignal:
    return example_from_table(table, r, SPEC.top_k)


def test_truncated_shard_is_reported_and_rebuilt(models, corpus, tmp_path, capsys) -> None:
    sset = extract(models, corpus, tmp_path, names=("llama-sp",))
    store = sset.stores()["llama-sp"]
    before = store.read_shard(1)
    path = store.shard_path(1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    rebuilt: list[tuple[str, int]] = []
    extract(models, corpus, tmp_path, names=("llama-sp",), on_shard=lambda s, i: rebuilt.append((s, i)))
    assert rebuilt == [("training:llama-sp", 1)]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "shard-00001" in warnings[0]
    assert store.read_shard(1).equals(before)


def test_killed_extraction_resumes_to_the_uninterrupted_result(models, corpus, tmp_path) -> None:
    calls: list[tuple[str, int]] = []

    def fault(store: str, index: int) -> None:
        calls.append((store, index))
        if index == 1:
            raise KeyboardInterrupt("killed after shard 1")

    with pytest.raises(KeyboardInterrupt):
        extract(models, corpus, tmp_path / "a", names=("llama-sp",), on_shard=fault)
    calls.clear()
    resumed = extract(
        models, corpus, tmp_path / "a", names=("llama-sp",), on_shard=lambda s, i: calls.append((s, i))
    )
    assert calls == [("training:llama-sp", 2)]  # shards 0 and 1 were kept
    whole = extract(models, corpus, tmp_path / "b", names=("llama-sp",))
    for a, b in zip(shards(resumed.stores()["llama-sp"]), shards(whole.stores()["llama-sp"]), strict=True):
        assert a.equals(b)


def test_rank_sharding_splits_the_single_process_work(models, corpus, tmp_path) -> None:
    seen: dict[int, list[int]] = {0: [], 1: []}
    for rank in (0, 1):
        part = extract(
            models,
            corpus,
            tmp_path / "ranks",
            names=("llama-sp",),
            rank=rank,
            world_size=2,
            on_shard=lambda s, i, rank=rank: seen[rank].append(i),
        )
        assert part.complete() == (rank == 1)
    assert seen == {0: [0, 2], 1: [1]}
    single = extract(models, corpus, tmp_path / "single", names=("llama-sp",))
    for a, b in zip(shards(part.stores()["llama-sp"]), shards(single.stores()["llama-sp"]), strict=True):
        assert a.equals(b)


def test_cached_signals_are_reused_without_loading_a_model(models, corpus, tmp_path, monkeypatch) -> None:
    first = extract(models, corpus, tmp_path)
    loaded: list[str] = []

    def recording(model, *args, **kwargs):
        loaded.append(Path(model.pretrained).name)
        return load_model(model, *args, **kwargs)

    monkeypatch.setattr("harness.signals.candidate_store.load_model", recording)
    again = extract(models, corpus, tmp_path)
    assert loaded == [] and again.candidates == first.candidates and again.key == first.key
    # another method with one more source reuses the stores it shares
    more = extract(models, corpus, tmp_path, names=("target", "llama-sp", "gpt2-bl"))
    assert loaded == ["gpt2-bl"] and more.candidates["llama-sp"] == first.candidates["llama-sp"]


# ------------------------------------------------------------------------------------------------- inference


def fake_generate(model, tokenizer, prompts, **kwargs):
    """A stand-in for harness.signals.generate.generate: each model answers with a different number of words."""
    words = 1 + len(tokenizer) % 4
    return [" ".join(p.split()[:words]) + "." for p in prompts]


class LongestJudge:
    def pick(self, prompt, reference, candidates, meta):
        scores = {n: float(len(r)) for n, r in candidates.items()}
        return JudgeResult(max(scores, key=lambda n: scores[n]), scores)


def test_inference_mode_keeps_the_judged_winner(models, corpus, tmp_path) -> None:
    names = ("target", "llama-sp", "gpt2-bl")
    sset = extract(
        models,
        corpus,
        tmp_path,
        names=names,
        mode=Signal.INFERENCE,
        generate_fn=fake_generate,
        judge=LongestJudge(),
    )
    sel = sset.selection_store()
    assert sel is not None and sel.meta.candidates == names
    cand = sset.stores()
    for i in range(sel.meta.n_shards):
        table = sel.read_shard(i)
        per = {n: cand[n].read_shard(i) for n in names}
        for r in range(table.num_rows):
            responses = {n: per[n].column("response")[r].as_py() for n in names}
            winner = table.column("winner")[r].as_py()
            assert winner == max(names, key=lambda n: len(responses[n]))
            assert table.column("scores")[r].as_py() == [float(len(responses[n])) for n in names]
            assert table.column("response")[r].as_py() == responses[winner]
            for col in ("input_ids", "topk_ids", "topk_logp", "ce"):
                assert table.column(col)[r].equals(per[winner].column(col)[r])
    stats = selection_stats([sset], corpus)
    assert math.isclose(sum(stats["inference"].values()), 1.0)
    assert set(stats["by_skill"]) == {"knowledge", "reasoning", "safety"}


# -------------------------------------------------------------------------------------------- fusion dataset


class Both(FusionMethod):
    name = "both"
    description = "test method needing both views"
    needs = frozenset({Signal.TRAINING, Signal.INFERENCE})

    def loss(self, batch, student_logits, step, total_steps):
        return LossParts(torch.zeros(()))


class TrainingOnly(Both):
    needs = frozenset({Signal.TRAINING})


def test_fusion_dataset_and_collate(models, corpus, tmp_path) -> None:
    names = ("target", "llama-sp")
    train = extract(models, corpus, tmp_path, names=names)
    infer = extract(
        models,
        corpus,
        tmp_path,
        names=names,
        mode=Signal.INFERENCE,
        generate_fn=fake_generate,
        judge=LongestJudge(),
    )
    method = Both(MethodSpec())
    data = build_fusion_dataset({Signal.TRAINING: train, Signal.INFERENCE: infer}, method)
    assert len(data) == len(corpus) and data.ids == [r.id for r in corpus]
    ces = {n: s.column("ce") for n, s in train.stores().items()}
    item = data[0]
    view = item[Signal.TRAINING]
    best = min(names, key=lambda n: ces[n][0])  # MinCE picks the source with the lowest CE
    ex = row(train.stores()[best].read_shard(0), 0)
    assert view.topk_ids[ex.resp_start :].tolist() == ex.topk_ids.tolist()
    assert (
        torch.isneginf(view.topk_logp[: ex.resp_start]).all() and (view.labels[: ex.resp_start] == -100).all()
    )
    assert view.labels[ex.resp_start :].tolist() == ex.input_ids[ex.resp_start :].tolist()
    batch = collate([data[i] for i in range(4)])
    for sig in (Signal.TRAINING, Signal.INFERENCE):
        seq = batch.views[sig]
        lengths = [len(data[i][sig].input_ids) for i in range(4)]
        assert seq.input_ids.shape == (4, max(lengths)) and seq.topk_ids.shape == (
            4,
            max(lengths),
            SPEC.top_k,
        )
        for b, n in enumerate(lengths):
            assert seq.attention_mask[b].sum() == n
            assert (seq.labels[b, n:] == -100).all() and torch.isneginf(seq.topk_logp[b, n:]).all()
            assert (seq.topk_ids[b, n:] == 0).all()
    # k is padded to the widest teacher (averaging concatenates its sources' entries)
    wide = dict(data[1])
    v = wide[Signal.TRAINING]
    wide[Signal.TRAINING] = type(v)(
        v.input_ids,
        v.labels,
        torch.cat([v.topk_ids, v.topk_ids], 1),
        torch.cat([v.topk_logp, v.topk_logp], 1),
    )
    mixed = collate([data[0], wide]).views[Signal.TRAINING]
    assert (
        mixed.topk_ids.shape[2] == 2 * SPEC.top_k
        and torch.isneginf(mixed.topk_logp[0, :, SPEC.top_k :]).all()
    )
    with pytest.raises(HarnessError, match="inference"):
        build_fusion_dataset([train], method)
    assert len(build_fusion_dataset([train], TrainingOnly(MethodSpec()))) == len(corpus)


def test_an_eos_that_is_also_padding_is_taught_not_masked(models, corpus, tmp_path) -> None:
    """The tiny target pads with its EOS, as SmolLM2 does: every response still ends with EOS as a label with a
    teacher, and only positions beyond an example's length are masked in a batch, never EOS tokens by id."""
    tok = load_tokenizer(models["target"].model)
    assert tok.pad_token_id == tok.eos_token_id
    train = extract(models, corpus, tmp_path, names=("target", "llama-sp"))
    for name, store in train.stores().items():
        for i in range(len(corpus)):
            ex = row(store.read_shard(i // SPEC.shard_size), i % SPEC.shard_size)
            if len(ex.input_ids) < SPEC.max_length:  # not cut by the window: the turn's end is there
                assert ex.input_ids[-1] == tok.eos_token_id and np.isfinite(ex.topk_logp[-1, 0]), name
    data = build_fusion_dataset({Signal.TRAINING: train}, TrainingOnly(MethodSpec()))
    batch = collate([data[i] for i in range(4)]).views[Signal.TRAINING]
    for b in range(4):
        n = int(batch.attention_mask[b].sum())
        assert batch.labels[b, n - 1] == tok.eos_token_id and torch.isfinite(batch.topk_logp[b, n - 1, 0])
        assert (batch.labels[b, n:] == -100).all()


def _store(root: Path, key: str, kind: str, examples: list[tuple[str, int, int]], **meta) -> Path:
    """A hand-made store of examples (id, n_tokens, resp_start) in one shard."""
    store = SignalStore.create(root, StoreMeta(key, kind, len(examples), 8, 2, 50, {}, **meta))
    rows = [
        ExampleSignal(
            i, None, 1.0, np.arange(n), r, np.ones((n - r, 2), dtype=np.int64), np.zeros((n - r, 2))
        )
        for i, n, r in examples
    ]
    extras = None
    if kind == "inference":
        extras = {
            "winner": pa.array(["a"] * len(rows)),
            "scores": pa.array([[1.0]] * len(rows), pa.list_(pa.float32())),
        }
    store.write_shard(0, rows, extras)
    return store.path


def test_examples_missing_a_view_are_dropped_with_the_reason(tmp_path) -> None:
    train = SignalSet(
        Signal.TRAINING,
        "t",
        {"a": _store(tmp_path, "k1", "training", [("e0", 5, 2), ("e1", 5, 2), ("e2", 4, 1)])},
    )
    infer_store = _store(tmp_path, "k2", "inference", [("e0", 6, 3), ("e1", 3, 3)], candidates=("a",))
    infer = SignalSet(Signal.INFERENCE, "t", {"a": infer_store}, infer_store)
    data = build_fusion_dataset([train, infer], Both(MethodSpec()))
    assert data.ids == ["e0"]
    assert data.dropped == {"e1": "no response token in the inference view", "e2": "no inference signals"}
    item = data[0]
    assert len(item[Signal.TRAINING].input_ids) == 5 and len(item[Signal.INFERENCE].input_ids) == 6
    assert build_fusion_dataset([train], TrainingOnly(MethodSpec()), max_length=2).dropped == {
        "e0": "prompt fills max_length in the training view",
        "e1": "prompt fills max_length in the training view",
    }


def test_selection_stats_training_winners_are_min_ce(models, corpus, tmp_path) -> None:
    sset = extract(models, corpus, tmp_path)
    stats = selection_stats({Signal.TRAINING: sset})
    ces = {n: s.column("ce") for n, s in sset.stores().items()}
    wins = [min(ces, key=lambda n: ces[n][i]) for i in range(len(corpus))]
    assert stats["training"] == {n: wins.count(n) / len(corpus) for n in ces}
    assert stats["inference"] == {}
    knowledge = [w for w, r in zip(wins, corpus, strict=True) if r.skill == "knowledge"]
    assert stats["by_skill"]["knowledge"]["training"] == {n: knowledge.count(n) / len(knowledge) for n in ces}


# ----------------------------------------------------------------------------------------------------- inputs


def test_corpus_validation_errors_are_one_line(tmp_path) -> None:
    cases = [
        ([], "empty"),
        ([{"prompt": "p"}], "no 'reference'"),
        ([{"prompt": b"\xff\xfe", "reference": "r"}], "not UTF-8"),
        ([{"prompt": "bad \udcff", "reference": "r"}], "not UTF-8"),
        (
            [{"id": "a", "prompt": "p", "reference": "r"}, {"id": "a", "prompt": "q", "reference": "r"}],
            "twice",
        ),
        ([{"prompt": "  ", "reference": "r"}], "empty"),
    ]
    for rows, message in cases:
        with pytest.raises(HarnessError, match=message) as info:
            validate_corpus(rows)
        assert "\n" not in info.value.one_line()
    good = validate_corpus([{"prompt": "p", "reference": "r", "skill": "safety"}])
    assert good == [CorpusRow("0", "p", "r", "safety")]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(json.dumps({"prompt": "p", "reference": "r"}).encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(HarnessError, match="line 2 is not UTF-8"):
        load_corpus(path)
    assert load_corpus(path, limit=1) == [CorpusRow("0", "p", "r")]


def test_extraction_rejects_bad_inputs(models, tmp_path) -> None:
    with pytest.raises(HarnessError, match="empty"):
        extract(models, [], tmp_path)
    with pytest.raises(HarnessError, match="unique"):
        extract(models, tiny_corpus(2), tmp_path, names=("target", "target"))


class ParityJudge:
    """Scores by response length parity, so that ties (all equal) and uneven examples both occur."""

    def pick(self, prompt, reference, candidates, meta):
        scores = {n: float(len(r) % 2) for n, r in candidates.items()}
        return JudgeResult(max(scores, key=lambda n: scores[n]), scores)


def test_selection_stats_measure_where_min_ce_and_the_judge_disagree(models, corpus, tmp_path) -> None:
    names = ("target", "llama-sp", "gpt2-bl")
    train = extract(models, corpus, tmp_path, names=names)
    infer = extract(models, corpus, tmp_path, names=names, mode=Signal.INFERENCE, generate_fn=fake_generate,
                    judge=ParityJudge())  # fmt: skip
    stats = selection_stats([train, infer], corpus)
    # directly: the MinCE winner, the judged scores and winner of every example
    ces = {n: s.column("ce") for n, s in train.stores().items()}
    sel = infer.selection_store()
    assert sel is not None
    rows = []
    for i, row in enumerate(corpus):
        mince = min(names, key=lambda n: ces[n][i])
        scores = dict(zip(sel.meta.candidates, sel.column("scores")[i], strict=True))
        best = max(scores.values())
        rows.append((row.skill, scores[mince] < best, min(scores.values()) < best, mince != sel.column("winner")[i]))
    for skill in ("overall", "knowledge"):
        mine = [r for r in rows if skill == "overall" or r[0] == skill]
        got = stats["disagreement"][skill]
        assert got["n"] == len(mine) and got["decisive"] == sum(r[2] for r in mine)
        assert got["disagreement"] == pytest.approx(sum(r[1] for r in mine) / len(mine))
        assert got["winner_differs"] == pytest.approx(sum(r[3] for r in mine) / len(mine))
        if got["decisive"]:
            assert got["disagreement_decisive"] == pytest.approx(sum(r[1] for r in mine) / got["decisive"])
    assert 0 < stats["disagreement"]["overall"]["decisive"] < len(corpus)  # the test sees both kinds of example
    assert "disagreement" not in selection_stats([train], corpus)  # one mode alone: nothing to compare


# -------------------------------------------------------------------------------------- cut-off generations


def _cutting(cut_off: set[int]):  # type: ignore[no-untyped-def]
    """fake_generate, with the responses of the models whose vocabulary size is in `cut_off` marked as cut off at
    max_new_tokens (as harness.signals.generate marks them)."""
    from harness.signals.generate import Generated

    def generate(model, tokenizer, prompts, **kwargs):  # type: ignore[no-untyped-def]
        words = 1 + len(tokenizer) % 4
        return [Generated(" ".join(p.split()[:words]) + " and", len(tokenizer) not in cut_off) for p in prompts]

    return generate


def test_cut_off_generations_are_never_taught_to_stop(models, corpus, tmp_path) -> None:
    """A response cut at max_new_tokens keeps no end of turn; `signals.truncated: drop` (default) judges only the
    finished responses and teaches nothing in inference mode where every candidate was cut off; `keep` judges
    them all and teaches the cut-off text without a stop token. The audit reports the cut-off share."""
    from harness.chat import end_of_turn_id
    from harness.signals.analysis import store_audit

    names = ("target", "llama-sp", "gpt2-bl")
    toks = {n: load_tokenizer(models[n].model) for n in names}
    sizes = {n: len(t) for n, t in toks.items()}
    cut = sizes["llama-sp"]
    target_end = end_of_turn_id(toks["target"]) or toks["target"].eos_token_id

    def run(truncated: str, cut_off: set[int], cache: Path):  # type: ignore[no-untyped-def]
        spec = SPEC.model_copy(update={"truncated": truncated})
        return extract_signals(Signal.INFERENCE, models["target"], [models[n] for n in names], corpus, spec, None,
                               cache, progress=False, generate_fn=_cutting(cut_off), judge=LongestJudge())  # fmt: skip

    keep = run("keep", {cut}, tmp_path / "keep")
    table = keep.selection_store().read_shard(0)
    audits = {n: store_audit(s) for n, s in keep.stores().items()}
    assert audits["llama-sp"]["cut_off"] == 1.0 and audits["target"]["cut_off"] == 0.0
    for r in range(table.num_rows):
        ids = table.column("input_ids")[r].as_py()
        finished = table.column("finished")[r].as_py()
        assert table.column("teach")[r].as_py()
        assert (ids[-1] == target_end) == finished  # the cut-off winner's target tokens end without a stop
    assert not all(table.column("finished").to_pylist())  # llama-sp's longer answers won somewhere
    drop = run("drop", {cut}, tmp_path / "drop").selection_store()
    assert "llama-sp" not in drop.column("winner") and all(drop.column("finished"))
    every = run("drop", set(sizes.values()), tmp_path / "every")
    assert not any(every.selection_store().column("teach"))
    dataset = build_fusion_dataset([every], InferenceOnlyView(MethodSpec()))
    assert all((item[Signal.INFERENCE].labels == -100).all() for item in (dataset[i] for i in range(len(dataset))))


class InferenceOnlyView(Both):
    needs = frozenset({Signal.INFERENCE})


# ------------------------------------------------------------------------------------ MinCE over the same text


def test_min_ce_compares_every_candidate_over_the_same_answer_characters(models, corpus, tmp_path) -> None:
    """Windows cut at max_length in each model's own tokens cover different amounts of a long answer; the CE
    MinCE compares is every candidate's over the characters all of them cover, and the audit counts the cuts."""
    from harness.signals.analysis import store_audit
    from harness.signals.comparable_ce import ce_up_to, comparable_ces, covered

    long = [CorpusRow(r.id, r.prompt, " ".join([r.reference] * 6), r.skill) for r in corpus]
    spec = SPEC.model_copy(update={"max_length": 40})
    sset = extract_signals(Signal.TRAINING, models["target"], [models[n] for n in ("target", "llama-sp")], long,
                           spec, None, tmp_path, progress=False)  # fmt: skip
    stores = sset.stores()
    per = {n: (s.column("token_logp"), s.column("token_end"), s.column("ce"), s.column("answer_cut")) for n, s in stores.items()}
    assert all(store_audit(s)["answer_cut"] == 1.0 for s in stores.values())
    differs = 0
    for e in range(len(long)):
        ces, cut = comparable_ces({n: (p[0][e], p[1][e]) for n, p in per.items()})
        assert cut == min(covered(p[1][e]) for p in per.values()) < len(long[e].reference)
        for n, p in per.items():
            assert ces[n] == pytest.approx(ce_up_to(p[0][e], p[1][e], cut))
            differs += not math.isclose(ces[n], p[2][e], rel_tol=1e-6)
    assert differs > 0  # the longer window's own CE covered more text
    dataset = build_fusion_dataset([sset], TrainingOnly(MethodSpec()))
    wins = selection_stats([sset])["training"]
    mince = [min(per, key=lambda n, e=e: comparable_ces({m: (p[0][e], p[1][e]) for m, p in per.items()})[0][n]) for e in range(len(long))]
    assert wins == {n: mince.count(n) / len(long) for n in per}
    assert len(dataset) == len(long)
