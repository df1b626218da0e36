"""Bad input, table-driven: every case is one line naming the problem, exit code 2, no traceback, nothing written.

Each case runs the real command line in process (click's CliRunner on `harness.cli.main`), mostly with
`--dry-run`, so every check is shown to happen at plan time, before any model is loaded or any file written.
The files the cases point at (presets, corpora, data dirs, run directories) are made once per module in the
shapes the harness writes them, then broken one way each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main

RUN = ["run", "-m", "profuser", "-t", "sandbox", "--dry-run"]
F = "{F}"  # replaced by the folder of broken files

# ------------------------------------------------------------------ numbers: each bound of each field

NUMBERS: dict[str, list[str]] = {
    "train.epochs": [".inf", ".nan", "1e400", "-1", "0", "1.0e+9"],
    "train.lr": [".inf", "-.inf", ".nan", "0", "-1.0e-4", "1.0e+9"],
    "train.max_steps": ["0", "-3", "1000000000000", "1.5", "abc"],
    "train.batch_size": ["0", "-8", "1e23", "100000000000000000000000", "[1]"],
    "train.grad_accum": ["0", "99999999"],
    "train.warmup_ratio": ["1.5", "-0.1", ".nan"],
    "train.max_grad_norm": ["0", ".inf"],
    "train.weight_decay": ["-1", ".inf"],
    "train.max_length": ["4", "10000000000"],
    "train.checkpoint_every": ["-1", "100000000000"],
    "train.log_every": ["0"],
    "method.lam": ["1.5", "-0.1", ".nan"],
    "method.beta": ["-1", ".inf", "1e400"],
    "method.temperature": ["0", ".inf", "-1", "1e400", ".nan"],
    "method.schedule.switch": ["2", "-1", ".nan"],
    "method.schedule.stage1": ["[.inf, 1]", "[-1, 0]", "[1]", "x"],
    "method.schedule.stage2": ["[.nan, 1]"],
    "signals.top_k": ["0", "1000"],
    "signals.max_length": ["2"],
    "signals.batch_size": ["0", "100000000"],
    "signals.shard_size": ["0", "100000000000"],
    "signals.gen_temperature": ["0", ".inf"],
    "signals.max_new_tokens": ["0"],
    "signals.vllm.gpu_memory_utilization": ["0", "1.5"],
    "signals.vllm.tensor_parallel_size": ["0"],
    "eval.limit": ["-1", "100000000000000000000", "1.0e+30"],
    "eval.batch_size": ["0", "1e23"],
    "eval.num_fewshot": ["-1", "100000"],
    "eval.max_gen_toks": ["0"],
    "eval.task_limits": ["{sandbox: -1}", "{sandbox: 100000000000000}"],
    "corpus.limit": ["0", "-5", "100000000000000"],
    "sandbox.seed": ["-1", "4294967296"],
    "seed": ["-1", "4294967296", "1208925819614629174706176", "1.5", "abc"],
    "train.lora": ["{r: 0}", "{dropout: 1}", "{alpha: 0}"],
}

CASES: list[tuple[str, list[str], str]] = [
    (f"{field}={value}", [*RUN, "--set", f"{field}={value}"], field)
    for field, values in NUMBERS.items()
    for value in values
]

# ------------------------------------------------------------------ --set paths and values

CASES += [
    ("set-through-string", [*RUN, "--set", "target.path.x=1"], "target.path is a value"),
    ("set-through-float", [*RUN, "--set", "train.lr.x=1"], "train.lr is a value"),
    ("set-through-list-item", [*RUN, "--set", "sources.0.path.x=1"], "sources.0.path is a value"),
    ("set-list-index-out-of-range", [*RUN, "--set", "sources.9.path=x"], "'9' in 'sources.9.path' is not an index"),
    ("set-list-by-name", [*RUN, "--set", "sources.x.path=y"], "not an index"),
    ("set-through-method-name", [*RUN, "--set", "method.name.x=1"], "method.name is a value"),
    ("set-through-task-name", [*RUN, "--set", "eval.tasks.0.x=1"], "eval.tasks.0 is a value"),
    ("set-empty-component", [*RUN, "--set", "train..lr=1"], "is not a field path"),
    ("set-dots-only", [*RUN, "--set", "..=1"], "is not a field path"),
    ("set-leading-dot", [*RUN, "--set", ".lr=1"], "is not a field path"),
    ("set-without-equals", [*RUN, "--set", "train.lr"], "--set expects KEY=VALUE"),
    ("set-empty-key", [*RUN, "--set", "=3"], "is not a field path"),
    ("set-unknown-field", [*RUN, "--set", "trian.lr=1"], "unknown field"),
    ("set-unknown-nested-field", [*RUN, "--set", "train.lrr=1"], "unknown field"),
    ("set-bad-yaml-value", [*RUN, "--set", "train.lr=[unclosed"], "does not parse"),
    ("set-sources-scalar", [*RUN, "--set", "sources=5"], "sources"),
    ("set-sources-empty", [*RUN, "--set", "sources=[]"], "sources"),
    ("set-target-null", [*RUN, "--set", "target=null"], "target"),
    ("set-sandbox-null", [*RUN, "--set", "sandbox=null"], "needs a `sandbox:` section"),
    ("set-kl-direction", [*RUN, "--set", "method.kl_direction=sideways"], "method.kl_direction"),
    ("set-precision", [*RUN, "--set", "train.precision=fp8"], "train.precision"),
    ("set-backend", [*RUN, "--set", "eval.backend=tgi"], "eval.backend"),
    ("set-judges-without-models", [*RUN, "--set", "judges.kind=reward-models"], "needs judges.models"),
    ("set-jsonl-without-path", [*RUN, "--set", "corpus.source=jsonl"], "needs corpus.path"),
    ("task-limits-unknown-task", [*RUN, "--set", "eval.task_limits={nosuch: 5}"], "nosuch"),
]

# ------------------------------------------------------------------ names and labels

BAD_NAMES = ["../x", "/abs", "a/b", ".", "..", " sp", "x y", "-lead", "é", "a\\b", "x" * 101, ".hidden", "a:b", "x\ty"]
CASES += [(f"source-name-{i}", [*RUN, "--set", f"sources.0.name={json.dumps(n)}"], "is not allowed") for i, n in enumerate(BAD_NAMES)]
CASES += [
    ("source-name-empty", [*RUN, "--set", "sources.0.name=''"], "sources[0].name"),
    ("target-name-traversal", [*RUN, "--set", "target.name=../../x"], "is not allowed"),
    ("source-named-like-method", [*RUN, "--set", "sources.0.name=profuser"], "reserved for the row of method 'profuser'"),
    ("source-named-like-baseline", [*RUN, "--set", "sources.1.name=target-base"], "reserved for the unfused target"),
    ("target-named-like-method", [*RUN, "--set", "target.name=profuser"], "reserved"),
    ("target-named-like-baseline", [*RUN, "--set", "target.name=target-base"], "reserved"),
    ("source-named-like-other-method", ["run", "-m", "fusellm", "-t", "sandbox", "--dry-run", "--set", "sources.0.name=fusellm"], "reserved"),
    ("two-sources-one-name", [*RUN, "--set", "sources.1.name=neox-reasoning"], "used twice"),
    ("source-named-like-target", [*RUN, "--set", "sources.0.name=llama-knowledge"], "used twice"),
    ("method-name-traversal", ["run", "-m", "../x", "-t", "sandbox", "--dry-run"], "method name '../x' is not allowed"),
    ("method-unknown", ["run", "-m", "nosuch", "-t", "sandbox", "--dry-run"], "unknown method 'nosuch'"),
]

# ------------------------------------------------------------------ flags

CASES += [
    ("seed-negative", ["run", "-t", "sandbox", "--dry-run", "--seed", "-5"], "--seed"),
    ("seed-2**32", ["run", "-t", "sandbox", "--dry-run", "--seed", str(2**32)], "--seed"),
    ("seed-2**80", ["run", "-t", "sandbox", "--dry-run", "--seed", str(2**80)], "--seed"),
    ("seed-text", ["run", "-t", "sandbox", "--dry-run", "--seed", "abc"], "--seed"),
    ("limit-negative", ["run", "-t", "sandbox", "--dry-run", "--limit", "-1"], "--limit"),
    ("limit-1e30", ["run", "-t", "sandbox", "--dry-run", "--limit", "1e30"], "--limit"),
    ("limit-float", ["run", "-t", "sandbox", "--dry-run", "--limit", "2.5"], "--limit"),
    ("tasks-empty", ["run", "-t", ",", "--dry-run"], "empty"),
    ("tasks-unknown", ["run", "-t", "nosuch_task", "--dry-run"], "nosuch_task"),
    ("schedule-unknown", ["run", "-t", "sandbox", "--dry-run", "--schedule", "sideways"], "--schedule"),
    ("ablate-schedule-unknown", ["ablate", "-t", "sandbox", "--schedule", "linear,sideways"], "unknown schedule 'sideways'"),
    ("num-processes-0", ["run", "-t", "sandbox", "--num-processes", "0"], "--num-processes"),
    ("accelerate-config-alone", ["run", "-t", "sandbox", "--accelerate-config", "fsdp"], "needs --num-processes"),
    ("lora-bad", ["run", "-t", "sandbox", "--dry-run", "--lora", "r=abc"], "lora"),
    ("sandbox-seed-negative", ["sandbox", "show", "--seed", "-1"], "--seed"),
    ("sandbox-size-unknown", ["sandbox", "show", "--size", "huge"], "--size"),
]

# ------------------------------------------------------------------ presets

CASES += [
    ("preset-folder", ["run", "-t", "sandbox", "--dry-run", "--preset", F], "is a folder"),
    ("preset-missing", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/missing.yaml"], "does not exist"),
    ("preset-unknown-name", ["run", "-t", "sandbox", "--dry-run", "--preset", "nosuchpreset"], "unknown preset"),
    ("preset-not-utf8", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/latin1.yaml"], "not UTF-8"),
    ("preset-list", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/list.yaml"], "must be a YAML mapping"),
    ("preset-scalar", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/scalar.yaml"], "must be a YAML mapping"),
    ("preset-empty", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/empty.yaml"], "must be a YAML mapping"),
    ("preset-bad-yaml", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/broken.yaml"], "not valid YAML (line"),
    ("preset-python-tag", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/unsafe.yaml"], "not valid YAML"),
    ("preset-method-string+flag", ["run", "-m", "profuser", "-t", "sandbox", "--dry-run", "--preset", f"{F}/method-string.yaml"],
     "method is a value (str), not a section"),
    ("preset-method-string", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/method-string.yaml"], "method"),
    ("preset-unknown-field", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/unknown-field.yaml"], "unknown field"),
    ("preset-no-sources", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/no-sources.yaml"], "sources"),
    ("preset-target-without-path", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/target-no-path.yaml"], "target.path"),
    ("preset-duplicate-names", ["run", "-t", "sandbox", "--dry-run", "--preset", f"{F}/duplicate-names.yaml"], "used twice"),
]

# ------------------------------------------------------------------ models

CASES += [
    ("model-text-file", [*RUN, "--set", f"target.path={F}/notes.txt"], "is a file, not a model"),
    ("model-folder-without-model", [*RUN, "--set", f"target.path={F}/empty-folder"], "holds no model"),
    ("model-hub-id-offline", [*RUN, "--set", "target.path=hf:no-such-org/no-such-model"], "not in the local Hugging Face cache"),
    ("model-bare-hub-id-offline", [*RUN, "--set", "sources.0.path=no-such-org/no-such-model"], "not in the local Hugging Face cache"),
    ("model-two-unresolved", [*RUN, "--set", "target.path=hf:a-org/a", "--set", f"sources.1.path={F}/empty-folder"],
     "cannot load 2 model(s): target.path"),
    ("model-invalid-hub-id", [*RUN, "--set", "target.path=hf:bad id//x"], "not a valid hub id"),
    ("model-gguf-missing", [*RUN, "--set", f"target.path=gguf:{F}#missing.gguf"], "does not exist"),
    ("model-gguf-no-file", [*RUN, "--set", "target.path=gguf:nofile"], "gguf:<folder>#<file.gguf>"),
    ("model-sandbox-unknown", [*RUN, "--set", "sources.0.path=sandbox:nosuch"], "not a sandbox model"),
    ("model-missing-path", [*RUN, "--set", f"target.path={F}/no/such/model"], "does not exist"),
    ("judge-model-offline", [*RUN, "--set", "judges.kind=reward-models", "--set", "judges.models=[hf:no-org/rm]"],
     "judges.models[0]"),
]

# models missing only because the hub is (offline, not cached): the dry run shows its plan before the error line
HUB_ONLY = {"model-hub-id-offline", "model-bare-hub-id-offline", "judge-model-offline"}

# ------------------------------------------------------------------ corpus files


def _corpus(name: str) -> list[str]:
    return [*RUN, "--set", "corpus.source=jsonl", "--set", f"corpus.path={F}/{name}"]


CASES += [
    ("corpus-missing", _corpus("missing.jsonl"), "does not exist"),
    ("corpus-folder", _corpus("empty-folder"), "is a folder"),
    ("corpus-not-utf8", _corpus("latin1.jsonl"), "line 2 is not UTF-8"),
    ("corpus-scalar-row", _corpus("scalar.jsonl"), "corpus"),
    ("corpus-bad-json", _corpus("badjson.jsonl"), "line 2 is not valid JSON"),
    ("corpus-missing-field", _corpus("nofield.jsonl"), "corpus"),
    ("corpus-json-not-array", _corpus("object.json"), "JSON array"),
    ("corpus-json-scalars", _corpus("scalars.json"), "corpus"),
    ("corpus-unset-variable", [*RUN, "--set", "corpus.source=jsonl", "--set", "corpus.path=$NO_SUCH_VAR_XYZ/c.jsonl"],
     "unset environment variable"),
]

# ------------------------------------------------------------------ benchmark data dirs


def _data(name: str, task: str = "gsm8k") -> list[str]:
    return ["run", "-m", "profuser", "-t", task, "--dry-run", "--data-dir", f"{F}/{name}"]


CASES += [
    ("data-dir-missing", _data("no-such-dir"), "does not exist"),
    ("data-gsm8k-not-utf8", _data("data-latin1"), "not UTF-8"),
    ("data-gsm8k-scalar-row", _data("data-scalar"), "not an object"),
    ("data-gsm8k-bad-json", _data("data-badjson"), "not JSON"),
    ("data-gsm8k-missing-field", _data("data-nofield"), "missing field(s) answer"),
    ("data-gsm8k-missing-file", _data("data-notrain"), "gsm8k needs"),
    ("data-truthfulqa-not-a-list", _data("data-tqa", "truthfulqa"), "truthfulqa"),
    ("data-mmlu-wrong-columns", _data("data-mmlu", "mmlu"), "expected 6 columns"),
    ("data-advbench-no-header", _data("data-advbench", "advbench"), "missing column(s)"),
]

# ------------------------------------------------------------------ folders

CASES += [
    ("out-is-a-file", [*RUN, "--out", f"{F}/notes.txt"], "--out"),
    ("cache-dir-is-a-file", [*RUN, "--set", f"cache_dir={F}/notes.txt"], "is not a folder"),
    ("cache-dir-under-a-file", [*RUN, "--set", f"cache_dir={F}/notes.txt/cache"], "is not a folder"),
]

# ------------------------------------------------------------------ reading run directories


def _report(run: str) -> list[str]:
    return ["report", f"{F}/runs/{run}"]


SUMMARY_FAULTS = {
    "summary-list": "must hold a JSON object",
    "summary-latin1": "not UTF-8",
    "summary-string-value": "tasks.sandbox_knowledge.value must be a number",
    "summary-bad-json": "not valid JSON",
    "summary-no-tasks": "no 'tasks' mapping",
    "summary-string-n": ".n must be a number",
    "summary-sources-list": "'sources' must be a mapping",
    "summary-comparisons-dict": "'comparisons' must be a list",
    "summary-string-seed": "'seed' must be a whole number",
    "summary-method-number": "'method' must be a string",
    "summary-string-p": "p_adjusted must be a number",
    "summary-task-scalar": "must be a mapping with a 'value'",
    "summary-baseline-string": "'baseline' must be a mapping",
}
CASES += [(name, _report(name), fragment) for name, fragment in SUMMARY_FAULTS.items()]
CASES += [
    ("report-no-run", ["report", f"{F}/empty-folder"], "none of the 1 folder(s) is a finished run"),
    ("report-failed-run", _report("status-failed"), "none of the 1 folder(s) is a finished run"),
    ("report-killed-run", _report("status-running"), "none of the 1 folder(s) is a finished run"),
    ("report-missing-folder", ["report", f"{F}/no-such-run"], "does not exist"),
    ("report-bad-format", ["report", f"{F}/runs/good-a", "--format", "pdf"], "--format"),
    ("report-two-models-one-label", ["report", f"{F}/runs/eval-x", f"{F}/runs/eval-y"], "under one row label 'mine'"),
    ("versus-cut-line", ["report", f"{F}/runs/good-a", f"{F}/runs/versus-cut", "--versus", "profuser:fusellm"],
     "is not a UTF-8 JSON line"),
    ("versus-latin1-line", ["report", f"{F}/runs/good-a", f"{F}/runs/versus-latin1", "--versus", "profuser:fusellm"],
     "is not a UTF-8 JSON line"),
    ("versus-missing-metric", ["report", f"{F}/runs/good-a", f"{F}/runs/versus-nometric", "--versus", "profuser:fusellm"],
     "lacks a numeric 'doc_id' or metric"),
    ("versus-text-doc-id", ["report", f"{F}/runs/good-a", f"{F}/runs/versus-docid", "--versus", "profuser:fusellm"],
     "lacks a numeric 'doc_id'"),
    ("versus-one-method", ["report", f"{F}/runs/good-a", "--versus", "profuser"], "--versus expects A:B"),
    ("versus-same-method", ["report", f"{F}/runs/good-a", "--versus", "profuser:profuser"], "--versus expects A:B"),
    ("versus-absent-method", ["report", f"{F}/runs/good-a", "--versus", "profuser:averaging"], "no run of 'averaging'"),
    ("plot-failed-run", ["plot", f"{F}/runs/status-failed"], "none of the 1 folder(s)"),
    ("inspect-no-selection", ["signals", "inspect", f"{F}/empty-folder"], "no signals/selection.json"),
    ("inspect-bad-json", ["signals", "inspect", f"{F}/runs/selection-badjson"], "not valid JSON"),
    ("inspect-list", ["signals", "inspect", f"{F}/runs/selection-list"], "is malformed"),
    ("inspect-string-share", ["signals", "inspect", f"{F}/runs/selection-string"], "is malformed"),
    ("inspect-latin1", ["signals", "inspect", f"{F}/runs/selection-latin1"], "not UTF-8"),
    ("verify-no-manifest", ["verify", f"{F}/empty-folder"], "has no manifest.json"),
    ("verify-bad-manifest", ["verify", f"{F}/runs/manifest-badjson"], "the manifest itself is damaged"),
    ("verify-no-checksums", ["verify", f"{F}/runs/status-running"], "records no checksums"),
]

# ------------------------------------------------------------------ harness eval

EVAL = ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-good", "--model", f"{F}/model-folder"]
BAD_LABELS = ["../../x/eval/profuser", "/abs", "a/b", ".", "..", "", "a b", "x" * 101, "-x", ".hidden", "a\\b", "a\nb"]
CASES += [(f"eval-label-{i}", [*EVAL, "--label", label], "label") for i, label in enumerate(BAD_LABELS)]
CASES += [
    ("eval-label-baseline", [*EVAL, "--label", "target-base"], "names a row of fusion runs' tables"),
    ("eval-label-method", [*EVAL, "--label", "fusellm"], "names a row of fusion runs' tables"),
    ("eval-limit-negative", [*EVAL, "--limit", "-1"], "--limit"),
    ("eval-limit-1e30", [*EVAL, "--limit", "1e30"], "--limit"),
    ("eval-batch-size-0", [*EVAL, "--batch-size", "0"], "--batch-size"),
    ("eval-fewshot-negative", [*EVAL, "--num-fewshot", "-1"], "--num-fewshot"),
    ("eval-sandbox-seed-negative", [*EVAL, "--sandbox-seed", "-1"], "--sandbox-seed"),
    ("eval-model-text-file", ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-good", "--model", f"{F}/notes.txt"],
     "is a file, not a model"),
    ("eval-model-empty-folder", ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-good", "--model", f"{F}/empty-folder"],
     "holds no model"),
    ("eval-model-hub-offline", ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-good", "--model", "hf:no-org/no-model"],
     "not in the local Hugging Face cache"),
    ("eval-model-missing", ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-good", "--model", f"{F}/nope"], "does not exist"),
    ("eval-data-not-utf8", ["eval", "-t", "gsm8k", "--data-dir", f"{F}/data-latin1", "--model", f"{F}/model-folder"],
     "not UTF-8"),
    ("eval-out-is-a-file", [*EVAL, "--out", f"{F}/notes.txt"], "--out"),
]

# ------------------------------------------------------------------ the broken files


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


def _summary(method: str | None = "profuser", **changes: object) -> dict:
    scores = {t: {"metric": "acc", "value": 0.5, "stderr": 0.1, "n": 4, "category": "knowledge", "binary": True}
              for t in ("sandbox_knowledge",)}  # fmt: skip
    summary = {"run_id": "r", "method": method, "schedule": "progressive", "preset": "sandbox", "seed": 0,
               "models": {"target": "llama-knowledge", "sources": []}, "tasks": scores, "baseline": scores,
               "sources": {}, "comparisons": [], "timings_s": {}}  # fmt: skip
    summary.update(changes)
    return summary


def _run_dir(root: Path, name: str, summary: object = None, status: str = "done", samples: bytes | None = None,
             method: str = "profuser") -> Path:  # fmt: skip
    run = root / "runs" / name
    _write(run / "manifest.json", json.dumps({"status": status, "checksums": {}}))
    if summary is not None:
        _write(run / "summary.json", summary if isinstance(summary, (str, bytes)) else json.dumps(summary))
    rows = samples if samples is not None else b"".join(b'{"doc_id": %d, "acc": %d}\n' % (i, i % 2) for i in range(4))
    _write(run / "eval" / method / "sandbox_knowledge.jsonl", rows)
    return run


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    (root / "empty-folder").mkdir()
    _write(root / "notes.txt", "not a model\n")
    model = root / "model-folder"  # a folder that looks like a model: only its name and label are checked
    _write(model / "config.json", "{}")
    # presets
    _write(root / "latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    _write(root / "list.yaml", "- a\n- b\n")
    _write(root / "scalar.yaml", "5\n")
    _write(root / "empty.yaml", "")
    _write(root / "broken.yaml", "target: [unclosed\n")
    _write(root / "unsafe.yaml", "target: !!python/object/apply:os.system ['echo pwned']\n")
    sandbox = (Path(__file__).resolve().parents[1] / "harness" / "presets" / "sandbox.yaml").read_text()
    _write(root / "method-string.yaml", sandbox.split("\nmethod:")[0] + "\nmethod: profuser\n")
    _write(root / "unknown-field.yaml", sandbox + "\ncolour: blue\n")
    _write(root / "no-sources.yaml", "target: {name: t, path: sandbox:llama-knowledge}\nsources: []\nsandbox: {size: micro}\n")
    _write(root / "target-no-path.yaml", "target: {name: t}\nsources: [{name: s, path: sandbox:gpt2-safety}]\n")
    _write(root / "duplicate-names.yaml", "target: {name: t, path: sandbox:llama-knowledge}\nsandbox: {size: micro}\n"
           "sources: [{name: s, path: sandbox:gpt2-safety}, {name: s, path: sandbox:neox-reasoning}]\n")  # fmt: skip
    # corpora
    good = '{"prompt": "p", "reference": "r"}\n'
    _write(root / "latin1.jsonl", good.encode() + '{"prompt": "caf\xe9", "reference": "r"}\n'.encode("latin-1"))
    _write(root / "scalar.jsonl", good + "5\n")
    _write(root / "badjson.jsonl", good + '{"prompt": "p", \n')
    _write(root / "nofield.jsonl", good + '{"prompt": "p"}\n')
    _write(root / "object.json", '{"prompt": "p", "reference": "r"}')
    _write(root / "scalars.json", "[1, 2, 3]")
    # benchmark data dirs (gsm8k, truthfulqa, mmlu, advbench shapes)
    row = '{"question": "1+1?", "answer": "2 #### 2"}\n'
    for name, test in {
        "data-good": row, "data-latin1": row.encode() + '{"question": "caf\xe9", "answer": "#### 1"}\n'.encode("latin-1"),
        "data-scalar": row + "[1, 2]\n", "data-badjson": row + "{oops\n", "data-nofield": row + '{"question": "q"}\n',
    }.items():  # fmt: skip
        _write(root / name / "gsm8k" / "test.jsonl", test)
        _write(root / name / "gsm8k" / "train.jsonl", row)
    _write(root / "data-notrain" / "gsm8k" / "test.jsonl", row)
    _write(root / "data-tqa" / "truthfulqa" / "v0" / "mc_task.json", '{"question": "q"}')
    _write(root / "data-mmlu" / "mmlu" / "hendrycks_format" / "test" / "anatomy_test.csv", "q,a,b\n")
    _write(root / "data-mmlu" / "mmlu" / "hendrycks_format" / "dev" / "anatomy_dev.csv", "q,a,b,c,d,A\n")
    _write(root / "data-advbench" / "advbench" / "harmful_behaviors.csv", "x,y\n1,2\n")
    # run directories, each broken in one way
    for name in SUMMARY_FAULTS:
        _run_dir(root, name, _summary())
    s = _summary()
    _write(root / "runs" / "summary-list" / "summary.json", "[1, 2]")
    _write(root / "runs" / "summary-latin1" / "summary.json", json.dumps(s).replace("profuser", "caf\xe9").encode("latin-1"))
    s["tasks"]["sandbox_knowledge"]["value"] = "0.5"
    _write(root / "runs" / "summary-string-value" / "summary.json", json.dumps(s))
    _write(root / "runs" / "summary-bad-json" / "summary.json", json.dumps(_summary())[:-20])
    _write(root / "runs" / "summary-no-tasks" / "summary.json", json.dumps(_summary(tasks=None)))
    s = _summary()
    s["tasks"]["sandbox_knowledge"]["n"] = "four"
    _write(root / "runs" / "summary-string-n" / "summary.json", json.dumps(s))
    _write(root / "runs" / "summary-sources-list" / "summary.json", json.dumps(_summary(sources=[1])))
    _write(root / "runs" / "summary-comparisons-dict" / "summary.json", json.dumps(_summary(comparisons={"a": 1})))
    _write(root / "runs" / "summary-string-seed" / "summary.json", json.dumps(_summary(seed="0")))
    _write(root / "runs" / "summary-method-number" / "summary.json", json.dumps(_summary(method=3)))
    _write(root / "runs" / "summary-string-p" / "summary.json", json.dumps(_summary(comparisons=[{"p_adjusted": "0.01"}])))
    _write(root / "runs" / "summary-task-scalar" / "summary.json", json.dumps(_summary(tasks={"sandbox_knowledge": 0.5})))
    _write(root / "runs" / "summary-baseline-string" / "summary.json", json.dumps(_summary(baseline="none")))
    _run_dir(root, "status-failed", _summary(), status="failed")
    _run_dir(root, "status-running", _summary(), status="running")
    _run_dir(root, "good-a", _summary())
    for name, rows in {
        "versus-cut": b'{"doc_id": 0, "acc": 1}\n{"doc_id": 1, "ac',
        "versus-latin1": b'{"doc_id": 0, "acc": 1}\n{"doc_id": 1, "acc": 1, "x": "caf\xe9"}\n',
        "versus-nometric": b'{"doc_id": 0, "acc": 1}\n{"doc_id": 1}\n',
        "versus-docid": b'{"doc_id": "zero", "acc": 1}\n',
    }.items():
        _run_dir(root, name, _summary("fusellm"), samples=rows, method="fusellm")
    for name, sel in {"selection-badjson": b'{"training": ', "selection-list": b"[1]",
                      "selection-string": b'{"training": {"a": "50%"}}', "selection-latin1": b'{"x": "caf\xe9"}'}.items():  # fmt: skip
        _run_dir(root, name, _summary())
        _write(root / "runs" / name / "signals" / "selection.json", sel)
    for name in ("eval-x", "eval-y"):  # two `harness eval` runs of different models, both --label mine
        _run_dir(root, name, _summary(None, label="mine", model=name), method="mine")
    _run_dir(root, "manifest-badjson", _summary())
    _write(root / "runs" / "manifest-badjson" / "manifest.json", '{"status": ')
    return root


def test_there_are_at_least_150_distinct_bad_inputs() -> None:
    assert len({tuple(args) for _, args, _ in CASES}) == len(CASES) >= 150


@pytest.mark.parametrize(("name", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(name: str, args: list[str], fragment: str, broken: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    argv = [a.replace(F, str(broken)) for a in args]
    before = sorted(p.relative_to(broken) for p in broken.rglob("*"))
    result = CliRunner().invoke(main, argv)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("harness: report: skipped")]
    if name in HUB_ONLY:  # only the hub is missing: the dry run prints its plan first, then the one error line
        errors = [line for line in errors if line.startswith("harness: ")]
        assert errors == [lines[-1]], result.stderr
    assert len(errors) == 1 and errors[0].startswith("harness: "), result.stderr
    assert fragment.replace(F, str(broken)) in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()  # nothing written where results would go
    assert sorted(p.relative_to(broken) for p in broken.rglob("*")) == before  # nor beside the broken files
    assert os.environ.get("HARNESS_CACHE_DIR")  # the session cache, never the user's


API_CASES = [
    ("limit-1e30", {"limit": 1e30}, "limit must be a whole number"),
    ("limit-negative", {"limit": -1}, "limit must be a whole number"),
    ("limit-true", {"limit": True}, "limit must be a whole number"),
    ("batch-size-0", {"batch_size": 0}, "batch_size must be a whole number"),
    ("batch-size-huge", {"batch_size": 10**23}, "batch_size must be a whole number"),
    ("fewshot-float", {"num_fewshot": 2.5}, "num_fewshot must be a whole number"),
    ("label-traversal", {"label": "../../other-run/eval/profuser"}, "label '../../other-run/eval/profuser' is not allowed"),
]


@pytest.mark.parametrize(("name", "kwargs", "fragment"), API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_arguments_to_the_python_api_are_one_line(name: str, kwargs: dict, fragment: str, broken: Path, tmp_path: Path) -> None:
    import harness
    from harness.errors import HarnessError

    with pytest.raises(HarnessError) as info:
        harness.evaluate(str(broken / "model-folder"), ["gsm8k"], data_dir=broken / "data-good", out=tmp_path / "results", **kwargs)
    assert fragment in info.value.one_line() and "\n" not in info.value.one_line()
    assert not (tmp_path / "results").exists()
