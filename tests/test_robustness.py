"""Reliability with real fault injection: a run killed with SIGKILL at several points resumes from its cache and
ends with the same summary as an uninterrupted run; concurrent runs share a cache safely; truncated or bit-flipped
cache entries are reported in one line, moved aside and recomputed to the same numbers; a full disk, a file-size
limit, a quota or a read-only folder fail with one line; run directories record their status and checksums.
Bad input of every kind is table-driven in tests/test_robustness_inputs.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.store import atomic_write_text, new_run_dir

ARGS = [
    "run", "--method", "profuser", "--tasks", "sandbox", "--limit", "8", "-q",
    "--set", "sandbox.size=micro", "--set", "corpus.limit=64", "--set", "signals.shard_size=16",
    "--set", "train.max_steps=16", "--set", "train.checkpoint_every=4", "--set", "train.batch_size=4",
]  # fmt: skip
VOLATILE = ("run_id", "timings_s")


def _start(cwd: Path, cache: Path, extra: list[str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *ARGS, *(extra or []), "--out", "results"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def _summary(cwd: Path) -> dict:
    runs = sorted((cwd / "results").iterdir(), key=lambda p: p.stat().st_mtime)
    done = [r for r in runs if (r / "summary.json").is_file()]
    data = json.loads((done[-1] / "summary.json").read_text())
    return {k: v for k, v in data.items() if k not in VOLATILE}


def _kill_when(proc: subprocess.Popen[str], ready, timeout: float = 600) -> bool:  # type: ignore[no-untyped-def]
    """SIGKILL the process as soon as `ready()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("fault point never reached")


def _count(root: Path, pattern: str) -> int:
    return len(list(root.glob(pattern))) if root.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, micro_world) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    """An uninterrupted run with its own cache (the micro world is copied in, so only the run stages differ)."""
    import shutil

    root = tmp_path_factory.mktemp("reference")
    cache = root / "cache"
    shutil.copytree(micro_world.root.parent.parent, cache)  # <cache>/sandbox/<key> -> the whole cache
    for stage in ("signals", "train", "eval"):
        shutil.rmtree(cache / stage, ignore_errors=True)
    _finish(_start(root, cache))
    return cache, _summary(root)


POINTS = {
    # a signals shard of some source has been written
    "signals": lambda cache: _count(cache / "signals", "**/shard-*.parquet") >= 2,
    # a training checkpoint exists
    "train": lambda cache: _count(cache / "train", "*/checkpoints/step-*") >= 1,
    # some evaluation results were cached
    "evaluate": lambda cache: _count(cache / "eval", "*/score.json") >= 2,
}


@pytest.mark.parametrize("point", ["signals", "train", "evaluate"])
def test_kill_and_resume(point: str, reference: tuple[Path, dict], tmp_path: Path) -> None:
    _kill_and_resume(point, reference, tmp_path)


def _kill_and_resume(point: str, reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    ref_cache, ref_summary = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache / "sandbox", cache / "sandbox")  # the world only: signals, training, eval redone
    proc = _start(tmp_path, cache)
    assert _kill_when(proc, lambda: POINTS[point](cache)), f"the run finished before the {point} fault point"
    assert not any((d / "summary.json").exists() for d in (tmp_path / "results").iterdir())
    for killed in (tmp_path / "results").iterdir():  # a leftover folder says it never finished
        assert json.loads((killed / "manifest.json").read_text())["status"] == "running"
    _finish(_start(tmp_path, cache))  # the same command again
    assert _summary(tmp_path) == ref_summary  # results lost: none; numbers identical
    run = next(d for d in (tmp_path / "results").iterdir() if (d / "summary.json").exists())
    checksums = json.loads((run / "manifest.json").read_text())["checksums"]
    assert "summary.json" in checksums and any(k.startswith("eval/") for k in checksums)


def test_two_runs_share_one_cache_concurrently(reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    ref_cache, ref_summary = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache / "sandbox", cache / "sandbox")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    procs = [_start(a, cache), _start(b, cache)]
    for p in procs:
        _finish(p)
    assert _summary(a) == ref_summary and _summary(b) == ref_summary


def test_different_seed_changes_training(reference: tuple[Path, dict], tmp_path: Path) -> None:
    ref_cache, _ = reference
    (ref_log,) = (ref_cache / "train").glob("*/train_log.jsonl")  # the reference run's (seed 0) training
    baseline = [json.loads(x)["loss"] for x in ref_log.read_text().splitlines()]
    _finish(_start(tmp_path, ref_cache, ["--seed", "7"]))
    run = next((tmp_path / "results").iterdir())
    seeded = [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(seeded) == len(baseline) and seeded != baseline


def test_run_directories_are_never_reused(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path, "profuser") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


def test_remote_code_is_off_unless_asked() -> None:
    from harness.config import load_experiment

    exp = load_experiment("paper")
    assert not exp.target.trust_remote_code and not any(s.trust_remote_code for s in exp.sources)


# ---------------------------------------------------------------------------------------- damaged cache entries


def _flip(path: Path, at: float = 0.6) -> None:
    """Flip the bits of one byte, past any header (a silent change, the size stays)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _used_eval_entries(cache: Path, run: Path) -> list[Path]:
    """The evaluation cache entries behind a run's per-sample files (matched by content), one per file."""
    wanted = {p.read_bytes() for p in run.glob("eval/*/*.jsonl")}
    return [e.parent for e in sorted(cache.glob("eval/*/samples.jsonl")) if e.read_bytes() in wanted]


def _used_stores(cache: Path) -> list[Path]:
    sets = [json.loads(p.read_text()) for p in sorted((cache / "signals" / "sets").glob("*.json"))]
    return sorted({cache / "signals" / path for s in sets for path in s["candidates"].values()})


def _edit_a_score(samples: Path) -> None:
    """Change one document's score: the kind of edit that made a summary and its comparisons disagree."""
    lines = samples.read_text().splitlines()
    row = json.loads(lines[0])
    metric = next(k for k, v in row.items() if isinstance(v, float))
    row[metric] = 1.0 - float(row[metric])
    samples.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")


def _damage(kind: str, cache: Path, run: Path) -> list[Path]:
    """Damage one entry of every kind the run used; returns the damaged entries (folders or single files)."""
    train = cache / "train" / json.loads((run / "manifest.json").read_text())["cache_keys"]["train"]
    entries = _used_eval_entries(cache, run)
    stores = _used_stores(cache)
    damaged = [train / "final", entries[0], entries[-1], stores[0] / "shard-00001.parquet"]
    if kind == "truncate":
        _truncate(train / "final" / "model.safetensors")
        _truncate(entries[0] / "samples.jsonl")
        _truncate(entries[-1] / "score.json")
        _truncate(stores[0] / "shard-00001.parquet")
        for weights in (cache / "sandbox").glob("*/models/*/model.safetensors"):
            os.utime(weights, (1e9, 1e9))  # a copied cache: new times, same content (the training key must hold)
    else:
        newest = max((train / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        _flip(train / "final" / "model.safetensors")
        _flip(newest / "model.safetensors")  # resumes from the checkpoint before it
        _edit_a_score(entries[0] / "samples.jsonl")
        _flip(entries[-1] / "score.json", at=0.5)
        _flip(stores[0] / "shard-00001.parquet")
        (stores[-1] / "meta.json").write_text('{"key": ')  # the whole store is redone
        damaged += [newest, stores[-1]]
    return damaged


@pytest.mark.parametrize("kind", ["truncate", "bitflip"])
def test_damaged_cache_entries_are_recomputed_to_the_same_numbers(kind: str, reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    from harness.store import SUMS, damage

    ref_cache, ref_summary = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache, cache)
    (ref_run,) = [d for d in (ref_cache.parent / "results").iterdir()]
    damaged = _damage(kind, cache, ref_run)
    proc = _start(tmp_path, cache)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert _summary(tmp_path) == ref_summary  # never different numbers
    warnings = [line for line in err.splitlines() if line.startswith("harness: warning:")]
    for entry in damaged:  # each damaged entry: one line naming it, then moved aside
        named = [w for w in warnings if f"'{entry}'" in w]
        assert len(named) == 1 and "is damaged" in named[0] and "computing it again" in named[0], (entry, warnings)
        assert any(p.name.startswith(entry.name) for p in (entry.parent / ".damaged").iterdir())
    assert len(warnings) == len(damaged), warnings
    run = next(d for d in (tmp_path / "results").iterdir())
    keys = json.loads((run / "manifest.json").read_text())["cache_keys"]
    assert keys == json.loads((ref_run / "manifest.json").read_text())["cache_keys"]  # content keys, not times
    for sums in cache.rglob(SUMS):  # what was recomputed is sealed and whole again
        if ".damaged" not in sums.parts:
            assert damage(sums.parent) is None, sums.parent


def test_a_damaged_world_is_moved_aside_and_not_used(micro_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from harness.sandbox.build import load_world

    for damage_file in ("world.json", "models/gpt2-safety/model.safetensors"):
        cache = tmp_path / damage_file.replace("/", "-")
        shutil.copytree(micro_world.root, cache / "sandbox" / micro_world.root.name)
        assert load_world("micro", 0, cache) is not None
        _flip(cache / "sandbox" / micro_world.root.name / damage_file, at=0.5)
        capsys.readouterr()
        assert load_world("micro", 0, cache) is None  # build_world builds it again (slow test below)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("harness: warning: sandbox world") and damage_file in line
        assert not (cache / "sandbox" / micro_world.root.name).exists()
        assert len(list((cache / "sandbox" / ".damaged").iterdir())) == 1


@pytest.mark.slow
def test_a_damaged_world_is_rebuilt_identically(micro_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from harness.sandbox.build import build_world
    from harness.store import file_sha256

    cache = tmp_path / "cache"
    root = cache / "sandbox" / micro_world.root.name
    shutil.copytree(micro_world.root, root)
    before = {p.relative_to(root): file_sha256(p) for p in root.rglob("*") if p.is_file() and p.name != "world.json"}
    _truncate(root / "world.json")
    world = build_world("micro", 0, cache, progress=False)
    after = {p.relative_to(root): file_sha256(p) for p in root.rglob("*") if p.is_file() and p.name != "world.json"}
    assert world.scores == micro_world.scores and after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k.name != "SHA256SUMS"} == {k: v for k, v in before.items() if k.name != "SHA256SUMS"}


def test_signal_sets_survive_a_moved_cache(reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    from harness.signals.store import SignalSet

    ref_cache, _ = reference
    moved = tmp_path / "elsewhere"
    shutil.copytree(ref_cache / "signals", moved / "signals")
    for path in (moved / "signals" / "sets").glob("*.json"):
        sset = SignalSet.load(path)
        assert all(str(p).startswith(str(moved)) for p in sset.candidates.values())
        assert sset.complete()
        assert path.name == f"{sset.key}.json"  # the key is unchanged by where the stores lie


# ---------------------------------------------------------------------------------------- disks and permissions


def test_a_checkpoint_that_does_not_fit_is_one_line(reference: tuple[Path, dict], tmp_path: Path) -> None:
    """A real file-size limit (ulimit -f) hit while accelerate saves a checkpoint: one line, exit 2, no partial
    checkpoint left, the run marked failed."""
    import resource
    import shutil

    ref_cache, _ = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache, cache, ignore=lambda folder, names: ["train"] if Path(folder) == ref_cache else [])
    limit = 300 * 1024  # more than any file before the first checkpoint, less than its model.safetensors

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *ARGS, "--out", "results"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, preexec_fn=small_files)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("harness:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "file-size limit" in lines[0] and "checkpoints" in lines[0]
    assert not list(cache.glob("train/*/checkpoints/.step-*"))
    (run,) = (tmp_path / "results").iterdir()
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("code", "fragment"),
    [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"), (errno.EFBIG, "file-size limit"),
     (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")],
)  # fmt: skip
def test_a_failed_write_is_one_line_and_keeps_the_old_file(code: int, fragment: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    target = tmp_path / "summary.json"
    target.write_text("old")
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, fh):  # type: ignore[no-untyped-def]
            self.fh = fh

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.fh.close()

        def write(self, data):  # type: ignore[no-untyped-def]
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": Failing(real_fdopen(fd, mode)))
    with pytest.raises(HarnessError) as info:
        atomic_write_text(target, "new")
    assert fragment in info.value.one_line() and "\n" not in info.value.one_line()
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "error",
    [RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed"),
     RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"),
     OSError(errno.EDQUOT, "Disk quota exceeded")],
)  # fmt: skip
def test_library_writes_that_fail_on_the_disk_are_one_line(error: Exception, tmp_path: Path) -> None:
    """How torch.save, safetensors and plain writes report a full disk inside save_pretrained / save_state."""
    from harness.store import writing

    with pytest.raises(HarnessError) as info, writing(tmp_path / "checkpoint"):
        raise error
    assert info.value.where == "disk" and "checkpoint" in info.value.one_line()
    with pytest.raises(RuntimeError, match="a bug"), writing(tmp_path):  # anything else stays a traceback
        raise RuntimeError("a bug")


def test_read_only_out_and_cache_are_refused_at_plan_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check a non-root user meets on a read-only folder (simulated: tests may run as root, who may write anywhere)."""
    from click.testing import CliRunner

    from harness.cli import main

    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked_dir else real_access(p, mode))
    monkeypatch.chdir(tmp_path)
    for extra, what in ((["--out", str(locked_dir / "results")], "results folder --out"),
                        (["--set", f"cache_dir={locked_dir}/cache"], "cache dir")):  # fmt: skip
        result = CliRunner().invoke(main, ["run", "-t", "sandbox", "--dry-run", *extra])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"{what} '{locked_dir}" in result.stderr and "not writable" in result.stderr
    assert list(locked_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_out_for_real(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = _harness_cli(["run", "-t", "sandbox", "--dry-run", "--out", str(out / "results")], tmp_path)
        assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        out.chmod(0o755)


def _harness_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    from harness.store import seal, temp_dir, write_jsonl

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        write_jsonl(tmp_path / "b.jsonl", [{"x": 1}])
        folder = temp_dir(tmp_path, ".entry-")
        (folder / "weights.bin").write_bytes(b"x")
        (folder / "weights.bin").chmod(0o600)  # as some libraries write
        seal(folder)
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "b.jsonl", folder / "weights.bin", folder / "SHA256SUMS"):
        assert path.stat().st_mode & 0o777 == mode, path
    assert folder.stat().st_mode & 0o777 == mode | ((mode & 0o444) >> 2)  # folders add x where r is


# ---------------------------------------------------------------------------------------- run directories


def test_verify_names_the_files_that_differ(reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    ref_cache, _ = reference
    (ref_run,) = list((ref_cache.parent / "results").iterdir())
    run = tmp_path / ref_run.name
    shutil.copytree(ref_run, run)
    proc = _harness_cli(["verify", str(run)], tmp_path)
    assert proc.returncode == 0 and "files match the manifest" in proc.stdout, proc.stderr
    checked = json.loads((run / "manifest.json").read_text())["checksums"]
    assert {"config.yaml", "summary.json", "train_log.jsonl", "signals/selection.json", "tables/results.md"} <= set(checked)
    edited = next(p for p in sorted(run.glob("eval/*/*.jsonl")))
    _edit_a_score(edited)
    (run / "tables" / "results.md").unlink()
    proc = _harness_cli(["verify", str(run)], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"  {edited.relative_to(run).as_posix()} (differs)" in proc.stdout
    assert "  tables/results.md (missing)" in proc.stdout and "2 file(s) missing or changed" in proc.stdout


def test_report_uses_finished_runs_and_counts_seeds_not_folders(reference: tuple[Path, dict], tmp_path: Path) -> None:
    """A killed run's leftover, a failed run and a rerun of the same seed are skipped and named; no '± 0.0'."""
    import shutil

    ref_cache, _ = reference
    (ref_run,) = list((ref_cache.parent / "results").iterdir())
    results = tmp_path / "results"
    names = {"a-done": "done", "b-rerun-same-seed": "done", "c-killed": "running", "d-failed": "failed",
             "e-killed-before-summary": "running"}  # fmt: skip
    for name, status in names.items():
        shutil.copytree(ref_run, results / name)
        manifest = json.loads((results / name / "manifest.json").read_text())
        (results / name / "manifest.json").write_text(json.dumps({**manifest, "status": status}))
    (results / "e-killed-before-summary" / "summary.json").unlink()
    (results / "ablation-x").mkdir()  # what `harness ablate` leaves beside its runs
    proc = _harness_cli(["report", *(str(p) for p in sorted(results.iterdir()))], tmp_path)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("harness: report: skipped")]
    assert len(skipped) == 5 and proc.stderr.count("\n") == 5, proc.stderr
    for name in ("a-done", "c-killed", "d-failed", "e-killed-before-summary", "ablation-x"):
        assert sum(f"skipped '{results / name}'" in line for line in skipped) == 1, (name, skipped)
    assert "repeats seed 0 of" in proc.stderr and not any(line.startswith(f"harness: report: skipped '{results}/b") for line in skipped)
    assert "±" not in proc.stdout and "profuser" in proc.stdout
    single = _harness_cli(["report", str(results / "b-rerun-same-seed")], tmp_path)
    assert single.stdout == proc.stdout  # the same table as from the one finished run


def test_evaluation_passes_trust_remote_code_on(micro_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`trust_remote_code` of a model spec reaches lm-eval's model (only when set): a model that needs remote code
    can be evaluated as well as fused."""
    import lm_eval.api.registry as registry

    from harness.evaluation.evaluate import evaluate_model
    from harness.models import ResolvedModel

    seen: list[dict] = []
    real = registry.get_model

    class Recording:
        def __init__(self, cls):  # type: ignore[no-untyped-def]
            self.cls = cls

        def create_from_arg_obj(self, args, extra):  # type: ignore[no-untyped-def]
            seen.append(dict(args))
            return self.cls.create_from_arg_obj(args, extra)

    monkeypatch.setattr(registry, "get_model", lambda name: Recording(real(name)))
    model = ResolvedModel(str(micro_world.models["gpt2-safety"]))
    for trust in (True, False):
        evaluate_model(model, "m", ["sandbox_safety"], out_dir=tmp_path / str(trust), limit=2,
                       sandbox_root=micro_world.root, cache_dir=tmp_path / f"cache-{trust}", progress=False,
                       trust_remote_code=trust)  # fmt: skip
    assert [a.get("trust_remote_code") for a in seen] == [True, None]


def test_the_pipeline_evaluates_each_model_with_its_own_remote_code_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import pipeline
    from harness.config import load_experiment
    from harness.models import ResolvedModel

    exp = load_experiment("sandbox", {"target.trust_remote_code": True, "sources.1.trust_remote_code": True})
    calls: dict[str, bool] = {}

    def record(model, label, tasks, **kwargs):  # type: ignore[no-untyped-def]
        calls[label] = kwargs["trust_remote_code"]
        return {}

    monkeypatch.setattr("harness.evaluation.evaluate.evaluate_model", record)
    plan = pipeline.Plan(exp, None, ["sandbox_safety"], tmp_path, None)
    models = {name: ResolvedModel(str(tmp_path)) for name in ("target-base", "neox-reasoning", "gpt2-safety", "profuser")}
    pipeline._evaluate(exp, plan, models, None, tmp_path, pipeline.Manifest(tmp_path, 0), progress=False)
    assert calls == {"target-base": True, "neox-reasoning": False, "gpt2-safety": True, "profuser": True}


def test_disk_errors_anywhere_below_the_cli_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's net for a full disk or a quota met inside a library call the harness did not wrap."""
    from click.testing import CliRunner

    import harness.sandbox.build as build
    from harness.cli import main

    def quota(**kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "/cache/sandbox/x/model.safetensors")

    monkeypatch.setattr(build, "build_world", quota)
    result = CliRunner().invoke(main, ["sandbox", "show", "--size", "micro"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("harness: disk: the disk quota is exceeded while accessing '/cache/sandbox/x/model.safetensors'")

    def bug(**kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(build, "build_world", bug)
    result = CliRunner().invoke(main, ["sandbox", "show", "--size", "micro"])
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EBADF  # a bug keeps its traceback
