"""Following runs that train in other processes: their events come back from each run's events.jsonl,
their ends from the store (a run cancelled while queued, or whose process was killed, writes no event).

    signum = watch(store, run_ids, sink)     # the CLI: stream progress until every run has ended
                                             # (the signal that stopped it, or None)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from peft_tui.engine.events import TERMINAL, Event, EventTail, RunCancelled, RunFailed, RunFinished
from peft_tui.engine.result import RunResult
from peft_tui.engine.store import FINAL, Store


@dataclass
class _Followed:
    tail: EventTail
    ended_in_store: bool = False  # seen final in the store at the previous poll


class Watcher:
    """Hands the events of the runs it follows to `sink`, each exactly once, ending with one of
    RunFinished, RunFailed or RunCancelled. Call `poll()` repeatedly; `active` lists the runs not ended."""

    def __init__(self, store: Store, sink: Callable[[Event], None] | None):
        self.store = store
        self.sink = sink
        self._runs: dict[int, _Followed] = {}

    def add(self, run_id: int) -> None:
        """Follow a run from the start of its current attempt (a resumed run: from the resume)."""
        row = self.store.get(run_id)
        self._runs[run_id] = _Followed(EventTail(self.store.events_path(run_id), row.get("events_offset") or 0))

    def forget(self, run_id: int) -> None:
        self._runs.pop(run_id, None)

    @property
    def active(self) -> list[int]:
        return list(self._runs)

    def poll(self) -> None:
        if not self._runs:
            return
        rows = {r["id"]: r for r in self.store.list(ids=self._runs)}
        for run_id, followed in list(self._runs.items()):
            row = rows.get(run_id)
            if row is None:  # removed
                self.forget(run_id)
                continue
            for event in followed.tail.read():
                self._emit(event)
                if isinstance(event, TERMINAL):
                    self.forget(run_id)
                    break
            else:
                if row["status"] in FINAL:
                    # the run process writes the store first, then events.jsonl: give the line one poll
                    if followed.ended_in_store:
                        self._emit(_end_event(row))
                        self.forget(run_id)
                    followed.ended_in_store = True

    def _emit(self, event: Event) -> None:
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:  # a broken display must not stop the following
            logging.getLogger("peft_tui").warning("sink %r failed on %s", self.sink, type(event).__name__,
                                                  exc_info=True)


def _end_event(row: dict[str, Any]) -> Event:
    """The terminal event for a run that ended without writing one (never claimed, or killed)."""
    status, run_id = row["status"], row["id"]
    if status == "done":
        return RunFinished(run_id, RunResult.from_dict(row["result"]))
    if status == "cancelled":
        return RunCancelled(run_id, row["step"] or 0)
    return RunFailed(run_id, row["error"] or status, "diverged" if status == "diverged" else "failed")


def watch(store: Store, run_ids: list[int], sink: Callable[[Event], None] | None, poll_s: float = 0.2) -> int | None:
    """Stream the events of `run_ids` into `sink` until every one has ended. On Ctrl-C or SIGTERM, cancel
    them all (queued ones at once, running ones within a step), keep streaming until they have ended
    (a second signal stops waiting), and return that signal's number. Returns None when they all ended
    by themselves."""
    watcher = Watcher(store, sink)
    for run_id in run_ids:
        watcher.add(run_id)
    with interrupts() as stopped:
        try:
            _follow(watcher, poll_s)
            return None
        except KeyboardInterrupt:
            pass
        for run_id in run_ids:
            store.request_cancel(run_id)
        with contextlib.suppress(KeyboardInterrupt):
            _follow(watcher, poll_s)
    return stopped.signum or signal.SIGINT


def _follow(watcher: Watcher, poll_s: float) -> None:
    while watcher.active:
        watcher.poll()
        if watcher.active:
            time.sleep(poll_s)


@dataclass
class Stopped:
    signum: int = 0  # the first SIGINT/SIGTERM received inside `interrupts()`, 0 if none


@contextlib.contextmanager
def interrupts() -> Iterator[Stopped]:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does; the first signal's number is
    kept in the yielded `Stopped` (a caller exits 128 + signum)."""
    stopped = Stopped()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def interrupt(signum: int, frame: Any) -> None:
        stopped.signum = stopped.signum or signum
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
