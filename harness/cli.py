"""The `harness` command line: short verbs, examples in every --help, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.config import MAX_SEED, MAX_TOP_K, load_experiment
from harness.errors import HarnessError
from methods.schedules import SCHEDULE_NAMES

console = Console(stderr=True, soft_wrap=True)  # an error stays one line, however narrow the terminal
stdout = Console()


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise HarnessError("expected a comma-separated list, got an empty one", "cli")
    return items


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--set train.lr=1e-4` style overrides; values are parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    found: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise HarnessError(f"--set expects KEY=VALUE, got '{pair}'", "cli")
        key, raw = pair.split("=", 1)
        try:
            found[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise HarnessError(f"--set {key}: value '{raw}' does not parse", "cli") from None
    return found


def _parse_seeds(text: str | None, seed: int | None) -> list[int] | None:
    """`--seeds 0,1,2` as whole numbers (checked in range by the sweep's plan); not together with --seed."""
    if text is None:
        return None
    if seed is not None:
        raise HarnessError("give --seed or --seeds, not both", "cli")
    seeds = []
    for item in _csv(text) or []:
        try:
            seeds.append(int(item))
        except ValueError:
            raise HarnessError(f"--seeds expects whole numbers like 0,1,2, got '{item}'", "cli") from None
    return seeds


def _split_values(raw: str) -> list[str]:
    """`a,b,[c,d]` -> ['a', 'b', '[c,d]']: commas inside brackets or braces belong to one YAML value."""
    parts, depth, current = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _parse_grid(pairs: tuple[str, ...]) -> dict[str, list[Any]]:
    """`--grid method.schedule.switch=0.25,0.5` per axis; each value parsed as YAML like --set's."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HarnessError(f"--grid expects KEY=V1,V2,..., got '{pair}'", "cli")
        if key in grid:
            raise HarnessError(f"--grid {key} is given twice; list all its values in one --grid", "cli")
        values = []
        for item in _split_values(raw):
            if not item.strip():
                raise HarnessError(f"--grid {key}: an empty value in '{raw}'", "cli")
            try:
                values.append(yaml.safe_load(item))
            except yaml.YAMLError:
                raise HarnessError(f"--grid {key}: value '{item}' does not parse", "cli") from None
        grid[key] = values
    return grid


def _experiment_overrides(
    method: str | None,
    schedule: str | None,
    tasks: str | None,
    seed: int | None,
    limit: int | None,
    data_dir: str | None,
    sets: tuple[str, ...],
    lora: str | None = None,
) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "method.name": method,
        "method.schedule.name": schedule,
        "eval.tasks": _csv(tasks),
        "seed": seed,  # training and evaluation; the sandbox world keeps the preset's seed (sandbox.seed)
        "data_dir": data_dir or os.environ.get("HARNESS_DATA_DIR") or None,
        "eval.limit": limit,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}  # flags not given keep the preset's values
    if limit is not None:
        overrides["eval.task_limits"] = {}  # --limit is one cap for every task
    if lora is not None:
        from harness.training.lora import parse_lora

        overrides["train.lora"] = parse_lora(lora)
    overrides.update(_parse_sets(sets))  # explicit, so `--set corpus.limit=null` lifts a preset's cap
    return overrides


class RunsOrPoint(click.ParamType):
    """A run or sweep folder, or `SWEEP:POINT`: the runs (seeds) of one grid point of a sweep folder."""

    name = "folder"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from harness.analysis.report import split_point

        if Path(value).is_dir() or split_point(value) is not None:
            return str(value)
        if Path(value).exists():
            self.fail(f"'{value}' is a file, not a run or sweep folder", param, ctx)
        self.fail(f"'{value}' does not exist (give a run or sweep folder, or SWEEP:POINT: a sweep folder and one of "
                  "its grid points)", param, ctx)  # fmt: skip


class HarnessGroup(click.Group):
    """Turns every user error (ours and click's) into one line on stderr and exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except HarnessError as exc:
            console.print(exc.one_line(), markup=False, highlight=False)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a full disk, a quota, a read-only folder anywhere below: the user's to fix
            from harness.store import disk_error

            found = disk_error(exc, exc.filename or "a file", "accessing")
            if found is None:
                raise
            console.print(found.one_line(), markup=False, highlight=False)
            sys.exit(found.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "harness"
            console.print(f"harness: {cmd}: {exc.format_message()} (see `{cmd} --help`)", markup=False, highlight=False)
            sys.exit(2)
        except click.Abort:
            console.print("harness: aborted", markup=False)
            sys.exit(130)
        except KeyboardInterrupt:
            console.print("harness: interrupted; finished stages are cached, run the same command to resume", markup=False)
            sys.exit(130)


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fusion-harness")
def main() -> None:
    """fusion-harness: fuse LLMs (ProFuser and baselines), evaluate with lm-eval, report with significance.

    \b
    Examples:
      harness run --method profuser --tasks mmlu,gsm8k,truthfulqa
      harness run --method fusellm --tasks sandbox --limit 0
      harness ablate --method profuser --schedule progressive,simultaneous,reversed --tasks sandbox
      harness report results/*/ --format latex
    """


_run_options = [
    click.option("--method", "-m", default=None, help="Fusion method (see `harness methods`). Default: the preset's."),
    click.option("--tasks", "-t", default=None, help="Comma-separated tasks or groups (see `harness tasks`)."),
    click.option("--preset", "-p", default="sandbox", show_default=True, help="Preset name or a YAML file."),
    click.option("--schedule", type=click.Choice(SCHEDULE_NAMES), default=None, help="ProFuser schedule."),
    click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, help="Seed of training and evaluation."),
    click.option("--limit", type=click.IntRange(min=0), default=None, help="Documents per task (0: all)."),
    click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True, help="Results folder."),
    click.option("--data-dir", type=click.Path(), default=None, help="Local benchmark data (or HARNESS_DATA_DIR)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field, e.g. train.lr=1e-4."),
    click.option("--lora", default=None, metavar="r=16,alpha=32,targets=q_proj+v_proj",
                 help="Train LoRA adapters (peft) instead of all weights; merge=false keeps the adapter."),
    click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Run every stage in N processes under `accelerate launch` (GPUs, or CPU processes)."),
    click.option("--accelerate-config", default=None, metavar="fsdp|zero2|zero3|FILE",
                 help="With --num-processes: a shipped accelerate config (FSDP, DeepSpeed ZeRO) or your own."),
]


def _apply(options: list[Any]) -> Any:
    def wrap(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


_seeds_option = click.option(
    "--seeds", default=None, metavar="0,1,2",
    help="Run once per seed (cached signals shared) and write a summary over the seeds; resumes when run again.",
)


@main.command()
@_apply(_run_options)
@_seeds_option
@click.option("--dry-run", is_flag=True, help="Validate the experiment and print the plan with each model's rendering of the first training example; download no weights, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(
    method: str | None,
    tasks: str | None,
    preset: str,
    schedule: str | None,
    seed: int | None,
    limit: int | None,
    out: str,
    data_dir: str | None,
    sets: tuple[str, ...],
    lora: str | None,
    num_processes: int,
    accelerate_config: str | None,
    seeds: str | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Fuse the preset's sources into its target with METHOD, evaluate, and compare.

    \b
    Examples:
      harness run --method profuser --tasks mmlu,gsm8k,truthfulqa
      HARNESS_DATA_DIR=../shared/data harness run -m fusellm -t mmlu,gsm8k --limit 30
      harness run -m profuser --schedule linear -t sandbox --set train.epochs=3
      harness run --preset paper --dry-run
      harness run -m profuser -t sandbox --num-processes 8 --accelerate-config fsdp
      harness run -m fusellm -t sandbox --seeds 0,1,2
    """
    from harness import api, distributed, pipeline

    seed_list = _parse_seeds(seeds, seed)
    exp = load_experiment(preset, _experiment_overrides(method, schedule, tasks, seed, limit, data_dir, sets, lora))
    if seed_list is not None:
        _sweep(exp, {}, seed_list, out, "seeds", num_processes, accelerate_config, dry_run, quiet)
        return
    plan = api.plan(exp, out, missing_ok=dry_run)
    if dry_run:
        pipeline.print_plan(plan, out)
        if plan.unavailable:
            raise HarnessError(pipeline.unavailable_line(plan.unavailable), "config")  # the plan above is otherwise valid
        return
    result = api.run(exp, out, progress=not quiet, num_processes=num_processes, accelerate_config=accelerate_config)
    if distributed.is_main():
        click.echo(f"run directory: {result.dir}")


def _sweep(
    exp: Any, grid: dict[str, list[Any]], seeds: list[int] | None, out: str, kind: str, num_processes: int,
    accelerate_config: str | None, dry_run: bool, quiet: bool,
) -> None:
    """A sweep from the command line: every cell planned first (`--dry-run` prints them), then one api call."""
    from harness import api, distributed
    from harness.sweeps import print_sweep_plan

    plan = api.plan_sweep(exp, grid, seeds, out, kind=kind)  # type: ignore[arg-type]
    if dry_run:
        print_sweep_plan(plan)
        return
    result = api.sweep(exp, grid, seeds, out, kind=kind, progress=not quiet,  # type: ignore[arg-type]
                       num_processes=num_processes, accelerate_config=accelerate_config)  # fmt: skip
    if distributed.is_main():
        click.echo(f"{kind} folder: {result.dir}")
        click.echo(f"{kind} runs: " + " ".join(str(r.dir) for r in result.runs))


@main.command()
@_apply(_run_options)
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="A config field and its values (repeat for more axes); every combination is run.")
@_seeds_option
@click.option("--dry-run", is_flag=True, help="Validate every cell and print them; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def sweep(
    method: str | None,
    tasks: str | None,
    preset: str,
    schedule: str | None,
    seed: int | None,
    limit: int | None,
    out: str,
    data_dir: str | None,
    sets: tuple[str, ...],
    lora: str | None,
    num_processes: int,
    accelerate_config: str | None,
    grid: tuple[str, ...],
    seeds: str | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Run a grid over any config fields × seeds, sharing every cached stage; one table and figure per grid.

    Progress is one line per run; run the same command again to resume a killed sweep (finished runs are
    skipped). Every cell is validated before the first one runs.

    \b
    Examples:
      harness sweep --grid method.name=profuser,fusellm --grid method.schedule.switch=0.25,0.5,0.75 --seeds 0,1,2
      (the switch is ProFuser's own parameter: fusellm is one grid point)
      harness sweep -t sandbox --grid train.lr=1e-5,5e-5 --seeds 0,1 --dry-run
    """
    seed_list = _parse_seeds(seeds, seed)
    axes = _parse_grid(grid)
    if not axes and seed_list is None:
        raise HarnessError("a sweep needs --grid KEY=V1,V2 and/or --seeds", "cli")
    exp = load_experiment(preset, _experiment_overrides(method, schedule, tasks, seed, limit, data_dir, sets, lora))
    _sweep(exp, axes, seed_list, out, "sweep", num_processes, accelerate_config, dry_run, quiet)


@main.command()
@_apply(_run_options)
@_seeds_option
@click.option("--dry-run", is_flag=True, help="Validate every variant and print the runs; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def ablate(
    method: str | None,
    tasks: str | None,
    preset: str,
    schedule: str | None,
    seed: int | None,
    limit: int | None,
    out: str,
    data_dir: str | None,
    sets: tuple[str, ...],
    lora: str | None,
    num_processes: int,
    accelerate_config: str | None,
    seeds: str | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Run one method under several schedules (reusing cached signals), then write the ablation table and plot.

    Runs the same way as `harness sweep --grid method.schedule.name=...`: resumable, one line per run.

    \b
    Examples:
      harness ablate --method profuser --schedule progressive,simultaneous,reversed,linear,cosine --tasks sandbox
      harness ablate -t sandbox --seeds 0,1,2
    """
    from harness import api, distributed
    from harness.sweeps import print_sweep_plan

    names = _csv(schedule) if schedule else list(SCHEDULE_NAMES)
    seed_list = _parse_seeds(seeds, seed)
    exp = load_experiment(preset, _experiment_overrides(method or "profuser", None, tasks, seed, limit, data_dir, sets, lora))
    variants = api.schedule_variants(exp, names or [])  # the one check of the names
    plan = api.plan_sweep(exp, {"method.schedule.name": list(names or [])}, seed_list, out, kind="ablation")
    if dry_run:
        print_sweep_plan(plan)
        return
    runs = api.ablate(variants, out, seeds=seed_list, progress=not quiet, num_processes=num_processes,
                      accelerate_config=accelerate_config)  # fmt: skip
    if distributed.is_main():
        click.echo(f"ablation folder: {plan.folder}")  # the variants are the cells planned
        click.echo("ablation runs: " + " ".join(str(r.dir) for r in runs))


# `--schedule` of ablate takes a list, so it is redefined as a plain string option.
for param in ablate.params:
    if param.name == "schedule":
        param.type = click.STRING
        param.help = "Comma-separated schedules (default: all five)."


@main.command()
@click.option("--verbose", "-v", is_flag=True, help="Also list each method's own parameters and the shared ones.")
def methods(verbose: bool) -> None:
    """List the registered fusion methods (built-in and plugins of the `harness.methods` entry point group).

    \b
    Examples:
      harness methods
      harness methods --verbose      # parameters, defaults, descriptions (set as method.<name>)
    """
    from harness.api import describe_methods, shared_parameters

    infos = describe_methods()
    table = Table("method", "needs", "parameters", "description", title="fusion methods")
    for info in infos:
        own = ", ".join(p.name for p in info.parameters if "." not in p.name) or "-"
        table.add_row(info.name, ", ".join(info.needs), own, info.description)
    stdout.print(table)
    if not verbose:
        return
    for title, params in [("shared by every method", shared_parameters())] + [(i.name, i.parameters) for i in infos]:
        detail = Table("method.<parameter>", "type", "default", "description", title=title)
        for p in params:
            nested = any(q.name.startswith(p.name + ".") for q in params)  # its fields follow, with their defaults
            detail.add_row(p.name, p.type, "" if nested else repr(p.default), p.description)
        if not params:
            detail.add_row("(none)", "", "", "")
        stdout.print(detail)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks(as_json: bool) -> None:
    """List the evaluation tasks and groups, their categories, metrics and few-shot settings.

    \b
    Example:
      harness tasks
    """
    from harness import api

    rows = api.describe_tasks()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(*rows[0].keys(), title="tasks") if rows else Table("task")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    stdout.print(table)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=RunsOrPoint())
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv", "html"]), default="md", show_default=True,
              help="html: the whole report as one self-contained page (tables, figures, run metadata, flips).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the table to a file.")
@click.option("--versus", default=None, metavar="A:B",
              help="Instead: A against B task by task (paired tests, Holm across tasks; md or csv). A and B are "
                   "methods, or the table's row labels where a method ran in several configurations, e.g. "
                   "'profuser:profuser (disagreement=0.5)'. Several seeds of each are paired by seed and tested "
                   "over documents and over seeds.")
@click.option("--against", default=None, metavar="KEY=VALUE",
              help="Instead, for one sweep folder: every grid point against the point with KEY=VALUE and the same "
                   "other values, e.g. signals.alignment=span (tests over documents and seeds, Holm; md).")
@click.option("--allow-mismatch", is_flag=True,
              help="Compare runs that evaluated a task differently (data, task version, shots, limit, metric); "
                   "the table says what differs.")
@click.option("--holm", "holm", type=click.Choice(["run", "table"]), default="run", show_default=True,
              help="Holm family of the markers: each run's own comparisons, or every comparison the table shows.")
@click.option("--metric", type=click.Choice(["margin"]), default=None,
              help="With --versus: compare the answer's log-probability margin (multiple-choice tasks) instead.")
def report(
    run_dirs: tuple[str, ...], fmt: str, out_file: str | None, versus: str | None, against: str | None,
    allow_mismatch: bool, holm: str, metric: str | None,
) -> None:
    """Compare runs in one table: rows are models and methods, columns tasks, with significance markers.

    \b
    Examples:
      harness report results/*/
      harness report results/run-a results/run-b --format latex --out table.tex
      harness report results/*/ --versus profuser:fusellm
      harness report results/*/ --versus profuser:fusellm --metric margin
      harness report "sweep-a:profuser judges=reward-models" "sweep-b:fusellm disagreement=0" --versus profuser:fusellm
      harness report results/*/ --holm table
      harness report results/sweep-0123456789 --against signals.alignment=span
      harness report results/*/ --format html --out report.html
    """
    from harness import api

    if fmt == "html" and (versus is not None or against is not None):
        raise HarnessError("--format html is the whole report (its head-to-head tables included); leave out "
                           "--versus and --against", "cli")  # fmt: skip
    if metric is not None and versus is None:
        raise HarnessError("--metric compares two methods head to head; add --versus A:B", "cli")
    if against is not None:
        key, sep, value = against.partition("=")
        if not (key and sep and value) or len(run_dirs) != 1 or versus is not None:
            raise HarnessError("--against expects one sweep folder and KEY=VALUE, without --versus", "cli")
        text = api.against(run_dirs[0], key.strip(), value.strip())
    elif versus is not None:
        a, sep, b = versus.partition(":")
        if not (a and sep and b) or a == b:
            raise HarnessError(f"--versus expects A:B with two different methods or table row labels, got '{versus}'", "cli")
        if holm != "run":
            raise HarnessError("--holm applies to the main table; --versus is Holm-adjusted across its tasks", "cli")
        text = api.versus(run_dirs, a, b, fmt, allow_mismatch=allow_mismatch, metric=metric)
    else:
        text = api.compare(run_dirs, fmt, allow_mismatch=allow_mismatch, holm=holm)
    if out_file:
        from harness.store import atomic_write_text

        atomic_write_text(Path(out_file), text)
        click.echo(f"wrote {out_file}")
    else:
        click.echo(text)


@main.command(name="power")
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Documents per task (both systems on the same ones).")
@click.option("--p-discordant", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Binary metric: share of documents the two systems answer differently.")
@click.option("--sd-diff", type=click.FloatRange(0, min_open=True), default=None,
              help="Continuous metric: per-document SD of the differences (one seed).")
@click.option("--mde", type=click.FloatRange(0, min_open=True), default=None,
              help="Instead of --n: the difference to detect (a fraction for binary metrics); prints the N needed.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True)
@click.option("--power", "target", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.8, show_default=True)
@click.option("--comparisons", "-M", type=click.IntRange(min=1), default=1, show_default=True,
              help="Comparisons Holm-corrected together (guaranteed at Holm's first step, alpha/M).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Seeds pooled over documents [default: 1, or the sweep's].")
@click.option("--seed-correlation", type=click.FloatRange(0, 1), default=None,
              help="Correlation of a document's difference between two seeds [default: 0, or estimated by --from].")
@click.option("--from", "source", type=click.Path(exists=True, file_okay=False), default=None,
              help="Estimate documents, discordance (or SD) and seeds from a finished run or sweep folder.")
@click.option("--task", default=None, help="With --from: only this task.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object, or a list with --from).")
def power_cmd(
    n: int | None, p_discordant: float | None, sd_diff: float | None, mde: float | None, alpha: float, target: float,
    comparisons: int, seeds: int | None, seed_correlation: float | None, source: str | None, task: str | None,
    as_json: bool,
) -> None:
    """Minimum detectable difference of a paired comparison (or, with --mde, the documents needed).

    \b
    Examples:
      harness power --n 300 --p-discordant 0.2                 # exact McNemar: MDE 7.4 pts
      harness power --n 300 --p-discordant 0.2 -M 6 --seeds 3  # Holm over 6 rows, 3 seeds pooled
      harness power --mde 0.03 --p-discordant 0.2              # documents needed for 3 points
      harness power --n 500 --sd-diff 1.4                      # a continuous metric
      harness power --from results/sweep-0123456789 --task sandbox_reasoning
    """
    from harness import api

    rows = api.power(n=n, p_discordant=p_discordant, sd_diff=sd_diff, mde=mde, alpha=alpha, power=target,
                     comparisons=comparisons, seeds=seeds, seed_correlation=seed_correlation, source=source, task=task)  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows if source is not None else rows[0], indent=2))
        return
    from harness.analysis.power import render_rows

    click.echo(render_rows(rows, solve_n=mde is not None))


@main.command()
@click.argument("side_a", metavar="RUN_A[:LABEL]")
@click.argument("side_b", metavar="RUN_B[:LABEL]")
@click.option("--task", "-t", required=True, help="The task whose documents to list.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Documents listed per group (all by default).")
@click.option("--full", is_flag=True, help="Whole prompts instead of their last 240 characters.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def flips(side_a: str, side_b: str, task: str, limit: int | None, full: bool, as_json: bool) -> None:
    """The documents where two models' results differ: A right and B wrong, and the reverse (continuous metrics:
    the largest differences), with prompt, gold answer, both answers and the metric; counts and the paired test
    (the p-value `harness report --versus` prints) on the first lines.

    A side is RUN[:LABEL] (the run's fused model by default; target-base or a source's name for the others) or
    SWEEP:POINT@SEED (a grid point of a sweep folder at one seed).

    \b
    Examples:
      harness flips results/run-profuser results/run-fusellm -t sandbox_reasoning
      harness flips results/run-profuser results/run-profuser:target-base -t sandbox_safety --limit 5
      harness flips results/sweep-0123:profuser@0 results/sweep-0123:fusellm@0 -t sandbox_reasoning --json
    """
    from harness import api

    found = api.flips(side_a, side_b, task, limit=limit)
    if as_json:
        click.echo(json.dumps(found.to_dict(full=full), indent=1, ensure_ascii=False))
    else:
        click.echo(found.render(full=full), nl=False)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Folder (default: first run's plots/).")
def plot(run_dirs: tuple[str, ...], out_dir: str | None) -> None:
    """Paper-ready figures (PDF + PNG): per-task bars with 95% CIs, radar, losses and schedule weights, selection.

    \b
    Example:
      harness plot results/20261128-120000-profuser-0
    """
    from harness import api

    for p in api.plot(run_dirs, out_dir):
        click.echo(str(p))


@main.command(name="eval")
@click.option("--model", "model_spec", required=True, help="hf:ID, a folder, gguf:FOLDER#FILE, or an alias.")
@click.option("--tasks", "-t", required=True, help="Comma-separated tasks or groups.")
@click.option("--label", default=None, help="Row label in tables (default: derived from the model).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Documents per task (0: all).")
@click.option("--num-fewshot", type=click.IntRange(min=0), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--data-dir", type=click.Path(), default=None, help="Local benchmark data (or HARNESS_DATA_DIR).")
@click.option("--sandbox-size", type=click.Choice(["micro", "default"]), default="default", show_default=True,
              help="World for sandbox tasks and sandbox:NAME models (built or taken from the cache).")
@click.option("--sandbox-seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def eval_cmd(
    model_spec: str,
    tasks: str,
    label: str | None,
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int,
    out: str,
    data_dir: str | None,
    sandbox_size: str,
    sandbox_seed: int,
    quiet: bool,
) -> None:
    """Evaluate any model (no fusion) with the same tasks, per-sample files and tables as fusion runs.

    \b
    Examples:
      HARNESS_DATA_DIR=../shared/data harness eval --model smollm2-135m-instruct --tasks hellaswag --limit 200
      harness eval --model hf:lmsys/vicuna-7b-v1.5 --tasks leaderboard
      harness eval --model results/RUN/model --tasks sandbox --label my-fused
    """
    from harness import api
    from harness.config import SandboxSpec

    result = api.evaluate(
        model_spec, _csv(tasks) or [], label=label, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
        out=out, data_dir=data_dir, progress=not quiet,
        sandbox=SandboxSpec(size=sandbox_size, seed=sandbox_seed),  # type: ignore[arg-type]
    )  # fmt: skip
    click.echo(f"run directory: {result.dir}")


@main.group()
def sandbox() -> None:
    """The embedded sandbox world: three tiny specialists with known strengths.

    \b
    Examples:
      harness sandbox build --size micro
      harness sandbox show --json
    """


@sandbox.command("build")
@click.option("--size", type=click.Choice(["micro", "default"]), default="default", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if cached.")
@click.option("--from-scratch", is_flag=True,
              help="Train the specialists here even where the package carries the reference world (default, seed 0).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Specialists built at once, one process each [default: one per CPU, at most 3].")
@click.option("--reward-models", is_flag=True,
              help="Also train the world's learned reward models (sandbox-rm:0..2) and print their held-out accuracy.")
@click.option("--disagreement", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="The world's MinCE-vs-judge dial (docs/sandbox.md); 0 is the world without it.")
def sandbox_build(
    size: str, seed: int, force: bool, from_scratch: bool, jobs: int | None, reward_models: bool, disagreement: float
) -> None:
    """Build (or load from the cache) the sandbox world and print each source's score per skill.

    Every specialist is built in its own process with pinned CPU kernels, so the same seed gives the same
    bytes on any x86-64 machine with the same library versions; `--jobs` changes the time, not the world.
    The package carries the reference default world (seed 0), which is installed and verified by its
    fingerprint in seconds; `--from-scratch` trains it here instead (about 7 min on 2 cores).
    `--reward-models` also trains the judges `judges.models: [sandbox-rm:0, ...]` names (otherwise the first
    run that needs them trains them).

    \b
    Example:
      harness sandbox build --size default --seed 0
      harness sandbox build --size micro --reward-models
      harness sandbox build --from-scratch --force
    """
    from harness import api

    summary = api.build_sandbox(size, seed, force=force, from_scratch=from_scratch, jobs=jobs,  # type: ignore[arg-type]
                                reward_models=reward_models, disagreement=disagreement)  # fmt: skip
    _print_world(summary, as_json=False)


@sandbox.command("show")
@click.option("--size", type=click.Choice(["micro", "default"]), default="default", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--disagreement", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="The world's MinCE-vs-judge dial (docs/sandbox.md).")
@click.option("--json", "as_json", is_flag=True, help='Print {"sources": {name: {skill: score}}}.')
def sandbox_show(size: str, seed: int, disagreement: float, as_json: bool) -> None:
    """Print each sandbox source's score on each skill and whether this is the reference world.

    Builds the world first if it is not cached. The fingerprint is the sha256 of the three models' weights;
    the reference world is the one recorded in the code for this size and seed (default and micro, seed 0).
    --json adds "fingerprint", "reference" ({"status": reference | differs | none, "detail": ...}) and
    "built_with" (library versions, machine, pinned kernels) to the scores.

    \b
    Example:
      harness sandbox show --json
    """
    from harness import api

    summary = api.show_sandbox(size, seed, disagreement=disagreement, progress=not as_json)  # type: ignore[arg-type]
    _print_world(summary, as_json=as_json)


def _print_world(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    skills = sorted({s for scores in summary["sources"].values() for s in scores})
    title = f"sandbox world ({summary['size']}, seed {summary['seed']}) at {summary['root']}"
    table = Table("source", *skills, title=title)
    for name, scores in summary["sources"].items():
        label = f"{name} (target)" if name == summary["target"] else name
        table.add_row(label, *(f"{scores[s]:.3f}" for s in skills))
    stdout.print(table)
    reference = summary["reference"]
    colour = {"reference": "green", "differs": "red"}.get(reference["status"], "yellow")
    stdout.print(f"fingerprint {summary['fingerprint']}: [{colour}]{reference['detail']}[/{colour}]")
    libraries = ", ".join(f"{k} {v}" for k, v in summary["built_with"]["libraries"].items())
    origin = "; installed from the package" if summary["origin"] == "packaged" else ""
    stdout.print(f"built with {libraries} on {summary['built_with']['machine']}, CPU kernels pinned{origin}")
    _print_reward_models(summary["reward_models"])


def _print_reward_models(models: dict[str, Any]) -> None:
    """The learned reward models' held-out figures (docs/sandbox.md), or how to build them."""
    if not any(models.values()):
        stdout.print(f"reward models ({', '.join(models)}): not built (harness sandbox build --reward-models)")
        return
    table = Table("reward model", "held-out accuracy", "knowledge", "reasoning", "safety", "good share",
                  "pick accuracy", "held-out pairs", title="learned reward models (judges.models)")  # fmt: skip
    for spec, info in models.items():
        if info is None:
            table.add_row(spec, "not built", "-", "-", "-", "-", "-", "-")
            continue
        held = info["held_out"]
        table.add_row(spec, f"{held['accuracy']:.3f}", *(f"{held['per_skill'][k]:.3f}" for k in ("knowledge", "reasoning", "safety")),
                      f"{held['good_share']:.3f}", f"{held['pick_accuracy']:.3f}", str(held["pairs"]))  # fmt: skip
    stdout.print(table)


@main.group()
def signals() -> None:
    """Fusion signals: which source wins where.

    \b
    Example:
      harness signals inspect results/20261128-120000-profuser-0
    """


@signals.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def signals_inspect(run_dir: str, as_json: bool) -> None:
    """How often each source is selected by MinCE (training mode) and by the judges (inference mode), with a plot;
    per skill how often MinCE picks a candidate the judges score below the best (the two modes disagree); and
    the signal audit of each source -> target pair: how much of the target's response has an aligned teacher,
    how often the teacher's top-1 reads as the source's own, where end-of-sequence mass lands, and the mass lost to
    unmapped ids.

    \b
    Example:
      harness signals inspect results/20261128-120000-profuser-0
    """
    from harness import api

    stats = api.inspect_signals(run_dir, plots=not as_json)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    sources = sorted({s for mode in ("training", "inference") for s in stats.get(mode, {})})
    table = Table("source", "training mode (MinCE)", "inference mode (judge)", title="source selection")
    for s in sources:
        cells = [f"{stats[m][s]:.1%}" if s in stats.get(m, {}) else "-" for m in ("training", "inference")]
        table.add_row(s, *cells)
    stdout.print(table)
    if judge := stats.get("judge"):
        models = f" ({', '.join(judge['models'])})" if judge["models"] else ""
        score = judge["winner_reference_score"]
        skills = ", ".join(f"{k} {v:.1%}" for k, v in score["by_skill"].items())
        stdout.print(f"inference-mode judge: {judge['kind']}{models}; its winners are right by the reference scorer on "
                     f"{score['overall']:.1%} of examples ({skills})", markup=False)  # fmt: skip
    if stats.get("disagreement"):
        agree = Table("skill", "examples", "MinCE judged worse", "decisive", "of decisive", "winner differs",
                      title="MinCE vs judge (MinCE's pick judged worse than the best candidate)")  # fmt: skip
        for skill, d in stats["disagreement"].items():
            cells = [f"{d[k]:.1%}" if d[k] is not None else "-" for k in ("disagreement", "disagreement_decisive", "winner_differs")]
            agree.add_row(skill, str(d["n"]), cells[0], str(d["decisive"]), *cells[1:])
        stdout.print(agree)
    _print_audit(stats["audit"])
    for p in stats["plots"]:
        click.echo(str(p))


@main.group()
def align() -> None:
    """Cross-tokenizer alignment strategies (signals.alignment): span, dtw-exact, dtw-mined, dtw-mined-fusellm.

    \b
    Examples:
      harness align compare --target sandbox:llama-knowledge --source sandbox:neox-reasoning
      harness align compare --target gemma3-270m --source smollm2-135m-instruct --texts corpus.jsonl
    """


@align.command("compare")
@click.option("--target", "-T", required=True, help="Target model spec (hf:ID, folder, gguf:..., sandbox:NAME, alias).")
@click.option("--source", "-S", required=True, help="Source model spec, teacher-forced once on every text.")
@click.option("--texts", type=click.Path(dir_okay=False), default=None,
              help="Corpus file (JSONL / JSON rows with prompt and reference). Default: the sandbox world's corpus.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=64, show_default=True, help="Texts to use.")
@click.option("--strategies", default=None, help="Comma-separated strategies [default: all registered].")
@click.option("--top-k", type=click.IntRange(1, MAX_TOP_K), default=10, show_default=True)
@click.option("--max-length", type=click.IntRange(8, 100_000), default=256, show_default=True,
              help="Max tokens of prompt + response per text.")
@click.option("--size", type=click.Choice(["micro", "default"]), default="micro", show_default=True,
              help="Sandbox world for sandbox: specs and the default texts.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as a JSON list.")
def align_compare(target: str, source: str, texts: str | None, limit: int, strategies: str | None, top_k: int,
                  max_length: int, size: str, as_json: bool) -> None:  # fmt: skip
    """Each alignment strategy on one source -> target pair, the same texts and the same teacher pass.

    coverage: target tokens with an aligned teacher (the rest get the one-hot fallback); top-1 agrees: aligned
    teachers whose top-1 reads as the source's own top-1; lost mass: top-k mass on ids with no target id;
    tokens/s: alignment throughput (pairing, vocabulary mapping, top-k merge), best of three passes.

    \b
    Examples:
      harness align compare --target sandbox:llama-knowledge --source sandbox:gpt2-safety
      harness align compare -T gemma3-270m -S smollm2-135m-instruct --limit 16 --json
    """
    from harness import api
    from harness.config import SandboxSpec

    rows = api.align_compare(target, source, texts=texts, limit=limit, strategies=_csv(strategies), top_k=top_k,
                       max_length=max_length, sandbox=SandboxSpec(size=size), progress=not as_json)  # type: ignore[arg-type]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    n = rows[0]["target_tokens"] if rows else 0
    table = Table("strategy", "coverage", "top-1 agrees", "lost mass", "tokens/s",
                  title=f"alignment strategies: {source} -> {target}, {n} target tokens")  # fmt: skip
    for r in rows:
        table.add_row(r["strategy"], _percent(r["coverage"]), _percent(r["top1_agreement"]), _percent(r["lost_mass"]),
                      f"{r['tokens_per_s']:,.0f}")  # fmt: skip
    stdout.print(table)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def verify(run_dirs: tuple[str, ...]) -> None:
    """Check run directories against the checksums their manifest.json recorded when they finished.

    Prints each file that is missing or differs; exit code 0 when every file matches, 1 when some do not.

    \b
    Example:
      harness verify results/20261128-120000-profuser-0
    """
    from harness import api

    bad = 0
    for run_dir in run_dirs:
        changed = api.verify(run_dir)
        if changed:
            bad += 1
            click.echo(f"{run_dir}: {len(changed)} file(s) missing or changed:")
            for line in changed:
                click.echo(f"  {line}")
        else:
            click.echo(f"{run_dir}: all files match the manifest")
    if bad:
        sys.exit(1)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_audit(audit: dict[str, Any]) -> None:
    if not audit:
        stdout.print("signal audit: not recorded for this run (signals/audit.json: runs since the audit existed)")
        return
    table = Table("mode", "candidate -> target", "target tokens", "aligned teacher", "top-1 agrees",
                  "stop mass -> stop", "lost mass", "on byte fallback", "answer cut", "cut off",
                  title="signal audit")  # fmt: skip
    for mode, pairs in audit.items():
        for name, fig in pairs.items():
            if fig.get("target_tokens") is None:
                table.add_row(mode, name, *["-"] * 8)
                continue
            table.add_row(mode, name, str(fig["target_tokens"]), _percent(fig["aligned_fraction"]),
                          _percent(fig["top1_agreement"]), _percent(fig["stop_to_stop"]),
                          _percent(fig["lost_mass"]), _percent(fig.get("byte_mass")), _percent(fig.get("answer_cut")),
                          _percent(fig.get("cut_off")))  # fmt: skip
    stdout.print(table)
    stdout.print("on byte fallback: teacher mass on the target's <0xNN> ids (near 0 on ordinary text); answer cut: "
                 "examples whose answer this model's window (signals.max_length) cuts; cut off: generations stopped "
                 "at signals.max_new_tokens (signals.truncated decides what they teach)", markup=False)  # fmt: skip


if __name__ == "__main__":
    main()
