"""Evaluation through lm-eval: the real task names, local data when given, per-sample files, cached results.

For each requested task the harness decides which definition runs it (harness/evaluation/task_catalog.py): lm-eval's
built-in task without a data folder, the project's YAML over converted local files with one
(harness/evaluation/offline_data.py), the tasks/sandbox/ YAML over the sandbox world. The project's YAMLs for the real
benchmarks `include:` lm-eval's own definitions and override only the data source and splits. They are copied into a
temporary include folder with their relative `data_files` and `lm_eval/tasks/...` includes made absolute; only the
project's own task folders supply `!function` hooks of their own. The shots the plan states are set in every task's
config (lm-eval itself never overrides a config's explicit `num_fewshot`), and each per-sample row records the shots
lm-eval used, the document's hash (what runs are paired on) and its prompt's hash; the prompts themselves go beside
it. Each (model, task, shots, limit, max_gen_toks, data) result is cached, so re-evaluating an unchanged model is
instant; a cache entry is sealed with checksums and verified before use (harness/store.py), so a damaged one is
evaluated again instead of crashing or changing the numbers.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness import distributed
from harness.errors import HarnessError
from harness.evaluation import offline_data, task_catalog
from harness.evaluation.margin import MARGIN_FIELD, sample_margin
from harness.evaluation.task_catalog import TaskInfo
from harness.models import ResolvedModel, conversion_tag, hub_commit, identity_files
from harness.store import (
    atomic_write_bytes,
    atomic_write_json,
    default_cache_dir,
    file_digests,
    git_sha,
    read_jsonl,
    seal,
    temp_dir,
    verified,
    write_jsonl,
)

CACHE_FORMAT = 4  # part of every entry's key (older entries are not read); 2: shots set through the task config,
# per-sample doc hashes, prompts, both gsm8k filters; 3: entries sealed with SHA256SUMS; 4: gold and model answers
# beside each prompt, per-sample answer margins (multiple choice) and clusters

EVAL_SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default generation cap


@dataclass
class TaskScore:
    """One task's result: the primary metric's mean over `n` documents, as lm-eval aggregated it, and the settings
    that produced it (what makes two runs' results comparable)."""

    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    category: str
    binary: bool
    filter: str = "none"  # the lm-eval filter of the headline metric
    shots: int = 0  # demonstrations per prompt, as lm-eval built them
    limit: int | None = None  # documents asked for (None: all)
    version: str | None = None  # the task definition's version (lm-eval's `metadata.version`)
    data: dict[str, str] = field(default_factory=dict)  # {"source": data dir | hub | sandbox world, "hash": ...}
    filters: dict[str, float] = field(default_factory=dict)  # the metric under further filters (gsm8k)

    def summary(self) -> dict[str, Any]:
        """The task's entry in summary.json."""
        out = {k: v for k, v in asdict(self).items() if k != "task"}
        if not self.filters:
            out.pop("filters")
        return out


def expand_tasks(names: list[str]) -> list[str]:
    """Task and group names -> task names (see harness/evaluation/task_catalog.py)."""
    return task_catalog.expand(names)


def describe_tasks() -> list[dict[str, Any]]:
    """Rows for `harness tasks`: name, category, metric, few-shot, whether local data is available."""
    return task_catalog.describe_tasks()


# ---------------------------------------------------------------- planning: which definition, which data


@dataclass(frozen=True)
class _Plan:
    info: TaskInfo  # few-shot already the effective one
    yaml: Path | None  # the project's YAML, None for lm-eval's built-in task
    root: Path | None  # what the YAML's relative data_files resolve against
    data_key: str  # hash of the data (or of the built-in's identity)
    definition: str  # hash of the task definition (YAML + hooks, or lm-eval version)
    source: str  # where the documents come from: "data dir", "hub" or "sandbox world"

    @property
    def lm_eval_name(self) -> str:
        return self.info.local_task if self.yaml else self.info.builtin[0]

    @property
    def data(self) -> dict[str, str]:
        return {"source": self.source, "hash": self.data_key}


def _data_files(cfg: dict[str, Any]) -> list[str]:
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) or []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(files)


_yaml_chain = task_catalog.yaml_chain


def _definition_hash(path: Path) -> str:
    """The YAML, what it includes (lm-eval's own files too) and the hook modules beside each of them."""
    h = hashlib.sha256(version("lm_eval").encode())
    chain = _yaml_chain(path)
    hooks = sorted({py for p in chain for py in p.parent.glob("*.py")})
    for p in [*chain, *hooks]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _sandbox_data_key(path: Path, root: Path) -> str:
    h = hashlib.sha256()
    for p in _yaml_chain(path):
        for rel in _data_files(task_catalog.load_task_yaml(p)):
            f = root / rel
            if not f.is_file():
                raise HarnessError(f"the sandbox world at {root} lacks {rel} (needed by {path.name}); "
                                   "build it with `harness sandbox build`", "sandbox")  # fmt: skip
            h.update(rel.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _plan(
    name: str, data_dir: Path | None, sandbox_root: Path | None, cache_dir: Path, num_fewshot: int | None,
    group_shots: dict[str, int] | None = None,
) -> _Plan:
    if name in task_catalog.SANDBOX_TASKS and sandbox_root is None:
        raise HarnessError(f"{name} needs the sandbox world; build it with `harness sandbox build`", "tasks")
    info = task_catalog.task_info(name)
    shots = num_fewshot if num_fewshot is not None else (group_shots or {}).get(name)
    if not info.fewshot_fixed and shots is not None:
        info = task_catalog.with_fewshot(info, shots)
    if info.sandbox and sandbox_root is not None:
        path = task_catalog.find_task_yaml("sandbox", info.local_task)
        return _Plan(info, path, sandbox_root, _sandbox_data_key(path, sandbox_root), _definition_hash(path),
                     "sandbox world")
    if data_dir is not None:
        prepared = offline_data.prepare(name, data_dir, cache_dir)
        path = task_catalog.find_task_yaml(info.folder, info.local_task)
        return _Plan(info, path, prepared.root, prepared.key, _definition_hash(path), "data dir")
    if not info.builtin:
        raise HarnessError(f"{name} has no lm-eval built-in task; set HARNESS_DATA_DIR or --data-dir to a folder "
                           "laid out as shared/data (see docs/evaluation.md)", "data")  # fmt: skip
    builtin = f"builtin:{','.join(info.builtin)}:lm_eval=={version('lm_eval')}"
    return _Plan(info, None, None, builtin, builtin, "hub")


# ---------------------------------------------------------------- staging the project's YAMLs


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    task_catalog.FunctionRef, lambda dumper, data: dumper.represent_scalar("!function", str(data))
)


def _absolute(files: Any, root: Path) -> Any:
    if isinstance(files, str):
        return files if Path(files).is_absolute() else str((root / files).resolve())
    if isinstance(files, list):
        return [_absolute(f, root) for f in files]
    if isinstance(files, dict):
        return {k: _absolute(v, root) for k, v in files.items()}
    return files


def _check_hooks(node: Any, folder: Path, yaml_path: Path) -> None:
    """Every `!function` must name a module file in the task's own folder: no user-supplied python runs."""
    if isinstance(node, task_catalog.FunctionRef):
        module = str(node).rpartition(".")[0]
        if not module or not (folder / f"{module.replace('.', '/')}.py").is_file():
            raise HarnessError(f"{yaml_path}: !function {node} is not defined in {folder}", "tasks")
    elif isinstance(node, dict):
        for v in node.values():
            _check_hooks(v, folder, yaml_path)
    elif isinstance(node, list):
        for v in node:
            _check_hooks(v, folder, yaml_path)


def _stage(plans: list[_Plan], dst: Path) -> None:
    """Copy the plans' YAMLs and hook modules under dst: data_files made absolute, includes of lm-eval's own task
    files (`lm_eval/tasks/...`) pointed at the installed copy, which lm-eval then loads with its own hooks."""
    for plan in plans:
        if plan.yaml is None or plan.root is None:
            continue
        src_folder = plan.yaml.parent
        folder = dst / src_folder.name
        folder.mkdir(parents=True, exist_ok=True)
        for py in src_folder.glob("*.py"):
            shutil.copy2(py, folder / py.name)
        for path in _yaml_chain(plan.yaml):
            if path.parent != src_folder:
                continue  # an upstream file: included by absolute path, never copied or edited
            cfg = task_catalog.load_task_yaml(path)
            _check_hooks(cfg, src_folder, path)
            inc = cfg.get("include")
            if inc:
                names = [inc] if isinstance(inc, str) else inc
                resolved = [task_catalog.resolve_include(str(n), path) for n in names]
                cfg["include"] = [str(r) if r.parent != src_folder else r.name for r in resolved]
            kwargs = cfg.get("dataset_kwargs") or {}
            if "data_files" in kwargs:
                kwargs["data_files"] = _absolute(kwargs["data_files"], plan.root)
            (folder / path.name).write_text(
                yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
            )


# ---------------------------------------------------------------- model identity and lm-eval model


def _in_memory_fingerprint(model: Any, tokenizer: Any) -> str:
    import torch

    h = hashlib.sha256(type(model).__name__.encode())
    cfg = {
        k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")
    }
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    h.update(vocab.encode())
    h.update(
        json.dumps(
            [tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
            default=str,
        ).encode()
    )
    return "mem:" + h.hexdigest()[:24]


def model_fingerprint(model: ResolvedModel | tuple[Any, Any], cache_dir: Path) -> str:
    """What the evaluation cache keys a model by: its weights' and tokenizer's content, not its name."""
    if isinstance(model, tuple):
        return _in_memory_fingerprint(*model)
    files = identity_files(model, "evaluation")
    if files is None:  # a hub id: the commit it resolves to (unknown offline without a local copy)
        return f"hub:{model.pretrained}@{hub_commit(model.pretrained)}"
    tag = conversion_tag() if model.gguf_file else ""  # the GGUF is dequantised by transformers at every load
    digests = file_digests(files, cache_dir)
    parts: list[Any] = [[f.name for f in files], digests] + ([tag] if tag else [])
    return "files:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _make_lm(model: ResolvedModel | tuple[Any, Any], backend: str, batch_size: int, trust_remote_code: bool = False) -> Any:
    import torch
    from lm_eval.api.registry import get_model

    if backend not in ("hf", "vllm"):
        raise HarnessError(f"unknown backend '{backend}'; choose hf or vllm", "eval")
    if isinstance(model, tuple):
        if backend != "hf":
            raise HarnessError("an in-memory model can only be evaluated with backend 'hf'", "eval")
        from lm_eval.models.huggingface import HFLM

        lm_obj, tok = model
        device = str(next(lm_obj.parameters()).device)
        return _share_documents(HFLM(pretrained=lm_obj, tokenizer=tok, batch_size=batch_size, device=device))
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise HarnessError(
                "backend 'vllm' needs vllm on a GPU host: pip install 'fusion-harness[vllm]'", "eval"
            )
        if model.gguf_file:
            raise HarnessError("GGUF models run with backend 'hf' only", "eval")
        return get_model("vllm").create_from_arg_obj(
            {"pretrained": model.pretrained, "dtype": "auto", **({"trust_remote_code": True} if trust_remote_code else {})},
            {"batch_size": batch_size},
        )
    cuda = torch.cuda.is_available()
    args: dict[str, Any] = {
        "pretrained": model.pretrained,
        "dtype": "auto" if cuda else "float32",
        **model.hf_kwargs(),
        **({"trust_remote_code": True} if trust_remote_code else {}),  # only when the experiment asked for it
    }
    lm = get_model("hf").create_from_arg_obj(
        args, {"batch_size": batch_size, "device": "cuda" if cuda else "cpu"}
    )
    return _share_documents(lm)


def _share_documents(lm: Any) -> Any:
    """Under several processes, each evaluates its share of the documents and rank 0 gathers them.

    lm-eval's HFLM does this itself across GPUs; on CPU processes (gloo) it leaves every process evaluating
    everything, so the harness hands it accelerate's process layout the same way.
    """
    if distributed.world_size() <= 1 or lm.world_size > 1:
        return lm
    from accelerate import Accelerator

    lm.accelerator = Accelerator()
    lm._rank, lm._world_size = lm.accelerator.process_index, lm.accelerator.num_processes
    return lm


# ---------------------------------------------------------------- running one task


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [OfflineModeIsEnabled, LocalEntryNotFoundError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.exceptions.ConnectionError)
    with contextlib.suppress(ImportError):
        import httpx

        errors.append(httpx.TransportError)
    return tuple(errors)


@contextlib.contextmanager
def _datasets_offline(enabled: bool) -> Iterator[None]:
    """HF_DATASETS_OFFLINE=1 while only local files are read (env for later imports, config for this one)."""
    if not enabled:
        yield
        return
    import datasets.config

    old_env, old_cfg = os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_DATASETS_OFFLINE
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_OFFLINE = old_cfg
        if old_env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = old_env


def _has_chat_template(lm: Any) -> bool:
    return bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))


def _prompt(row: dict[str, Any]) -> str:
    """The context of a logged sample's first request: the prompt lm-eval built for the document (partial-scoring
    tasks such as WinoGrande build one per option; the first is kept)."""
    args = row.get("arguments") or []
    first = args[0] if args else None
    if isinstance(first, dict):  # lm-eval's serialised form {"gen_args_0": {"arg_0": ..., "arg_1": ...}}
        first = next(iter(first.values()), {})
        return str(first.get("arg_0", "")) if isinstance(first, dict) else str(first)
    if isinstance(first, (list, tuple)) and first:
        return str(first[0])
    return ""


def _request_args(row: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The arguments of each request of a logged sample, as tuples (lm-eval logs tuples, or serialises them as
    {"gen_args_0": {"arg_0": ..., "arg_1": ...}})."""
    args = row.get("arguments") or []
    if isinstance(args, dict):
        return [tuple(a.values()) if isinstance(a, dict) else (a,) for a in args.values()]
    return [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in args]


def _answers(task: Any, row: dict[str, Any], metric: str) -> dict[str, Any]:
    """The gold answer and the model's answer of one document, as text a reader compares (`harness flips`).

    Generation tasks: the reference and the generated answer under the kept filter (its extraction, e.g. gsm8k's
    number), with the raw generation when it differs. Multiple choice: the gold option(s) and the option the metric
    picked (the highest log-likelihood, per character for `acc_norm`, as lm-eval scores it), with their indices."""
    target = row.get("target")
    if task.get_config("output_type") != "multiple_choice":
        resps, raw = row.get("filtered_resps") or [], row.get("resps") or []
        answer = resps[0] if resps else ""
        out = {"gold": str(target), "answer": str(answer[0] if isinstance(answer, (list, tuple)) and answer else answer)}
        first_raw = raw[0][0] if raw and isinstance(raw[0], (list, tuple)) and raw[0] else None
        if isinstance(first_raw, str) and first_raw != out["answer"]:
            out["generation"] = first_raw
        return out
    choices = [str(c) for c in task.doc_to_choice(row["doc"])]
    lls = np.array([float(r[0]) for r in (row.get("filtered_resps") or [])[: len(choices)]])
    if lls.size != len(choices) or not choices:
        return {"gold": str(target), "answer": ""}
    scores = lls / np.array([max(1.0, float(len(c))) for c in choices]) if metric == "acc_norm" else lls
    pick = int(np.argmax(scores))
    if getattr(task, "multiple_input", False):  # partial scoring (WinoGrande): the options are the contexts
        target = task.doc_to_text(row["doc"])
    golds = target if isinstance(target, list) else [target]
    gold_idx = [g if isinstance(g, int) else (choices.index(g) if g in choices else -1) for g in golds]
    gold_text = " | ".join(choices[g] if 0 <= g < len(choices) else str(g) for g in gold_idx)
    return {"gold": gold_text, "answer": choices[pick], "gold_index": gold_idx if len(gold_idx) > 1 else gold_idx[0],
            "answer_index": pick}  # fmt: skip


def _run_task(
    lm: Any, task_manager: Any, plan: _Plan, limit: int | None, max_gen_toks: int
) -> tuple[TaskScore, list[dict], list[dict]] | None:
    """One task through lm-eval: its score, one per-sample row per document, and the prompt of each document with
    its gold answer and the model's answer."""
    import lm_eval.evaluator
    from lm_eval import simple_evaluate

    # lm-eval records `git describe` of the current directory (and prints git's error outside a repository);
    # the harness records its own git sha in the run manifest instead.
    lm_eval.evaluator.get_git_commit_hash = git_sha

    info, name = plan.info, plan.lm_eval_name
    try:
        loaded = task_manager.load([name])
    except _network_errors() as exc:
        raise HarnessError(f"{info.name}: lm-eval's built-in data could not be fetched from the Hugging Face hub "
                           f"({exc.__class__.__name__}); set HARNESS_DATA_DIR or --data-dir to a folder laid out as "
                           "shared/data (see docs/evaluation.md)", "data") from None  # fmt: skip
    obj = loaded["groups"].get(name) or loaded["tasks"][name]
    for task in loaded["tasks"].values():
        # The plan's shots go into every task's config: lm-eval's own `num_fewshot` argument never overrides a
        # config that states one (gsm8k's 5, a 0 anywhere), so passing it would silently run other settings.
        task.set_config(key="num_fewshot", value=info.fewshot)
        if task.get_config("output_type") == "generate_until":  # cap generation: the task's own cap if smaller
            gen = dict(task.get_config("generation_kwargs") or {})
            gen["max_gen_toks"] = (
                min(int(gen["max_gen_toks"]), max_gen_toks) if gen.get("max_gen_toks") else max_gen_toks
            )
            task.set_config(key="generation_kwargs", value=gen)
    chat = info.chat and _has_chat_template(lm)
    res = simple_evaluate(
        model=lm, tasks=[obj], num_fewshot=None, limit=limit, task_manager=task_manager, log_samples=True,
        apply_chat_template=chat, fewshot_as_multiturn=chat, bootstrap_iters=1000, **EVAL_SEEDS,
    )  # fmt: skip
    if res is None:  # a non-zero rank of a multi-process run: rank 0 has the gathered results
        return None
    shots = {int(res["n-shot"][sub]) for sub in loaded["tasks"]}
    if shots != {info.fewshot}:
        raise HarnessError(f"{info.name}: lm-eval ran {sorted(shots)} shots where {info.fewshot} were planned", "eval")
    rows: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []
    for sub in sorted(loaded["tasks"]):  # one leaf for a task, the subtasks in name order for a group
        by_filter: dict[str, dict[int, dict[str, Any]]] = {}
        for r in res["samples"][sub]:
            by_filter.setdefault(r["filter"], {})[r["doc_id"]] = r
        head = by_filter.get(info.filter)
        if head is None:
            raise HarnessError(f"{info.name}: lm-eval logged no samples for filter '{info.filter}'", "eval")
        for doc in sorted(head):
            r = head[doc]
            row: dict[str, Any] = {"doc_id": len(rows), "doc_hash": r["doc_hash"], "prompt_hash": r["prompt_hash"],
                                   "shots": info.fewshot, info.metric: float(r[info.metric])}  # fmt: skip
            for extra in info.also_filters:
                row[f"{info.metric},{extra}"] = float(by_filter[extra][doc][info.metric])
            row.update(_per_document_extras(loaded["tasks"][sub], sub, r, info))
            rows.append(row)
            prompts.append({"doc_id": row["doc_id"], "doc_hash": r["doc_hash"], "prompt": _prompt(r),
                            **_answers(loaded["tasks"][sub], r, info.metric)})  # fmt: skip
    agg = res["results"][name]
    stderr = agg.get(f"{info.metric}_stderr,{info.filter}")
    score = TaskScore(
        info.name, info.metric, float(agg[f"{info.metric},{info.filter}"]),
        float(stderr) if isinstance(stderr, (int, float)) else None, len(rows), info.category, info.binary,
        filter=info.filter, shots=info.fewshot, limit=limit, version=_version(res, name), data=plan.data,
        filters={f: float(agg[f"{info.metric},{f}"]) for f in info.also_filters},
    )  # fmt: skip
    return score, rows, prompts


def _per_document_extras(task: Any, subtask: str, sample: dict[str, Any], info: task_catalog.TaskInfo) -> dict[str, Any]:
    """Beside the metric: the answer's log-probability margin (multiple-choice tasks) and the document's cluster
    (the catalog's `cluster` field, or a user YAML's `metadata.cluster`; the subtask when a group's documents lack
    the field), for clustered standard errors (harness/analysis/clusters.py)."""
    out: dict[str, Any] = {}
    found = sample_margin(task, sample, info.metric)
    if found is not None:
        out[MARGIN_FIELD] = found
    field = info.cluster or ((task.config.metadata or {}).get("cluster") if hasattr(task, "config") else None)
    if field:
        value = (sample.get("doc") or {}).get(field, subtask)
        out["cluster"] = str(value)
    return out


def _version(res: dict[str, Any], name: str) -> str | None:
    found = (res.get("versions") or {}).get(name)
    return None if found is None else str(found)


# ---------------------------------------------------------------- the public entry point


def evaluate_model(
    model: ResolvedModel | tuple[Any, Any],
    label: str,
    tasks: list[str],
    *,
    out_dir: Path,
    limit: int | Mapping[str, int | None] | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    data_dir: Path | None = None,
    sandbox_root: Path | None = None,
    backend: str = "hf",
    cache_dir: Path | None = None,
    progress: bool = True,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, TaskScore]:
    """Evaluate `model` on `tasks` (names or groups); writes out_dir/<label>/<task>.jsonl (one line per document:
    doc_id, doc_hash, prompt_hash, shots, the metric) and <task>.prompts.jsonl.gz, and returns the scores.

    `chat_template` replaces the tokenizer's own for chat-formatted tasks: the template the experiment gave this
    model (`chat_template` of its spec), so it is evaluated in the format it was fused in.

    Shots: `num_fewshot` if given, else the leaderboard's per-task settings when the `leaderboard` group was asked
    for, else each task's lm-eval default; fixed zero-shot tasks keep 0. They are set in every task's config, so
    they are the shots of every prompt. `max_gen_toks` caps generation (lm-eval's 256 by default; a task's own
    smaller cap wins). `model` is a ResolvedModel (folder, hub id, GGUF) or an in-memory
    (model, tokenizer) pair. `limit` None or 0 evaluates every document; a mapping gives each task name its own
    (tasks it lacks: every document). `data_dir` (default: $HARNESS_DATA_DIR) switches the real task names to
    local files; without it lm-eval's built-in tasks load from the hub.
    """
    names = expand_tasks(tasks)
    env_dir = os.environ.get("HARNESS_DATA_DIR")
    data_dir = data_dir or (Path(env_dir) if env_dir else None)
    cache_dir = cache_dir or default_cache_dir()
    limits = {n: (limit.get(n) if isinstance(limit, Mapping) else limit) or None for n in names}
    if data_dir is not None:
        offline_data.check_layout([n for n in names if n not in task_catalog.SANDBOX_TASKS], data_dir)
    group_shots = task_catalog.group_fewshot(tasks)
    plans = [_plan(n, data_dir, sandbox_root, cache_dir, num_fewshot, group_shots) for n in names]
    fingerprint = model_fingerprint(model, cache_dir)
    label_dir = out_dir / label
    scores: dict[str, TaskScore] = {}
    todo: list[tuple[_Plan, Path]] = []
    for plan in plans:
        key = {"format": CACHE_FORMAT, "model": fingerprint, "backend": backend, "task": plan.info.name,
               "definition": plan.definition, "shots": plan.info.fewshot, "limit": limits[plan.info.name], "max_gen_toks": max_gen_toks, "data": plan.data_key,
               "chat": plan.info.chat, "seeds": EVAL_SEEDS,
               **({"chat_template": chat_template} if chat_template is not None else {})}  # fmt: skip
        entry = cache_dir / "eval" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        if distributed.from_main(distributed.is_main() and verified(entry, "evaluation result")):
            scores[plan.info.name] = _cached(entry, label_dir, plan.info.name)
        else:
            todo.append((plan, entry))
    if todo:
        _evaluate_missing(model, todo, label_dir, limits, batch_size, max_gen_toks, backend, progress, scores,
                          chat_template, trust_remote_code)  # fmt: skip
    return {n: scores[n] for n in names}


def _evaluate_missing(
    model: ResolvedModel | tuple[Any, Any],
    todo: list[tuple[_Plan, Path]],
    label_dir: Path,
    limits: Mapping[str, int | None],
    batch_size: int,
    max_gen_toks: int,
    backend: str,
    progress: bool,
    scores: dict[str, TaskScore],
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> None:
    from lm_eval.tasks import TaskManager

    plans = [p for p, _ in todo]
    needs_builtin = any(p.yaml is None for p in plans)
    lm = _make_lm(model, backend, batch_size, trust_remote_code)
    if chat_template is not None:
        lm.tokenizer.chat_template = chat_template
    with tempfile.TemporaryDirectory(prefix="harness-tasks-") as tmp, _datasets_offline(not needs_builtin):
        _stage(plans, Path(tmp))
        has_local = any(p.yaml is not None for p in plans)
        tm = TaskManager(include_path=tmp if has_local else None, include_defaults=needs_builtin)
        for plan, entry in todo:
            start = time.perf_counter()
            found = _run_task(lm, tm, plan, limits[plan.info.name], max_gen_toks)
            if found is not None:
                score, rows, prompts = found
                _store(entry, score, rows, prompts)
                _cached(entry, label_dir, plan.info.name)
            distributed.barrier()
            if found is None:  # another process of this run: read what rank 0 stored
                score = _cached(entry, None, plan.info.name)
            scores[plan.info.name] = score
            if progress and found is not None:
                print(f"[eval] {plan.info.name}: {score.metric}={score.value:.4f} (n={score.n}, "
                      f"{time.perf_counter() - start:.1f}s)")  # fmt: skip


PROMPTS_SUFFIX = ".prompts.jsonl.gz"


def prompts_path(label_dir: Path, task: str) -> Path:
    """Where the prompt of every document of a per-sample file lies: `<task>.prompts.jsonl.gz` beside it."""
    return label_dir / f"{task}{PROMPTS_SUFFIX}"


def read_prompts(label_dir: Path, task: str) -> list[dict[str, Any]]:
    """[{doc_id, doc_hash, prompt, gold, answer, ...}] of one task of one label: the prompts lm-eval built, in doc_id
    order, with the gold answer and the model's (files written before CACHE_FORMAT 4 hold the prompt only)."""
    with gzip.open(prompts_path(label_dir, task), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_prompts(path: Path, prompts: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)
    atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))  # mtime 0: the same bytes every time


def _cached(entry: Path, label_dir: Path | None, task: str) -> TaskScore:
    """A cache entry's score, its per-sample rows and prompts copied into `label_dir` (by the main process only)."""
    if label_dir is not None and distributed.is_main():
        write_jsonl(label_dir / f"{task}.jsonl", read_jsonl(entry / "samples.jsonl"))
        atomic_write_bytes(prompts_path(label_dir, task), (entry / "prompts.jsonl.gz").read_bytes())
    return TaskScore(**json.loads((entry / "score.json").read_text()))


def _store(entry: Path, score: TaskScore, rows: list[dict[str, Any]], prompts: list[dict[str, Any]]) -> None:
    """Write a cache entry into a temporary folder, seal it and rename it: readers see a whole entry or none."""
    tmp = temp_dir(entry.parent, f".{entry.name}-")
    try:
        write_jsonl(tmp / "samples.jsonl", rows)
        _write_prompts(tmp / "prompts.jsonl.gz", prompts)
        atomic_write_json(tmp / "score.json", asdict(score))
        seal(tmp)
        with contextlib.suppress(OSError):  # a concurrent writer stored the same entry first
            tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
