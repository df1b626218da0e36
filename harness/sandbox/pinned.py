"""Fresh processes with pinned CPU math kernels, so that a seed builds the same bytes on any x86-64 CPU.

Math libraries pick their kernels by the CPU they run on: ATen its vectorised kernels (AVX-512, AVX2 or
none), MKL its sgemm branch (per vendor and instruction set), oneDNN its JIT code (GELU here). Each choice
rounds floats differently, so the same seed trained a different sandbox world on another machine.
`PINNED_ENV` fixes all three to their baseline x86-64 path (docs/sandbox.md, "The same world on every
machine"). The libraries read it at their first operation and ignore it afterwards, so it must be in a
process's environment before any torch op: `run_pinned` runs each call in a fresh spawned process that has
it from the start, on one thread, and every call checks that it took effect (`check_pinned`).

Nothing here imports torch at module level: the spawned children import this module before they are pinned.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",  # ATen: the baseline x86-64 kernels (no AVX), present on every x86-64 CPU
    "MKL_CBWR": "COMPATIBLE",  # MKL: the vendor-independent SSE2 branch (conditional numerical reproducibility)
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN: its lowest JIT instruction set
}
PINNED_CAPABILITY = "DEFAULT"  # what torch.backends.cpu.get_cpu_capability() reports once ATen is pinned

Event = tuple[Any, ...]

_events: Any = None  # in a pinned child: the parent's event queue
_parent_pid: int | None = None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_pinned() -> str:
    """Set one torch thread and fail loudly unless this process's kernels are pinned; returns the capability.

    A torch op that ran before the environment was set latches the CPU's own kernels for the whole process,
    silently: this check is what makes that an error instead of another world.
    """
    import torch

    wrong = {k: os.environ.get(k) for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    capability = torch.backends.cpu.get_cpu_capability()
    if wrong or capability != PINNED_CAPABILITY:
        raise RuntimeError(
            f"CPU kernels are not pinned in process {os.getpid()} (ATen capability {capability}, "
            f"environment {wrong or 'as pinned'}): run this in a fresh process started with PINNED_ENV"
        )
    # One thread: a fixed thread count keeps float reductions in one order; tiny models gain little from more.
    torch.set_num_threads(1)
    return capability


def report(*event: Any) -> None:
    """Send a progress event to the parent (nothing outside a pinned child); exit if the parent has died."""
    if _parent_pid is not None and os.getppid() != _parent_pid:
        os._exit(1)  # orphaned by a killed parent: nobody waits for this work any more
    if _events is not None:
        _events.put(event)


def _init_child(events: Any, parent_pid: int) -> None:
    global _events, _parent_pid
    # Both inherited at spawn already; repeated for a child started some other way.
    os.environ.update(PINNED_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the children
    _events, _parent_pid = events, parent_pid
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the parent shows progress; no bar per saved file
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def _spawning(values: Mapping[str, str]) -> Iterator[None]:
    """While processes are spawned: `values` in the environment, and SIGINT ignored.

    Both are inherited at exec. A child born with SIGINT ignored never installs Python's KeyboardInterrupt
    handler, so a Ctrl-C during its start-up prints no traceback: the parent alone handles it.
    """
    saved = {k: os.environ.get(k) for k in values}
    main_thread = threading.current_thread() is threading.main_thread()  # signal() works there only
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if main_thread:
            signal.signal(signal.SIGINT, handler)


def _drain(events: Any, on_event: Callable[[Event], None]) -> None:
    while True:
        try:
            on_event(events.get_nowait())
        except queue.Empty:
            return


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the children now (Ctrl-C, or another call failed)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
    else:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_pinned(
    calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
    jobs: int,
    on_event: Callable[[Event], None] = lambda event: None,
    on_result: Callable[[int, T], None] = lambda index, result: None,
    meanwhile: Callable[[], None] = lambda: None,
) -> list[T]:
    """Run `fn(*args)` for each call in at most `jobs` fresh pinned processes; results in call order.

    Calls start in the order given (put the longest first); `meanwhile()` runs here once they are started.
    `on_event` gets what the children `report`, `on_result(index, result)` each result as soon as it is in.
    If a call fails or the parent is interrupted (Ctrl-C), the children are stopped before the exception is
    raised here.
    """
    with _deferred_interrupt() as interrupted:
        return _run(calls, jobs, on_event, on_result, meanwhile, interrupted)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """While pinned calls run, Ctrl-C sets an event instead of raising wherever the main thread happens to be.

    A KeyboardInterrupt raised inside `concurrent.futures.wait` can leave a future's lock taken (it is acquired
    in a loop in a context manager's `__enter__`); the executor's manager thread then blocks on it forever and
    the build hangs instead of stopping. The wait loop checks the event between waits and raises there.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals reach the main thread only
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(
    calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
    jobs: int,
    on_event: Callable[[Event], None],
    on_result: Callable[[int, T], None],
    meanwhile: Callable[[], None],
    interrupted: threading.Event,
) -> list[T]:
    ctx = get_context("spawn")
    events = ctx.Queue()
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(jobs, len(calls))),
        mp_context=ctx,
        initializer=_init_child,
        initargs=(events, os.getpid()),
    )
    try:
        # The executor starts its processes inside submit(); they inherit the environment at exec, before
        # their first import. The parent's own kernels stay as they are (restored before any op of ours).
        with _spawning(PINNED_ENV):
            futures = [pool.submit(fn, *args) for fn, args in calls]
        meanwhile()
        index = {f: i for i, f in enumerate(futures)}
        pending: set[Future[T]] = set(futures)
        while pending:
            if interrupted.is_set():
                raise KeyboardInterrupt
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, on_event)
            for future in done:
                on_result(index[future], future.result())  # a failed call raises here
        if interrupted.is_set():  # pressed as the last call finished: still a stop
            raise KeyboardInterrupt
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    events.close()
    return [f.result() for f in futures]
