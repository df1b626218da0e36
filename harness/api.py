"""The Python API: everything the `harness` command does, callable from scripts and notebooks.

The CLI is a thin layer over these functions (parse flags, call one of them, print), so a script and a
command line with the same settings take the same code path and give the same run directory:

    import harness
    exp = harness.load_experiment("sandbox", {"method.name": "fusellm", "eval.tasks": ["sandbox"]})
    fused = harness.run(exp)                                  # a Run: its folder, summary and scores
    base = harness.evaluate("smollm2-135m-instruct", ["hellaswag"], limit=50)
    print(harness.compare([fused, base]))                     # one significance-marked table
    grid = harness.sweep(exp, {"method.name": ["profuser", "fusellm"]}, seeds=[0, 1, 2])  # resumable
    print(grid.table())                                       # mean ± 95% t-interval over seeds
    harness.align_compare("gemma3-270m", "smollm2-135m-instruct", texts="corpus.jsonl")  # per alignment strategy

Each command of the CLI has its function here (tests/test_api_cli.py keeps the table): `run` -> run, `sweep`
-> sweep, `ablate` -> ablate(schedule_variants(...)), `eval` -> evaluate, `report` -> compare / versus /
against, `plot` -> plot, `verify` -> verify, `methods` -> describe_methods, `tasks` -> describe_tasks,
`sandbox build` -> build_sandbox, `sandbox show` -> show_sandbox, `signals inspect` -> inspect_signals,
`align compare` -> align_compare.
`--num-processes N` is `num_processes=N` of run, sweep and ablate.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness import registry
from harness.config import MAX_TOP_K, Experiment, SandboxSpec, load_experiment, with_overrides
from harness.errors import HarnessError
from harness.registry import MethodInfo
from methods.params import Parameter, type_text
from methods.schedules import SCHEDULE_NAMES

if TYPE_CHECKING:
    from harness.analysis.flips import Flips

PathLike = str | os.PathLike[str]

__all__ = ["Experiment", "Run", "Sweep", "ablate", "against", "align_compare", "build_sandbox", "compare",
           "describe_methods", "describe_tasks", "evaluate", "finished", "flips", "inspect_signals", "load_experiment",
           "load_run", "load_sweep", "plan", "plan_sweep", "plot", "power", "run", "schedule_variants",
           "shared_parameters", "show_sandbox", "sweep", "verify", "versus"]  # fmt: skip


@dataclass
class Run:
    """A finished run directory: its summary (the machine-readable result) and the files beside it."""

    dir: Path
    summary: dict[str, Any] = field(repr=False)

    @property
    def method(self) -> str | None:
        return self.summary.get("method")

    def scores(self, label: str | None = None) -> dict[str, float]:
        """Task -> primary metric of one row: the method (or the evaluated model) by default, else `target-base`
        or a source's name."""
        if label is None or label == self.summary.get("method") or label == self.summary.get("label"):
            block = self.summary["tasks"]
        elif label == "target-base":
            block = self.summary["baseline"]
        elif label in self.summary.get("sources", {}):
            block = self.summary["sources"][label]
        else:
            raise HarnessError(f"run '{self.dir.name}' has no row '{label}'", "api")
        return {task: entry["value"] for task, entry in block.items()}

    @property
    def comparisons(self) -> list[dict[str, Any]]:
        """Paired tests against the unfused target, Holm-adjusted across the run (harness/analysis/stats.py)."""
        return list(self.summary.get("comparisons", []))

    def table(self, fmt: str = "md") -> str:
        return compare([self], fmt)


@dataclass
class Sweep:
    """A finished sweep folder (`sweep`, `run --seeds`, `ablate`): its summary (per grid point and seed, with
    seed-aware comparisons), its grid table and the runs of its cells."""

    dir: Path
    summary: dict[str, Any] = field(repr=False)
    runs: list[Run] = field(repr=False)

    def table(self, fmt: str = "md") -> str:
        """The grid's table as written: md, latex or csv (mean ± half-width of the 95% t-interval over seeds)."""
        from harness.analysis.report import FORMATS

        kind = FORMATS.get(fmt.lower())
        if kind is None:
            raise HarnessError(f"unknown table format '{fmt}'; choose md, latex or csv", "api")
        ext = {"md": "md", "latex": "tex", "csv": "csv"}[kind]
        return (self.dir / "tables" / f"grid.{ext}").read_text(encoding="utf-8")


def load_sweep(path: PathLike) -> Sweep:
    """A sweep folder written by `sweep`, `run --seeds` or `ablate` (here or by the CLI)."""
    from harness.analysis.report import expand_sweeps, read_json_file

    folder = Path(path)
    if not (folder / "summary.json").is_file() or not (folder / "sweep.json").is_file():
        raise HarnessError(f"'{folder}' is not a finished sweep (no summary.json and sweep.json)", "api")
    return Sweep(folder, read_json_file(folder / "summary.json"), [load_run(d) for d in expand_sweeps([folder])])


def load_run(path: PathLike) -> Run:
    """A run directory written by `run`, `ablate` or `evaluate` (here or by the CLI)."""
    from harness.analysis.report import load_summary

    folder = Path(path)
    return Run(folder, load_summary(folder))


def _dirs(runs: Sequence[Run | PathLike]) -> list[Path]:
    return [r.dir if isinstance(r, Run) else Path(r) for r in runs]


def finished(runs: Sequence[Run | PathLike]) -> list[Path]:
    """The finished runs among `runs` (status done), each configuration and seed once; every folder left out is
    named on stderr in one line with the reason. A one-line error when none is left."""
    from harness.analysis.report import select_runs

    dirs = _dirs(runs)
    kept, skipped = select_runs(dirs)
    for line in skipped:
        print(f"harness: report: {line}", file=sys.stderr)
    if not kept:
        raise HarnessError(f"none of the {len(dirs)} folder(s) is a finished run", "report")
    return kept


def shared_parameters() -> list[Parameter]:
    """The fields of `method.` that every method has (harness.config.MethodSpec)."""
    from harness.config import MethodSpec

    return [Parameter(name, type_text(info.annotation), info.get_default(call_default_factory=True), info.description or "")
            for name, info in MethodSpec.model_fields.items()]  # fmt: skip


def describe_methods() -> list[MethodInfo]:
    """The registered fusion methods (built-in and plugins): what each needs, and its own parameters with their
    defaults and descriptions (`method.<parameter>` in a config); the shared fields are `shared_parameters()`."""
    return registry.describe_methods()


def verify(run: Run | PathLike) -> list[str]:
    """Files of a run directory that are missing or differ from the checksums in its manifest.json (empty: intact)."""
    from harness.store import verify_run

    return verify_run(_dirs([run])[0])[1]


def plan(exp: Experiment, out: PathLike | None = None, *, missing_ok: bool = False) -> Any:
    """Validate an experiment end to end (method, tasks, models, corpus, data dir, and that the cache and `out`
    are writable); writes nothing. `missing_ok`: models this machine cannot load (offline, not cached) are
    listed in the plan's `unavailable` instead of raising, so that the whole plan can still be shown."""
    from harness import pipeline

    return pipeline.plan(exp, Path(out) if out is not None else None, missing_ok=missing_ok)


def run(
    exp: Experiment, out: PathLike = "results", *, progress: bool = True, num_processes: int = 1,
    accelerate_config: str | None = None,
) -> Run:
    """Fuse the experiment's sources into its target, evaluate and compare; returns the new run directory.

    Every expensive stage is cached (harness/store.py), so calling it again after a crash resumes.
    `num_processes` > 1 runs every stage in that many processes under `accelerate launch` (GPUs, or CPU
    processes); `accelerate_config` names a shipped config (fsdp, zero2, zero3) or a file of one's own."""
    if _in_processes(num_processes, accelerate_config):
        return _call_in_processes("run", {"exp": exp, "out": out, "progress": progress}, num_processes, accelerate_config)
    from harness import pipeline

    return load_run(pipeline.run(exp, Path(out), progress=progress))


def _in_processes(num_processes: int, accelerate_config: str | None) -> bool:
    """Whether a call is to be run again in `num_processes` processes (not when already inside such a launch)."""
    from harness import distributed

    if num_processes < 1:
        raise HarnessError(f"--num-processes must be 1 or more, got {num_processes}", "cli")
    if accelerate_config is not None and num_processes == 1:
        raise HarnessError("--accelerate-config needs --num-processes N with N > 1", "cli")
    return num_processes > 1 and not distributed.launched()


def _call_in_processes(function: str, kwargs: dict[str, Any], num_processes: int, accelerate_config: str | None) -> Any:
    """`function(**kwargs)` of this module in `num_processes` processes under `accelerate launch` (harness/launch.py
    runs it in each); what the main process returned."""
    from harness import distributed

    with tempfile.TemporaryDirectory(prefix="harness-launch-") as folder:
        call, result = Path(folder) / "call.pkl", Path(folder) / "result.pkl"
        call.write_bytes(pickle.dumps({"function": function, "kwargs": kwargs, "result": str(result)}))
        code = distributed.relaunch([str(call)], num_processes, accelerate_config, module="harness.launch")
        if code != 0 or not result.is_file():
            raise HarnessError(f"the {num_processes} processes of `{function}` failed (exit code {code}); see above",
                               "launch")  # fmt: skip
        return pickle.loads(result.read_bytes())


def ablate(
    exps: Sequence[Experiment], out: PathLike = "results", *, seeds: Sequence[int] | None = None, progress: bool = True,
    num_processes: int = 1, accelerate_config: str | None = None,
) -> list[Run]:
    """Run the schedule variants (each with every seed of `seeds`, else its own seed) one after another, signals
    from the cache after the first, and write the ablation table and figures into their sweep folder (the runs'
    `dir.parent.parent`). Calling it again resumes: finished runs are skipped. `num_processes`: as `run`'s."""
    if _in_processes(num_processes, accelerate_config):
        kwargs = {"exps": list(exps), "out": out, "seeds": seeds, "progress": progress}
        return _call_in_processes("ablate", kwargs, num_processes, accelerate_config)  # type: ignore[no-any-return]
    from harness.sweeps import plan_points, run_sweep

    points = [({"method.schedule.name": e.method.own_parameters()["schedule"].name}, e) for e in exps]
    folder = run_sweep(plan_points(points, seeds, Path(out), "ablation"), progress)
    return load_sweep(folder).runs


def plan_sweep(
    exp: Experiment, grid: dict[str, Sequence[Any]] | None = None, seeds: Sequence[int] | None = None,
    out: PathLike = "results", *, kind: Literal["sweep", "seeds", "ablation"] = "sweep",
) -> Any:
    """Validate every cell of grid × seeds (`exp` with each cell's values, e.g. {"method.name": ["profuser",
    "fusellm"], "method.schedule.switch": [0.25, 0.5]}); writes nothing. Its cells are what `--dry-run` prints."""
    from harness.sweeps import plan_sweep as plan_cells

    return plan_cells(exp, grid, seeds, Path(out), kind)


def sweep(
    exp: Experiment, grid: dict[str, Sequence[Any]] | None = None, seeds: Sequence[int] | None = None,
    out: PathLike = "results", *, kind: Literal["sweep", "seeds", "ablation"] = "sweep", progress: bool = True,
    num_processes: int = 1, accelerate_config: str | None = None,
) -> Sweep:
    """Run `exp` over every cell of grid × seeds (cached stages shared), then write one summary (per-seed values,
    mean and 95% t-interval, seed-aware tests against the unfused target), one table and the grid's figures.
    The folder is named by the cells, so calling it again resumes: finished cells are skipped.
    `num_processes`: as `run`'s."""
    if _in_processes(num_processes, accelerate_config):
        kwargs = {"exp": exp, "grid": grid, "seeds": seeds, "out": out, "kind": kind, "progress": progress}
        return _call_in_processes("sweep", kwargs, num_processes, accelerate_config)  # type: ignore[no-any-return]
    from harness.sweeps import plan_sweep as plan_cells
    from harness.sweeps import run_sweep

    return load_sweep(run_sweep(plan_cells(exp, grid, seeds, Path(out), kind), progress))


def schedule_variants(exp: Experiment, schedules: Sequence[str] = SCHEDULE_NAMES) -> list[Experiment]:
    """The experiment once per ProFuser schedule, for `ablate`; the one check of schedule names for both the
    CLI and scripts."""
    out = []
    for name in schedules:
        if name not in SCHEDULE_NAMES:
            raise HarnessError(f"unknown schedule '{name}'; choose from {', '.join(SCHEDULE_NAMES)}", "cli")
        out.append(with_overrides(exp, {"method.schedule.name": name}, "ablate"))  # one line if the method has none
    return out


def evaluate(
    model: str,
    tasks: Sequence[str],
    *,
    label: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    out: PathLike = "results",
    data_dir: PathLike | None = None,
    sandbox: SandboxSpec | None = None,
    progress: bool = True,
) -> Run:
    """Evaluate one model (hf:ID, a folder, gguf:FOLDER#FILE, sandbox:NAME or an alias) without fusion, with
    the same tasks, per-sample files, cache and tables as fusion runs. `data_dir` defaults to
    $HARNESS_DATA_DIR."""
    from harness import pipeline

    found = data_dir if data_dir is not None else os.environ.get("HARNESS_DATA_DIR")
    run_dir = pipeline.evaluate_only(
        model, list(tasks), label=label, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
        out=Path(out), data_dir=str(found) if found else None, progress=progress, sandbox=sandbox,
    )  # fmt: skip
    return load_run(run_dir)


def compare(
    runs: Sequence[Run | PathLike], fmt: str = "md", *, allow_mismatch: bool = False, holm: str = "run"
) -> str:
    """One table over several runs (md, latex or csv): rows are models and methods, with significance markers.
    `html` gives the whole report as one self-contained page: the table, the head-to-head tables, each sweep's grid
    table and figures, the figures, the runs' metadata and a flips browser (harness/analysis/html.py).

    `runs`: run folders, sweep folders (their cells) or `SWEEP:POINT` (one grid point's seeds). Only finished runs
    count (see `finished`); a seed repeated by several folders counts once.
    Runs that evaluated a task differently (data, task version, shots, limit, metric) are refused unless
    `allow_mismatch`, and then the table says what differs. `holm` "run" keeps each run's own Holm family (its
    tasks × (method + sources)); "table" adjusts across every comparison the table shows."""
    from harness.analysis.report import build_table, render

    if fmt.lower() == "html":
        from harness.analysis.html import render_html

        return render_html(_dirs(runs), finished(runs), allow_mismatch=allow_mismatch, holm_scope=holm)  # type: ignore[arg-type]
    return render(build_table(finished(runs), allow_mismatch=allow_mismatch, holm_scope=holm), fmt)  # type: ignore[arg-type]


def versus(
    runs: Sequence[Run | PathLike], a: str, b: str, fmt: str = "md", *, allow_mismatch: bool = False,
    metric: str | None = None,
) -> str:
    """Method `a` against method `b` task by task, paired over the same documents, Holm across tasks. Runs that
    evaluated a task differently are refused unless `allow_mismatch` (then the documents both evaluated are
    paired, and the table says what differs). A row that is not significant names its minimum detectable
    difference. `metric` compares a secondary per-document metric instead (`margin`: the answer's log-probability
    margin of multiple-choice tasks), continuous, with the sign-flip test. `a` and `b` are methods, or the main
    table's row labels where a method ran in several configurations (`profuser (disagreement=0.5)`). Several seeds
    of each (one configuration each) are paired by seed and tested over documents and over seeds, as a sweep's
    versus rows."""
    from harness.analysis.report import head_to_head, render_head_to_head

    if not (a and b) or a == b:
        raise HarnessError(f"versus needs two different sides (methods or table row labels), got '{a}' and '{b}'", "cli")
    return render_head_to_head(head_to_head(finished(runs), a, b, allow_mismatch=allow_mismatch, metric=metric), fmt)


def flips(a: Run | PathLike, b: Run | PathLike, task: str, *, limit: int | None = None) -> Flips:
    """The documents of `task` where two models' results differ, paired by document hash: a right and b wrong, and
    the reverse (continuous metrics: the largest differences each way), each with its prompt, gold answer, both
    answers and metric values, and the counts with the paired test `versus` reports (a `Flips`; `.render()`,
    `.to_dict()`). A side is `RUN[:LABEL]` (default: the run's fused or evaluated model; `target-base` or a
    source's name for the others) or `SWEEP:POINT@SEED`; `limit` caps each group's list."""
    from dataclasses import replace

    from harness.analysis.flips import find_flips, resolve_side

    side_a, side_b = (resolve_side(str(s.dir) if isinstance(s, Run) else os.fspath(s)) for s in (a, b))
    if (side_a.run, side_a.label) == (side_b.run, side_b.label):
        raise HarnessError(f"both sides are '{side_a.run}:{side_a.label}'; compare two different models", "flips")
    if side_a.name == side_b.name:
        side_a, side_b = replace(side_a, name=f"{side_a.name} (a)"), replace(side_b, name=f"{side_b.name} (b)")
    return find_flips(side_a, side_b, task, limit=limit)


def against(sweep: Sweep | PathLike, axis: str, reference: Any) -> str:
    """A sweep's grid points against the point with `axis` = `reference` and the same other values (e.g.
    `against(s, "signals.alignment", "span")`), task by task over their common seeds, Holm across the table
    (harness.analysis.replicates.against_reference), as Markdown."""
    from harness.analysis.over_seeds import render_versus
    from harness.analysis.replicates import against_reference

    folder = sweep.dir if isinstance(sweep, Sweep) else Path(sweep)
    if not (folder / "sweep.json").is_file() or not (folder / "summary.json").is_file():
        raise HarnessError(f"'{folder}' is not a finished sweep (no summary.json and sweep.json)", "api")
    return render_versus(against_reference(folder, axis, reference))


def align_compare(
    target: str, source: str, *, texts: PathLike | None = None, limit: int = 64, strategies: Sequence[str] | None = None,
    top_k: int = 10, max_length: int = 256, sandbox: SandboxSpec | None = None, progress: bool = True,
) -> list[dict[str, Any]]:
    """Every alignment strategy (or `strategies`) on one source -> target pair of model specs, over the first
    `limit` rows of `texts` (a corpus file: JSONL / JSON rows with prompt and reference; default: the sandbox
    world's corpus): per strategy its coverage, top-1 agreement, lost mass and tokens/s
    (harness/signals/compare.py). `sandbox:` specs and the default texts use the world `sandbox` (default:
    micro, seed 0), built first if needed."""
    from harness.models import resolve
    from harness.pipeline import unavailable
    from harness.signals import load_corpus
    from harness.signals.alignment import get_alignment
    from harness.signals.compare import as_dicts, compare_alignments
    from harness.signals.inputs import ModelHandle
    from harness.store import default_cache_dir

    if not 1 <= limit <= 100_000:
        raise HarnessError(f"limit must be between 1 and 100000, got {limit}", "align")
    if not 1 <= top_k <= MAX_TOP_K:
        raise HarnessError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}", "align")
    for name in strategies or []:
        get_alignment(name)
    text_path = Path(texts) if texts is not None else None
    if text_path is not None and not text_path.is_file():
        raise HarnessError(f"texts file '{text_path}' does not exist", "align")
    cache_dir = default_cache_dir()
    sandbox_models, world = None, None
    if text_path is None or any(m.startswith("sandbox:") for m in (target, source)):
        from harness.sandbox.build import build_world

        spec = sandbox or SandboxSpec(size="micro")
        world = build_world(size=spec.size, seed=spec.seed, cache_dir=cache_dir, progress=progress)
        sandbox_models = world.models
    handles = []
    for spec_ in (target, source):
        model = resolve(spec_, sandbox_models, where="model")
        if (why := unavailable(model)) is not None:
            raise HarnessError(f"cannot load '{spec_}': {why}", "model")
        handles.append(ModelHandle(spec_, model))
    rows = load_corpus(text_path if text_path is not None else world.corpus_path, limit=limit)  # type: ignore[union-attr]
    figures = compare_alignments(handles[0], handles[1], rows, cache_dir, strategies=strategies, top_k=top_k,
                                 max_length=max_length)  # fmt: skip
    return as_dicts(figures)


def power(
    *, n: int | None = None, p_discordant: float | None = None, sd_diff: float | None = None,
    mde: float | None = None, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1, seeds: int | None = None,
    seed_correlation: float | None = None, source: PathLike | None = None, task: str | None = None,
) -> list[dict[str, Any]]:
    """The minimum detectable difference of a paired comparison on `n` documents (or, with `mde`, the documents
    needed) at `power` and level `alpha`, Holm over `comparisons` (guaranteed at α/M), `seeds` pooled over
    documents (harness/analysis/power.py). Binary metrics take `p_discordant`, continuous ones `sd_diff`.

    With `source` (a finished run or sweep folder) the discordance or SD of differences, the documents, the seeds
    and their correlation are estimated per task (or `task`) and pair of systems from the per-sample files; one
    row each, with the estimate beside the answer. Without it, one row."""
    from dataclasses import replace

    from harness.analysis.power import power_analysis
    from harness.analysis.power_from_runs import estimate, from_estimate

    if source is None:
        result = power_analysis(n=n, mde=mde, p_discordant=p_discordant, sd_diff=sd_diff, alpha=alpha, power=power,
                                comparisons=comparisons, seeds=seeds or 1, rho=seed_correlation or 0.0)  # fmt: skip
        return [result.to_dict()]
    if n is not None or p_discordant is not None or sd_diff is not None:
        raise HarnessError("--from estimates the documents and the discordance; drop --n, --p-discordant and "
                           "--sd-diff", "power")  # fmt: skip
    rows = []
    for e in estimate(Path(source), task):
        if seed_correlation is not None:
            e = replace(e, rho=seed_correlation)
        found = from_estimate(e, alpha=alpha, power=power, comparisons=comparisons, seeds=seeds, mde=mde)
        rows.append({"task": e.task, "a": e.a, "b": e.b, "observed_delta": e.delta, "observed_seeds": e.seeds,
                     "estimated_rho": e.rho, **found.to_dict()})  # fmt: skip
    return rows


def describe_tasks() -> list[dict[str, Any]]:
    """Every evaluation task and group: its category, metric, default shots and whether its data is here
    (`$HARNESS_DATA_DIR`); what `harness tasks` prints."""
    from harness.evaluation.task_catalog import describe_tasks as catalog

    return catalog()


def plot(runs: Sequence[Run | PathLike], out: PathLike | None = None) -> list[Path]:
    """Paper-ready figures (PDF + PNG) of the finished runs among `runs` into `out` (default: the first run's
    plots/): per-task bars with 95% CIs, radar, losses and schedule weights, source selection."""
    from harness.analysis.plots import make_plots

    dirs = finished(runs)
    return make_plots(dirs, Path(out) if out is not None else dirs[0] / "plots")


def build_sandbox(
    size: Literal["micro", "default"] = "default", seed: int = 0, *, force: bool = False, from_scratch: bool = False,
    jobs: int | None = None, reward_models: bool = False, disagreement: float = 0.0, progress: bool = True,
) -> dict[str, Any]:
    """Build (or load from the cache) the sandbox world of (size, seed); its summary as `show_sandbox` gives it.

    Where the package carries the reference world (default, seed 0) it is installed in seconds and verified by
    its fingerprint; `from_scratch` trains it here. `jobs`: specialists built at once; `reward_models` also
    trains the world's learned reward models (sandbox-rm:0..2); `disagreement` turns the dial (docs/sandbox.md)."""
    from harness.sandbox.build import build_world
    from harness.sandbox.reward_models import build_reward_models

    world = build_world(size=size, seed=seed, force=force, jobs=jobs, disagreement=disagreement,
                        from_scratch=from_scratch, progress=progress)  # fmt: skip
    if reward_models:
        build_reward_models(world, jobs=jobs, progress=progress)
    return _sandbox_summary(world)


def show_sandbox(
    size: Literal["micro", "default"] = "default", seed: int = 0, *, disagreement: float = 0.0, progress: bool = True
) -> dict[str, Any]:
    """The sandbox world of (size, seed), built first if not cached: each source's score per skill, the world's
    fingerprint and whether it is the reference world (with the library versions that differ if not), and the
    learned reward models' held-out figures."""
    from harness.sandbox.build import build_world

    return _sandbox_summary(build_world(size=size, seed=seed, progress=progress, disagreement=disagreement))


def _sandbox_summary(world: Any) -> dict[str, Any]:
    from harness.sandbox.build import world_summary
    from harness.sandbox.reward_models import reward_models_summary

    return {**world_summary(world), "reward_models": reward_models_summary(world)}


def inspect_signals(run: Run | PathLike, *, plots: bool = True) -> dict[str, Any]:
    """Which source a fusion run's signals selected: per mode (MinCE, judge) and skill, where the two modes
    disagree, and the signal audit of each candidate -> target pair ("audit"). `plots` also draws the selection
    figure into the run's plots/ ("plots": its paths)."""
    from harness.analysis.report import load_selection

    folder = _dirs([run])[0]
    stats = load_selection(folder)
    if stats is None:
        raise HarnessError(f"'{folder}' has no signals/selection.json (is it a fusion run directory?)", "signals")
    audit_file = folder / "signals" / "audit.json"  # written with the signals; absent in older runs
    found = {**stats, "audit": dict(json.loads(audit_file.read_text())) if audit_file.is_file() else {}}
    if plots:
        from harness.analysis.plots import plot_selection

        found["plots"] = plot_selection(folder, folder / "plots")
    return found
