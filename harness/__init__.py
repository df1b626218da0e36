"""fusion-harness: knowledge fusion of LLMs (ProFuser and baselines), trained and evaluated through one harness.

The Python API (harness/api.py) is what the `harness` command runs:

    import harness
    exp = harness.load_experiment("sandbox", {"method.name": "fusellm", "eval.tasks": ["sandbox"]})
    fused = harness.run(exp)
    print(fused.scores(), fused.table())
"""

from harness.api import (
    Experiment,
    Run,
    Sweep,
    ablate,
    against,
    align_compare,
    build_sandbox,
    compare,
    describe_methods,
    describe_tasks,
    evaluate,
    finished,
    flips,
    inspect_signals,
    load_experiment,
    load_run,
    load_sweep,
    plan,
    plan_sweep,
    plot,
    power,
    run,
    schedule_variants,
    shared_parameters,
    show_sandbox,
    sweep,
    verify,
    versus,
)

__version__ = "0.1.0"

__all__ = [
    "Experiment",
    "Run",
    "Sweep",
    "ablate",
    "against",
    "align_compare",
    "build_sandbox",
    "compare",
    "describe_methods",
    "describe_tasks",
    "evaluate",
    "finished",
    "flips",
    "inspect_signals",
    "load_experiment",
    "load_run",
    "load_sweep",
    "plan",
    "plan_sweep",
    "plot",
    "power",
    "run",
    "schedule_variants",
    "shared_parameters",
    "show_sandbox",
    "sweep",
    "verify",
    "versus",
]
