"""Bad input at the command line: one line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CASES = [
    (["run", "--method", "no-such-method", "--tasks", "sandbox"], "unknown method 'no-such-method'"),
    (["run", "--method", "profuser", "--tasks", "no_such_task"], "no_such_task"),
    (["run", "--preset", "missing.yaml", "--tasks", "sandbox"], "does not exist"),
    (["run", "--tasks", "sandbox", "--set", "trian.lr=1"], "unknown field"),
    (["run", "--tasks", "sandbox", "--set", "method.lam=3"], "method.lam"),
    (["run", "--tasks", "sandbox", "--limit", "-1"], "--limit"),
    (["run", "--tasks", "sandbox", "--schedule", "sideways"], "--schedule"),
    (["run", "--tasks", "sandbox", "--data-dir", "/no/such/dir"], "does not exist"),
    (["report", "/no/such/run"], "does not exist"),
    (["signals", "inspect", "."], "selection.json"),
    (["report", ".", "--versus", "profuser"], "--versus expects A:B"),
    (["run", "--tasks", "sandbox", "--accelerate-config", "fsdp"], "needs --num-processes"),
    (["run", "--tasks", "sandbox", "--num-processes", "2", "--accelerate-config", "nope.yaml"], "nope.yaml"),
    (["run", "--tasks", "sandbox", "--num-processes", "0"], "--num-processes"),
    (["eval", "--model", "sandbox:no-such-model", "--tasks", "sandbox", "--sandbox-size", "micro"], "not a sandbox model"),
]


def _harness(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "fragment"), CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(args: list[str], fragment: str, tmp_path: Path) -> None:
    proc = _harness([*args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_bad_yaml_preset(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("target: [unclosed\n")
    proc = _harness(["run", "--preset", "bad.yaml", "--tasks", "sandbox"], tmp_path)
    assert proc.returncode == 2 and "not valid YAML (line" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_launch_config_that_forms_no_process_group_is_one_line(tmp_path: Path) -> None:
    """Before any process starts: a config of distributed type NO, and DeepSpeed where it cannot run."""
    (tmp_path / "none.yaml").write_text("distributed_type: 'NO'\nnum_processes: 2\n")
    for config, fragment in (("none.yaml", "forms no group of 2 processes"), ("zero3", "DeepSpeed")):
        proc = _harness(["run", "--tasks", "sandbox", "--num-processes", "2", "--accelerate-config", config], tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "results").exists()


def test_help_has_examples(tmp_path: Path) -> None:
    for cmd in (["run"], ["ablate"], ["report"], ["plot"], ["eval"], ["methods"], ["tasks"], ["sandbox", "build"]):
        proc = _harness([*cmd, "--help"], tmp_path)
        assert proc.returncode == 0 and "Example" in proc.stdout, cmd


def test_methods_lists_the_four(tmp_path: Path) -> None:
    proc = _harness(["methods"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("profuser", "fusellm", "inference-only", "averaging"):
        assert name in proc.stdout


def test_eval_takes_sandbox_models_and_tasks(tmp_path: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    proc = _harness(["eval", "--model", "sandbox:gpt2-safety", "--tasks", "sandbox_safety", "--limit", "6",
                     "--sandbox-size", "micro", "-q"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = list((tmp_path / "results").iterdir())
    lines = (run / "eval" / "sandbox-gpt2-safety" / "sandbox_safety.jsonl").read_text().splitlines()
    assert len(lines) == 6
    used = json.loads((run / "manifest.json").read_text())["sandbox_world"]  # which world was evaluated
    assert used["fingerprint"] == json.loads((micro_world.root / "world.json").read_text())["fingerprint"]


def test_launch_command_for_cpu_processes_and_shipped_configs() -> None:
    from harness import distributed

    argv = ["run", "-t", "sandbox", "--num-processes", "2", "--accelerate-config=zero3", "--seed", "3"]
    assert distributed.strip_launch_options(argv) == ["run", "-t", "sandbox", "--seed", "3"]
    cmd, env = distributed.launch_command(["run"], 2, None, cuda=False)
    assert env["ACCELERATE_USE_CPU"] == "1" and env[distributed.LAUNCHED_ENV] == "1"
    assert cmd[-3:] == ["-m", "harness.cli", "run"] and "--multi_gpu" in cmd and "--cpu" not in cmd
    cmd, env = distributed.launch_command(["run"], 8, "fsdp", cuda=True)
    config = Path(cmd[cmd.index("--config_file") + 1])
    assert config.name == "fsdp.yaml" and config.is_file() and "ACCELERATE_USE_CPU" not in env
    assert cmd[cmd.index("--num_processes") + 1] == "8"


def test_real_benchmarks_of_sandbox_specialists_add_the_sandbox_skills_unless_turned_off(tmp_path: Path) -> None:
    """The plan (what `--dry-run` prints) evaluates the sandbox skills beside a real benchmark, says why in one
    note, and evaluates only the tasks asked for with `eval.add_sandbox_skills=false`."""
    base = ["run", "-t", "mmlu,gsm8k", "--set", "sandbox.size=micro", "--dry-run"]
    proc = _harness(base, tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())  # rich wraps the plan at the terminal's width
    assert "evaluate: mmlu, gsm8k, sandbox_knowledge, sandbox_reasoning, sandbox_safety for" in text
    assert text.count("near chance on real benchmarks (mmlu, gsm8k); the sandbox skills in this table") == 1
    off = _harness([*base, "--set", "eval.add_sandbox_skills=false"], tmp_path)
    assert off.returncode == 0, off.stderr
    text = " ".join(off.stderr.split())
    assert "evaluate: mmlu, gsm8k for" in text and "sandbox skills (`-t sandbox`) show the fusion effect" in text
    alone = _harness(["run", "-t", "sandbox", "--set", "sandbox.size=micro", "--dry-run"], tmp_path)
    assert alone.returncode == 0 and "near chance" not in alone.stderr
