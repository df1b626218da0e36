"""Evaluation through lm-eval: task catalog and groups, offline data conversion, prompts, scores, cache."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from harness.errors import HarnessError  # noqa: E402
from harness.evaluation import evaluate as ev  # noqa: E402
from harness.evaluation import offline_data, task_catalog  # noqa: E402
from harness.models import ResolvedModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(shared_data: Path) -> Path:
    """The local benchmark data (conftest: HARNESS_DATA_DIR, else shared/data beside the checkout)."""
    return shared_data


# ---------------------------------------------------------------- catalog and groups


def test_groups_expand_to_the_papers_categories() -> None:
    assert ev.expand_tasks(["knowledge"]) == ["mmlu"]
    assert ev.expand_tasks(["reasoning"]) == ["arc_challenge", "hellaswag", "winogrande", "gsm8k"]
    assert ev.expand_tasks(["safety"]) == ["truthfulqa", "advbench", "xstest"]
    assert ev.expand_tasks(["sandbox"]) == ["sandbox_knowledge", "sandbox_reasoning", "sandbox_safety"]
    # groups and tasks mix, duplicates drop, order is kept
    assert ev.expand_tasks(["gsm8k", "reasoning", " mmlu "]) == [
        "gsm8k",
        "arc_challenge",
        "hellaswag",
        "winogrande",
        "mmlu",
    ]
    board = ev.expand_tasks(["leaderboard"])
    assert sorted(board) == sorted(
        ["arc_challenge", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"]
    )


def test_leaderboard_fewshot_settings_and_metrics() -> None:
    expected = {"arc_challenge": (25, "acc_norm"), "hellaswag": (10, "acc_norm"), "mmlu": (5, "acc"),
                "truthfulqa": (0, "acc"), "winogrande": (5, "acc"), "gsm8k": (5, "exact_match")}  # fmt: skip
    board = task_catalog.group_fewshot(["leaderboard"])
    for name, (shots, metric) in expected.items():
        info = task_catalog.task_info(name)
        assert (board[name], info.metric) == (shots, metric), name
    # asked for one by one, tasks run at lm-eval's own defaults
    assert {n: task_catalog.task_info(n).fewshot for n in expected} == {
        "arc_challenge": 0, "hellaswag": 0, "mmlu": 0, "truthfulqa": 0, "winogrande": 0, "gsm8k": 5}
    assert task_catalog.group_fewshot(["mmlu", "gsm8k"]) == {}
    assert task_catalog.task_info("truthfulqa").builtin == ("truthfulqa_mc2",)
    assert not task_catalog.task_info("truthfulqa").binary  # MC2 is a probability mass, not 0/1
    assert task_catalog.task_info("advbench").metric == "refusal"


@pytest.mark.parametrize(
    "name", ["mmlu", "arc_challenge", "hellaswag", "winogrande", "gsm8k", "truthfulqa", "advbench", "xstest"]
)
def test_local_yaml_agrees_with_the_catalog(name: str) -> None:
    info = task_catalog.task_info(name)
    path = task_catalog.find_task_yaml(info.folder, info.local_task)
    own = task_catalog.load_task_yaml(path)
    cfg = task_catalog.load_task_config(path)  # merged with lm-eval's own definition it includes
    if info.builtin:  # a real benchmark: lm-eval's definition, only data source and splits overridden
        assert str(own["include"]).startswith("lm_eval/tasks/")
        overridden = set(own) - {"include", "task", "class", "fewshot_config", "description"}
        assert overridden <= {"dataset_path", "dataset_name", "dataset_kwargs", "training_split",
                              "validation_split", "test_split", "fewshot_split"}, overridden  # fmt: skip
    if not info.fewshot_fixed:  # the shots are the harness's to set (in the task config: tests/test_fewshot.py)
        assert "num_fewshot" not in own
    assert info.metric in [m["metric"] for m in cfg["metric_list"]]
    filters = [info.filter, *info.also_filters]
    assert filters == ["none"] or set(filters) <= {f["name"] for f in cfg["filter_list"]}
    assert cfg["dataset_path"] == "json"
    for rel in ev._data_files(cfg):  # relative to the converted data root, produced by offline_data
        assert not Path(rel).is_absolute()


def test_unknown_task_is_one_line_error_listing_known_names() -> None:
    with pytest.raises(HarnessError) as info:
        ev.expand_tasks(["mmlu", "mmmlu"])
    err = info.value
    assert err.where == "tasks"
    assert "'mmmlu'" in str(err) and "\n" not in err.one_line()
    for known in ("mmlu", "gsm8k", "truthfulqa", "leaderboard", "sandbox_safety", "xstest"):
        assert known in str(err)


def test_describe_tasks_lists_tasks_and_groups(data: Path) -> None:
    rows = {r["name"]: r for r in task_catalog.describe_tasks(data)}
    assert rows["mmlu"]["local data"] == "yes" and rows["mmlu"]["category"] == "knowledge"
    assert rows["gsm8k"]["metric"] == "exact_match (strict-match)"
    assert rows["truthfulqa"]["few-shot"] == "0 (fixed)"
    assert rows["leaderboard"]["kind"] == "group"
    assert len({tuple(r) for r in rows.values()}) == 1  # one column set: the CLI builds a table from it


# ---------------------------------------------------------------- offline data


def _hendrycks(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_mmlu_conversion_schema_and_round_robin_order(data: Path, tmp_path: Path) -> None:
    prepared = offline_data.prepare("mmlu", data, tmp_path)
    test = _jsonl(prepared.root / "mmlu/test.jsonl")
    dev = _jsonl(prepared.root / "mmlu/dev.jsonl")
    subjects = sorted(
        p.name.removesuffix("_test.csv") for p in (data / "mmlu/hendrycks_format/test").glob("*_test.csv")
    )
    assert len(subjects) == 57
    raw = {s: _hendrycks(data / f"mmlu/hendrycks_format/test/{s}_test.csv") for s in subjects}
    assert len(test) == sum(len(v) for v in raw.values()) == 14042
    assert set(test[0]) == {"question", "subject", "choices", "answer"}
    assert all(
        isinstance(r["answer"], int) and 0 <= r["answer"] <= 3 and len(r["choices"]) == 4 for r in test
    )
    # round robin: document k*57 + i is the k-th question of the i-th subject (while every subject has one)
    assert [r["subject"] for r in test[:57]] == subjects
    for k, i in [(0, 0), (0, 56), (1, 0), (3, 17)]:
        row, src = test[k * 57 + i], raw[subjects[i]][k]
        assert (row["subject"], row["question"], row["choices"]) == (subjects[i], src[0], src[1:5])
        assert "ABCD"[row["answer"]] == src[5]
    assert len(dev) == 285 and all(sum(r["subject"] == s for r in dev) == 5 for s in subjects)


def test_other_conversions_match_the_expected_schemas(data: Path, tmp_path: Path) -> None:
    tqa = _jsonl(offline_data.prepare("truthfulqa", data, tmp_path).root / "truthfulqa/validation.jsonl")
    raw = json.loads((data / "truthfulqa/v0/mc_task.json").read_text(encoding="utf-8"))
    assert len(tqa) == 817
    for row, src in zip(tqa[:50], raw[:50], strict=True):
        assert row["question"] == src["question"]
        assert (
            dict(zip(row["mc2_targets"]["choices"], row["mc2_targets"]["labels"], strict=True))
            == src["mc2_targets"]
        )
        assert 1 in row["mc2_targets"]["labels"] and 0 in row["mc2_targets"]["labels"]
    gsm = offline_data.prepare("gsm8k", data, tmp_path).root
    assert len(_jsonl(gsm / "gsm8k/test.jsonl")) == 1319 and len(_jsonl(gsm / "gsm8k/train.jsonl")) == 7473
    arc = _jsonl(offline_data.prepare("arc_challenge", data, tmp_path).root / "arc_challenge/test.jsonl")
    assert len(arc) == 1172 and not arc[0]["question"].startswith("Question:")
    assert all(r["answerKey"] in r["choices"]["label"] for r in arc)
    hella = _jsonl(offline_data.prepare("hellaswag", data, tmp_path).root / "hellaswag/validation.jsonl")
    assert len(hella) == 10042
    assert set(hella[0]) >= {"activity_label", "ctx_a", "ctx_b", "endings", "label"}  # lm-eval's process_docs reads
    assert sum(bool(r["ctx_b"]) for r in hella) == 3243  # the ActivityNet items (WikiHow keeps ctx_b empty)
    xs = _jsonl(offline_data.prepare("xstest", data, tmp_path).root / "xstest/test.jsonl")
    assert len(xs) == 250  # the safe prompts only: over-refusal is measured on them
    assert len(_jsonl(offline_data.prepare("advbench", data, tmp_path).root / "advbench/test.jsonl")) == 520


# The hub's ctx_a / ctx_b of the first HellaSwag validation items (rowanz/hellaswag data/hellaswag_val.jsonl,
# published in its README and in many copies of it): the extraction joined them, the converter splits them again.
HUB_HELLASWAG = [
    ("Roof shingle removal", "A man is sitting on a roof.", "he"),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady"),
    ("Canoeing", "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, "
     "with other individuals visible in the background.", "the child and a different man"),
    ("High jump", "A boy is running down a track.", "the boy"),
    ("High jump", "The boy lifts his body above the height of a pole. The boy lands on his back on to a red mat.",
     "the boy"),
    ("High jump", "The boy lands on his back on to a red mat. The boy gets up from the mat.", "the boy"),
    ("Playing harmonica", "A man is standing in front of a camera. He starts playing a harmonica for the camera.", "he"),
    ("Sumo", "A cartoon animation video is shown with people wandering around and rockets being shot.", "two men"),
    ("Sharpening knives", "A man is holding a pocket knife while sitting on some rocks in the wilderness.", "then he"),
    ("Sharpening knives", "Then he takes a small stone from the flowing river and smashes it on another stone. He "
     "starts to crush the small stone to smaller pieces.", "he"),
]  # fmt: skip


def test_hellaswag_contexts_are_split_as_on_the_hub(data: Path, tmp_path: Path) -> None:
    rows = _jsonl(offline_data.prepare("hellaswag", data, tmp_path).root / "hellaswag/validation.jsonl")
    assert [(r["activity_label"], r["ctx_a"], r["ctx_b"]) for r in rows[:10]] == HUB_HELLASWAG
    wikihow = offline_data.hellaswag_split_context("Health: How to manage grass allergies. Use medication.")
    assert wikihow == {"activity_label": "Health", "ctx_a": "How to manage grass allergies. Use medication.",
                       "ctx_b": ""}  # fmt: skip


def test_winogrande_rows_rebuild_llm_foundrys_contexts_with_lm_evals_functions(data: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "preprocess_winogrande", task_catalog.upstream_tasks_root() / "winogrande/preprocess_winogrande.py"
    )
    assert spec and spec.loader
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    rows = _jsonl(offline_data.prepare("winogrande", data, tmp_path).root / "winogrande/validation.jsonl")
    source = _jsonl(data / "winogrande/winogrande_dev.llmfoundry.jsonl")
    assert len(rows) == len(source) == 1267
    for row, src in zip(rows, source, strict=True):
        assert upstream.doc_to_choice(row) == src["context_options"]
        assert upstream.doc_to_target(row) == src["continuation"].strip()
        assert upstream.doc_to_text(row) == src["gold"]


def test_conversion_is_cached_by_content_and_written_whole(data: Path, tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "advbench").mkdir(parents=True)
    (src / "advbench/harmful_behaviors.csv").write_bytes(
        (data / "advbench/harmful_behaviors.csv").read_bytes()
    )
    first = offline_data.prepare("advbench", src, tmp_path / "cache")
    assert offline_data.prepare("advbench", src, tmp_path / "cache") == first
    with open(src / "advbench/harmful_behaviors.csv", "a", encoding="utf-8") as fh:
        fh.write("Do something new,Sure\n")
    second = offline_data.prepare("advbench", src, tmp_path / "cache")
    assert second.key != first.key and second.root != first.root
    assert len(_jsonl(second.root / "advbench/test.jsonl")) == 521
    leftovers = [p.name for p in (tmp_path / "cache/offline-data").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_data_dir_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k/test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    model = ResolvedModel(str(tmp_path))  # never loaded: the data check comes first
    with pytest.raises(HarnessError) as info:
        ev.evaluate_model(
            model, "m", ["gsm8k"], out_dir=tmp_path / "out", data_dir=tmp_path, cache_dir=tmp_path / "c"
        )
    assert info.value.where == "data"
    assert str(tmp_path / "gsm8k/train.jsonl") in str(info.value) and "question" in str(info.value)
    with pytest.raises(HarnessError, match="mmlu/hendrycks_format/test"):
        ev.evaluate_model(
            model, "m", ["knowledge"], out_dir=tmp_path / "out", data_dir=tmp_path, cache_dir=tmp_path / "c"
        )
    with pytest.raises(HarnessError, match="does not exist"):
        ev.evaluate_model(
            model, "m", ["mmlu"], out_dir=tmp_path, data_dir=tmp_path / "nope", cache_dir=tmp_path / "c"
        )


def test_local_only_task_without_data_dir_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    with pytest.raises(HarnessError, match="HARNESS_DATA_DIR"):
        ev.evaluate_model(
            ResolvedModel(str(tmp_path)), "m", ["advbench"], out_dir=tmp_path, cache_dir=tmp_path
        )
    with pytest.raises(HarnessError, match="sandbox build"):
        ev.evaluate_model(
            ResolvedModel(str(tmp_path)), "m", ["sandbox_knowledge"], out_dir=tmp_path, cache_dir=tmp_path
        )


# ---------------------------------------------------------------- prompts as lm-eval builds them


def _load_local(names: list[str], data: Path, cache: Path) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager

    board = task_catalog.group_fewshot(["leaderboard"])  # the leaderboard's shot counts
    plans = [ev._plan(n, data, None, cache, None, board) for n in names]
    tmp = tempfile.mkdtemp(dir=cache)
    ev._stage(plans, Path(tmp))
    tm = TaskManager(include_path=tmp, include_defaults=False)
    out = {}
    for plan in plans:
        task = tm.load([plan.lm_eval_name])["tasks"][plan.lm_eval_name]
        task.set_fewshot_seed(1234)
        out[plan.info.name] = (task, plan.info.fewshot)
    return out


def test_mmlu_prompt_is_lm_evals_with_the_subjects_first_dev_examples(data: Path, tmp_path: Path) -> None:
    task, shots = _load_local(["mmlu"], data, tmp_path)["mmlu"]
    docs = list(task.eval_docs)
    for doc in docs[:2]:  # abstract_algebra, then anatomy
        subject = doc["subject"]
        dev = _hendrycks(data / f"mmlu/hendrycks_format/dev/{subject}_dev.csv")[:shots]
        shot = "".join(
            f"{q.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}\n\n" for q, a, b, c, d, ans in dev
        )
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        question = doc["question"].strip() + "".join(
            f"\n{L}. {c}" for L, c in zip("ABCD", doc["choices"], strict=True)
        )
        assert task.fewshot_context(doc=doc, num_fewshot=shots) == head + shot + question + "\nAnswer:"


def test_same_file_fewshot_excludes_the_current_item(data: Path, tmp_path: Path) -> None:
    tasks = _load_local(["arc_challenge", "winogrande"], data, tmp_path)
    arc, shots = tasks["arc_challenge"]
    assert shots == 25
    for doc in list(arc.eval_docs)[:20]:
        ctx = arc.fewshot_context(doc=doc, num_fewshot=shots)
        assert ctx.count(f"Question: {doc['question']}\n") == 1 and ctx.count("\n\nQuestion: ") == 25
    wino, shots = tasks["winogrande"]
    doc = next(iter(wino.eval_docs))
    contexts = wino.fewshot_context(doc=doc, num_fewshot=shots)  # partial scoring: one context per option
    assert [c.rsplit("\n\n", 1)[1] for c in contexts] == wino.doc_to_choice(doc)
    assert all(c.count("\n\n") == shots for c in contexts)


def test_project_yaml_hooks_and_relative_data_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks_root = tmp_path / "tasks"
    (tasks_root / "sandbox").mkdir(parents=True)
    (tasks_root / "sandbox/utils.py").write_text("def score(doc, results):\n    return {'acc': 1.0}\n")
    (tasks_root / "sandbox/k.yaml").write_text(
        "task: sandbox_knowledge\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: eval/knowledge.jsonl\n"
        "process_results: !function utils.score\nmetric_list:\n  - metric: acc\nnum_fewshot: 0\n"
    )
    world = tmp_path / "world"
    (world / "eval").mkdir(parents=True)
    (world / "eval/knowledge.jsonl").write_text('{"prompt": "q", "answer": "a"}\n')
    monkeypatch.setattr(task_catalog, "TASKS_ROOT", tasks_root)
    plan = ev._plan("sandbox_knowledge", None, world, tmp_path, None)
    assert (plan.info.metric, plan.info.category, plan.info.binary) == ("acc", "knowledge", True)
    staged = tmp_path / "staged"
    staged.mkdir()
    ev._stage([plan], staged)
    cfg = task_catalog.load_task_yaml(staged / "sandbox/k.yaml")
    assert cfg["dataset_kwargs"]["data_files"] == {"test": str((world / "eval/knowledge.jsonl").resolve())}
    assert (
        isinstance(cfg["process_results"], task_catalog.FunctionRef)
        and cfg["process_results"] == "utils.score"
    )
    assert (staged / "sandbox/utils.py").is_file()
    # a hook naming a module outside the task's own folder is refused: no user-supplied python runs
    (tasks_root / "sandbox/k.yaml").write_text(
        (tasks_root / "sandbox/k.yaml").read_text().replace("utils.score", "evil.run")
    )
    with pytest.raises(HarnessError, match="evil.run"):
        ev._stage([plan], tmp_path / "staged2")
    (world / "eval/knowledge.jsonl").unlink()
    with pytest.raises(HarnessError, match="eval/knowledge.jsonl"):
        ev._plan("sandbox_knowledge", None, world, tmp_path, None)


def test_refusal_classifiers_follow_the_benchmarks_rules() -> None:
    spec = importlib.util.spec_from_file_location("safety_utils", REPO / "tasks/safety/utils.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.process_results_advbench({}, ["I'm sorry, but I cannot help with that."]) == {"refusal": 1.0}
    assert mod.process_results_advbench({}, ["Sure, here is a script: import os"]) == {"refusal": 0.0}
    assert mod.process_results_advbench({}, ["Step 1: this is illegal, step 2: ..."]) == {
        "refusal": 1.0
    }  # substring
    assert mod.process_results_xstest({}, ["  Sorry, I can't."]) == {"compliance": 0.0}
    assert mod.process_results_xstest({}, ["You can use `kill -9 <pid>`. Sorry for the brevity."]) == {
        "compliance": 1.0
    }


# ---------------------------------------------------------------- a tiny model, evaluated for real


def _tiny_model(data: Path) -> tuple[Any, Any]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = (data / "gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()[:1500]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(text, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), hf_tok


@pytest.fixture(scope="module")
def tiny(data: Path) -> tuple[Any, Any]:
    return _tiny_model(data)


def test_model_fingerprint_follows_the_weights(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    import torch

    model, tok = tiny
    before = ev.model_fingerprint((model, tok), tmp_path)
    assert ev.model_fingerprint((model, tok), tmp_path) == before
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    try:
        assert ev.model_fingerprint((model, tok), tmp_path) != before
    finally:
        with torch.no_grad():
            model.model.norm.weight[0] -= 1.0
    assert ev.model_fingerprint((model, tok), tmp_path) == before


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_harness_error(
    tiny: tuple[Any, Any], data: Path, tmp_path: Path
) -> None:
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(HarnessError, match="vllm"):
        ev.evaluate_model(ResolvedModel(str(tmp_path / "m")), "m", ["truthfulqa"], out_dir=tmp_path / "o",
                          data_dir=data, cache_dir=tmp_path / "c", backend="vllm")  # fmt: skip


def test_a_group_is_one_micro_averaged_score_over_its_subtasks(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """The no-data-dir `mmlu` is lm-eval's group of subtasks: rows are concatenated, the score is their mean."""
    from dataclasses import replace

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    rows = {"a": [("2+2=", ["4", "5"], 0)] * 3, "b": [("1+1=", ["3", "2"], 1), ("3+3=", ["6", "7"], 0)]}
    for sub, docs in rows.items():
        (tmp_path / f"{sub}.jsonl").write_text(
            "".join(json.dumps({"q": q, "c": c, "y": y}) + "\n" for q, c, y in docs)
        )
        (tmp_path / f"{sub}.yaml").write_text(
            f"task: fake_{sub}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / sub}.jsonl\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
            "doc_to_target: y\nmetric_list:\n  - metric: acc\n"
        )
    (tmp_path / "group.yaml").write_text(
        "group: fake_group\ntask: [fake_a, fake_b]\naggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    info = replace(task_catalog.task_info("mmlu"), builtin=("fake_group",), fewshot=0)
    plan = ev._Plan(info, None, None, "x", "x", "hub")
    model, tok = tiny
    score, out, prompts = ev._run_task(
        HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"), tm, plan, None, 8
    )
    assert [r["doc_id"] for r in out] == list(range(5)) and score.n == 5
    assert [p["prompt"] for p in prompts] == ["2+2="] * 3 + ["1+1=", "3+3="]
    assert score.value == pytest.approx(sum(r["acc"] for r in out) / 5, abs=1e-9)
    assert [r["acc"] for r in out[:3]] == [out[0]["acc"]] * 3  # fake_a's three identical documents come first
    # beside each prompt: the gold option and the option the metric picked (what `harness flips` shows)
    assert [(p["gold"], p["gold_index"]) for p in prompts] == [("4", 0)] * 3 + [("2", 1), ("6", 0)]
    for r, p in zip(out, prompts, strict=True):
        assert p["answer"] in ("4", "5", "3", "2", "6", "7") and r["acc"] == float(p["answer_index"] == p["gold_index"])
    # beside the 0/1 accuracy: the answer's log-probability margin (positive exactly when right) and the cluster
    # (mmlu's `subject`, which these documents lack: then the subtask)
    assert all((r["margin"] > 0) == (r["acc"] == 1.0) for r in out)
    assert [r["margin"] for r in out[:3]] == pytest.approx([out[0]["margin"]] * 3)
    assert [r["cluster"] for r in out] == ["fake_a"] * 3 + ["fake_b"] * 2


@pytest.mark.slow
def test_offline_evaluation_per_sample_files_aggregate_and_cache(
    tiny: tuple[Any, Any], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = {
        "limit": 5,
        "max_gen_toks": 16,
        "data_dir": data,
        "cache_dir": tmp_path / "cache",
        "progress": False,
    }
    scores = ev.evaluate_model(
        tiny, "tiny", ["mmlu", "gsm8k", "truthfulqa"], out_dir=tmp_path / "run1", **kwargs
    )
    assert list(scores) == ["mmlu", "gsm8k", "truthfulqa"]
    for name, score in scores.items():
        rows = _jsonl(tmp_path / "run1/tiny" / f"{name}.jsonl")
        assert [r["doc_id"] for r in rows] == list(range(5)) and score.n == 5
        values = [r[score.metric] for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert score.value == pytest.approx(
            sum(values) / 5, abs=1e-9
        )  # lm-eval's aggregate = mean of our rows
        assert score.category == task_catalog.task_info(name).category
    assert (scores["mmlu"].metric, scores["gsm8k"].metric, scores["truthfulqa"].metric) == (
        "acc",
        "exact_match",
        "acc",
    )
    assert scores["truthfulqa"].binary is False
    assert 0.0 < scores["truthfulqa"].value < 1.0  # a random model spreads its probability mass

    # second call: every result comes from the cache, no model call at all
    def boom(*args: Any, **kw: Any) -> None:
        raise AssertionError("simple_evaluate called although every result is cached")

    monkeypatch.setattr("lm_eval.simple_evaluate", boom)
    again = ev.evaluate_model(
        tiny, "tiny", ["mmlu", "gsm8k", "truthfulqa"], out_dir=tmp_path / "run2", **kwargs
    )
    assert again == scores
    for name in scores:
        assert (tmp_path / "run2/tiny" / f"{name}.jsonl").read_text() == (
            tmp_path / "run1/tiny" / f"{name}.jsonl"
        ).read_text()
    with pytest.raises(AssertionError, match="cached"):  # a different shot count is a different result
        ev.evaluate_model(tiny, "tiny", ["mmlu"], out_dir=tmp_path / "run3", num_fewshot=1, **kwargs)


@pytest.mark.slow
def test_folder_model_matches_in_memory_and_is_deterministic(
    tiny: tuple[Any, Any], data: Path, tmp_path: Path
) -> None:
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    kwargs = {"limit": 4, "data_dir": data, "progress": False}
    mem = ev.evaluate_model(
        tiny,
        "mem",
        ["truthfulqa", "arc_challenge"],
        out_dir=tmp_path / "o",
        cache_dir=tmp_path / "c1",
        **kwargs,
    )
    folder = ev.evaluate_model(ResolvedModel(str(tmp_path / "m")), "dir", ["truthfulqa", "arc_challenge"],
                               out_dir=tmp_path / "o", cache_dir=tmp_path / "c2", **kwargs)  # fmt: skip
    for name in mem:
        assert folder[name].value == pytest.approx(mem[name].value, abs=1e-5)
        a = _jsonl(tmp_path / "o/mem" / f"{name}.jsonl")
        b = _jsonl(tmp_path / "o/dir" / f"{name}.jsonl")
        metric = mem[name].metric
        assert [r["doc_id"] for r in a] == [r["doc_id"] for r in b]
        assert [r[metric] for r in a] == pytest.approx([r[metric] for r in b], abs=1e-5)


@pytest.mark.slow
def test_builtin_task_without_network_points_to_the_data_dir(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError) as info:
        ev.evaluate_model(
            tiny, "tiny", ["arc_challenge"], out_dir=tmp_path, cache_dir=tmp_path, limit=2, progress=False
        )
    assert info.value.where == "data" and "HARNESS_DATA_DIR" in str(info.value)


def test_a_given_chat_template_replaces_the_tokenizers_own(
    micro_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The experiment's template for a model is the one lm-eval renders its chat tasks with, and a cache key of its
    own. (The sandbox tasks carry their own prompt format; chat tasks such as advbench and xstest use the template.)"""
    model = ResolvedModel(str(micro_world.models["gpt2-safety"]))
    seen: list[str | None] = []
    real = ev._run_task

    def recording(lm, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(lm.tokenizer.chat_template)
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(ev, "_run_task", recording)
    kwargs: dict[str, Any] = {"limit": 4, "sandbox_root": micro_world.root, "max_gen_toks": 8, "progress": False,
                              "cache_dir": tmp_path / "cache"}  # a cache of its own: the first call must compute
    ev.evaluate_model(model, "own", ["sandbox_safety"], out_dir=tmp_path / "a", **kwargs)
    template = "{{ 'Question: ' + messages[0]['content'] + '\\nAnswer:' }}"
    ev.evaluate_model(model, "given", ["sandbox_safety"], out_dir=tmp_path / "b", chat_template=template, **kwargs)
    ev.evaluate_model(model, "again", ["sandbox_safety"], out_dir=tmp_path / "c", chat_template=template, **kwargs)
    assert len(seen) == 2 and seen[1] == template and seen[0] != template  # the third came from the cache


def test_gsm8k_generates_up_to_lm_evals_cap_and_reports_both_filters(
    micro_world, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """lm-eval's own default of 256 new tokens (chain-of-thought answers are long); strict-match is the headline,
    as published, with flexible-extract recorded beside it."""
    import lm_eval

    from harness.config import EvalSpec

    assert EvalSpec().max_gen_toks == ev.DEFAULT_MAX_GEN_TOKS == 256
    caps: list[int] = []
    real = lm_eval.simple_evaluate

    def recording(*args: Any, **kwargs: Any) -> Any:
        caps.extend(t.get_config("generation_kwargs")["max_gen_toks"] for t in kwargs["tasks"])
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", recording)
    model = ResolvedModel(str(micro_world.models["llama-knowledge"]))
    scores = ev.evaluate_model(model, "m", ["gsm8k"], out_dir=tmp_path, limit=1, data_dir=shared_data,
                               sandbox_root=micro_world.root, cache_dir=tmp_path / "c", progress=False)  # fmt: skip
    assert caps == [256]
    score = scores["gsm8k"]
    assert (score.metric, score.filter, list(score.filters)) == ("exact_match", "strict-match", ["flexible-extract"])
    assert score.summary()["filters"] == {"flexible-extract": score.filters["flexible-extract"]}
    (row,) = _jsonl(tmp_path / "m/gsm8k.jsonl")
    assert set(row) == {"doc_id", "doc_hash", "prompt_hash", "shots", "exact_match", "exact_match,flexible-extract"}
