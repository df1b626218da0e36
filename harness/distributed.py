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


def check_process_group() -> None:
    """A launch that names N processes must give a group of N: each process training alone is a one-line error
    (exit 2) before any work, never N separate runs that collide in the cache."""
    expected = world_size()
    if expected <= 1:
        return
    got = state()
    if got.num_processes != expected:
        raise HarnessError(
            f"the launch started {expected} processes but they formed no process group (accelerate sees "
            f"{got.num_processes}, {got.distributed_type.value}); on CPU processes give the config use_cpu: true "
            "or set ACCELERATE_USE_CPU=1",
            "launch",
        )


def fsdp_over_cpu_processes(accelerator: Any) -> None:
    """Give accelerate's own state its FSDP plugin when a launch asked for FSDP over CPU processes.

    accelerate (1.16) applies its FSDP plugin to accelerator devices only: over CPU processes (gloo, MULTI_CPU) it
    quietly trains data-parallel instead. torch's FSDP2 (`fully_shard`) runs on CPU tensors over gloo, so the
    launch's plugin (built from its FSDP_* environment, as accelerate builds it) is set on the state here, before
    `prepare`; from then on accelerate's own FSDP2 code paths shard the model, clip gradients, save and load
    sharded checkpoints and gather the full state dict. Nothing is sharded here."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env

    if accelerator.distributed_type != DistributedType.MULTI_CPU or not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # both states agree, as accelerate's own


def launch_engine() -> str | None:
    """'fsdp' or 'deepspeed' when the launcher configured one (accelerate's environment), else None."""
    from_env = {"fsdp": "ACCELERATE_USE_FSDP", "deepspeed": "ACCELERATE_USE_DEEPSPEED"}
    found = [name for name, var in from_env.items() if os.environ.get(var, "").lower() == "true"]
    return found[0] if found and world_size() > 1 else None


def engine(accelerator: Any) -> dict[str, Any]:
    """What trained: engine, processes, device, sharding and checkpoint format (recorded in the manifest)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    out: dict[str, Any] = {"processes": accelerator.num_processes, "device": accelerator.device.type,
                           "mixed_precision": accelerator.mixed_precision}  # fmt: skip
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        full = plugin.reshard_after_forward if plugin.fsdp_version == 2 else "FULL_SHARD" in str(plugin.sharding_strategy)
        out |= {"engine": f"accelerate FSDP{plugin.fsdp_version}",
                "sharding": "parameters, gradients and optimizer state (full shard)" if full
                else "gradients and optimizer state (parameters kept after forward)",
                "checkpoint": str(plugin.state_dict_type).rsplit(".", 1)[-1]}  # fmt: skip
    elif kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        out |= {"engine": f"accelerate DeepSpeed ZeRO-{stage}", "sharding": {1: "optimizer state", 2: "optimizer state and gradients",
                3: "parameters, gradients and optimizer state"}.get(stage, "none"), "checkpoint": "DeepSpeed"}  # fmt: skip
    elif accelerator.num_processes > 1:
        out |= {"engine": "accelerate DDP", "sharding": "none (replicated)", "checkpoint": "full"}
    else:
        out |= {"engine": "single process", "sharding": "none", "checkpoint": "full"}
    return out


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
        path = accelerate_config_file(accelerate_config)
        check_launch_config(path, num_processes, cuda)
        launcher += ["--config_file", str(path)]
        if not cuda:  # CPU processes over gloo, in float32 (the shipped configs' bf16 is for GPUs)
            launcher += ["--mixed_precision", "no"]
            env["ACCELERATE_USE_CPU"] = "1"
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    else:
        launcher += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no",
                     "--mixed_precision", "bf16" if cuda else "no"]  # fmt: skip
        if not cuda:
            env["ACCELERATE_USE_CPU"] = "1"
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")  # N processes share the cores
    return [*launcher, "-m", module, *args], env


def check_launch_config(path: Path, num_processes: int, cuda: bool) -> None:
    """One line, before anything starts, for an accelerate config that cannot form the group it names here."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"accelerate config '{path}' does not parse: {str(exc).splitlines()[0]}", "cli") from None
    kind = str(config.get("distributed_type", "NO")).upper()
    where = f"accelerate config '{path}'"
    if kind == "NO":
        raise HarnessError(f"{where} has distributed_type NO: it forms no group of {num_processes} processes", "cli")
    if kind not in ("MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED"):
        raise HarnessError(f"{where}: distributed_type {kind} is not one the harness launches (MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED)", "cli")
    if int(config.get("num_machines", 1) or 1) > 1:
        raise HarnessError(f"{where} names {config['num_machines']} machines; --num-processes launches on this one only", "cli")
    if kind == "DEEPSPEED":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise HarnessError(f"{where} asks for DeepSpeed, which is not installed (docs/scaling.md)", "cli")
        if not cuda:
            raise HarnessError(f"{where} asks for DeepSpeed, which the harness runs on GPUs only (docs/scaling.md)", "cli")


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
