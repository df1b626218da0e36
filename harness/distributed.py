"""Several processes of one run: which one am I, agreeing on one answer, and starting them.

accelerate owns the processes and their group (`accelerate launch`, FSDP, DeepSpeed); this module only asks it
and never runs a process group of its own. Without a launcher a run is one process, every call here is free, and
accelerate is not imported at all.

What runs where (docs/design.md, "Several processes"): every process extracts its share of the signal shards,
trains its share of each global batch and evaluates its share of the documents; the main process alone makes the
run directory, writes the manifest, summary, tables and plots, and takes the cache locks that guard against other
runs.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

ACCELERATE_CONFIGS = ("fsdp", "zero2", "zero3")
LAUNCHED_ENV = "HARNESS_LAUNCHED"  # set in the children of `--num-processes`, so they never launch again


def world_size() -> int:
    """Processes in this run: WORLD_SIZE as set by accelerate's launchers (torchrun, DeepSpeed), else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def state() -> Any:
    """accelerate's PartialState, made CPU-aware: the first one made decides, and a bare `PartialState()` ignores
    `ACCELERATE_USE_CPU`, so CPU processes would each see a world of one (only `Accelerator()` reads that flag)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def rank() -> int:
    return int(state().process_index) if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        state().wait_for_everyone()


def from_main(value: T) -> T:
    """The main process's `value` on every process, so that all take the same branch (a run directory, a cache hit)."""
    if world_size() <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    state()  # the process group must exist before the broadcast
    return broadcast_object_list([value], from_process=0)[0]


# ------------------------------------------------------------------------------------------------ launching


def accelerate_config_file(name_or_path: str) -> Path:
    """`fsdp`, `zero2`, `zero3` (shipped in harness/accelerate_configs) or the path of a user's accelerate config."""
    if name_or_path in ACCELERATE_CONFIGS:
        return Path(str(resources.files("harness").joinpath(f"accelerate_configs/{name_or_path}.yaml")))
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise HarnessError(
            f"accelerate config '{name_or_path}' is neither {', '.join(ACCELERATE_CONFIGS)} nor a file", "cli"
        )
    return path


def launch_command(
    args: list[str], num_processes: int, accelerate_config: str | None, cuda: bool, module: str = "harness.cli"
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line (and environment) that runs `python -m MODULE ARGS` (by default the
    `harness` command) in `num_processes` processes.

    With a config file its distributed type rules (FSDP, DeepSpeed); without one: plain data parallel, over GPUs
    when there are some, else over CPU processes with gloo (accelerate's MULTI_CPU: `ACCELERATE_USE_CPU=1` plus
    `--multi_gpu`, because `--cpu --num_processes N` alone goes through mpirun).
    """
    env = {LAUNCHED_ENV: "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        launcher += ["--config_file", str(accelerate_config_file(accelerate_config))]
    else:
        launcher += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no",
                     "--mixed_precision", "bf16" if cuda else "no"]  # fmt: skip
        if not cuda:
            env["ACCELERATE_USE_CPU"] = "1"
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")  # N processes share the cores
    return [*launcher, "-m", module, *args], env


def strip_launch_options(argv: list[str]) -> list[str]:
    """argv without `--num-processes N` / `--accelerate-config X` (either `--opt V` or `--opt=V`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--num-processes", "--accelerate-config"):
            skip = True
            continue
        if arg.startswith(("--num-processes=", "--accelerate-config=")):
            continue
        out.append(arg)
    return out


def relaunch(argv: list[str], num_processes: int, accelerate_config: str | None, module: str = "harness.cli") -> int:
    """Run `python -m MODULE ARGV` under `accelerate launch`; returns its exit code."""
    import subprocess

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda and accelerate_config is None and num_processes > torch.cuda.device_count():
        raise HarnessError(
            f"--num-processes {num_processes} asks for more processes than the {torch.cuda.device_count()} GPUs here",
            "cli",
        )
    command, env = launch_command(strip_launch_options(argv), num_processes, accelerate_config, cuda, module)
    return subprocess.run(command, env={**os.environ, **env}, check=False).returncode


def launched() -> bool:
    """True inside processes started by `relaunch` or any accelerate launcher."""
    return os.environ.get(LAUNCHED_ENV) == "1" or world_size() > 1
