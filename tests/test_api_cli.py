"""Every command of the CLI is a thin layer over a function of the Python API, exported from `harness`.

COMMANDS is the table: a command path (as typed after `harness`) -> the api functions it calls, the main one
first. A new command adds its row here; a command without one fails `test_every_command_has_its_api_function`
with its name.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import harness
from harness import api, cli
from harness.errors import HarnessError

COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run", "plan"),
    "sweep": ("sweep", "plan_sweep"),
    "ablate": ("ablate", "schedule_variants", "plan_sweep"),
    "eval": ("evaluate",),
    "report": ("compare", "versus", "against"),  # --versus and --against
    "plot": ("plot",),
    "verify": ("verify",),
    "methods": ("describe_methods", "shared_parameters"),
    "flips": ("flips",),
    "power": ("power",),
    "tasks": ("describe_tasks",),
    "sandbox build": ("build_sandbox",),
    "sandbox show": ("show_sandbox",),
    "signals inspect": ("inspect_signals",),
    "align compare": ("align_compare",),
}


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every leaf command under `group`, by its path."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


def _source(command: click.Command) -> str:
    """The command's code and that of the cli helpers it calls (as `_sweep` for run, sweep and ablate)."""
    assert command.callback is not None
    text = inspect.getsource(command.callback)
    for helper in sorted(set(re.findall(r"\b(_[a-z_]+)\(", text))):
        if inspect.isfunction(found := getattr(cli, helper, None)):
            text += inspect.getsource(found)
    return text


def test_every_command_has_its_api_function() -> None:
    commands = _commands(cli.main)
    missing = sorted(set(commands) - set(COMMANDS))
    assert not missing, f"`harness {missing[0]}` has no api function in tests/test_api_cli.py COMMANDS: add it to " \
        "harness/api.py, export it from harness/__init__.py and name it there"  # fmt: skip
    stale = sorted(set(COMMANDS) - set(commands))
    assert not stale, f"COMMANDS names `harness {stale[0]}`, which the CLI does not have"
    for path, functions in COMMANDS.items():
        for name in functions:
            assert callable(getattr(api, name, None)), f"`harness {path}`: harness/api.py has no function {name}"
            assert name in harness.__all__ and getattr(harness, name) is getattr(api, name), \
                f"`harness {path}`: {name} is not exported from harness/__init__.py"  # fmt: skip
        code = _source(commands[path])
        for name in functions:  # the command calls them, not code of its own
            assert re.search(rf"(?<![\w.])(api\.)?{name}\(", code), f"`harness {path}` does not call api.{name}"


def test_the_walker_names_a_command_without_an_api_function() -> None:
    @click.command("frobnicate")
    def frobnicate() -> None:
        """A command added without an api function."""

    cli.main.add_command(frobnicate)
    try:
        with pytest.raises(AssertionError, match="`harness frobnicate` has no api function"):
            test_every_command_has_its_api_function()
    finally:
        cli.main.commands.pop("frobnicate")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


def test_tasks_and_the_sandbox_from_python_are_what_the_cli_prints(micro_world) -> None:  # type: ignore[no-untyped-def]
    shown = _cli("tasks", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == harness.describe_tasks()

    summary = harness.show_sandbox("micro", 0, progress=False)
    assert summary["root"] == str(micro_world.root) and summary["target"] == micro_world.target
    assert set(summary["sources"]) == set(micro_world.models) and summary["fingerprint"]
    assert summary["reference"]["status"] in ("reference", "differs") and "reward_models" in summary
    shown = _cli("sandbox", "show", "--size", "micro", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == summary
    assert harness.build_sandbox("micro", 0, progress=False) == summary  # cached: the same world


def test_multi_process_settings_are_checked_by_the_api(tmp_path: Path) -> None:
    exp = harness.load_experiment("sandbox", {"sandbox.size": "micro", "eval.tasks": ["sandbox"]})
    with pytest.raises(HarnessError, match="needs --num-processes"):
        harness.run(exp, tmp_path, accelerate_config="fsdp")
    with pytest.raises(HarnessError, match="1 or more"):
        harness.sweep(exp, seeds=[0, 1], out=tmp_path, num_processes=0)
    with pytest.raises(HarnessError, match="unknown schedule 'sideways'"):
        harness.ablate(harness.schedule_variants(exp, ["linear", "sideways"]), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
