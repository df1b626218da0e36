"""Where things are written: run directories, the content-addressed cache, atomic writes, locks, manifests.

Layout of one run (ARCHITECTURE.md, "Results layout"):
    results/<run-id>/config.yaml  manifest.json  signals/  checkpoints/  eval/<label>/<task>.jsonl
                     summary.json  tables/  plots/  train_log.jsonl
Every file is written to a temporary name in the same folder and renamed, so a reader never sees half a file
and a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import HarnessError

PACKAGES = ("fusion-harness", "torch", "transformers", "accelerate", "lm_eval", "tokenizers", "datasets", "pyarrow", "numpy")


def default_cache_dir() -> Path:
    env = os.environ.get("HARNESS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusion-harness"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order: the cache key of everything that determines a stage."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(files: Sequence[Path], cache_dir: Path) -> list[str]:
    """sha256 of each file, memoised in the cache by (path, size, mtime): multi-GB weights are hashed once.

    One memo for the whole cache, under a lock, so concurrent runs and the processes of one run share it.
    """
    memo_path = Path(cache_dir) / "file_hashes.json"
    with locked(memo_path):
        try:
            memo: dict[str, str] = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        out, fresh = [], False
        for f in files:
            st = f.stat()
            tag = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            if tag not in memo:
                memo[tag], fresh = file_sha256(f), True
            out.append(memo[tag])
        if fresh:
            atomic_write_json(memo_path, memo)
    return out


def _raise_disk(exc: OSError, path: Path) -> None:
    if exc.errno == 28:  # ENOSPC
        raise HarnessError(f"no space left on the device while writing '{path}'; free space and run again (finished stages are kept)", "disk") from None
    raise exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_disk(exc, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextlib.contextmanager
def locked(path: Path, timeout: float = -1) -> Iterator[None]:
    """An inter-process lock on `path` (a sibling `.lock` file): two runs sharing one cache never write the same entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def new_run_dir(out: Path, method: str) -> Path:
    """A fresh, never-reused run directory `<out>/<UTC time>-<method>-<n>` (created exclusively, so ids never collide)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = out / f"{stamp}-{method}-{n}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise HarnessError(f"could not create a new run directory under '{out}'", "results")


class Manifest:
    """manifest.json of a run: versions, git sha, seeds, cache keys, stage timings and file checksums."""

    def __init__(self, run_dir: Path, seed: int, write: bool = True) -> None:
        """`write=False` in the non-main processes of a multi-process run: they keep timings but write nothing."""
        self.path = run_dir / "manifest.json"
        self.write = write
        if self.path.exists():
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        else:
            self.data = {
                "created": datetime.now(timezone.utc).isoformat(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "packages": package_versions(),
                "git_sha": git_sha(),
                "seed": seed,
                "argv": sys.argv,
                "cache_keys": {},
                "timings_s": {},
                "checksums": {},
            }
            self.save()

    def save(self) -> None:
        if self.write:
            atomic_write_json(self.path, self.data)

    def record_sandbox_world(self, identity: dict[str, Any]) -> None:
        """Which sandbox world the run used: fingerprint, reference check, library versions, scores."""
        self.data["sandbox_world"] = identity
        self.save()

    def record_cache_key(self, stage: str, key: str) -> None:
        self.data["cache_keys"][stage] = key
        self.save()

    def record_checksum(self, path: Path, root: Path) -> None:
        if not self.write:
            return
        self.data["checksums"][str(path.relative_to(root))] = file_sha256(path)
        self.save()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.data["timings_s"][stage] = round(self.data["timings_s"].get(stage, 0.0) + time.perf_counter() - start, 3)
        self.save()
