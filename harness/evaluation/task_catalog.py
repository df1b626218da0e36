"""The evaluation tasks users name, grouped by the paper's categories, and where each one's definition lives.

A task name is the familiar one (`mmlu`, `gsm8k`, `truthfulqa`, ...). Without a local data folder it runs
lm-eval's built-in task(s) (`builtin`); with one (`HARNESS_DATA_DIR` / `--data-dir`) it runs the project's
YAML under tasks/<folder>/ over files converted by harness/evaluation/offline_data.py. Sandbox tasks always run the
project's tasks/sandbox/ YAMLs over the sandbox world's files; their metric, filter and few-shot setting are
read from those YAMLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError

TASKS_ROOT = Path(__file__).resolve().parents[2] / "tasks"
CATEGORIES = ("knowledge", "reasoning", "safety", "sandbox")
BINARY_METRICS = frozenset({"acc", "acc_norm", "exact_match", "refusal", "compliance"})


@dataclass(frozen=True)
class TaskInfo:
    """One evaluable task: what it measures, how it is scored, and which definition runs it."""

    name: str
    category: str
    metric: str  # per-document metric in lm-eval's samples (the number reported)
    filter: str  # lm-eval filter whose per-sample rows are kept ("none" for log-likelihood tasks)
    binary: bool  # per-document values are 0/1 (paired tests: McNemar) rather than continuous
    fewshot: int  # default shots: lm-eval's built-in default (the `leaderboard` group uses LEADERBOARD_FEWSHOT)
    fewshot_fixed: bool  # True: the task is defined zero-/fixed-shot and ignores --num-fewshot
    builtin: tuple[str, ...]  # lm-eval built-in task/group names used without a data folder (empty: none)
    folder: str  # tasks/<folder>/ holding the local YAML
    local_task: str  # `task:` name inside that YAML
    chat: bool  # prompt through the model's chat template when it has one (assistant-behaviour tasks)
    description: str
    also_filters: tuple[str, ...] = ()  # further lm-eval filters of `metric` recorded beside the headline one
    cluster: str = ""  # document field naming its natural cluster (clustered standard errors); "" for none

    @property
    def sandbox(self) -> bool:
        return self.folder == "sandbox"


_CATALOG: tuple[TaskInfo, ...] = (
    TaskInfo("mmlu", "knowledge", "acc", "none", True, 0, False, ("mmlu",), "knowledge", "mmlu", False,
             "57-subject multiple choice; offline: one task, round-robin over subjects, micro-averaged",
             cluster="subject"),
    TaskInfo("arc_challenge", "reasoning", "acc_norm", "none", True, 0, False, ("arc_challenge",), "reasoning",
             "arc_challenge", False, "grade-school science questions, challenge set"),
    TaskInfo("hellaswag", "reasoning", "acc_norm", "none", True, 0, False, ("hellaswag",), "reasoning",
             "hellaswag", False, "commonsense sentence completion"),
    TaskInfo("winogrande", "reasoning", "acc", "none", True, 0, False, ("winogrande",), "reasoning",
             "winogrande", False, "pronoun resolution, partial scoring"),
    TaskInfo("gsm8k", "reasoning", "exact_match", "strict-match", True, 5, False, ("gsm8k",), "reasoning",
             "gsm8k", False, "grade-school math word problems: the answer after '#### ' must match (strict-match, "
             "as published); the last number (flexible-extract) is recorded too", ("flexible-extract",)),
    TaskInfo("truthfulqa", "safety", "acc", "none", False, 0, True, ("truthfulqa_mc2",), "safety",
             "truthfulqa_mc2", False, "TruthfulQA MC2: probability mass on the true answers (0-shot, 6-QA prompt)"),
    TaskInfo("advbench", "safety", "refusal", "none", True, 0, True, (), "safety", "advbench", True,
             "AdvBench harmful behaviours: refusal rate (higher is safer)"),
    TaskInfo("xstest", "safety", "compliance", "none", True, 0, True, (), "safety", "xstest", True,
             "XSTest safe prompts: answered rate, 1 - over-refusal (higher is better)"),
)  # fmt: skip

SANDBOX_TASKS = ("sandbox_knowledge", "sandbox_reasoning", "sandbox_safety")

GROUPS: dict[str, tuple[str, ...]] = {
    "knowledge": ("mmlu",),
    "reasoning": ("arc_challenge", "hellaswag", "winogrande", "gsm8k"),
    "safety": ("truthfulqa", "advbench", "xstest"),
    "leaderboard": ("arc_challenge", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"),
    "sandbox": SANDBOX_TASKS,
}

# The Open LLM Leaderboard v1 settings, applied to the tasks requested through the `leaderboard` group.
LEADERBOARD_FEWSHOT: dict[str, int] = {
    "arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa": 0, "winogrande": 5, "gsm8k": 5,
}  # fmt: skip

_BY_NAME = {t.name: t for t in _CATALOG}


def group_fewshot(names: list[str]) -> dict[str, int]:
    """Per-task shots implied by the groups the user asked for (today: the leaderboard's settings)."""
    return dict(LEADERBOARD_FEWSHOT) if "leaderboard" in [n.strip() for n in names] else {}


def known_names() -> list[str]:
    return [*(t.name for t in _CATALOG), *SANDBOX_TASKS, *GROUPS]


def expand(names: list[str]) -> list[str]:
    """Task and group names -> task names, in order, without duplicates; unknown names are a HarnessError."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in GROUPS:
            members = list(GROUPS[name])
        elif name in _BY_NAME or name in SANDBOX_TASKS:
            members = [name]
        else:
            raise HarnessError(
                f"unknown task '{name}'; known tasks and groups: {', '.join(known_names())}", "tasks"
            )
        out.extend(m for m in members if m not in out)
    if not out:
        raise HarnessError(f"no tasks given; known tasks and groups: {', '.join(known_names())}", "tasks")
    return out


def document_limits(limit: int | None, task_limits: dict[str, int], tasks: list[str]) -> dict[str, int | None]:
    """Documents per task (None: all) for expanded task names: `task_limits` (tasks or groups, applied to their
    members) where given, else `limit`; 0 means every document."""
    per_task: dict[str, int] = {}
    for name, n in task_limits.items():
        try:
            members = expand([name])
        except HarnessError as exc:
            raise HarnessError(f"eval.task_limits: {exc}", "config") from None
        for task in members:
            per_task[task] = n
    return {t: (per_task[t] if t in per_task else limit) or None for t in tasks}


class FunctionRef(str):
    """A `!function module.attr` reference kept as text (lm-eval resolves it when the task is built)."""


class _Loader(yaml.SafeLoader):
    pass


def _function_ref(loader: _Loader, node: yaml.ScalarNode) -> FunctionRef:
    return FunctionRef(loader.construct_scalar(node))


_Loader.add_constructor("!function", _function_ref)


def load_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as data, `!function` references kept as `FunctionRef` strings."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    if not isinstance(data, dict):
        raise HarnessError(f"task file '{path}' is not a YAML mapping", "tasks")
    return data


UPSTREAM_PREFIX = "lm_eval/tasks/"


def upstream_tasks_root() -> Path:
    """The installed lm-eval's task folder, whose YAMLs the project's task definitions `include:`."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("lm-eval is not installed: pip install lm-eval", "tasks")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def resolve_include(name: str, including: Path) -> Path:
    """An `include:` target: `lm_eval/tasks/...` names the installed lm-eval's YAML, anything else is relative to
    the including file's folder (lm-eval's own rule)."""
    if name.startswith(UPSTREAM_PREFIX):
        return upstream_tasks_root() / name[len(UPSTREAM_PREFIX):]
    return Path(name) if Path(name).is_absolute() else including.parent / name


def yaml_chain(path: Path) -> list[Path]:
    """A YAML and the YAMLs it `include:`s (recursively), in load order: included files first."""
    inc = load_task_yaml(path).get("include") or []
    chain: list[Path] = []
    for name in [inc] if isinstance(inc, str) else inc:
        target = resolve_include(str(name), path)
        if not target.is_file():
            raise HarnessError(f"{path}: include '{name}' not found (looked for {target})", "tasks")
        chain += yaml_chain(target)
    return [*chain, path]


def load_task_config(path: Path) -> dict[str, Any]:
    """A task YAML merged with what it includes (local keys win), as lm-eval's loader merges them."""
    merged: dict[str, Any] = {}
    for p in yaml_chain(path):
        cfg = load_task_yaml(p)
        cfg.pop("include", None)
        merged.update(cfg)
    return merged


def find_task_yaml(folder: str, task: str) -> Path:
    """The YAML under tasks/<folder>/ whose `task:` is `task`."""
    root = TASKS_ROOT / folder
    for path in sorted(root.glob("*.yaml")):
        try:
            if load_task_yaml(path).get("task") == task:
                return path
        except (yaml.YAMLError, HarnessError):
            continue
    raise HarnessError(f"no YAML defining task '{task}' under {root}", "tasks")


def _sandbox_info(name: str) -> TaskInfo:
    """A sandbox task's entry, read from its YAML (written with the sandbox world, not fixed here)."""
    path = find_task_yaml("sandbox", name)
    cfg = load_task_config(path)
    metrics = cfg.get("metric_list") or [
        {"metric": "acc" if cfg.get("output_type") != "generate_until" else "exact_match"}
    ]
    metric = str(metrics[0]["metric"])
    filters = cfg.get("filter_list") or [{"name": "none"}]
    shots = int(cfg.get("num_fewshot") or 0)
    chat = bool((cfg.get("metadata") or {}).get("chat_template", False))
    skill = name.removeprefix("sandbox_")
    category = skill if skill in CATEGORIES else "sandbox"  # the sandbox skills mirror the paper's categories
    # the sandbox tasks define their own (zero-)shot setting; --num-fewshot does not apply to them
    return TaskInfo(name, category, metric, str(filters[0]["name"]), metric in BINARY_METRICS, shots, True, (),
                    "sandbox", name, chat, f"sandbox world: {skill} skill")  # fmt: skip


def task_info(name: str) -> TaskInfo:
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name in SANDBOX_TASKS:
        return _sandbox_info(name)
    expand([name])  # raises the unknown-task error
    raise HarnessError(f"'{name}' is a group; expand it first", "tasks")


def with_fewshot(info: TaskInfo, shots: int) -> TaskInfo:
    return replace(info, fewshot=shots)


def describe_tasks(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows for `harness tasks`: every task and group with category, metric, default shots and data availability."""
    from harness.evaluation.offline_data import missing_sources

    env = os.environ.get("HARNESS_DATA_DIR")
    data_dir = data_dir or (Path(env) if env else None)
    rows: list[dict[str, Any]] = []
    for name in [*(t.name for t in _CATALOG), *SANDBOX_TASKS]:
        try:
            info = task_info(name)
        except HarnessError:
            rows.append({"name": name, "kind": "task", "category": "sandbox", "metric": "?", "few-shot": "?",
                         "local data": "tasks/sandbox missing", "lm-eval": "-"})  # fmt: skip
            continue
        if info.sandbox:
            local = "sandbox world"
        elif data_dir is None:
            local = "no data dir"
        else:
            local = "yes" if not missing_sources(name, data_dir) else "missing files"
        rows.append({
            "name": name, "kind": "task", "category": info.category,
            "metric": info.metric if info.filter == "none" else f"{info.metric} ({info.filter})",
            "few-shot": f"{info.fewshot}{' (fixed)' if info.fewshot_fixed else ''}",
            "local data": local, "lm-eval": ", ".join(info.builtin) or "local only",
        })  # fmt: skip
    for group, members in GROUPS.items():
        rows.append({"name": group, "kind": "group", "category": group if group in CATEGORIES else "-",
                     "metric": "-", "few-shot": "-", "local data": "-", "lm-eval": " ".join(members)})  # fmt: skip
    return rows
