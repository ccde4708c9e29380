"""The dashboard app. `create_app()` is the one factory used by `peft-tui launch`, the tests and the
screenshot script.

The app holds what the screens share: the store, the run template, the scheduler and the `LabState`.
Its keys and actions live on the main screen (ui/screens/main.py).

Threads: the scheduler's workers call `_sink` (buffer only, never touches widgets); a 0.2 s timer on the
UI thread drains the buffer into the state and redraws what changed, so the screen updates at most a few
times a second however fast events come. A thread worker polls the store (ui/polling.py) once a second
so runs from other processes appear and stream. Every store call runs off the UI thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.worker import get_current_worker

from peft_tui.config import DataConfig, RunConfig, store_path
from peft_tui.engine.events import RunFailed
from peft_tui.errors import OneLineError
from peft_tui.ui.messages import LogLine, StoreUpdate
from peft_tui.ui.polling import StorePoller
from peft_tui.ui.screens.main import MainScreen, shown_path
from peft_tui.ui.state import LabState, estimable


class PeftLab(App):
    CSS_PATH = "lab.tcss"
    TITLE = "peft-tui"
    ENABLE_COMMAND_PALETTE = False  # its footer slot is worth more to the keys at 80 columns

    def __init__(self, store, template: RunConfig, devices: list[str] | None = None, poll_s: float = 1.0,
                 chart_interval_s: float = 2.0, workers: int | None = None, ray: str | None = None,
                 runs_per_gpu: int | str | None = None):
        super().__init__()
        self.store = store
        self.template = template
        self.devices = devices
        self.worker_count = workers  # worker processes for this dashboard's runs (None: one per device)
        self.ray_address = ray  # a Ray cluster address ("auto"): the cluster trains the runs instead
        self.runs_per_gpu = runs_per_gpu  # --runs-per-gpu: runs a GPU may train at once (None: one)
        self.poll_s = poll_s
        self.chart_interval_s = chart_interval_s
        self.state = LabState()
        self.main = MainScreen()
        self.device_text = "detecting device…"
        self.log_history: deque[str] = deque(maxlen=5000)  # what the Log tab shows, as plain text
        self._scheduler = None
        self._sched_lock = threading.Lock()
        self._pending: list[tuple[float, Any]] = []  # (time, engine event) from the scheduler's threads
        self._pending_lock = threading.Lock()
        self._streamed: set[int] = set()  # runs whose events reach `_sink`: the poll skips their points
        self._stop = threading.Event()
        self.keep_training = False  # the answer at quit: leave the workers training in the background
        self.estimate_inputs: dict = {}  # model configs and token lengths the estimates reuse (engine.estimate.plan)

    # ------------------------------------------------------------------ lifecycle
    def on_mount(self) -> None:
        self.push_screen(self.main)
        self.set_interval(0.2, self._tick)
        self._describe_device()
        self._poll()
        self.call_after_refresh(self.main.refresh_all)
        self.call_after_refresh(self.log_line, f"store {shown_path(self.store.root)} · model {self.template.model}"
                                f" · data {self.template.data.source} · n: new run, c: compare full/lora/adapters")

    def on_unmount(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(cancel_running=not self.keep_training, timeout=10.0)

    # ------------------------------------------------------------------ the scheduler (any thread)
    @property
    def scheduler(self):
        """The scheduler that trains this dashboard's runs, started on first use."""
        with self._sched_lock:
            if self._scheduler is None:
                from peft_tui.engine.scheduler import Scheduler

                self._scheduler = Scheduler(self.store, self._sink, self.devices, workers=self.worker_count,
                                            ray=self.ray_address, trust_remote_code=self.template.trust_remote_code,
                                            runs_per_gpu=self.runs_per_gpu)
            return self._scheduler

    @property
    def started_scheduler(self):
        """The scheduler if this dashboard has queued anything yet, else None (starting one imports torch)."""
        return self._scheduler

    def runs_here(self) -> int:
        """How many runs this dashboard's scheduler has queued or running."""
        sched = self._scheduler
        return len(sched.queued()) + len(sched.running()) if sched is not None and sched.busy else 0

    def _sink(self, event: Any) -> None:
        """Called on a scheduler thread: buffer only."""
        self._streamed.add(event.run_id)
        with self._pending_lock:
            self._pending.append((time.time(), event))

    @work(thread=True, group="submit", exit_on_error=False)
    def submit(self, configs: list[RunConfig]) -> None:
        """Queue `configs` in order, each with its estimate (graded when the run is read; a run that will not
        fit is queued with a warning); a config the scheduler refuses is logged and skipped."""
        rows = []
        for cfg in configs:
            try:
                planned = self.scheduler.submit_checked(cfg, estimate=estimable(cfg.model), inputs=self.estimate_inputs)
            except OneLineError as e:
                self.post_message(LogLine(f"not queued: {e}", "error"))
                continue
            rid = planned.run_id
            if planned.warning:
                self.post_message(LogLine(f"run {rid}: {planned.warning}", "warning"))
            rows.append(self.store.get(rid))
            self.post_message(LogLine(f"queued run {rid} {cfg.display_name} ({cfg.method} on {cfg.model})"))
        if rows:
            self.post_message(StoreUpdate(rows, {}))

    # ------------------------------------------------------------------ background reads
    @work(thread=True, group="device", exit_on_error=False)
    def _describe_device(self) -> None:
        from peft_tui.engine.memory import device_description

        text = device_description(self.devices[0] if self.devices else "auto")
        self.call_from_thread(self._set_device, text)

    def _set_device(self, text: str) -> None:
        self.device_text = text
        self.main.update_topbar()

    @work(thread=True, group="poll", exclusive=True, exit_on_error=False)
    def _poll(self) -> None:
        worker = get_current_worker()
        poller = StorePoller(self.store, self._streamed)
        while not worker.is_cancelled and not self._stop.is_set():
            try:
                rows, points = poller.poll(time.time())
                if rows or points:
                    self.post_message(StoreUpdate(rows, points))
                for text, level in poller.log_lines:  # what runs trained elsewhere logged
                    self.post_message(LogLine(text, level))
            except Exception as e:  # noqa: BLE001 - a bad poll must not stop polling
                self.post_message(LogLine(f"store poll failed: {e}", "error"))
            self._stop.wait(self.poll_s)

    # ------------------------------------------------------------------ into the state (UI thread)
    def on_store_update(self, msg: StoreUpdate) -> None:
        self.state.merge_rows(msg.rows)
        self.state.merge_points(msg.points)
        self.main.refresh_view()

    def on_log_line(self, msg: LogLine) -> None:
        self.log_line(msg.text, msg.level)

    def _tick(self) -> None:
        with self._pending_lock:
            events, self._pending = self._pending, []
        for t, ev in events:
            line = self.state.apply(ev, t)
            if line:
                self.log_line(line, "error" if isinstance(ev, RunFailed) else getattr(ev, "level", "info"))
        self.main.refresh_view()

    def log_line(self, text: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        mark, style = {"error": ("✗ ", "bold red"), "warning": ("! ", "yellow")}.get(level, ("", ""))
        self.log_history.append(f"{stamp} {mark}{text}")
        self.main.show_log(stamp, mark + text, style)


def create_app(model: str = "minilm", data: str = "synthetic", store: str | Path | None = None, *,
               template: RunConfig | None = None, devices: list[str] | None = None,
               poll_s: float = 1.0, workers: int | None = None, ray: str | None = None,
               trust_remote_code: bool = False, runs_per_gpu: int | str | None = None) -> PeftLab:
    """The dashboard over the store at `store` (default ./peft-runs or $PEFT_TUI_STORE).

    `template` is the starting point for new runs and the compare preset (model, data, epochs, ...);
    by default the engine's defaults with `model` and `data`. Raises ConfigError for a bad store."""
    from peft_tui.engine.store import Store

    if template is None:
        template = RunConfig(model=model, data=DataConfig(source=data), trust_remote_code=trust_remote_code)
    st = Store(store_path(str(store) if store is not None else None))
    if ray:
        from peft_tui.engine.launch.ray import require_ray

        require_ray()  # before the screen opens: one line saying how to install it
    return PeftLab(st, template, devices=devices, poll_s=poll_s, workers=workers, ray=ray, runs_per_gpu=runs_per_gpu)
