"""Learned reward models of the sandbox world: judges that are not oracles.

The reference judge reads the answer key; a reward model must learn from examples what a good answer looks
like, and so makes mistakes, as the paper's reward models do. Each sandbox reward model is a small
`LlamaForSequenceClassification` (one output) over the world target's tokenizer and chat template, trained
with a logistic loss on (prompt, response) pairs whose label is the sandbox scorer's verdict (scoring.score).

Data (docs/sandbox.md, "Learned reward models"): reasoning and safety prompts drawn from the sources' training
pools (train/<skill>.jsonl), leaving out the fusion corpus's prompts (the ones the judge will judge); knowledge
questions about the world's facts in a phrasing of their own (the trained phrasings are corpus prompts in the
default world, the fourth is the evaluation's). No evaluation prompt is used. Each prompt gets five responses: its reference; one corruption of it (knowledge: another value of the same
relation; reasoning: the last step and the `####` answer shifted by the same amount, so the worked solution
stays self-consistent but wrong; safety: compliance with a harmful request, a refusal of a benign one); and
the greedy answers of the world's three specialists (the kind of text inference mode asks it to judge). A
fifth of the prompts (with all their responses) are held out; the accuracy on them is recorded in the
model's `reward_model.json`.

Model `i` (`sandbox-rm:i`) draws its own prompts, corruptions, split and initial weights from (world seed, i):
the models differ in data and seed, so their vote is a real vote. Each is a sealed cache entry of its own,
`<cache>/sandbox-rm/<key>/`, keyed by the world's key, VERSION, the recipe and `i`; the world itself is not
touched. Like the world, each model is trained in a fresh process with pinned CPU kernels (pinned.py), so
the same world and index give the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import store
from harness.errors import HarnessError
from harness.sandbox import scoring
from harness.sandbox.pinned import available_cpus, check_pinned, report, run_pinned
from harness.sandbox.skills import HELP_TIPS, REFUSALS, SKILLS, Item, SkillSizes, generate_splits

VERSION = 2  # bump when what a (world, index) trains changes (2: knowledge asked in a phrasing of its own)
PREFIX = "sandbox-rm:"
META = "reward_model.json"


@dataclass(frozen=True)
class RewardRecipe:
    """Size and training of one sandbox reward model."""

    prompts_per_skill: int  # training-pool prompts drawn per skill (each with five responses)
    width: int
    layers: int
    heads: int
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    held_out: float = 0.2  # share of the prompts (with all their responses) kept for the accuracy


COUNT = 3  # reward models per world: sandbox-rm:0 .. sandbox-rm:2
RECIPES: dict[str, RewardRecipe] = {
    "micro": RewardRecipe(prompts_per_skill=60, width=48, layers=2, heads=2, steps=300, batch_size=16, lr=1e-3),
    "default": RewardRecipe(prompts_per_skill=400, width=96, layers=2, heads=4, steps=1200),
}


def specs() -> list[str]:
    """The reward-model specs a sandbox experiment may name in `judges.models`."""
    return [f"{PREFIX}{i}" for i in range(COUNT)]


def parse_spec(spec: str, where: str = "judges") -> int:
    """`sandbox-rm:<i>` -> i, or a one-line error naming the valid specs."""
    raw = spec[len(PREFIX) :]
    if not spec.startswith(PREFIX) or not raw.isdigit() or int(raw) >= COUNT:
        raise HarnessError(f"'{spec}' is not a sandbox reward model (known: {', '.join(specs())})", where)
    return int(raw)


def model_key(world_key: str, size: str, index: int) -> str:
    return store.stable_hash(
        {"world": world_key, "version": VERSION, "recipe": asdict(RECIPES[size]), "index": index}
    )


def model_dir(world: Any, index: int, cache_dir: Path | None) -> Path:
    return (cache_dir or store.default_cache_dir()) / "sandbox-rm" / model_key(world.key, world.size, index)


def load_reward_model(world: Any, index: int, cache_dir: Path | None = None) -> Path | None:
    """The cached folder of `sandbox-rm:<index>` for this world, or None when it is not built (or was damaged)."""
    folder = model_dir(world, index, cache_dir)
    return folder if store.verified(folder, "sandbox reward model") else None


def reward_model_info(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / META).read_text()))


# ---------------------------------------------------------------------------------------------- data


def _read_items(path: Path) -> list[Item]:
    return [Item(**{k: row[k] for k in ("id", "skill", "prompt", "reference")}, answer="") for row in store.read_jsonl(path)]


def _answer(item: Item) -> str:
    """The gold answer of a training-pool item (the pools store prompt and reference only)."""
    return scoring.answer_from_reference(item.reference, item.skill)


_LAST_STEP = re.compile(r"=(-?\d+)\.\n#### (-?\d+)\s*$")


def corrupt(item: Item, rng: random.Random, values: dict[str, list[str]]) -> str:
    """A plausible wrong response: the reference with its answer changed (see the module docstring)."""
    if item.skill == "knowledge":
        relation = item.id.split("-")[2]
        others = [v for v in values[relation] if v != item.reference]
        return rng.choice(others) if others else item.reference + "s"
    if item.skill == "reasoning":
        found = _LAST_STEP.search(item.reference)
        result = int(found.group(2)) if found else 0
        shifted = result + rng.choice([-3, -2, -1, 1, 2, 3])
        if found is None:
            return f"#### {shifted}"
        return item.reference[: found.start()] + f"={shifted}.\n#### {shifted}"
    if _answer(item) == "refuse":
        return f"Sure. To do that, {rng.choice(HELP_TIPS)}"
    return rng.choice(REFUSALS)


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    skill: str
    label: float  # the sandbox scorer's verdict
    group: int  # index of its prompt: a split keeps every response of one prompt on one side
    kind: str  # reference | corruption | <specialist name>


# Knowledge questions in a phrasing of their own: the world's trained phrasings are all fusion-corpus prompts in
# the default world, and its fourth phrasing is the evaluation's.
RM_PHRASINGS = {
    "birthplace": "Where was {e} born?",
    "occupation": "What job does {e} do?",
    "pet": "What animal does {e} keep as a pet?",
    "colour": "What colour does {e} like most?",
}


def knowledge_items(facts: dict[str, dict[str, str]]) -> list[Item]:
    """One question per fact in the reward models' own phrasing (ids `k-<entity>-<relation>-rm`)."""
    return [
        Item(f"k-{e}-{relation}-rm", "knowledge", RM_PHRASINGS[relation].format(e=name), value, value)
        for e, (name, values) in enumerate(facts.items())
        for relation, value in values.items()
    ]


def reward_pairs(
    root: Path, models: dict[str, Path], world_seed: int, sizes: SkillSizes, index: int, recipe: RewardRecipe
) -> list[Pair]:
    """The labelled (prompt, response) pairs of reward model `index` (module docstring); deterministic."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.sandbox.build import MAX_GEN_TOKS, generate

    rng = random.Random(f"sandbox-rm-{world_seed}-{index}")
    judged = {row["prompt"] for row in store.read_jsonl(root / "corpus.jsonl")}  # the prompts it will judge
    facts = generate_splits(world_seed, sizes).facts
    pools = {
        "knowledge": knowledge_items(facts),
        **{skill: [it for it in _read_items(root / "train" / f"{skill}.jsonl") if it.prompt not in judged]
           for skill in ("reasoning", "safety")},
    }  # fmt: skip
    values = {relation: sorted({v[relation] for v in facts.values()}) for relation in RM_PHRASINGS}
    chosen = {skill: rng.sample(pool, min(recipe.prompts_per_skill, len(pool))) for skill, pool in pools.items()}
    answers: dict[str, dict[str, list[str]]] = {skill: {} for skill in SKILLS}
    for name, folder in models.items():
        tok = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder).eval()
        for skill, items in chosen.items():
            answers[skill][name] = generate(lm, tok, [it.prompt for it in items], MAX_GEN_TOKS[skill])
        report("phase", f"rm-{index}", f"generated with {name}")
    pairs: list[Pair] = []
    group = 0
    for skill, items in chosen.items():
        for i, it in enumerate(items):
            gold = _answer(it)
            responses = [("reference", it.reference), ("corruption", corrupt(it, rng, values))]
            responses += [(name, answers[skill][name][i]) for name in models]
            for kind, text in responses:
                pairs.append(Pair(it.prompt, text, skill, scoring.score(skill, text, gold), group, kind))
            group += 1
    return pairs


def split(pairs: list[Pair], held_out: float, rng: random.Random) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) by prompt: every response of a held-out prompt is held out."""
    groups = sorted({p.group for p in pairs})
    rng.shuffle(groups)
    test = set(groups[: max(1, int(len(groups) * held_out))])
    return [p for p in pairs if p.group not in test], [p for p in pairs if p.group in test]


# ---------------------------------------------------------------------------------------------- model


def encode(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Token ids of one pair as harness.signals.judges.RewardModel reads it: the chat template over a user
    and an assistant turn."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def new_reward_model(tokenizer: Any, recipe: RewardRecipe) -> Any:
    """A freshly initialised one-output classifier in the sandbox's Llama shape."""
    from transformers import LlamaForSequenceClassification

    from harness.sandbox.build import llama_config

    return LlamaForSequenceClassification(llama_config(tokenizer, recipe.width, recipe.layers, recipe.heads, num_labels=1))


def _batch(tokenizer: Any, ids: list[list[int]]) -> Any:
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def rm_scores(model: Any, tokenizer: Any, ids: list[list[int]], batch_size: int = 64) -> list[float]:
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            out += model(**_batch(tokenizer, ids[start : start + batch_size])).logits[:, 0].float().tolist()
    return out


def accuracy(pairs: list[Pair], scores: list[float]) -> dict[str, Any]:
    """Held-out figures: classification accuracy (score > 0 means good) overall and per skill, the share of
    good responses (what always answering the majority class scores against), and the pick accuracy: on
    prompts that have both a good and a bad response, how often the top-scored response is a good one (what
    a judge needs)."""

    def acc(sel: list[int]) -> float:
        return round(sum((scores[i] > 0) == (pairs[i].label > 0.5) for i in sel) / len(sel), 4) if sel else float("nan")

    everything = list(range(len(pairs)))
    by_group: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_group.setdefault(p.group, []).append(i)
    mixed = [g for g in by_group.values() if 0 < sum(pairs[i].label for i in g) < len(g)]
    picks = [pairs[max(g, key=lambda i: scores[i])].label for g in mixed]
    return {
        "accuracy": acc(everything),
        "per_skill": {s: acc([i for i in everything if pairs[i].skill == s]) for s in SKILLS},
        "good_share": round(sum(p.label for p in pairs) / len(pairs), 4),
        "pick_accuracy": round(sum(picks) / len(picks), 4) if picks else float("nan"),
        "pairs": len(pairs),
        "prompts": len(by_group),
    }


def train_reward_model(
    root: Path, models: dict[str, Path], tokenizer_dir: Path, world: dict[str, Any], index: int, out: Path
) -> dict[str, Any]:
    """Build `sandbox-rm:<index>` into `out` (an HF folder plus reward_model.json); run in a pinned process."""
    import torch
    from transformers import AutoTokenizer

    from harness.sandbox.identity import library_versions

    capability = check_pinned()
    started = time.perf_counter()
    name = f"rm-{index}"
    report("start", name, os.getpid())
    recipe = RECIPES[world["size"]]
    seed = world["seed"] * 1000 + 100 + index
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    from harness.sandbox.build import RECIPES as WORLDS

    pairs = reward_pairs(root, models, world["seed"], WORLDS[world["size"]].sizes, index, recipe)
    train, test = split(pairs, recipe.held_out, random.Random(seed))
    report("phase", name, f"training on {len(train)} pairs")
    torch.manual_seed(seed)
    model = new_reward_model(tokenizer, recipe)
    ids = [encode(tokenizer, p.prompt, p.response) for p in train]
    labels = torch.tensor([p.label for p in train], dtype=torch.float)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    model.train()
    loss_value = float("nan")
    for step in range(recipe.steps):
        for group in opt.param_groups:  # linear warm-up over 5% of the steps, then linear decay
            warm = max(1, recipe.steps // 20)
            group["lr"] = recipe.lr * min((step + 1) / warm, (recipe.steps - step) / (recipe.steps - warm + 1))
        idx = torch.randint(len(ids), (recipe.batch_size,), generator=gen).tolist()
        logits = model(**_batch(tokenizer, [ids[i] for i in idx])).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        if step % 10 == 0 or step == recipe.steps - 1:
            report("step", name, step + 1, loss_value)
    model.eval()
    held_out = accuracy(test, rm_scores(model, tokenizer, [encode(tokenizer, p.prompt, p.response) for p in test]))
    seen = accuracy(train, rm_scores(model, tokenizer, ids))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    store.write_jsonl(out / "held_out.jsonl", [asdict(p) for p in test])
    info = {
        "spec": f"{PREFIX}{index}",
        "index": index,
        "version": VERSION,
        "world": {"key": world["key"], "size": world["size"], "seed": world["seed"]},
        "seed": seed,
        "recipe": asdict(recipe),
        "tokenizer": f"the world target's ({tokenizer_dir.name})",
        "data": {
            "pairs": len(pairs),
            "train_pairs": len(train),
            "held_out_pairs": len(test),
            "kinds": sorted({p.kind for p in pairs}),
            "good_share": round(sum(p.label for p in pairs) / len(pairs), 4),
        },
        "held_out": held_out,
        "train": seen,
        "final_loss": round(loss_value, 4),
        "seconds": round(time.perf_counter() - started, 1),
        "built_with": {"libraries": library_versions(), "aten_capability": capability, "threads": 1},
    }
    store.atomic_write_json(out / META, info)
    return info


# ---------------------------------------------------------------------------------------------- build


def build_reward_models(
    world: Any, indices: list[int] | None = None, cache_dir: Path | None = None, progress: bool = True,
    jobs: int | None = None,
) -> dict[int, Path]:
    """Build (or load from the cache) the world's reward models `indices` (default: all); index -> folder.

    Missing ones are trained at once, one fresh pinned process each, at most `jobs` at a time (default: one
    per CPU); `jobs` changes the time, never the bytes."""
    wanted = sorted(set(range(COUNT) if indices is None else indices))
    found = {i: p for i in wanted if (p := load_reward_model(world, i, cache_dir)) is not None}
    missing = [i for i in wanted if i not in found]
    if not missing:
        return found
    folders = {i: model_dir(world, i, cache_dir) for i in missing}
    for folder in folders.values():
        folder.parent.mkdir(parents=True, exist_ok=True)
    tmps = {i: folders[i].parent / f".{folders[i].name}.{os.getpid()}.tmp" for i in missing}
    with contextlib.ExitStack() as held:
        for i in missing:
            held.enter_context(store.locked(folders[i]))
        try:
            _train_missing(world, missing, folders, tmps, cache_dir, progress, jobs)
        finally:
            for i in missing:
                shutil.rmtree(tmps[i], ignore_errors=True)
    return {i: folders[i] for i in wanted}


def _train_missing(
    world: Any, missing: list[int], folders: dict[int, Path], tmps: dict[int, Path], cache_dir: Path | None,
    progress: bool, jobs: int | None,
) -> None:
    """Under the entries' locks: train what is still missing into temporary folders, seal, rename into place."""
    from harness.sandbox.build import _Bars, _progress

    todo = [i for i in missing if load_reward_model(world, i, cache_dir) is None]  # another process may have built it
    for i in todo:
        shutil.rmtree(tmps[i], ignore_errors=True)
    meta = {"key": world.key, "size": world.size, "seed": world.seed}
    target = world.models[world.target]
    calls = [(train_reward_model, (world.root, dict(world.models), target, meta, i, tmps[i])) for i in todo]
    with _progress(progress) as bar:
        rows: Any = tuple(_BarRecipe(f"rm-{i}", RECIPES[world.size].steps) for i in todo)  # what _Bars reads
        bars = _Bars(bar, rows)

        def done(k: int, info: dict[str, Any]) -> None:
            bars.result({"name": f"rm-{todo[k]}", "seconds": info["seconds"], "scores": {"acc": info["held_out"]["accuracy"]}})

        run_pinned(calls, jobs or available_cpus(), on_event=bars.event, on_result=done)
    for i in todo:
        store.seal(tmps[i])
        if folders[i].exists():
            shutil.rmtree(folders[i])
        os.replace(tmps[i], folders[i])


@dataclass(frozen=True)
class _BarRecipe:
    """What the world's progress rows need of a job: a name and a number of steps."""

    name: str
    steps: int


def reward_models_summary(world: Any, cache_dir: Path | None = None) -> dict[str, Any]:
    """Each reward model's held-out figures, for the ones built (`sandbox show`); None for the others."""
    out: dict[str, Any] = {}
    for i in range(COUNT):
        folder = load_reward_model(world, i, cache_dir)
        out[f"{PREFIX}{i}"] = None if folder is None else {"path": str(folder), **reward_model_info(folder)}
    return out


def resolve_specs(world: Any, specs_: list[str], cache_dir: Path | None, progress: bool) -> dict[str, Path]:
    """spec -> folder for the `sandbox-rm:<i>` specs among `specs_`, built when missing."""
    wanted = {s: parse_spec(s) for s in specs_ if s.startswith(PREFIX)}
    if not wanted:
        return {}
    built = build_reward_models(world, sorted(set(wanted.values())), cache_dir, progress)
    return {s: built[i] for s, i in wanted.items()}
