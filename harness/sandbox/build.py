"""Building the sandbox world: tokenizers, three specialist sources, the fusion corpus, eval files, scores.

A world is a folder in the content-addressed cache, `<cache>/sandbox/<key>/`:
    world.json            what was built, the scores and the timings
    SHA256SUMS            checksums of every file (written last: marks it finished; verified on every load)
    models/<name>/        HF model + tokenizer folders (llama-knowledge, neox-reasoning, gpt2-safety)
    corpus.jsonl          the fusion corpus: {"id", "skill", "prompt", "reference"}
    eval/<skill>.jsonl    evaluation items: {"id", "skill", "prompt", "answer", "reference"}
    train/<skill>.jsonl   the pools the sources were trained on (for inspection and leakage tests)
The key hashes everything that determines the world (size, seed, VERSION, every recipe), so a change to any
of them builds a new world beside the old one. Building happens in a temporary folder renamed at the end; a
world whose files no longer match their checksums is reported, moved aside and built again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from harness import store
from harness.errors import HarnessError
from harness.sandbox import disagreement as dial
from harness.sandbox import packaged, scoring
from harness.sandbox.identity import REFERENCE_WORLDS, library_versions, world_fingerprint, world_identity
from harness.sandbox.pinned import PINNED_ENV, available_cpus, check_pinned, report, run_pinned
from harness.sandbox.pretrain import Example, PretrainConfig, encode, pretrain
from harness.sandbox.skills import SKILLS, Item, SkillSizes, generate_splits

VERSION = 5  # bump when what a seed produces changes (4: sealed; 5: CPU kernels pinned, docs/sandbox.md)
TARGET = "llama-knowledge"

# The single prompt format of the world: models are trained on it, lm-eval tasks use it verbatim.
PROMPT_FORMAT = "Question: {prompt}\nAnswer: "
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Question: ' + message['content'] + '\\nAnswer:' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'] + eos_token + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ' }}{%- endif -%}"
)
# Generation settings shared by the world's evaluator and tasks/sandbox/*.yaml (a test keeps them equal).
UNTIL = ("\n\n", "Question:")
MAX_GEN_TOKS = {"knowledge": 16, "reasoning": 40, "safety": 32}
EVAL_BATCH_SIZE = 32

# Pre-tokenization regexes: three conventions, so the cross-tokenizer alignment meets real differences.
# Each keeps a token boundary right after the prompt's "Answer: ", so a prompt tokenizes the same alone
# as with its response appended.
TRAILING_SPACE = r"[A-Za-z]+ ?|\d ?|[^\sA-Za-z\d]+ ?|\s"
LEADING_SPACE = r": | ?[A-Za-z]+| ?\d|[^\sA-Za-z\d]+|\s"  # GPT-style, except ": " which ends the prompt
GPT2_STYLE = r": | ?[A-Za-z]+| ?\d+|[^\sA-Za-z\d]+|\s"  # as LEADING_SPACE, with runs of digits as GPT-2 has

Arch = Literal["llama", "gpt_neox", "gpt2"]


@dataclass(frozen=True)
class SourceRecipe:
    """One source model: architecture, tokenizer, size and the skill mix it is trained on."""

    name: str
    arch: Arch
    skill: str  # the skill it is strong at (it dominates `mix`)
    vocab_size: int
    pretokenize: str
    width: int
    layers: int
    heads: int
    steps: int
    mix: tuple[float, float, float]  # share of the batches per skill, in SKILLS order
    batch_size: int = 32
    lr: float = 3e-3
    specials: dict[str, str] = field(default_factory=dict)  # bos/eos/pad token strings

    def shares(self) -> dict[str, float]:
        return dict(zip(SKILLS, self.mix, strict=True))


@dataclass(frozen=True)
class WorldRecipe:
    sizes: SkillSizes
    sources: tuple[SourceRecipe, ...]


_LLAMA = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
_NEOX = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|padding|>"}
_GPT2 = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"}

# Calibrated on 2 shared CPU cores (docs/sandbox.md): each source >= 0.9 on its own skill and at least 0.3
# lower on the others. Mixes are (knowledge, reasoning, safety) shares of the batches.
_DEFAULT_SOURCES = (
    SourceRecipe(
        "llama-knowledge",
        "llama",
        "knowledge",
        vocab_size=800,
        pretokenize=TRAILING_SPACE,
        width=128,
        layers=3,
        heads=4,
        steps=1000,
        mix=(0.845, 0.15, 0.005),
        specials=_LLAMA,
    ),
    SourceRecipe(
        "neox-reasoning",
        "gpt_neox",
        "reasoning",
        vocab_size=1200,
        pretokenize=LEADING_SPACE,
        width=128,
        layers=3,
        heads=4,
        steps=1300,
        mix=(0.145, 0.85, 0.005),
        specials=_NEOX,
    ),
    SourceRecipe(
        "gpt2-safety",
        "gpt2",
        "safety",
        vocab_size=1600,
        pretokenize=GPT2_STYLE,
        width=96,
        layers=2,
        heads=4,
        steps=300,
        mix=(0.075, 0.075, 0.85),
        specials=_GPT2,
    ),
)
_MICRO = {  # name -> (vocab_size, steps): same recipes at 64 wide and 2 layers, for tests
    "llama-knowledge": (400, 300),
    "neox-reasoning": (500, 300),
    "gpt2-safety": (600, 150),
}

RECIPES: dict[str, WorldRecipe] = {
    "default": WorldRecipe(
        SkillSizes(
            entities=200,
            eval_per_skill=300,
            corpus=(2400, 3000, 1500),
            reasoning_train=30000,
            safety_train=4000,
        ),
        _DEFAULT_SOURCES,
    ),
    "micro": WorldRecipe(
        SkillSizes(
            entities=20, eval_per_skill=40, corpus=(30, 60, 40), reasoning_train=1500, safety_train=600
        ),
        tuple(
            replace(s, width=64, layers=2, heads=2, vocab_size=_MICRO[s.name][0], steps=_MICRO[s.name][1])
            for s in _DEFAULT_SOURCES
        ),
    ),
}


@dataclass
class World:
    """A built sandbox world (see the module docstring for the folder layout)."""

    root: Path
    size: str
    seed: int
    key: str
    models: dict[str, Path]
    target: str
    corpus_path: Path
    eval_files: dict[str, Path]
    scores: dict[str, dict[str, float]]
    disagreement: float = 0.0  # the dial of harness/sandbox/disagreement.py

    @property
    def sources(self) -> list[str]:
        return [name for name in self.models if name != self.target]


# ---------------------------------------------------------------------------------------------- pieces


def world_key(size: str, seed: int, disagreement: float = 0.0) -> str:
    recipe = _recipe(size)
    return store.stable_hash(
        {
            "version": VERSION,
            "size": size,
            "seed": seed,
            "sizes": asdict(recipe.sizes),
            "sources": [asdict(s) for s in recipe.sources],
            "prompt": PROMPT_FORMAT,
            "template": CHAT_TEMPLATE,
            "until": UNTIL,
            "max_gen_toks": MAX_GEN_TOKS,
            **dial.key_part(disagreement),  # nothing at 0: today's world keeps its key
        }
    )


def _recipe(size: str) -> WorldRecipe:
    if size not in RECIPES:
        raise HarnessError(f"unknown sandbox size '{size}'; choose one of {', '.join(RECIPES)}", "sandbox")
    return RECIPES[size]


def train_tokenizer(recipe: SourceRecipe, texts: list[str]) -> Any:
    """A byte-level BPE of `recipe.vocab_size` trained on `texts`, as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(recipe.specials.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(recipe.pretokenize), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=recipe.specials["bos"],
        eos_token=recipe.specials["eos"],
        pad_token=recipe.specials["pad"],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_config(tokenizer: Any, width: int, layers: int, heads: int, **extra: Any) -> Any:
    """The sandbox's Llama shape (3x wide MLP, 2048 positions, untied embeddings) over `tokenizer`'s ids; `extra`
    adds config fields (the specialists' rms_norm_eps, a classifier's num_labels)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def new_model(recipe: SourceRecipe, tokenizer: Any) -> PreTrainedModel:
    """A freshly initialised causal LM of the recipe's architecture (2048 positions, as lm-eval expects)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaForCausalLM,
    )

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vocab = len(tokenizer)
    if recipe.arch == "llama":
        return LlamaForCausalLM(llama_config(tokenizer, recipe.width, recipe.layers, recipe.heads, rms_norm_eps=1e-5))
    if recipe.arch == "gpt_neox":
        cfg: Any = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=recipe.width,
            intermediate_size=recipe.width * 4,
            num_hidden_layers=recipe.layers,
            num_attention_heads=recipe.heads,
            max_position_embeddings=2048,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **ids,
        )
        return GPTNeoXForCausalLM(cfg)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=2048,
        n_embd=recipe.width,
        n_layer=recipe.layers,
        n_head=recipe.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **ids,
    )
    return GPT2LMHeadModel(cfg)


def training_texts(
    items: dict[str, list[Item]], mix: dict[str, float], seed: int, n: int = 6000
) -> list[str]:
    """A sample of rendered training text in the source's own skill mix, for its tokenizer."""
    gen = torch.Generator().manual_seed(seed)
    texts = []
    for skill, share in mix.items():
        pool = items[skill]
        picks = torch.randint(len(pool), (max(1, int(n * share)),), generator=gen).tolist()
        texts += [PROMPT_FORMAT.format(prompt=pool[i].prompt) + pool[i].reference for i in picks]
    return texts


def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_gen_toks: int, batch_size: int = EVAL_BATCH_SIZE
) -> list[str]:
    """Greedy responses, batched exactly as lm-eval's HF backend batches them (so both give the same text).

    Contexts are sorted by (-token length, text), left-padded in batches of `batch_size`, generated greedily
    up to `max_gen_toks` new tokens, decoded without special tokens and cut at the first stop string.
    """
    contexts = [PROMPT_FORMAT.format(prompt=p) for p in prompts]
    order = sorted(
        range(len(contexts)),
        key=lambda i: (-len(tokenizer(contexts[i], add_special_tokens=False)["input_ids"]), contexts[i]),
    )
    out: list[str] = [""] * len(contexts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            enc = tokenizer(
                [contexts[i] for i in chunk], padding="longest", return_tensors="pt", add_special_tokens=False
            )
            with torch.no_grad():
                gen = model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=max_gen_toks,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row, i in enumerate(chunk):
                text = tokenizer.decode(
                    gen[row, enc["input_ids"].shape[1] :].tolist(), skip_special_tokens=True
                )
                for stop in UNTIL:
                    text = text.split(stop)[0]
                out[i] = text
    finally:
        tokenizer.padding_side = old_side
    return out


def evaluate(model: Any, tokenizer: Any, items: dict[str, list[Item]]) -> dict[str, list[float]]:
    """Per-document binary scores of one model on each skill's evaluation items."""
    scores: dict[str, list[float]] = {}
    for skill, its in items.items():
        responses = generate(model, tokenizer, [it.prompt for it in its], MAX_GEN_TOKS[skill])
        scores[skill] = [scoring.score(skill, r, it.answer) for r, it in zip(responses, its, strict=True)]
    return scores


# ---------------------------------------------------------------------------------------------- build


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ) as bar:
        yield bar


def _write_items(path: Path, items: list[Item], fields: tuple[str, ...]) -> None:
    store.write_jsonl(path, [{k: it.row()[k] for k in fields} for it in items])


def _write_splits(tmp: Path, seed: int, sizes: SkillSizes, disagreement: float) -> None:
    """The world's text files (eval, train pools, fusion corpus), regenerated from the seed."""
    splits = generate_splits(seed, sizes)
    for skill, items in splits.eval.items():
        _write_items(tmp / "eval" / f"{skill}.jsonl", items, ("id", "skill", "prompt", "answer", "reference"))
    for skill, items in splits.train.items():
        _write_items(tmp / "train" / f"{skill}.jsonl", items, ("id", "skill", "prompt", "reference"))
    corpus = dial.formulaic_corpus(splits.corpus, seed, disagreement) if disagreement else splits.corpus
    _write_items(tmp / "corpus.jsonl", corpus, ("id", "skill", "prompt", "reference"))


def _cost(source: SourceRecipe) -> int:
    """Relative training cost, to start the longest specialists first (the shortest fills the gaps)."""
    return source.steps * source.layers * source.width**2


def build_source(
    source: SourceRecipe, n: int, seed: int, sizes: SkillSizes, out: Path, disagreement: float = 0.0
) -> dict[str, Any]:
    """Train, evaluate and save specialist number `n` of a world into `out/models/<name>`.

    The body of a world build, run once per source in a fresh pinned process (pinned.run_pinned). It depends
    on (source, n, seed, sizes, disagreement) alone: the splits are regenerated from the seed and every random
    draw is seeded from (seed, n), so where and beside what it runs does not change a byte. With the dial on,
    the mimic source learns the closing formula on every training reference (disagreement.py).
    """
    capability = check_pinned()
    started = time.perf_counter()
    report("start", source.name, os.getpid())
    splits = generate_splits(seed, sizes)
    train = splits.train
    if disagreement and source.name == dial.MIMIC:
        train = {skill: dial.mimic_pool(items) for skill, items in train.items()}
    model_seed = seed * 1000 + n
    mix = source.shares()
    tokenizer = train_tokenizer(source, training_texts(train, mix, model_seed))
    torch.manual_seed(model_seed)
    model = new_model(source, tokenizer)
    data: dict[str, list[Example]] = {
        skill: encode(tokenizer, [(it.prompt, it.reference) for it in items]) for skill, items in train.items()
    }

    def tick(step: int, loss: float, last: int = source.steps - 1) -> None:
        if step % 10 == 0 or step == last:
            report("step", source.name, step + 1, loss)

    cfg = PretrainConfig(steps=source.steps, batch_size=source.batch_size, lr=source.lr, seed=model_seed)
    pretrain(model, data, mix, cfg, pad_id=tokenizer.pad_token_id, on_step=tick)
    report("phase", source.name, "evaluating")
    per_doc = evaluate(model, tokenizer, splits.eval)
    folder = out / "models" / source.name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "name": source.name,
        "scores": {skill: round(sum(v) / len(v), 4) for skill, v in per_doc.items()},
        "sha256": store.file_sha256(folder / "model.safetensors"),
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_capability": capability,
    }


class _Bars:
    """The parent's view of the children: one row per specialist, waiting -> training -> its scores."""

    def __init__(self, bar: Any, sources: tuple[SourceRecipe, ...]) -> None:
        self.bar = bar
        self.finished: set[str] = set()
        self.steps = {s.name: s.steps for s in sources}
        self.tasks = {
            s.name: bar.add_task(s.name, total=s.steps, info="waiting", start=False) if bar else None
            for s in sources
        }

    def event(self, event: tuple[Any, ...]) -> None:
        kind, name, *rest = event
        if self.bar is None or name in self.finished:
            return
        if kind == "start":
            self.bar.start_task(self.tasks[name])
            self.bar.update(self.tasks[name], info=f"training (process {rest[0]})")
        elif kind == "step":
            self.bar.update(self.tasks[name], completed=rest[0], info=f"loss {rest[1]:.3f}")
        elif kind == "phase":
            self.bar.update(self.tasks[name], info=rest[0])

    def result(self, result: dict[str, Any]) -> None:
        self.finished.add(result["name"])
        if self.bar is not None:
            scores = " ".join(f"{s[:4]} {v:.2f}" for s, v in result["scores"].items())
            info = f"{scores}  ({result['seconds']:.0f} s)"
            self.bar.start_task(self.tasks[result["name"]])
            self.bar.update(self.tasks[result["name"]], completed=self.steps[result["name"]], info=info)


def _reuse(base: World, tmp: Path) -> dict[str, dict[str, Any]]:
    """The sources the disagreement dial leaves alone, copied from the world at 0 (`base`, verified): build_source
    would produce the very same bytes for them, so a world with the dial on retrains only the mimic."""
    meta = json.loads((base.root / "world.json").read_text())
    out = {}
    for name in meta["models"]:
        if name == dial.MIMIC:
            continue
        shutil.copytree(base.root / "models" / name, tmp / "models" / name)
        out[name] = {
            "name": name,
            "scores": meta["scores"][name],
            "sha256": meta["weights_sha256"][name],
            "seconds": 0.0,
            "cpu_capability": meta["built_with"]["cpu_kernels"]["aten_capability"],
        }
    return out


def _build_into(
    tmp: Path, size: str, seed: int, key: str, progress: bool, jobs: int, disagreement: float = 0.0,
    base: World | None = None,
) -> dict[str, Any]:
    recipe = _recipe(size)
    started = time.perf_counter()
    order = sorted(range(len(recipe.sources)), key=lambda n: -_cost(recipe.sources[n]))
    reused = _reuse(base, tmp) if base is not None else {}
    calls = [
        (build_source, (recipe.sources[n], n, seed, recipe.sizes, tmp, disagreement))
        for n in order
        if recipe.sources[n].name not in reused
    ]

    with _progress(progress) as bar:
        bars = _Bars(bar, recipe.sources)
        for r in reused.values():
            bars.result(r)
        results = run_pinned(  # the parent writes the splits while the children build (each regenerates them)
            calls,
            jobs,
            on_event=bars.event,
            on_result=lambda i, r: bars.result(r),
            meanwhile=lambda: _write_splits(tmp, seed, recipe.sizes, disagreement),
        )
    built = {**reused, **{r["name"]: r for r in results}}
    names = [s.name for s in recipe.sources]
    return {
        "key": key,
        "size": size,
        "seed": seed,
        "version": VERSION,
        **({"disagreement": disagreement} if disagreement else {}),
        "origin": "built",
        "target": TARGET,
        "models": names,
        "skills": {s.name: s.skill for s in recipe.sources},
        "recipe": {"sizes": asdict(recipe.sizes), "sources": [asdict(s) for s in recipe.sources]},
        "scores": {name: built[name]["scores"] for name in names},
        "fingerprint": world_fingerprint(tmp, names),
        "weights_sha256": {name: built[name]["sha256"] for name in names},
        "built_with": {
            "libraries": library_versions(),
            "machine": platform.machine(),
            "cpu_kernels": {**PINNED_ENV, "aten_capability": results[0]["cpu_capability"], "threads": 1},
            "processes": min(jobs, len(calls)),
        },
        "timings_s": {
            **{name: built[name]["seconds"] for name in names},
            "total": round(time.perf_counter() - started, 1),
        },
    }


def _world_from(root: Path, meta: dict[str, Any]) -> World:
    return World(
        root=root,
        size=meta["size"],
        seed=meta["seed"],
        key=meta["key"],
        models={name: root / "models" / name for name in meta["models"]},
        target=meta["target"],
        corpus_path=root / "corpus.jsonl",
        eval_files={skill: root / "eval" / f"{skill}.jsonl" for skill in SKILLS},
        scores=meta["scores"],
        disagreement=meta.get("disagreement", 0.0),
    )


def _world_dir(size: str, seed: int, cache_dir: Path | None, disagreement: float = 0.0) -> Path:
    return (cache_dir or store.default_cache_dir()) / "sandbox" / world_key(size, seed, disagreement)


def load_world(
    size: str = "default", seed: int = 0, cache_dir: Path | None = None, disagreement: float = 0.0
) -> World | None:
    """The cached world for (size, seed, disagreement), or None when it has not been built (or was damaged:
    moved aside)."""
    root = _world_dir(size, seed, cache_dir, disagreement)
    if not store.verified(root, "sandbox world"):
        return None
    return _world_from(root, json.loads((root / "world.json").read_text()))


def build_world(
    size: str = "default",
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
    jobs: int | None = None,
    disagreement: float = 0.0,
    from_scratch: bool = False,
) -> World:
    """Build (or load from the cache) the world for (size, seed). Same seed, same weights and scores.

    Where the package carries the reference world of (size, seed) (packaged.py: the default world, seed 0),
    it is installed from there, verified by its fingerprint; `from_scratch` trains it here instead.
    Each specialist is built in its own fresh process with pinned CPU kernels (pinned.py), at most `jobs` at
    a time (default: one per CPU, at most one per specialist); `jobs` changes the time, never the bytes.
    `disagreement` (0 to 1) turns the dial of disagreement.py; 0 is the world without it.
    """
    if not 0.0 <= disagreement <= 1.0:
        raise HarnessError(f"sandbox disagreement must be between 0 and 1, got {disagreement}", "sandbox")
    root = _world_dir(size, seed, cache_dir, disagreement)
    if not force and (world := load_world(size, seed, cache_dir, disagreement)) is not None:
        return world
    with store.locked(root):
        if not force and (world := load_world(size, seed, cache_dir, disagreement)) is not None:
            return world  # another process built it while we waited
        for stale in root.parent.glob(f".{root.name}.*.tmp"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.{os.getpid()}.tmp"
        try:
            meta = None if from_scratch or disagreement else _install_packaged(tmp, size, seed, root.name, progress)
            if meta is None:
                base = _dial_base(size, seed, cache_dir, progress, from_scratch) if disagreement else None
                meta = _build_into(tmp, size, seed, root.name, progress, jobs or available_cpus(), disagreement, base)
            store.atomic_write_json(tmp / "world.json", meta)
            store.seal(tmp)
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    world = load_world(size, seed, cache_dir, disagreement)
    assert world is not None
    return world


def _dial_base(size: str, seed: int, cache_dir: Path | None, progress: bool, from_scratch: bool) -> World | None:
    """The world at dial 0 whose sources a dial world reuses: cached, or installed from the package (seconds);
    None otherwise, and then the dial world trains every source itself."""
    if (world := load_world(size, seed, cache_dir)) is not None:
        return world
    if from_scratch or packaged.packaged_root(size, seed) is None:
        return None
    return build_world(size, seed, cache_dir, progress)


def _install_packaged(tmp: Path, size: str, seed: int, key: str, progress: bool) -> dict[str, Any] | None:
    """The packaged reference world installed into `tmp` (its meta), or None where there is none to install."""
    meta = packaged.install(size, seed, key, REFERENCE_WORLDS.get((size, seed)), tmp)
    if meta is None:
        if packaged.packaged_root(size, seed) is not None:
            store.warn(f"the packaged {size} world (seed {seed}) is not this version's reference world; building it")
        return None
    _write_splits(tmp, seed, _recipe(size).sizes, 0.0)
    if progress:
        print(
            f"sandbox world ({size}, seed {seed}): installed the packaged reference world "
            f"(fingerprint {meta['fingerprint'][:12]}...; `harness sandbox build --from-scratch` trains it here)",
            file=sys.stderr,
            flush=True,
        )
    return meta



def world_summary(world: World) -> dict[str, Any]:
    """What `harness sandbox show --json` prints: where the world is, which world it is, each model's scores."""
    identity = world_identity(world.root)
    return {
        "size": world.size,
        "seed": world.seed,
        "key": world.key,
        "root": str(world.root),
        "target": world.target,
        "corpus": str(world.corpus_path),
        "sources": identity["scores"],
        "fingerprint": identity["fingerprint"],
        "reference": identity["reference"],
        "built_with": identity["built_with"],
        "origin": identity["origin"],
    }
