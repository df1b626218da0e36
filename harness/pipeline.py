"""`harness run`: the stages of one experiment, each cached by a key of everything that determines it.

prepare -> signals -> fuse (dataset) -> train -> evaluate -> report. A run directory is new every time, but the
expensive stages live in the content-addressed cache (signals shards, training checkpoints, evaluation results),
so running the same command after a crash resumes where it stopped and a second method reuses the first one's
signals. Everything the user can get wrong is validated in `plan` before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import distributed
from harness.config import Experiment, SandboxSpec
from harness.errors import HarnessError
from harness.models import ResolvedModel, hub_commit, identity_files, resolve
from harness.modes import Signal
from harness.store import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    default_cache_dir,
    file_digests,
    locked,
    new_run_dir,
    seal,
    stable_hash,
    verified,
    writing,
)

console = Console(stderr=True)

TRAIN_CODE_VERSION = 2  # 2: keyed by the target's file contents; final model and checkpoints sealed


@dataclass
class Plan:
    """What a run will do, validated: the thing `--dry-run` prints."""

    exp: Experiment
    method_cls: Any
    tasks: list[str]
    cache_dir: Path
    data_dir: Path | None
    stages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    added_tasks: list[str] = field(default_factory=list)  # evaluated besides exp.eval.tasks (the sandbox skills)
    reading: str | None = None  # the one line that says what the table's numbers mean, printed under it
    unavailable: dict[str, str] = field(default_factory=dict)  # model spec -> why it cannot be loaded here


def _sandbox_reading(exp: Experiment, tasks: list[str]) -> tuple[list[str], str | None]:
    """Sandbox specialists asked for real benchmarks: the task groups to add (the sandbox skills, unless
    `eval.add_sandbox_skills` is off or they were asked for) and the line saying what the numbers mean."""
    from harness.evaluation.task_catalog import SANDBOX_TASKS

    specs = [exp.target.path, *(s.path for s in exp.sources)]
    real = [t for t in tasks if t not in SANDBOX_TASKS]
    if exp.sandbox is None or not real or not all(spec.startswith("sandbox:") for spec in specs):
        return [], None
    added = ["sandbox"] if exp.eval.add_sandbox_skills and not set(SANDBOX_TASKS) <= set(tasks) else []
    shown = "in this table " if added or set(SANDBOX_TASKS) <= set(tasks) else ""
    return added, (
        f"reading the table: the tiny sandbox specialists are expected near chance on real benchmarks "
        f"({', '.join(real)}); the sandbox skills {shown}(`-t sandbox`) show the fusion effect; "
        f"`--preset small-real` or a real-model preset (`real-hetero`) fuses real models"
    )


def _check_data_dir(data_dir: str | None) -> Path | None:
    """The local benchmark data folder, absolute, or a one-line error when it is given but missing."""
    if not data_dir:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise HarnessError(f"data dir '{data_dir}' does not exist (expected a folder laid out as shared/data)", "data")
    return path.resolve()


def _check_model_spec(spec: str, where: str, exp: Experiment) -> str | None:
    """None when the spec names a model this machine can load; else why not (one phrase). A malformed spec
    (a missing path, a text file) raises at once."""
    judge = where.startswith("config: judges")
    if spec.startswith("sandbox-rm:"):
        from harness.sandbox.reward_models import parse_spec

        if not judge:
            raise HarnessError(f"'{spec}' is a sandbox reward model: only judges.models can name it", where)
        if exp.sandbox is None:
            raise HarnessError(f"'{spec}' needs a `sandbox:` section in the experiment", where)
        parse_spec(spec, where)
        return None
    if spec.startswith("sandbox:"):
        from harness.sandbox.build import RECIPES
        from harness.sandbox.reward_models import specs

        if judge:
            raise HarnessError(
                f"'{spec}' is a sandbox language model, not a reward model (sandbox reward models: {', '.join(specs())})",
                where,
            )
        if exp.sandbox is None:
            raise HarnessError(f"'{spec}' needs a `sandbox:` section in the experiment", where)
        names = [recipe.name for recipe in RECIPES[exp.sandbox.size].sources]
        if spec.split(":", 1)[1] not in names:
            raise HarnessError(f"'{spec}' is not a sandbox model (known: {', '.join(names)})", where)
        return None
    return unavailable(resolve(spec, where=where, convert=False))  # packaged models are converted at prepare


HUB_MISS = "is not in the local Hugging Face cache"


def unavailable_line(missing: dict[str, str]) -> str:
    """The one-line error for models that cannot be loaded here (spec -> `where (why)`)."""
    return f"cannot load {len(missing)} model(s): " + "; ".join(missing.values())


def unavailable(model: ResolvedModel) -> str | None:
    """Why a resolved model cannot be loaded here (a folder that holds no model, a hub id that is neither in
    the local Hugging Face cache nor downloadable: HF_HUB_OFFLINE is set, or the hub does not answer one short
    connection attempt), or None."""
    from harness.models import hub_reachable, why_offline

    if model.packaged:
        return None  # resolve found its package; prepare converts it into the cache
    folder = Path(model.pretrained)
    if model.gguf_file:
        return None if (folder / model.gguf_file).is_file() else f"'{folder / model.gguf_file}' does not exist"
    if folder.is_dir():
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            return None
        return f"folder '{folder}' holds no model (no config.json)"
    if hub_reachable():
        return None  # a hub id: downloaded when first loaded
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        found = try_to_load_from_cache(model.pretrained, "config.json")
    except (ImportError, HFValidationError, ValueError):
        return f"'{model.pretrained}' is not a valid hub id"
    if isinstance(found, str):
        return None
    return f"hub id '{model.pretrained}' {HUB_MISS} and {why_offline()}"


def _check_corpus(exp: Experiment) -> None:
    """The corpus file exists and every row parses (UTF-8 JSON objects with the needed fields), at plan time."""
    from harness.signals import load_corpus

    if exp.corpus.source == "sandbox":
        if exp.sandbox is None:
            raise HarnessError("corpus.source 'sandbox' needs a `sandbox:` section in the experiment", "config")
        return
    corpus_path = os.path.expandvars(exp.corpus.path or "")
    if "$" in corpus_path:
        raise HarnessError(f"corpus.path '{exp.corpus.path}' names an unset environment variable", "config")
    if Path(corpus_path).is_dir():
        raise HarnessError(f"corpus.path '{corpus_path}' is a folder; give a .jsonl or .json file", "config")
    if not Path(corpus_path).is_file():
        raise HarnessError(f"corpus.path '{corpus_path}' does not exist", "config")
    load_corpus(Path(corpus_path), limit=exp.corpus.limit)


def plan(exp: Experiment, out: Path | None = None, *, missing_ok: bool = False) -> Plan:
    """Validate the experiment end to end (method, tasks, models, corpus, data dir, writable folders) without
    heavy work. `out`: the results folder, checked for writing when given. Models that cannot be loaded here
    are one error, or with `missing_ok` (a dry run on an offline login node) listed in `Plan.unavailable`."""
    from harness.evaluation.evaluate import expand_tasks
    from harness.evaluation.offline_data import check_data
    from harness.evaluation.task_catalog import SANDBOX_TASKS
    from harness.registry import get_method
    from harness.signals.alignment import get_alignment

    method_cls = get_method(exp.method.name)
    get_alignment(exp.signals.alignment)
    tasks = expand_tasks(exp.eval.tasks)
    data_dir = _check_data_dir(exp.data_dir)
    specs = [("config: target.path", exp.target.path)] + [(f"config: sources[{i}].path", s.path) for i, s in enumerate(exp.sources)]
    if exp.judges.kind == "reward-models":
        specs += [(f"config: judges.models[{i}]", m) for i, m in enumerate(exp.judges.models)]
    missing = {spec: f"{where.split(': ')[-1]} ({why})" for where, spec in specs if (why := _check_model_spec(spec, where, exp))}
    # only the hub's absence waits until the plan is shown (an offline login node); a broken local model is bad input
    if missing and not (missing_ok and all(HUB_MISS in why for why in missing.values())):
        raise HarnessError(unavailable_line(missing), "config")
    _check_corpus(exp)
    cache_dir = Path(exp.cache_dir).expanduser() if exp.cache_dir else default_cache_dir()
    check_writable(cache_dir, "cache dir")
    if out is not None:
        check_writable(Path(out), "results folder --out")
    if data_dir is not None:
        check_data([t for t in tasks if t not in SANDBOX_TASKS], data_dir, cache_dir)
    added, reading = _sandbox_reading(exp, tasks)
    tasks = tasks + [t for t in (expand_tasks(added) if added else []) if t not in tasks]
    p = Plan(exp, method_cls, tasks, cache_dir, data_dir, added_tasks=added, reading=reading, unavailable=missing)
    names = [exp.target.name] + [s.name for s in exp.sources]
    if exp.sandbox:
        dial = f", disagreement {exp.sandbox.disagreement:g}" if exp.sandbox.disagreement else ""
        from harness.sandbox.packaged import packaged_root

        packaged = not exp.sandbox.disagreement and packaged_root(exp.sandbox.size, exp.sandbox.seed) is not None
        how = "installed from the package" if packaged else "built once"
        p.stages.append(f"prepare: sandbox world ({exp.sandbox.size}, seed {exp.sandbox.seed}{dial}), {how} and cached")
        if rms := _sandbox_reward_models(exp, method_cls):
            p.stages.append(f"prepare: sandbox reward models {', '.join(rms)}, trained once and cached")
    for mode in sorted(s.value for s in method_cls.needs):
        what = "teacher-forced top-k" if mode == "training" else f"generation + {exp.judges.kind} judge + top-k"
        p.stages.append(f"signals ({mode} mode): {what}, k={exp.signals.top_k}, aligned by "
                        f"'{exp.signals.alignment}', for {len(names)} candidate models")
    own = ", ".join(f"{k} {_param_text(v)}" for k, v in exp.method.own_parameters().items())
    p.stages.append(f"train: {exp.method.name}{f' ({own})' if own else ''} into '{exp.target.name}'")
    labels = ["target-base", *([s.name for s in exp.sources] if exp.eval.compare_sources else []), exp.method.name]
    p.stages.append(f"evaluate: {', '.join(tasks)} for {', '.join(labels)}")
    p.stages.append("report: paired tests against target-base with Holm correction, tables and plots")
    capped = {t: n for t, n in _limits(exp, tasks).items() if n}  # also checks task_limits' names
    if capped:
        caps = sorted(set(capped.values()))
        what = f"at most {caps[0]}" if len(caps) == 1 else f"at most {caps[0]}-{caps[-1]}"
        rest = [t for t in tasks if t not in capped]
        every = f"; every document of {', '.join(rest)}" if rest else ""
        p.notes.append(f"evaluating {what} documents per task{every} (the preset's caps); --limit 0 lifts them")
    return p


def _param_text(value: Any) -> str:
    """A parameter for the plan's train line: a nested model by its name (`schedule progressive`), else its value."""
    return str(getattr(value, "name", value))


def _sandbox_reward_models(exp: Experiment, method_cls: Any) -> list[str]:
    """The `sandbox-rm:<i>` judges this run needs: named in judges.models, and the method uses inference mode."""
    if exp.judges.kind != "reward-models" or Signal.INFERENCE not in method_cls.needs:
        return []
    return [m for m in exp.judges.models if m.startswith("sandbox-rm:")]


def _limits(exp: Experiment, tasks: list[str]) -> dict[str, int | None]:
    from harness.evaluation.task_catalog import document_limits

    return document_limits(exp.eval.limit, exp.eval.task_limits, tasks)


def print_plan(p: Plan, out: str) -> None:
    exp = p.exp
    console.print(f"[bold]experiment[/bold] {exp.name} (preset {exp.preset}, seed {exp.seed})")
    console.print(f"  target: {exp.target.name} <- {exp.target.path}")
    for s in exp.sources:
        console.print(f"  source: {s.name} <- {s.path}")
    for i, stage in enumerate(p.stages, 1):
        console.print(f"  {i}. {stage}")
    console.print(f"  storage estimate: {_storage_estimate(p)}")
    console.print("  compute and memory per stage (weights from each model's config, else its name; docs/scaling.md):")
    for line in _estimates(p):
        console.print(f"    {line}", markup=False)
    console.print(f"  cache: {p.cache_dir}   results: {out}/<run-id>/")
    for note in p.notes + ([p.reading] if p.reading else []):
        console.print(f"  note: {note}", markup=False)
    from harness.analysis.power_from_runs import planned_power

    for line in planned_power(p, planned_documents(p), results=Path(out)):
        console.print(f"  {line}", markup=False)
    _print_rendered_examples(p)
    console.print("dry run: no weights downloaded, nothing written (tokenizers only read, to render the example)")
    if p.unavailable:
        console.print(f"[bold]unavailable here[/bold] ({len(p.unavailable)} model(s); the run needs them):")
        for why in p.unavailable.values():
            console.print(f"  - {why}", markup=False)


def planned_documents(p: Plan) -> dict[str, tuple[int | None, bool]]:
    """Per task of the plan: the documents it will evaluate (None where only evaluation counts them) and whether
    its metric is binary; what the dry run's power lines need."""
    from harness.evaluation.task_catalog import SANDBOX_TASKS, document_limits, task_info

    exp = p.exp
    limits = document_limits(exp.eval.limit, exp.eval.task_limits, p.tasks)
    out: dict[str, tuple[int | None, bool]] = {}
    for task in p.tasks:
        n = limits.get(task)
        if n is None and task in SANDBOX_TASKS and exp.sandbox is not None:
            from harness.sandbox.build import RECIPES

            n = RECIPES[exp.sandbox.size].sizes.eval_per_skill
        out[task] = (n, task_info(task).binary)
    return out


_SHOWN = 240  # characters kept at each end of a long prompt or response in the dry run's rendered example


def _shorten(text: str) -> str:
    if len(text) <= 2 * _SHOWN + 20:
        return text
    return f"{text[:_SHOWN]}[... {len(text) - 2 * _SHOWN} characters ...]{text[-_SHOWN:]}"


def _first_example(p: Plan, limit: int = 1) -> tuple[Any, dict[str, Path] | None] | str:
    """The corpus's first `limit` rows and the sandbox models, when they exist without building anything; else
    why not."""
    from harness.signals import load_corpus

    exp = p.exp
    sandbox_models = None
    corpus_path = Path(os.path.expandvars(exp.corpus.path)) if exp.corpus.path else None
    if exp.sandbox is not None:
        from harness.sandbox.build import load_world

        world = load_world(exp.sandbox.size, exp.sandbox.seed, p.cache_dir, exp.sandbox.disagreement)
        if world is None:
            return "the sandbox world is built by the first run (`harness sandbox build` builds it now)"
        sandbox_models = world.models
        if exp.corpus.source == "sandbox":
            corpus_path = world.corpus_path
    assert corpus_path is not None
    return load_corpus(corpus_path, limit=limit), sandbox_models


def _print_rendered_examples(p: Plan) -> None:
    """Each model's own rendering of the first training example (prompt and reference answer, cut after its end
    of turn; the response in [[ ]]), so that the formats can be checked before a long run starts."""
    from harness.chat import display, render_example
    from harness.models import display_tokenizer

    found = _first_example(p)
    console.print("  first training example as each model reads it (response in [[ ]]; cut to max_length when run):")
    if isinstance(found, str):
        console.print(f"    not shown: {found}", markup=False)
        return
    rows, sandbox_models = found
    row = rows[0]
    for spec in [p.exp.target, *p.exp.sources]:
        if spec.path in p.unavailable:
            console.print(f"    {spec.name}: not shown: unavailable here (listed below)", markup=False)
            continue
        try:
            tok = display_tokenizer(spec.path, sandbox_models, p.cache_dir, spec.trust_remote_code)
            ex = render_example(tok, row.prompt, row.reference, spec.chat_template, spec.name)
        except HarnessError as exc:
            console.print(f"    {spec.name}: not shown: {exc}", markup=False)
            continue
        text = display(tok, ex.text)
        shift = len(text) - len(ex.text)
        start = ex.content_start + shift
        shown = _shorten(text[:start]) + "[[" + _shorten(text[start:]) + "]]"
        console.print(f"    {spec.name}:", markup=False)
        for line in shown.split("\n"):
            console.print(f"      | {line}", markup=False, highlight=False, soft_wrap=True)
    if Signal.INFERENCE in p.method_cls.needs:
        _print_cut_off_estimate(p)


_CUT_OFF_SAMPLE = 200  # corpus rows the dry run tokenizes to estimate the cut-off share


def _print_cut_off_estimate(p: Plan) -> None:
    """Per candidate, the share of reference answers longer than signals.max_new_tokens in its own tokens: about
    the share of its generations that will be cut off (judged and taught as `signals.truncated` says)."""
    from harness.models import display_tokenizer

    found = _first_example(p, _CUT_OFF_SAMPLE)
    if isinstance(found, str):
        return
    rows, sandbox_models = found
    limit = p.exp.signals.max_new_tokens
    specs = ([p.exp.target] if p.exp.method.target_is_candidate else []) + list(p.exp.sources)
    shares = []
    for spec in specs:
        try:
            tok = display_tokenizer(spec.path, sandbox_models, p.cache_dir, spec.trust_remote_code)
        except HarnessError:
            continue
        longer = sum(len(tok(r.reference, add_special_tokens=False)["input_ids"]) > limit for r in rows)
        shares.append(f"{spec.name} {longer / len(rows):.0%}")
    if shares:
        console.print(
            f"  references longer than signals.max_new_tokens ({limit}) in each candidate's tokens, first {len(rows)} "
            f"rows: {', '.join(shares)}; generations that long are cut off (signals.truncated={p.exp.signals.truncated})",
            markup=False,
        )


def _corpus_size(exp: Experiment) -> int | None:
    """Rows of a local corpus file (a JSON array or JSONL), counted without parsing the texts."""
    if exp.corpus.source != "jsonl":
        return None
    path = Path(os.path.expandvars(exp.corpus.path or ""))
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _estimates(p: Plan) -> list[str]:
    from harness.estimates import estimates

    n_examples = p.exp.corpus.limit or _corpus_size(p.exp) or 1500
    found = _first_example(p) if p.exp.sandbox is not None else None
    sandbox_models = found[1] if isinstance(found, tuple) else None
    return estimates(p, n_examples, sandbox_models)


def _storage_estimate(p: Plan) -> str:
    """Signal bytes: examples x response tokens x candidates x modes x ~(k ids as uint16/32 + k float16 logps)."""
    n_examples = p.exp.corpus.limit or _corpus_size(p.exp) or 1500
    tokens = p.exp.signals.max_length // 2
    candidates = len(p.exp.sources) + (1 if p.exp.method.target_is_candidate else 0)
    per_token = p.exp.signals.top_k * (4 + 2) * 0.8  # ids + logps after zstd; measured by `nox -s bench`
    modes = len(p.method_cls.needs)
    total = n_examples * tokens * candidates * modes * per_token
    return f"~{total / 1e9:.2f} GB of signals for ~{n_examples} examples (corpus.limit to change)"


# ---------------------------------------------------------------------------------------------------- stages


@dataclass
class Prepared:
    models: dict[str, ResolvedModel]  # name -> resolved (target first)
    corpus: list[Any]
    sandbox_root: Path | None
    judge_models: dict[str, Path] = field(default_factory=dict)  # sandbox reward-model spec -> folder


def _prepare(exp: Experiment, cache_dir: Path, progress: bool, reward_models: list[str] | None = None) -> Prepared:
    from harness.signals import load_corpus

    sandbox_models: dict[str, Path] | None = None
    sandbox_root = None
    judge_models: dict[str, Path] = {}
    corpus_path = Path(os.path.expandvars(exp.corpus.path)) if exp.corpus.path else None
    if exp.sandbox is not None:
        from harness.sandbox.build import build_world

        world = build_world(
            size=exp.sandbox.size, seed=exp.sandbox.seed, cache_dir=cache_dir, progress=progress,
            disagreement=exp.sandbox.disagreement,
        )
        sandbox_models, sandbox_root = world.models, world.root
        if exp.corpus.source == "sandbox":
            corpus_path = world.corpus_path
        if reward_models:
            from harness.sandbox.reward_models import resolve_specs

            judge_models = resolve_specs(world, reward_models, cache_dir, progress)
    models = {exp.target.name: resolve(exp.target.path, sandbox_models, "config: target.path", cache_dir=cache_dir)}
    for i, s in enumerate(exp.sources):
        models[s.name] = resolve(s.path, sandbox_models, f"config: sources[{i}].path", cache_dir=cache_dir)
    assert corpus_path is not None
    corpus = load_corpus(corpus_path, limit=exp.corpus.limit)
    return Prepared(models, corpus, sandbox_root, judge_models)


def _record_world(manifest: Manifest, sandbox_root: Path | None) -> None:
    """Which sandbox world the run used (fingerprint, reference check, library versions, scores), if any."""
    if sandbox_root is not None:
        from harness.sandbox.identity import world_identity

        manifest.record_sandbox_world(world_identity(sandbox_root))


def _handles(exp: Experiment, prepared: Prepared) -> tuple[Any, list[Any]]:
    from harness.signals import ModelHandle

    specs = {exp.target.name: exp.target, **{s.name: s for s in exp.sources}}

    def handle(name: str) -> Any:
        spec = specs[name]
        return ModelHandle(name, prepared.models[name], spec.chat_template, spec.trust_remote_code)

    target = handle(exp.target.name)
    candidates = ([target] if exp.method.target_is_candidate else []) + [handle(s.name) for s in exp.sources]
    return target, candidates


def _signals(exp: Experiment, plan_: Plan, prepared: Prepared, run_dir: Path, manifest: Manifest, progress: bool) -> dict[Any, Any]:
    from harness.signals import extract_signals, selection_stats, signal_audit, winner_reference_score
    from harness.signals.extract import signals_code_hash

    target, candidates = _handles(exp, prepared)
    sets = {}
    for mode in sorted(plan_.method_cls.needs, key=lambda m: m.value):
        with manifest.timed("signals"):
            sets[mode] = extract_signals(
                mode, target, candidates, prepared.corpus, exp.signals, exp.judges, plan_.cache_dir, progress=progress,
                seed=exp.seed, judge_models=prepared.judge_models,
            )
        manifest.record_cache_key(f"signals.{mode.value}", sets[mode].key)
    manifest.record_code({f"alignment:{exp.signals.alignment}": signals_code_hash(exp.signals.alignment)})
    if distributed.is_main():
        stats = selection_stats(sets, prepared.corpus)
        if (judged := winner_reference_score(sets, prepared.corpus)) is not None:
            # which judge picked the inference-mode winners, and how good its picks are by the answer key
            stats["judge"] = {**exp.judges.model_dump(mode="json"), "winner_reference_score": judged}
        atomic_write_json(run_dir / "signals" / "selection.json", stats)
        atomic_write_json(run_dir / "signals" / "audit.json", signal_audit(sets))
        atomic_write_json(run_dir / "signals" / "sources.json", {m.value: str(s.path) for m, s in sets.items()})
    return sets


def _train(exp: Experiment, plan_: Plan, prepared: Prepared, sets: dict[Any, Any], run_dir: Path, manifest: Manifest, progress: bool) -> Path:
    """Train (or resume, or reuse) the fused target in the cache; returns the folder of the final model."""
    from harness.models import load_model, load_tokenizer
    from harness.training.dataset import build_fusion_dataset, collate
    from harness.training.loop import ENGINE_FILE, train

    target = prepared.models[exp.target.name]
    procs = distributed.world_size()  # batch_size is per process: the global batch depends on it
    key = stable_hash(
        {
            **({"processes": procs} if procs > 1 else {}),  # single-process keys stay as they were
            **({"engine": engine} if (engine := distributed.launch_engine()) else {}),  # sharded checkpoints differ
            "v": TRAIN_CODE_VERSION,
            "target": exp.target.model_dump(),
            "target_weights": _weights_identity(target, plan_.cache_dir),
            "signals": {m.value: s.key for m, s in sets.items()},
            "method": exp.method.key(),
            "code": train_code(plan_.method_cls),  # an edited loss or training loop trains again (docs/design.md)
            "train": exp.train.model_dump(),
            "seed": exp.seed,
        }
    )
    manifest.record_cache_key("train", key)
    code = train_code(plan_.method_cls)
    manifest.record_code({f"method:{exp.method.name}": code["method"], "training": code["train"]})
    work = plan_.cache_dir / "train" / key
    final = work / "final"
    # Other runs sharing the cache are kept out by the main process's lock; the processes of this run all follow
    # its decision, since a collective (the training loop) would hang if only some of them entered it.
    with locked(work) if distributed.is_main() else contextlib.nullcontext():
        if not distributed.from_main(distributed.is_main() and verified(final, "trained model")):
            method = plan_.method_cls(exp.method)
            dataset = build_fusion_dataset(sets, method, max_length=exp.train.max_length)
            tok = load_tokenizer(target, exp.target.trust_remote_code)
            model = load_model(target, "float32", "cpu", exp.target.trust_remote_code)
            if exp.train.lora:
                from harness.training import lora

                model = lora.wrap(model, exp.train.lora)
            with manifest.timed("train"):
                result = train(model, tok, dataset, collate, method, exp.train, work, seed=exp.seed, resume=True, progress=progress)
            if exp.train.lora:
                result.model = lora.unwrap_for_saving(result.model, exp.train.lora, work / "adapter")
            if exp.target.chat_template:  # the fused model carries the format it was trained in
                tok.chat_template = exp.target.chat_template
            _save_final(result, tok, final)
        else:
            console.print(f"train: reusing the trained model from the cache ({key})")
    if (work / ENGINE_FILE).is_file():  # engine, processes and sharding of the training that made the model
        manifest.data["training"] = json.loads((work / ENGINE_FILE).read_text())
        manifest.save()
    log = work / "train_log.jsonl"
    if log.is_file() and distributed.is_main():
        shutil.copyfile(log, run_dir / "train_log.jsonl")
    return final


TRAIN_MODULES = ("harness.training.loop", "harness.training.dataset", "harness.training.lora")


def train_code(method_cls: Any) -> dict[str, str]:
    """The code a trained model depends on: the method's module (and what it imports) and the training loop."""
    from harness.code_identity import code_hash

    return {"method": code_hash(method_cls.__module__), "train": code_hash(*TRAIN_MODULES)}


def _save_final(result: Any, tokenizer: Any, final: Path) -> None:
    """The fused model as a plain HF folder, written by the main process only, renamed into place when complete.

    Under FSDP / ZeRO-3 the parameters are sharded; `train` gathers the full state dict into `result.state_dict`.
    """
    if distributed.is_main():
        tmp = final.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(tmp):
            result.model.save_pretrained(tmp, state_dict=result.state_dict)
            arch = type(result.model).__name__
            if arch.startswith("FSDP"):  # FSDP2 names its sharded subclass FSDP<class>: an ordinary folder names <class>
                config = json.loads((tmp / "config.json").read_text())
                config["architectures"] = [arch[4:]]
                atomic_write_json(tmp / "config.json", config)
            tokenizer.save_pretrained(tmp)
            seal(tmp)  # last: a folder without its checksums is never taken for a trained model
        shutil.rmtree(final, ignore_errors=True)  # a leftover without checksums
        os.replace(tmp, final)
    distributed.barrier()


def _weights_identity(model: ResolvedModel, cache_dir: Path) -> dict[str, Any]:
    """sha256 of the target's weight and config files (hashed once, memoised by path, size and mtime): a copied
    cache or a touched file keeps its trained models, changed weights do not."""
    files = identity_files(model, "training")
    if files is None:
        return {"hub": model.pretrained, "gguf": model.gguf_file, "commit": hub_commit(model.pretrained)}
    return dict(zip((p.name for p in files), file_digests(files, cache_dir), strict=True))


def _evaluate(
    exp: Experiment, plan_: Plan, models: dict[str, ResolvedModel], sandbox_root: Path | None, run_dir: Path,
    manifest: Manifest, progress: bool,
) -> dict[str, dict[str, Any]]:
    from harness.evaluation.evaluate import evaluate_model

    results: dict[str, dict[str, Any]] = {}
    templates = {exp.target.name: exp.target.chat_template, **{s.name: s.chat_template for s in exp.sources}}
    remote = {s.name: s.trust_remote_code for s in exp.sources}  # target-base and the fused model: the target's
    for label, model in models.items():
        console.print(f"evaluate: {label} on {', '.join(plan_.tasks)}")
        with manifest.timed("evaluate"):
            results[label] = evaluate_model(
                model, label, [*exp.eval.tasks, *plan_.added_tasks], out_dir=run_dir / "eval", limit=_limits(exp, plan_.tasks),
                num_fewshot=exp.eval.num_fewshot, batch_size=exp.eval.batch_size, max_gen_toks=exp.eval.max_gen_toks,
                data_dir=plan_.data_dir, sandbox_root=sandbox_root, backend=exp.eval.backend,
                cache_dir=plan_.cache_dir, progress=progress,
                # the format it was fused in: the target's template for target-base and for the fused model
                chat_template=templates.get(label, exp.target.chat_template),
                trust_remote_code=remote.get(label, exp.target.trust_remote_code),
            )
    return results


def _score_dict(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """summary.json's per-task entries: the score and the settings behind it (data source, task version, shots,
    limit, filter), which decide whether two runs' results may be compared."""
    return {t: s.summary() for t, s in scores.items()}


def _summary(
    exp: Experiment, run_dir: Path, results: dict[str, dict[str, Any]], label: str, manifest: Manifest,
    variant: dict[str, Any] | None = None, plan_: Plan | None = None,
) -> dict[str, Any]:
    from harness.analysis.stats import compare_runs

    summary: dict[str, Any] = {
        "run_id": run_dir.name,
        "method": exp.method.name,
        # a method with a schedule (ProFuser) is told apart by it in tables and replicate keys
        **({"schedule": schedule.name} if (schedule := exp.method.own_parameters().get("schedule")) else {}),
        "parameters": exp.method.model_dump(mode="json", include=set(exp.method.own_parameters())),
        "preset": exp.preset,
        "seed": exp.seed,
        **({"variant": variant} if variant else {}),  # the grid values of a sweep's cell, besides method and schedule
        "models": {"target": exp.target.name, "sources": [s.name for s in exp.sources]},
        "tasks": _score_dict(results[label]),
        "baseline": _score_dict(results["target-base"]),
        "sources": {s.name: _score_dict(results[s.name]) for s in exp.sources if s.name in results},
    }
    if plan_ is not None and plan_.reading:  # evaluated besides the tasks asked for, and what the numbers mean
        summary["added_tasks"] = plan_.added_tasks
        summary["reading"] = plan_.reading
    # The method and every source against the unfused target; Holm across all comparisons of the table.
    compared = [label, *summary["sources"]]
    summary["comparisons"] = compare_runs(run_dir, compared, "target-base", summary["tasks"], seed=exp.seed)
    summary["timings_s"] = manifest.data["timings_s"]
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _seal_run(run_dir: Path, manifest: Manifest) -> None:
    """Checksums of every file of the finished run in manifest.json: `harness verify RUN` tells later whether
    any was truncated or edited."""
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."))
    manifest.record_checksums(files, run_dir)


def _report(run_dir: Path, progress: bool, reading: str | None = None) -> None:
    from harness.analysis.plots import make_plots
    from harness.analysis.report import build_table, to_rich, write_tables

    write_tables([run_dir], run_dir / "tables")
    out = table_console()
    out.print(to_rich(build_table([run_dir])))
    if reading:  # right under the numbers it explains
        out.print(reading, markup=False, highlight=False, soft_wrap=True)
    try:
        make_plots([run_dir], run_dir / "plots")
    except Exception as exc:  # a figure must never cost the numbers; say so and go on
        console.print(f"[yellow]plots skipped: {exc}[/yellow]")


def table_console() -> Console:
    """Tables go to stdout, never truncated: piped output (logs, CI) gets a wide console instead of 80 columns."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def _seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _start_run(exp: Experiment, out: Path) -> tuple[Path, Manifest]:
    """The main process makes the run directory; the others of a multi-process run learn its name."""
    main = distributed.is_main()
    run_dir = None
    if main:
        run_dir = new_run_dir(out, exp.method.name)
        atomic_write_text(run_dir / "config.yaml", exp.to_yaml())
    run_dir = Path(distributed.from_main(str(run_dir)))
    return run_dir, Manifest(run_dir, exp.seed, write=main)


def run(
    exp: Experiment, out: Path, progress: bool = True, validated: Plan | None = None,
    variant: dict[str, Any] | None = None,
) -> Path:
    """One fusion experiment end to end; returns the run directory. `variant`: the grid values that set this run
    apart from the other cells of a sweep (recorded in its summary, so tables keep the cells apart)."""
    plan_ = validated or plan(exp, out)
    distributed.check_process_group()
    console.quiet = not distributed.is_main()  # one process speaks for a multi-process run
    for note in plan_.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    _seed_everything(exp.seed)
    started = time.perf_counter()
    with manifest_ctx(exp, out) as (run_dir, manifest):
        with manifest.timed("prepare"):
            prepared = _prepare(exp, plan_.cache_dir, progress, _sandbox_reward_models(exp, plan_.method_cls))
        # what each spec resolved to: a packaged model's converted folder is named by its GGUF's sha256
        manifest.data["models"] = {name: {"pretrained": m.pretrained, "gguf_file": m.gguf_file}
                                   for name, m in prepared.models.items()}  # fmt: skip
        manifest.save()
        _record_world(manifest, prepared.sandbox_root)
        sets = _signals(exp, plan_, prepared, run_dir, manifest, progress)
        fused = _train(exp, plan_, prepared, sets, run_dir, manifest, progress)
        models = {"target-base": prepared.models[exp.target.name]}
        if exp.eval.compare_sources:
            models.update({s.name: prepared.models[s.name] for s in exp.sources})
        models[exp.method.name] = ResolvedModel(str(fused))
        results = _evaluate(exp, plan_, models, prepared.sandbox_root, run_dir, manifest, progress)
        if distributed.is_main():
            _summary(exp, run_dir, results, exp.method.name, manifest, variant, plan_)
            _report(run_dir, progress, plan_.reading)
            _seal_run(run_dir, manifest)
        distributed.barrier()  # the others leave only once the summary exists
    if distributed.is_main():
        console.print(f"done in {time.perf_counter() - started:.0f} s")
    return run_dir


class manifest_ctx:
    """Creates the run directory only once everything was validated; its manifest says "running" until the run
    is "done", or "failed" if a stage raises (a killed run stays "running": `harness report` skips it)."""

    def __init__(self, exp: Experiment, out: Path) -> None:
        self.exp, self.out = exp, out

    def __enter__(self) -> tuple[Path, Manifest]:
        self.run_dir, self.manifest = _start_run(self.exp, self.out)
        return self.run_dir, self.manifest

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.manifest.finish(exc if exc_type else None)


def _bounded_int(value: Any, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HarnessError(f"{what} must be a whole number from {low} to {high}, got {value!r}", "eval")


def eval_label(model_spec: str, label: str | None) -> str:
    """The row label and eval/<label>/ folder of `harness eval`: the one given (checked), else one derived from
    the model spec with unsafe characters replaced."""
    from harness.config import BASELINE, check_name
    from harness.registry import available_methods

    if label is None:
        stem = Path(model_spec.split("#")[-1]).stem.replace(":", "-")
        label = re.sub(r"[^A-Za-z0-9._+-]", "-", stem).lstrip("._+-")[:100] or "model"
    try:
        check_name(label, "label")
    except ValueError as exc:
        raise HarnessError(str(exc), "eval") from None
    if label == BASELINE or label in available_methods():  # the rows of fusion runs in a shared table
        raise HarnessError(f"label '{label}' names a row of fusion runs' tables; choose another --label", "eval")
    return label


def evaluate_only(
    model_spec: str, tasks: list[str], *, label: str | None, limit: int | None, num_fewshot: int | None,
    batch_size: int, out: Path, data_dir: str | None, progress: bool = True,
    sandbox: SandboxSpec | None = None,
) -> Path:
    """`harness eval`: one model, no fusion, same per-sample files, cache and tables as fusion runs.

    Sandbox tasks and `sandbox:NAME` models load the world `sandbox` (default size, seed 0) from the cache,
    building it first if needed; everything is checked before the run directory is made.
    """
    from harness.config import MAX_BATCH, MAX_COUNT
    from harness.evaluation.evaluate import evaluate_model, expand_tasks
    from harness.evaluation.offline_data import check_data
    from harness.evaluation.task_catalog import SANDBOX_TASKS

    label = eval_label(model_spec, label)
    if limit is not None:
        _bounded_int(limit, "limit", 0, MAX_COUNT)
    if num_fewshot is not None:
        _bounded_int(num_fewshot, "num_fewshot", 0, 1000)
    _bounded_int(batch_size, "batch_size", 1, MAX_BATCH)
    names = expand_tasks(tasks)
    data = _check_data_dir(data_dir)
    cache_dir = default_cache_dir()
    check_writable(cache_dir, "cache dir")
    check_writable(Path(out), "results folder --out")
    if data is not None:
        check_data([n for n in names if n not in SANDBOX_TASKS], data, cache_dir)
    sandbox_root, sandbox_models = None, None
    if model_spec.startswith("sandbox:") or any(n in SANDBOX_TASKS for n in names):
        from harness.sandbox.build import build_world

        spec = sandbox or SandboxSpec()
        world = build_world(
            size=spec.size, seed=spec.seed, cache_dir=cache_dir, progress=progress, disagreement=spec.disagreement
        )
        sandbox_root, sandbox_models = world.root, world.models
    model = resolve(model_spec, sandbox_models, where="model")
    if (why := unavailable(model)) is not None:
        raise HarnessError(f"cannot load '{model_spec}': {why}", "model")
    run_dir = new_run_dir(out, "eval")
    manifest = Manifest(run_dir, 0)
    _record_world(manifest, sandbox_root)
    try:
        atomic_write_text(run_dir / "config.yaml", json.dumps({"model": model_spec, "tasks": names, "limit": limit}) + "\n")
        with manifest.timed("evaluate"):
            scores = evaluate_model(
                model, label, tasks, out_dir=run_dir / "eval", limit=limit or None, num_fewshot=num_fewshot,
                batch_size=batch_size, data_dir=data, sandbox_root=sandbox_root, cache_dir=cache_dir,
                progress=progress,
            )
        summary = {
            "run_id": run_dir.name, "method": None, "preset": None, "models": {"target": label, "sources": []},
            "tasks": _score_dict(scores), "baseline": {}, "sources": {}, "comparisons": [],
            "timings_s": manifest.data["timings_s"], "label": label, "model": model_spec,
        }
        atomic_write_json(run_dir / "summary.json", summary)
        _report(run_dir, progress)
        _seal_run(run_dir, manifest)
    except BaseException as exc:
        if isinstance(exc, HarnessError) and not (run_dir / "eval").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # refused before any result: leave no empty run behind
        else:
            manifest.finish(exc)
        raise
    manifest.finish()
    return run_dir
