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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import distributed
from harness.config import Experiment, SandboxSpec
from harness.errors import HarnessError
from harness.models import ResolvedModel, resolve
from harness.store import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    default_cache_dir,
    locked,
    new_run_dir,
    stable_hash,
)

console = Console(stderr=True)

TRAIN_CODE_VERSION = 1


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


def _check_data_dir(data_dir: str | None) -> Path | None:
    """The local benchmark data folder, absolute, or a one-line error when it is given but missing."""
    if not data_dir:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise HarnessError(f"data dir '{data_dir}' does not exist (expected a folder laid out as shared/data)", "data")
    return path.resolve()


def _check_model_spec(spec: str, where: str, exp: Experiment) -> None:
    if spec.startswith("sandbox:"):
        from harness.sandbox.build import RECIPES

        if exp.sandbox is None:
            raise HarnessError(f"'{spec}' needs a `sandbox:` section in the experiment", where)
        names = [recipe.name for recipe in RECIPES[exp.sandbox.size].sources]
        if spec.split(":", 1)[1] not in names:
            raise HarnessError(f"'{spec}' is not a sandbox model (known: {', '.join(names)})", where)
        return
    resolve(spec, where=where)


def plan(exp: Experiment) -> Plan:
    """Validate the experiment end to end (method, tasks, models, corpus, data dir) without heavy work."""
    from harness.evaluation.evaluate import expand_tasks
    from harness.registry import get_method

    method_cls = get_method(exp.method.name)
    tasks = expand_tasks(exp.eval.tasks)
    data_dir = _check_data_dir(exp.data_dir)
    _check_model_spec(exp.target.path, "config: target.path", exp)
    for i, src in enumerate(exp.sources):
        _check_model_spec(src.path, f"config: sources[{i}].path", exp)
    names = [exp.target.name] + [s.name for s in exp.sources]
    if len(set(names)) != len(names):
        raise HarnessError(f"model names must be unique, got {names}", "config")
    if exp.corpus.source == "jsonl":
        corpus_path = os.path.expandvars(exp.corpus.path or "")
        if "$" in corpus_path:
            raise HarnessError(f"corpus.path '{exp.corpus.path}' names an unset environment variable", "config")
        if not Path(corpus_path).is_file():
            raise HarnessError(f"corpus.path '{corpus_path}' does not exist", "config")
    if exp.corpus.source == "sandbox" and exp.sandbox is None:
        raise HarnessError("corpus.source 'sandbox' needs a `sandbox:` section in the experiment", "config")
    cache_dir = Path(exp.cache_dir).expanduser() if exp.cache_dir else default_cache_dir()
    p = Plan(exp, method_cls, tasks, cache_dir, data_dir)
    if exp.sandbox:
        p.stages.append(f"prepare: sandbox world ({exp.sandbox.size}, seed {exp.sandbox.seed}), built once and cached")
    for mode in sorted(s.value for s in method_cls.needs):
        what = "teacher-forced top-k" if mode == "training" else f"generation + {exp.judges.kind} judge + top-k"
        p.stages.append(f"signals ({mode} mode): {what}, k={exp.signals.top_k}, for {len(names)} candidate models")
    p.stages.append(f"train: {exp.method.name} (schedule {exp.method.schedule.name}) into '{exp.target.name}'")
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
    console.print(f"  cache: {p.cache_dir}   results: {out}/<run-id>/")
    for note in p.notes:
        console.print(f"  note: {note}")
    console.print("dry run: nothing downloaded or written")


def _corpus_size(exp: Experiment) -> int | None:
    """Rows of a local corpus file (a JSON array or JSONL), counted without parsing the texts."""
    if exp.corpus.source != "jsonl":
        return None
    path = Path(os.path.expandvars(exp.corpus.path or ""))
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


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


def _prepare(exp: Experiment, cache_dir: Path, progress: bool) -> Prepared:
    from harness.signals import load_corpus

    sandbox_models: dict[str, Path] | None = None
    sandbox_root = None
    corpus_path = Path(os.path.expandvars(exp.corpus.path)) if exp.corpus.path else None
    if exp.sandbox is not None:
        from harness.sandbox.build import build_world

        world = build_world(size=exp.sandbox.size, seed=exp.sandbox.seed, cache_dir=cache_dir, progress=progress)
        sandbox_models, sandbox_root = world.models, world.root
        if exp.corpus.source == "sandbox":
            corpus_path = world.corpus_path
    models = {exp.target.name: resolve(exp.target.path, sandbox_models, "config: target.path")}
    for i, s in enumerate(exp.sources):
        models[s.name] = resolve(s.path, sandbox_models, f"config: sources[{i}].path")
    assert corpus_path is not None
    corpus = load_corpus(corpus_path, limit=exp.corpus.limit)
    return Prepared(models, corpus, sandbox_root)


def _record_world(manifest: Manifest, sandbox_root: Path | None) -> None:
    """Which sandbox world the run used (fingerprint, reference check, library versions, scores), if any."""
    if sandbox_root is not None:
        from harness.sandbox.build import world_identity

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
    from harness.signals import extract_signals, selection_stats

    target, candidates = _handles(exp, prepared)
    sets = {}
    for mode in sorted(plan_.method_cls.needs, key=lambda m: m.value):
        with manifest.timed("signals"):
            sets[mode] = extract_signals(
                mode, target, candidates, prepared.corpus, exp.signals, exp.judges, plan_.cache_dir, progress=progress,
                seed=exp.seed,
            )
        manifest.record_cache_key(f"signals.{mode.value}", sets[mode].key)
    if distributed.is_main():
        stats = selection_stats(sets, prepared.corpus)
        atomic_write_json(run_dir / "signals" / "selection.json", stats)
        atomic_write_json(run_dir / "signals" / "sources.json", {m.value: str(s.path) for m, s in sets.items()})
    return sets


def _train(exp: Experiment, plan_: Plan, prepared: Prepared, sets: dict[Any, Any], run_dir: Path, manifest: Manifest, progress: bool) -> Path:
    """Train (or resume, or reuse) the fused target in the cache; returns the folder of the final model."""
    from harness.models import load_model, load_tokenizer
    from harness.training.dataset import build_fusion_dataset, collate
    from harness.training.loop import train

    target = prepared.models[exp.target.name]
    procs = distributed.world_size()  # batch_size is per process: the global batch depends on it
    key = stable_hash(
        {
            **({"processes": procs} if procs > 1 else {}),  # single-process keys stay as they were
            "v": TRAIN_CODE_VERSION,
            "target": exp.target.model_dump(),
            "target_weights": _weights_identity(target),
            "signals": {m.value: s.key for m, s in sets.items()},
            "method": exp.method.model_dump(),
            "train": exp.train.model_dump(),
            "seed": exp.seed,
        }
    )
    manifest.record_cache_key("train", key)
    work = plan_.cache_dir / "train" / key
    final = work / "final"
    # Other runs sharing the cache are kept out by the main process's lock; the processes of this run all follow
    # its decision, since a collective (the training loop) would hang if only some of them entered it.
    with locked(work) if distributed.is_main() else contextlib.nullcontext():
        if not distributed.from_main((final / "config.json").is_file()):
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
    log = work / "train_log.jsonl"
    if log.is_file() and distributed.is_main():
        shutil.copyfile(log, run_dir / "train_log.jsonl")
    return final


def _save_final(result: Any, tokenizer: Any, final: Path) -> None:
    """The fused model as a plain HF folder, written by the main process only, renamed into place when complete.

    Under FSDP / ZeRO-3 the parameters are sharded; `train` gathers the full state dict into `result.state_dict`.
    """
    if distributed.is_main():
        tmp = final.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        result.model.save_pretrained(tmp, state_dict=result.state_dict)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)
    distributed.barrier()


def _weights_identity(model: ResolvedModel) -> dict[str, Any]:
    """Names, sizes and mtimes of weight files: cheap and changes whenever the weights do."""
    folder = Path(model.pretrained)
    if not folder.is_dir():
        return {"hub": model.pretrained, "gguf": model.gguf_file}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".json"))
    return {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}


def _evaluate(
    exp: Experiment, plan_: Plan, models: dict[str, ResolvedModel], sandbox_root: Path | None, run_dir: Path,
    manifest: Manifest, progress: bool,
) -> dict[str, dict[str, Any]]:
    from harness.evaluation.evaluate import evaluate_model

    results: dict[str, dict[str, Any]] = {}
    templates = {exp.target.name: exp.target.chat_template, **{s.name: s.chat_template for s in exp.sources}}
    for label, model in models.items():
        console.print(f"evaluate: {label} on {', '.join(plan_.tasks)}")
        with manifest.timed("evaluate"):
            results[label] = evaluate_model(
                model, label, exp.eval.tasks, out_dir=run_dir / "eval", limit=_limits(exp, plan_.tasks),
                num_fewshot=exp.eval.num_fewshot, batch_size=exp.eval.batch_size, max_gen_toks=exp.eval.max_gen_toks,
                data_dir=plan_.data_dir, sandbox_root=sandbox_root, backend=exp.eval.backend,
                cache_dir=plan_.cache_dir, progress=progress,
                # the format it was fused in: the target's template for target-base and for the fused model
                chat_template=templates.get(label, exp.target.chat_template),
            )
    return results


def _score_dict(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        t: {"metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n, "category": s.category, "binary": s.binary}
        for t, s in scores.items()
    }


def _summary(exp: Experiment, run_dir: Path, results: dict[str, dict[str, Any]], label: str, manifest: Manifest) -> dict[str, Any]:
    from harness.analysis.stats import compare_runs

    summary: dict[str, Any] = {
        "run_id": run_dir.name,
        "method": exp.method.name,
        "schedule": exp.method.schedule.name,
        "preset": exp.preset,
        "seed": exp.seed,
        "models": {"target": exp.target.name, "sources": [s.name for s in exp.sources]},
        "tasks": _score_dict(results[label]),
        "baseline": _score_dict(results["target-base"]),
        "sources": {s.name: _score_dict(results[s.name]) for s in exp.sources if s.name in results},
    }
    # The method and every source against the unfused target; Holm across all comparisons of the table.
    compared = [label, *summary["sources"]]
    summary["comparisons"] = compare_runs(run_dir, compared, "target-base", summary["tasks"], seed=exp.seed)
    summary["timings_s"] = manifest.data["timings_s"]
    atomic_write_json(run_dir / "summary.json", summary)
    for path in [run_dir / "summary.json", *sorted((run_dir / "eval").rglob("*.jsonl"))]:
        manifest.record_checksum(path, run_dir)  # so a truncated or edited result file is detectable later
    return summary


def _report(run_dir: Path, progress: bool) -> None:
    from harness.analysis.plots import make_plots
    from harness.analysis.report import build_table, to_rich, write_tables

    write_tables([run_dir], run_dir / "tables")
    _table_console().print(to_rich(build_table([run_dir])))
    try:
        make_plots([run_dir], run_dir / "plots")
    except Exception as exc:  # a figure must never cost the numbers; say so and go on
        console.print(f"[yellow]plots skipped: {exc}[/yellow]")


def _table_console() -> Console:
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


def run(exp: Experiment, out: Path, progress: bool = True, validated: Plan | None = None) -> Path:
    """One fusion experiment end to end; returns the run directory."""
    plan_ = validated or plan(exp)
    console.quiet = not distributed.is_main()  # one process speaks for a multi-process run
    for note in plan_.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    _seed_everything(exp.seed)
    started = time.perf_counter()
    with manifest_ctx(exp, out) as (run_dir, manifest):
        with manifest.timed("prepare"):
            prepared = _prepare(exp, plan_.cache_dir, progress)
        _record_world(manifest, prepared.sandbox_root)
        sets = _signals(exp, plan_, prepared, run_dir, manifest, progress)
        fused = _train(exp, plan_, prepared, sets, run_dir, manifest, progress)
        models = {"target-base": prepared.models[exp.target.name]}
        if exp.eval.compare_sources:
            models.update({s.name: prepared.models[s.name] for s in exp.sources})
        models[exp.method.name] = ResolvedModel(str(fused))
        results = _evaluate(exp, plan_, models, prepared.sandbox_root, run_dir, manifest, progress)
        if distributed.is_main():
            _summary(exp, run_dir, results, exp.method.name, manifest)
            _report(run_dir, progress)
        distributed.barrier()  # the others leave only once the summary exists
    if distributed.is_main():
        console.print(f"done in {time.perf_counter() - started:.0f} s")
    return run_dir


class manifest_ctx:
    """Creates the run directory only once everything was validated; marks it failed if a stage raises."""

    def __init__(self, exp: Experiment, out: Path) -> None:
        self.exp, self.out = exp, out

    def __enter__(self) -> tuple[Path, Manifest]:
        self.run_dir, self.manifest = _start_run(self.exp, self.out)
        return self.run_dir, self.manifest

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.manifest.data["status"] = "failed" if exc_type else "finished"
        if exc_type:
            self.manifest.data["error"] = f"{exc_type.__name__}: {exc}"
        self.manifest.save()


def ablate(exps: list[Experiment], out: Path, progress: bool = True) -> list[Path]:
    """Run the variants one after another (signals come from the cache after the first), then the ablation outputs."""
    plans = [plan(e) for e in exps]  # validate all before running any
    run_dirs = [run(e, out, progress, p) for e, p in zip(exps, plans, strict=True)]
    if not distributed.is_main():
        return run_dirs
    from harness.analysis.plots import make_plots
    from harness.analysis.report import build_ablation_table, render, to_rich

    table = build_ablation_table(run_dirs)
    text = render(table, "md")
    ablation_dir = run_dirs[-1].parent / f"ablation-{run_dirs[0].name}"
    ablation_dir.mkdir(exist_ok=True)
    atomic_write_text(ablation_dir / "ablation.md", text)
    atomic_write_json(ablation_dir / "runs.json", [str(d) for d in run_dirs])
    _table_console().print(to_rich(table))
    make_plots(run_dirs, ablation_dir / "plots")
    return run_dirs


def evaluate_only(
    model_spec: str, tasks: list[str], *, label: str | None, limit: int | None, num_fewshot: int | None,
    batch_size: int, out: Path, data_dir: str | None, progress: bool = True,
    sandbox: SandboxSpec | None = None,
) -> Path:
    """`harness eval`: one model, no fusion, same per-sample files, cache and tables as fusion runs.

    Sandbox tasks and `sandbox:NAME` models load the world `sandbox` (default size, seed 0) from the cache,
    building it first if needed; everything is checked before the run directory is made.
    """
    from harness.evaluation.evaluate import evaluate_model, expand_tasks
    from harness.evaluation.task_catalog import SANDBOX_TASKS

    names = expand_tasks(tasks)
    data = _check_data_dir(data_dir)
    sandbox_root, sandbox_models = None, None
    if model_spec.startswith("sandbox:") or any(n in SANDBOX_TASKS for n in names):
        from harness.sandbox.build import build_world

        spec = sandbox or SandboxSpec()
        world = build_world(size=spec.size, seed=spec.seed, cache_dir=default_cache_dir(), progress=progress)
        sandbox_root, sandbox_models = world.root, world.models
    model = resolve(model_spec, sandbox_models, where="model")
    label = label or Path(model_spec.split("#")[-1]).stem.replace(":", "-") or "model"
    run_dir = new_run_dir(out, "eval")
    manifest = Manifest(run_dir, 0)
    _record_world(manifest, sandbox_root)
    atomic_write_text(run_dir / "config.yaml", json.dumps({"model": model_spec, "tasks": names, "limit": limit}) + "\n")
    try:
        with manifest.timed("evaluate"):
            scores = evaluate_model(
                model, label, tasks, out_dir=run_dir / "eval", limit=limit or None, num_fewshot=num_fewshot,
                batch_size=batch_size, data_dir=data, sandbox_root=sandbox_root, cache_dir=default_cache_dir(),
                progress=progress,
            )
    except HarnessError:
        if not (run_dir / "eval").exists():  # refused before any result: leave no empty run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary = {
        "run_id": run_dir.name, "method": None, "preset": None, "models": {"target": label, "sources": []},
        "tasks": _score_dict(scores), "baseline": {}, "sources": {}, "comparisons": [],
        "timings_s": manifest.data["timings_s"], "label": label, "model": model_spec,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    _report(run_dir, progress)
    return run_dir
