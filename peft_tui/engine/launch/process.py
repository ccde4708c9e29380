"""What every process that trains a run shares, whoever started it (a worker's child, a torchrun rank, the
in-process test pool): the stop signals, the heartbeat and cancel polling, dying with the parent, and the
figures only the run's own process knows (its start-up and peak memory).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from peft_tui.engine.events import Event, RunFinished, Sink
from peft_tui.engine.result import RunResult
from peft_tui.engine.store import Store
from peft_tui.errors import StoreError

POLL_S = 0.5  # heartbeat and cancel polling while training; a worker's queue polling when idle
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # cancel the run (it ends `cancelled`)
PR_SET_PDEATHSIG = 1


def worker_id(host: str, pid: int, device: str) -> str:
    """How a worker is named in the store's `worker` column (the pool computes it from the pid too)."""
    return f"{host}:{pid}:{device}"


def parent_death_signal() -> Any:
    """A `preexec_fn` that has Linux SIGKILL the child when its parent dies (None elsewhere). The libc
    function is looked up here, before the fork, so the child only makes the system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def keep_alive(store: Store, run_id: int, cancel: threading.Event, done: threading.Event,
               stop: threading.Event | None = None) -> None:
    """The run's heartbeat about twice a second until `done`; the store's cancel flag (or `stop`) sets
    `cancel`, which the run polls at each step. Runs in a thread of the run's own process."""
    while not done.wait(POLL_S):
        try:
            if store.heartbeat(run_id, os.getpid()) or (stop is not None and stop.is_set()):
                cancel.set()
        except StoreError:  # the store is busy or damaged: the run's own writes will say so
            pass


def die_with(worker_pid: int) -> None:
    """On Linux, the run process is killed when its worker dies, so a run never outlives the worker
    that answers for it."""
    if not sys.platform.startswith("linux"):
        return
    set_signal = parent_death_signal()
    if set_signal is None:
        return
    set_signal()
    if os.getppid() != worker_pid:  # the worker died before the call
        os._exit(1)


class ProcessFigures:
    """Adds what only the run's own process knows to its result: the worker start-up it paid
    (result.extra["worker_startup_s"]) and, on CPU, its peak memory as the peak RSS of this process:
    exact, where the trainer samples it. (On CUDA the trainer's torch figures stand.) Wraps the run's sinks."""

    def __init__(self, sink: Sink, startup_s: float, cpu: bool):
        self.sink = sink
        self.startup_s = startup_s
        self.cpu = cpu

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            result = with_extra(event.result, worker_startup_s=round(self.startup_s, 3))
            event = RunFinished(event.run_id, with_process_peak(result) if self.cpu else result)
        self.sink(event)

    def close(self) -> None:
        self.sink.close()


def with_extra(result: RunResult | dict[str, Any], **figures: Any) -> RunResult | dict[str, Any]:
    """`result` with `figures` added to its `extra` (a result may still be a plain dict)."""
    if isinstance(result, RunResult):
        return dataclasses.replace(result, extra={**result.extra, **figures})
    return {**result, "extra": {**(result.get("extra") or {}), **figures}}


def with_process_peak(result: RunResult | dict[str, Any]) -> RunResult | dict[str, Any]:
    """`result` with peak_memory_mb = this process's peak RSS (left None where a method measures none)."""
    from peft_tui.engine.memory import process_peak_mb

    peak_mb = process_peak_mb()
    kind = "peak RSS of the run's own process"
    if isinstance(result, RunResult):
        if result.peak_memory_mb is None:
            return result
        return dataclasses.replace(result, peak_memory_mb=peak_mb, memory_kind=kind)
    if result.get("peak_memory_mb") is None:
        return result
    return {**result, "peak_memory_mb": peak_mb, "memory_kind": kind}
