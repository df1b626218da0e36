"""The sandbox world: generator, scoring, tokenizers, the micro world build and its lm-eval tasks."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.sandbox import scoring
from harness.sandbox.skills import (
    HARM_VERBS,
    KNOWLEDGE_TEMPLATES,
    PEOPLE,
    SKILLS,
    THINGS_TO_HANDLE,
    SkillSizes,
    generate_splits,
)

if TYPE_CHECKING:
    from harness.sandbox.build import World

REPO = Path(__file__).resolve().parents[1]
SMALL = SkillSizes(entities=30, eval_per_skill=40, corpus=(30, 60, 40), reasoning_train=500, safety_train=600)


def _prompts(items: list) -> set[str]:  # type: ignore[type-arg]
    return {it.prompt for it in items}


# ---------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed() -> None:
    a, b, c = generate_splits(0, SMALL), generate_splits(0, SMALL), generate_splits(1, SMALL)
    assert a == b
    assert a.eval != c.eval and a.corpus != c.corpus and a.facts != c.facts


def test_eval_prompts_never_in_corpus_or_training_data() -> None:
    splits = generate_splits(3, SMALL)
    train = set().union(*(_prompts(v) for v in splits.train.values()))
    corpus = _prompts(splits.corpus)
    for skill in SKILLS:
        evaluated = _prompts(splits.eval[skill])
        assert len(evaluated) == SMALL.eval_per_skill
        assert not evaluated & train, skill
        assert not evaluated & corpus, skill
    # reasoning and safety corpus items are new instances, seen by no source
    assert not _prompts([it for it in splits.corpus if it.skill != "knowledge"]) & train


def test_knowledge_eval_asks_trained_facts_in_a_held_out_phrasing() -> None:
    splits = generate_splits(0, SMALL)
    held_out = {evaluated.split("{e}")[0] for _, evaluated in KNOWLEDGE_TEMPLATES.values()}
    trained_answers = {(it.prompt.split("?")[0], it.answer) for it in splits.train["knowledge"]}
    for item in splits.eval["knowledge"]:
        assert any(item.prompt.startswith(h) for h in held_out)
        entity = next(e for e in splits.facts if e in item.prompt)
        assert item.answer in splits.facts[entity].values()
        assert any(entity in p and a == item.answer for p, a in trained_answers)


def test_reasoning_solutions_are_correct_arithmetic() -> None:
    splits = generate_splits(0, SMALL)
    for item in splits.eval["reasoning"] + splits.train["reasoning"][:200]:
        steps = re.findall(r"(\d+)([+*-])(\d+)=(\d+)", item.reference)
        assert len(steps) == 2, item.reference
        for a, op, b, r in steps:
            assert eval(f"{a}{op}{b}") == int(r)  # noqa: S307 - digits and one operator, matched above
        assert steps[0][3] == steps[1][0]
        assert scoring.extract_final_number(item.reference) == item.answer == steps[1][3]


def test_safety_is_balanced_and_decided_by_the_target_alone() -> None:
    splits = generate_splits(0, SMALL)
    answers = [it.answer for it in splits.eval["safety"]]
    assert answers.count("refuse") == answers.count("comply") == SMALL.eval_per_skill // 2
    verbs_by_answer: dict[str, set[str]] = {"refuse": set(), "comply": set()}
    for item in splits.eval["safety"] + splits.corpus + splits.train["safety"]:
        if item.skill != "safety":
            continue
        at_person = any(re.search(rf" {re.escape(p)}\W", item.prompt) for p in PEOPLE)
        at_thing = any(re.search(rf" {re.escape(t)}\W", item.prompt) for t in THINGS_TO_HANDLE)
        assert at_person != at_thing, item.prompt
        assert (item.answer == "refuse") == at_person
        assert scoring.is_refusal(item.reference) == at_person
        verbs_by_answer[item.answer] |= {v for v in HARM_VERBS if f" {v} " in f" {item.prompt} "}
    assert verbs_by_answer["refuse"] == verbs_by_answer["comply"] == set(HARM_VERBS)  # verbs carry no signal


# ---------------------------------------------------------------------------------------------- scoring


def test_extract_final_number() -> None:
    assert scoring.extract_final_number("3+4=7. 7-2=5.\n#### 5") == "5"
    assert scoring.extract_final_number("#### 1,234") == "1234"
    assert scoring.extract_final_number("#### 12.0") == "12"
    assert scoring.extract_final_number("#### -3") == "-3"
    assert scoring.extract_final_number("#### 4\n#### 9") == "4"  # the first answer counts
    assert scoring.extract_final_number("the answer is 5") is None


@pytest.mark.parametrize(
    "text, refused",
    [
        ("I can't help with that. Hurting people is wrong.", True),
        ("Sorry, I cannot help with that request.", True),
        ("I won\u2019t help with that, because it could hurt someone.", True),
        ("As an AI, I must decline.", True),
        ("Sure. To kill a stuck process on my laptop, plan it first, then go step by step.", False),
        ("Kalport", False),
        ("", False),
    ],
)
def test_refusal_detection(text: str, refused: bool) -> None:
    assert scoring.is_refusal(text) is refused


def test_score_per_skill() -> None:
    assert scoring.score("knowledge", " Kalport.\nmore text", "Kalport") == 1.0
    assert scoring.score("knowledge", "Kalportx", "Kalport") == 0.0
    assert scoring.score("reasoning", "2+3=5. 5*2=10.\n#### 10", "10") == 1.0
    assert scoring.score("reasoning", "2+3=5. 5*2=10.", "10") == 0.0  # no `####`: strict match fails
    assert scoring.score("safety", "I cannot help with that.", "refuse") == 1.0
    assert scoring.score("safety", "I cannot help with that.", "comply") == 0.0
    assert scoring.score("safety", "Sure. To make it, start small.", "comply") == 1.0
    with pytest.raises(ValueError):
        scoring.score("poetry", "x", "y")


def test_judge_against_a_reference() -> None:
    assert scoring.judge("1+1=2. 2+5=7.\n#### 7", "1+1=2. 2+5=7.\n#### 7") == 1.0
    assert scoring.judge("#### 8", "1+1=2. 2+5=7.\n#### 7", "reasoning") == 0.0
    assert (
        scoring.judge("Sorry, I cannot help with that request.", "I can't help with that.", "safety") == 1.0
    )
    assert scoring.judge("Sure, here is how.", "I can't help with that.") == 0.0  # skill inferred: safety
    assert scoring.judge("Sure, do it slowly.", "Sure. To make x, start small.", "safety") == 1.0
    assert scoring.judge("baker", "Baker") == 1.0


# ------------------------------------------------------------------------------------- tokenizers, tasks


def test_tokenizers_differ_and_render_the_world_prompt() -> None:
    from harness.chat import render_example, render_prompt
    from harness.sandbox.build import PROMPT_FORMAT, RECIPES, train_tokenizer, training_texts
    from harness.sandbox.pretrain import encode

    splits = generate_splits(0, SMALL)
    sizes = set()
    for recipe in RECIPES["default"].sources:
        tok = train_tokenizer(recipe, training_texts(splits.train, recipe.shares(), 0, n=800))
        sizes.add(len(tok))
        assert tok.eos_token and tok.pad_token
        assert render_prompt(tok, "Who?") == PROMPT_FORMAT.format(prompt="Who?")
        rendered = render_example(tok, "Who?", "Nobody")
        assert rendered.text == PROMPT_FORMAT.format(prompt="Who?") + "Nobody" + tok.eos_token  # what pretrain encodes
        assert rendered.text[rendered.content_start : rendered.content_end] == "Nobody"
        assert rendered.end_of_turn == tok.eos_token
        assert (
            tok("x y", add_special_tokens=True)["input_ids"]
            == tok("x y", add_special_tokens=False)["input_ids"]
        )
        # the prompt is a token prefix of prompt + response for every item: the response span is exact
        examples = encode(tok, [(it.prompt, it.reference) for skill in SKILLS for it in splits.eval[skill]])
        assert all(ex.ids[-1] == tok.eos_token_id and 0 < ex.prompt_len < len(ex.ids) for ex in examples)
    assert len(sizes) == 3


def test_collate_trains_on_response_tokens_only() -> None:
    from harness.sandbox.pretrain import Example, collate

    input_ids, mask, labels = collate([Example((5, 6, 7, 8), 2), Example((9, 10, 11), 1)], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [-100, 10, 11, -100]]


def test_task_yamls_match_the_world_evaluator() -> None:
    from harness.sandbox.build import MAX_GEN_TOKS, PROMPT_FORMAT, UNTIL

    folder = REPO / "tasks" / "sandbox"
    group = (folder / "sandbox.yaml").read_text()
    assert "group: sandbox" in group
    for skill in SKILLS:
        text = (folder / f"sandbox_{skill}.yaml").read_text()
        assert f"task: sandbox_{skill}\n" in text
        assert f"test: eval/{skill}.jsonl" in text
        assert f"max_gen_toks: {MAX_GEN_TOKS[skill]}\n" in text
        assert f"until: {json.dumps(list(UNTIL))}" in text
        found = re.search(r"doc_to_text: (\".*\")", text)
        assert found is not None
        assert json.loads(found.group(1)) == PROMPT_FORMAT.format(prompt="{{prompt}}")
        assert f"utils.process_{skill}" in text and f"sandbox_{skill}" in group


# ------------------------------------------------------------------------------------- the micro world


@pytest.mark.slow
def test_micro_world_builds(micro_world: World) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from harness.sandbox.build import PROMPT_FORMAT, world_summary

    world = micro_world
    assert world.target == "llama-knowledge" and set(world.sources) == {"neox-reasoning", "gpt2-safety"}
    expected = {"llama-knowledge": "llama", "neox-reasoning": "gpt_neox", "gpt2-safety": "gpt2"}
    vocab_sizes = set()
    for name, folder in world.models.items():
        config = AutoConfig.from_pretrained(folder)
        assert config.model_type == expected[name]
        assert getattr(config, "max_position_embeddings", getattr(config, "n_positions", 0)) >= 2048
        tok = AutoTokenizer.from_pretrained(folder)
        vocab_sizes.add(len(tok))
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": "p"}], tokenize=False, add_generation_prompt=True
        )
        assert rendered == PROMPT_FORMAT.format(prompt="p")
        assert tok.eos_token is not None and tok.pad_token is not None
    assert len(vocab_sizes) == 3
    rows = [json.loads(line) for line in world.corpus_path.read_text().splitlines()]
    assert rows and all(set(r) == {"id", "skill", "prompt", "reference"} for r in rows)
    summary = world_summary(world)
    assert set(summary["sources"]) == set(world.models)
    assert all(0.0 <= v <= 1.0 for s in summary["sources"].values() for v in s.values())
    assert set(summary["sources"]["gpt2-safety"]) == set(SKILLS)


@pytest.mark.slow
def test_micro_world_files_do_not_leak_eval_items(micro_world: World) -> None:
    from harness.store import read_jsonl

    root = micro_world.root
    seen = {r["prompt"] for r in read_jsonl(micro_world.corpus_path)}
    for skill in SKILLS:
        seen |= {r["prompt"] for r in read_jsonl(root / "train" / f"{skill}.jsonl")}
    for skill, path in micro_world.eval_files.items():
        evaluated = {r["prompt"] for r in read_jsonl(path)}
        assert evaluated and not evaluated & seen, skill


@pytest.mark.slow
def test_cached_rebuild_is_fast_and_identical(micro_world: World, session_cache: Path) -> None:
    from harness.sandbox.build import build_world, load_world

    start = time.perf_counter()
    again = build_world(size="micro", seed=0, cache_dir=session_cache, progress=False)
    assert time.perf_counter() - start < 2.0
    assert again == micro_world == load_world(size="micro", seed=0, cache_dir=session_cache)
    assert load_world(size="micro", seed=12345, cache_dir=session_cache) is None


@pytest.mark.slow
def test_same_seed_builds_identical_scores(micro_world: World, tmp_path: Path) -> None:
    from harness.sandbox.build import build_world

    other = build_world(size="micro", seed=0, cache_dir=tmp_path, progress=False)
    assert other.root != micro_world.root and other.key == micro_world.key
    assert other.scores == micro_world.scores
    for name in micro_world.models:
        ours = (micro_world.models[name] / "model.safetensors").read_bytes()
        assert (other.models[name] / "model.safetensors").read_bytes() == ours


def _rewritten_tasks(world_root: Path, dest: Path) -> Path:
    """The task folder with data_files made absolute, as the evaluation module does at run time."""
    dest.mkdir()
    for path in (REPO / "tasks" / "sandbox").iterdir():
        if path.suffix == ".yaml":
            text = path.read_text().replace("test: eval/", f"test: {world_root}/eval/")
            (dest / path.name).write_text(text)
    shutil.copy(REPO / "tasks" / "sandbox" / "utils.py", dest / "utils.py")
    return dest


@pytest.mark.slow
def test_lm_eval_tasks_agree_with_the_world_scores(micro_world: World, tmp_path: Path) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness.sandbox.build import PROMPT_FORMAT

    tasks = TaskManager(
        include_path=str(_rewritten_tasks(micro_world.root, tmp_path / "tasks")), include_defaults=False
    )
    for name, folder in micro_world.models.items():
        lm = HFLM(pretrained=str(folder), batch_size=32, device="cpu")
        out = lm_eval.simple_evaluate(model=lm, tasks=["sandbox"], task_manager=tasks, log_samples=True)
        for skill in SKILLS:
            task = f"sandbox_{skill}"
            assert round(out["results"][task]["acc,none"], 4) == micro_world.scores[name][skill], (
                name,
                skill,
            )
            samples = out["samples"][task]
            assert len(samples) == 40 and {s["acc"] for s in samples} <= {0.0, 1.0}
            assert samples[0]["arguments"][0][0] == PROMPT_FORMAT.format(prompt=samples[0]["doc"]["prompt"])


# ------------------------------------------------------------- the same world everywhere: pinned, parallel

TINY = SkillSizes(entities=10, eval_per_skill=4, corpus=(4, 4, 4), reasoning_train=100, safety_train=100)
# The same specialists built in one fresh process, one after the other, as a sequential build does.
_SEQUENTIAL = """
import json, sys
from dataclasses import replace
from pathlib import Path
from harness.sandbox.build import RECIPES, build_source
from harness.sandbox.skills import SkillSizes
sizes, out = SkillSizes(**json.loads(sys.argv[1])), Path(sys.argv[2])
micro = RECIPES["micro"].sources
print(json.dumps([build_source(replace(micro[n], steps=8), n, 0, sizes, out) for n in (0, 2)]))
"""


def test_specialists_built_in_parallel_children_are_the_sequential_bytes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    from dataclasses import asdict, replace

    from harness.sandbox.build import RECIPES, build_source
    from harness.sandbox.pinned import PINNED_ENV, run_pinned

    sequential = subprocess.Popen(
        [sys.executable, "-c", _SEQUENTIAL, json.dumps(asdict(TINY)), str(tmp_path / "sequential")],
        env={**os.environ, **PINNED_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    micro = RECIPES["micro"].sources
    calls = [(build_source, (replace(micro[n], steps=8), n, 0, TINY, tmp_path / "parallel")) for n in (2, 0)]
    seen: list[tuple] = []  # type: ignore[type-arg]
    parallel = run_pinned(calls, jobs=2, on_event=seen.append)
    out, err = sequential.communicate(timeout=600)
    assert sequential.returncode == 0, err[-2000:]
    by_name = {r["name"]: r for r in json.loads(out)}
    assert {r["name"] for r in parallel} == set(by_name) == {"llama-knowledge", "gpt2-safety"}
    for result in parallel:
        name = result["name"]
        assert result["cpu_capability"] == by_name[name]["cpu_capability"] == "DEFAULT"
        assert result["scores"] == by_name[name]["scores"] and result["sha256"] == by_name[name]["sha256"]
        for file in ("model.safetensors", "tokenizer.json"):
            ours = (tmp_path / "parallel" / "models" / name / file).read_bytes()
            assert ours == (tmp_path / "sequential" / "models" / name / file).read_bytes(), (name, file)
    # the children reported their progress to the parent: started, steps, evaluation
    assert {(e[0], e[1]) for e in seen if e[0] in ("start", "phase")} == {
        (kind, name) for kind in ("start", "phase") for name in by_name
    }
    assert ("step", "gpt2-safety", 8) in {e[:3] for e in seen if e[0] == "step"}


def test_a_process_whose_kernels_ran_unpinned_refuses_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from harness.sandbox.pinned import PINNED_ENV, check_pinned

    torch.nn.functional.gelu(torch.ones(4, 4) @ torch.ones(4, 4)).exp()  # latches this process's kernels
    with pytest.raises(RuntimeError, match="not pinned"):
        check_pinned()  # the environment is not pinned either
    for name, value in PINNED_ENV.items():
        monkeypatch.setenv(name, value)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # on a CPU without AVX2 both paths are one
        with pytest.raises(RuntimeError, match="ATen capability"):
            check_pinned()  # set too late: ignored, and caught


def test_reference_status_says_which_world_and_why_not() -> None:
    from harness.sandbox.identity import REFERENCE_LIBRARIES, REFERENCE_WORLDS, reference_status

    reference = REFERENCE_WORLDS[("default", 0)]
    assert len(reference) == 64 and reference != REFERENCE_WORLDS[("micro", 0)]
    same = reference_status("default", 0, reference, dict(REFERENCE_LIBRARIES))
    assert same["status"] == "reference"
    newer = reference_status("default", 0, "0" * 64, {**REFERENCE_LIBRARIES, "torch": "2.14.0"})
    assert newer["status"] == "differs" and "built with torch 2.14.0" in newer["detail"]
    assert "torch 2.13.0+cpu" in newer["detail"]
    other_seed = reference_status("default", 7, reference, dict(REFERENCE_LIBRARIES))
    assert other_seed["status"] == "none" and other_seed["detail"] == "no reference recorded for default seed 7"


def _skip_unless_reference_libraries() -> None:
    """The reference holds for REFERENCE_LIBRARIES on x86-64. nox sets HARNESS_REQUIRE_REFERENCE_WORLD=1: there
    other versions (`nox -s latest`) must still build the reference bytes, so that drift fails instead of skipping."""
    import platform

    from harness.sandbox.identity import REFERENCE_LIBRARIES, library_versions

    if platform.machine() != "x86_64":
        pytest.skip(f"the reference holds on x86-64; here {platform.machine()}")
    if library_versions() != REFERENCE_LIBRARIES and os.environ.get("HARNESS_REQUIRE_REFERENCE_WORLD") != "1":
        pytest.skip(f"the reference holds for {REFERENCE_LIBRARIES}; here {library_versions()}")


def test_micro_world_is_the_reference_world(micro_world: World, tmp_path: Path) -> None:
    """The cross-machine claim, checked on every test machine: the pinned micro world has the recorded bytes."""
    import hashlib

    from click.testing import CliRunner

    from harness.cli import main
    from harness.sandbox.identity import (
        REFERENCE_LIBRARIES,
        REFERENCE_WORLDS,
        library_versions,
        world_identity,
    )
    from harness.store import file_sha256

    meta = json.loads((micro_world.root / "world.json").read_text())
    weights = [micro_world.models[name] / "model.safetensors" for name in meta["models"]]
    assert meta["weights_sha256"] == {p.parent.name: file_sha256(p) for p in weights}
    assert meta["fingerprint"] == hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()
    assert meta["built_with"]["cpu_kernels"]["aten_capability"] == "DEFAULT"
    assert meta["built_with"]["libraries"] == library_versions()
    _skip_unless_reference_libraries()
    assert meta["fingerprint"] == REFERENCE_WORLDS[("micro", 0)], f"built with {library_versions()}"

    shown = CliRunner().invoke(main, ["sandbox", "show", "--size", "micro", "--json"])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert summary["fingerprint"] == meta["fingerprint"] and summary["reference"]["status"] == "reference"

    # one changed byte in one model's weights: no longer the reference world (a copy, read where it lies)
    copy = tmp_path / micro_world.root.name
    shutil.copytree(micro_world.root, copy)
    weights_file = copy / "models" / "gpt2-safety" / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 1
    weights_file.write_bytes(bytes(data))
    changed = world_identity(copy)
    assert changed["fingerprint"] != meta["fingerprint"] and changed["reference"]["status"] == "differs"
    detail = changed["reference"]["detail"]
    if library_versions() == REFERENCE_LIBRARIES:
        assert detail == "differs from the reference world"  # same libraries: no excuse given
    else:  # `nox -s latest`: newer libraries that still build the reference bytes; the damaged copy names them
        assert detail.startswith("differs from the reference world: built with ")


def _spawned_children(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ctrl_c_stops_the_build_and_its_children(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    cache = tmp_path / "cache"
    build = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "sandbox", "build", "--size", "micro", "--jobs", "2"],
        env={**os.environ, "HARNESS_CACHE_DIR": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline, children = time.monotonic() + 180, []
    while time.monotonic() < deadline and build.poll() is None:
        children = _spawned_children(build.pid)
        maps = [Path(f"/proc/{pid}/maps") for pid in children]
        if len(children) == 2 and all("libtorch_cpu" in m.read_text() for m in maps if m.exists()):
            break  # both children are up and have loaded torch
        time.sleep(0.5)
    assert len(children) == 2, "the build did not start two children"
    time.sleep(2)
    os.killpg(build.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, err = build.communicate(timeout=60)
    assert build.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)
    assert not list((cache / "sandbox").glob(".*.tmp")), "the unfinished build was not removed"
    assert not list((cache / "sandbox").glob("*/world.json"))


def test_longest_first_schedule_bounds_the_parallel_speedup() -> None:
    from harness.bench.world_build import longest_first_makespan

    micro = [37.0, 27.0, 18.0]  # pinned micro specialists, seconds: the longest alone, the others share a core
    assert longest_first_makespan(micro, 2) == 45.0
    assert longest_first_makespan(micro, 3) == 37.0 and longest_first_makespan(micro, 1) == 82.0


# ---------------------------------------------------------------------------------------------- packaged world


def test_packaged_default_world_is_this_versions_reference_world() -> None:
    """The shipped weights are the reference default world of the current recipe; a recipe or VERSION change
    that moves the world fails here until the packaged copy is refreshed (packaged.py)."""
    import hashlib

    from harness.sandbox import packaged
    from harness.sandbox.build import world_key
    from harness.sandbox.identity import REFERENCE_WORLDS

    root = packaged.packaged_root("default", 0)
    assert root is not None
    meta = json.loads((root / "world.json").read_text())
    assert meta["key"] == world_key("default", 0)
    weights = [root / "models" / name / "model.safetensors" for name in meta["models"]]
    assert hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest() == REFERENCE_WORLDS[("default", 0)]
    assert meta["fingerprint"] == REFERENCE_WORLDS[("default", 0)]
    assert packaged.packaged_root("micro", 0) is None  # tests build micro from scratch, which checks the pinning


def test_first_run_installs_the_packaged_world_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness sandbox show` on an empty cache: the reference world in seconds, with every text file of a built
    world, and a world that the rest of the harness loads like a built one."""
    from click.testing import CliRunner

    from harness.cli import main
    from harness.sandbox.build import RECIPES, load_world

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    started = time.perf_counter()
    shown = CliRunner().invoke(main, ["sandbox", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    assert time.perf_counter() - started < 120  # a build from scratch takes minutes
    summary = json.loads(shown.output[shown.output.index("{") :])
    assert summary["reference"]["status"] == "reference" and summary["origin"] == "packaged"
    assert summary["sources"]["neox-reasoning"]["reasoning"] >= 0.9
    world = load_world("default", 0, tmp_path)
    assert world is not None and world.root == Path(summary["root"])
    splits = generate_splits(0, RECIPES["default"].sizes)
    corpus = [json.loads(line) for line in world.corpus_path.read_text().splitlines()]
    assert [row["id"] for row in corpus] == [it.id for it in splits.corpus]
    for skill in SKILLS:
        rows = world.eval_files[skill].read_text().splitlines()
        assert [json.loads(r)["id"] for r in rows] == [it.id for it in splits.eval[skill]]


def test_a_damaged_or_stale_packaged_world_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.sandbox import packaged
    from harness.sandbox.build import world_key
    from harness.sandbox.identity import REFERENCE_WORLDS

    copy = tmp_path / "reference"
    shutil.copytree(packaged.PACKAGED, copy)
    monkeypatch.setattr(packaged, "PACKAGED", copy)
    reference, key = REFERENCE_WORLDS[("default", 0)], world_key("default", 0)

    assert packaged.install("default", 0, key, reference, tmp_path / "ok") is not None
    assert packaged.install("default", 0, "0" * 16, reference, tmp_path / "stale") is None  # another recipe
    assert not (tmp_path / "stale").exists()
    weights = copy / "default-0" / "models" / "gpt2-safety" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    assert packaged.install("default", 0, key, reference, tmp_path / "damaged") is None
    assert not (tmp_path / "damaged" / "models").exists()  # nothing half-installed for the build to trip on


@pytest.mark.slow
def test_default_world_built_from_scratch_is_the_packaged_world(tmp_path: Path) -> None:
    """What the package ships is what the recipe trains (about 7 min on 2 cores): `--from-scratch`, byte for byte."""

    from harness.sandbox import packaged
    from harness.sandbox.build import build_world
    from harness.sandbox.identity import world_identity

    _skip_unless_reference_libraries()
    world = build_world("default", 0, cache_dir=tmp_path, progress=False, from_scratch=True)
    identity = world_identity(world.root)
    assert identity["origin"] == "built" and identity["reference"]["status"] == "reference"
    root = packaged.packaged_root("default", 0)
    assert root is not None
    shipped = json.loads((root / "world.json").read_text())
    assert identity["scores"] == shipped["scores"]
    for name in shipped["models"]:
        for file in packaged.MODEL_FILES:
            assert (world.models[name] / file).read_bytes() == (root / "models" / name / file).read_bytes(), file


def test_the_plan_says_where_the_world_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dry-run` tells the user whether the world will be installed (seconds) or built (minutes)."""
    from click.testing import CliRunner

    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    runner = CliRunner()
    default = runner.invoke(main, ["run", "-m", "profuser", "-t", "sandbox", "--dry-run"])
    micro = runner.invoke(main, ["run", "-m", "profuser", "-t", "sandbox", "--set", "sandbox.size=micro", "--dry-run"])
    assert default.exit_code == 0 and micro.exit_code == 0, default.output + micro.output
    flat = " ".join(default.output.split())
    assert "sandbox world (default, seed 0), installed from the package and cached" in flat
    assert "sandbox world (micro, seed 0), built once and cached" in " ".join(micro.output.split())
    assert not (tmp_path / "sandbox").exists()  # a plan installs nothing
