"""The dashboard's queue, backed by the store: runs are submitted to runs.db, trained by the worker
processes of a local pool (one per device), and their events come back to `sink` from the store and
each run's events.jsonl. Nothing trains in the caller's process, so a run that crashes or is killed for
memory takes nothing else down, and every control (cancel, retry, resume, remove) goes through the
store, working on any run whoever queued it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from peft_tui.config import RunConfig
from peft_tui.engine.events import Event
from peft_tui.engine.launch.client import Watcher
from peft_tui.engine.launch.local import default_devices
from peft_tui.engine.store import Store
from peft_tui.engine.submit import Planned, check, create, make_pool

POLL_S = 0.2  # how often events are read back from the runs this scheduler follows


class Scheduler:
    def __init__(self, store: Store, sink: Callable[[Event], None] | None = None, devices: list[str] | None = None,
                 *, workers: int | None = None, detach: bool = False, ray: str | None = None,
                 trust_remote_code: bool = False, runs_per_gpu: int | str | None = None):
        self.store = store
        self.trust_remote_code = trust_remote_code  # the user's flag: stored configs never decide it
        self.devices = devices or default_devices()
        self.ray = ray
        # a Ray cluster trains the queue (launch/ray.py); else worker processes on this machine
        self.pool = make_pool(store, ray=ray, workers=workers, detach=detach, devices=self.devices,
                              trust_remote_code=trust_remote_code, runs_per_gpu=runs_per_gpu).start()
        self._watcher = Watcher(store, sink)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="peft-tui-follow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API (any thread)
    def submit(self, config: RunConfig, estimate: bool = True, inputs: dict | None = None) -> int:
        """`submit_checked`'s run id."""
        run_id = self.submit_checked(config, estimate, inputs).run_id
        assert run_id is not None
        return run_id

    def submit_checked(self, config: RunConfig, estimate: bool = True, inputs: dict | None = None) -> Planned:
        """Check (engine/submit.py: validate, serve, estimate), store as queued with its estimate, and
        start a worker for it. A run that will not fit is queued all the same, with the refusal as its
        `warning` (the dashboard shows it). Raises ConfigError on a bad config (nothing queued)."""
        [planned] = check(self.store, [config], force=True, devices=[] if self.ray else self.devices,
                          estimate=estimate, inputs=inputs)
        [run_id] = create(self.store, [planned])
        self._follow_new(run_id)
        return dataclasses.replace(planned, run_id=run_id)

    def cancel(self, run_id: int) -> bool:
        """Cancel a queued run at once, or ask a running one to stop within one step."""
        return self.store.request_cancel(run_id)

    def remove(self, run_id: int) -> bool:
        """Take a queued (never started) run out of the queue and the store."""
        removed = self.store.remove(run_id)
        if removed:
            with self._cond:
                self._watcher.forget(run_id)
                self._cond.notify_all()
        return removed

    def retry(self, run_id: int) -> int:
        """Queue a new run with the config of a run that has ended. Returns the new id."""
        return self._follow_new(self.store.retry(run_id, self.trust_remote_code))

    def resume(self, run_id: int) -> int:
        """Queue a stopped run to continue from its last epoch-end checkpoint, under the same id.
        Raises ConfigError when it cannot (or when another resume of it came first)."""
        self.store.request_resume(run_id, self.trust_remote_code)
        return self._follow_new(run_id)

    def queued(self) -> list[int]:
        """Runs followed here that wait for a worker."""
        return [r["id"] for r in self._rows() if r["status"] == "queued"]

    def running(self) -> dict[int, str]:
        """Runs followed here that train now -> the device they train on."""
        return {r["id"]: r["device"] or "" for r in self._rows() if r["status"] == "running"}

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._watcher.active)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._watcher.active, timeout)

    def shutdown(self, cancel_running: bool = True, timeout: float = 10.0) -> None:
        """With `cancel_running`, cancel the runs followed here and stop the workers (a run still in a slow
        step ends `cancelled` when that step is over). Without, the workers go on with the queue and
        leave when it is empty."""
        if cancel_running:
            with self._cond:
                mine = self._watcher.active
            for run_id in mine:
                self.store.request_cancel(run_id)
            self.wait_idle(timeout)
        self.pool.stop(cancel=cancel_running, timeout=timeout)
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ following
    def _follow_new(self, run_id: int) -> int:
        with self._cond:
            self._watcher.add(run_id)
        self.pool.wake()
        return run_id

    def _rows(self) -> list[dict]:
        with self._cond:
            ids = self._watcher.active
        return self.store.list(ids=ids) if ids else []

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            with self._cond:
                try:
                    self._watcher.poll()
                except Exception:  # the store busy or damaged for a moment: log it, try again
                    logging.getLogger("peft_tui").warning("following runs failed", exc_info=True)
                self._cond.notify_all()
