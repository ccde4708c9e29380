"""A pool that trains the queue in a thread of this process, with the local pool's interface (start, wake,
release, stop, pids, devices, log_path). It is what the fast test tier runs the CLI's commands and the
dashboard on (PEFT_TUI_INPROCESS_POOL=1, see engine/submit.make_pool): the same claims, events, heartbeats
and cancel flag through the store as a worker process, without paying a process's imports per test.
A run cannot be killed apart from this process here, so users always get worker processes (local.py).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from pathlib import Path

from peft_tui.engine.events import JsonlSink, fan_out
from peft_tui.engine.launch.process import POLL_S, ProcessFigures, keep_alive, worker_id
from peft_tui.engine.store import Store


class InProcessPool:
    def __init__(self, store_root: str | Path, devices: list[str] | None = None):
        self.root = Path(store_root)
        self.devices = devices or ["cpu"]
        self.log_path = self.root / "logs" / "workers.log"
        self.host = socket.gethostname()
        self.id = worker_id(self.host, os.getpid(), f"{self.devices[0]}-inprocess")
        self._stop = threading.Event()  # stop now: cancel the current run
        self._leave = threading.Event()  # leave once the current run has ended
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> InProcessPool:
        self._thread = threading.Thread(target=self._serve, name="peft-tui-inprocess", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def pids(self) -> dict[int, str]:
        alive = self._thread is not None and self._thread.is_alive()
        return {os.getpid(): self.devices[0]} if alive else {}

    def release(self, timeout: float = 10.0) -> None:
        self._leave.set()
        self._wake.set()
        self._join(timeout)

    def stop(self, cancel: bool = True, timeout: float = 30.0) -> None:
        (self._stop if cancel else self._leave).set()
        self._wake.set()
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _serve(self) -> None:
        store = Store(self.root)
        while not (self._stop.is_set() or self._leave.is_set()):
            claim = store.claim(self.id, os.getpid(), self.host, self.devices) if store.claimable(self.devices) else None
            if claim is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            self._train(store, claim)
        store.close()

    def _train(self, store: Store, claim) -> None:
        from peft_tui.engine.trainer import execute

        cancel, done = threading.Event(), threading.Event()
        if self._stop.is_set() or store.heartbeat(claim.run_id, os.getpid(), startup_s=0.0):
            cancel.set()
        beat = threading.Thread(target=keep_alive, args=(store, claim.run_id, cancel, done, self._stop),
                                daemon=True)
        beat.start()
        sink = ProcessFigures(fan_out(store, JsonlSink(store.events_path(claim.run_id))), 0.0, cpu=False)
        try:
            execute(store, claim.run_id, dataclasses.replace(claim.config, device=claim.device), sink, cancel,
                    resume=claim.resume, cache_dir=store.cache_dir)
        finally:
            done.set()
            beat.join(5)
            sink.close()
