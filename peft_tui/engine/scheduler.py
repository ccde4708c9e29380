"""A FIFO queue of runs executed by worker threads: one worker per device (one on CPU, one per GPU).

Each run is a call into `trainer.execute`, the same function the headless CLI uses. Runs are
created in the store when submitted, so the store always shows the whole queue.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque

from peft_tui.config import ConfigError, RunConfig
from peft_tui.engine.events import RunCancelled, Sink, fan_out


def default_devices() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        n = 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


class Scheduler:
    def __init__(self, store, sink: Sink | None = None, devices: list[str] | None = None):
        self.store = store
        self.sink = fan_out(store, sink)
        self.devices = devices or default_devices()
        self._queue: deque[tuple[int, RunConfig]] = deque()
        self._cond = threading.Condition()
        self._cancels: dict[int, threading.Event] = {}
        self._running: dict[int, str] = {}  # run id -> device
        self._resuming: set[int] = set()  # queued runs that continue from their checkpoint
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, args=(d,), name=f"peft-tui-worker-{d}", daemon=True)
            for d in self.devices
        ]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------------ API (any thread)
    def submit(self, config: RunConfig) -> int:
        """Validate, store as queued, and enqueue. Raises ConfigError on a bad config (nothing queued)."""
        config.validate()
        if config.device not in ("auto", "cuda") and config.device not in self.devices:
            raise ConfigError(
                f"device {config.device!r} is not served here (workers: {', '.join(self.devices)}): use auto"
            )
        run_id = self.store.create_run(config)
        with self._cond:
            self._queue.append((run_id, config))
            self._cond.notify_all()
        return run_id

    def cancel(self, run_id: int) -> bool:
        """Cancel a queued run at once, or ask a running one to stop within one step."""
        with self._cond:
            for item in list(self._queue):
                if item[0] == run_id:
                    self._queue.remove(item)
                    self.sink(RunCancelled(run_id, 0))
                    return True
            event = self._cancels.get(run_id)
        if event is not None:
            event.set()
            return True
        return False

    def remove(self, run_id: int) -> bool:
        """Take a queued (not yet running) run out of the queue and the store."""
        with self._cond:
            for item in list(self._queue):
                if item[0] == run_id:
                    self._queue.remove(item)
                    break
            else:
                return False
        return self.store.remove(run_id)

    def retry(self, run_id: int) -> int:
        """Queue a new run with the config of a finished, failed, cancelled or interrupted run."""
        row = self.store.get(run_id)
        if row["status"] in ("queued", "running"):
            raise ConfigError(f"run {run_id} is {row['status']}: only a finished run can be retried")
        if row["method"] == "tfidf":
            raise ConfigError("the TF-IDF baseline row cannot be retried: rerun the comparison")
        return self.submit(RunConfig.from_dict(row["config"]))

    def resume(self, run_id: int) -> int:
        """Queue a stopped run (interrupted, failed, diverged, cancelled) to continue from its last
        epoch-end checkpoint, under the same run id. Raises ConfigError when it cannot."""
        from peft_tui.engine.checkpoint import prepare_resume

        with self._cond:
            if run_id in self._running or any(rid == run_id for rid, _ in self._queue):
                raise ConfigError(f"run {run_id} is already queued or running")
        config = prepare_resume(self.store, run_id)
        with self._cond:
            self._resuming.add(run_id)
            self._queue.append((run_id, config))
            self._cond.notify_all()
        return run_id

    def queued(self) -> list[int]:
        with self._cond:
            return [rid for rid, _ in self._queue]

    def running(self) -> dict[int, str]:
        with self._cond:
            return dict(self._running)

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._queue or self._running)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._running, timeout)

    def shutdown(self, cancel_running: bool = True, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            if cancel_running:
                for event in self._cancels.values():
                    event.set()
            self._cond.notify_all()
        for run_id, _ in pending:
            self.sink(RunCancelled(run_id, 0))
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if cancel_running:
            # a step slower than the timeout (a busy CPU, a model still loading): record the cancel
            # ourselves, since this process is about to end and the worker with it
            with self._cond:
                stuck = [rid for rid in self._running]
            for run_id in stuck:
                self.sink(RunCancelled(run_id, 0))

    # ------------------------------------------------------------------ workers
    def _next_for(self, device: str) -> tuple[int, RunConfig] | None:
        for item in self._queue:
            want = item[1].device
            if want == "auto" or want == device or (want == "cuda" and device == "cuda:0"):
                self._queue.remove(item)
                return item
        return None

    def _work(self, device: str) -> None:
        from peft_tui.engine.trainer import execute

        while True:
            with self._cond:
                item = None
                while not self._stopping:
                    item = self._next_for(device)
                    if item is not None:
                        break
                    self._cond.wait()
                if item is None:
                    return
                run_id, config = item
                cancel = threading.Event()
                self._cancels[run_id] = cancel
                self._running[run_id] = device
                resume = run_id in self._resuming
                self._resuming.discard(run_id)
            try:
                execute(self.store, run_id, dataclasses.replace(config, device=device), self.sink, cancel,
                        resume=resume)
            finally:
                with self._cond:
                    self._cancels.pop(run_id, None)
                    self._running.pop(run_id, None)
                    self._cond.notify_all()
