"""The dashboard app. `create_app()` is the one factory used by `peft-tui launch`, the tests and the
screenshot script.

Threads: the Scheduler's workers train and call `_sink` (buffer only, never touches widgets); a 0.1 s
timer on the UI thread drains the buffer into `LabState` and refreshes what changed, so the screen
updates at most ~10 times a second however fast events come. A thread worker polls the store once a
second so runs from other processes appear and stream; every SQLite call runs off the UI thread.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import deque
import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static, TabbedContent, TabPane
from textual.containers import Horizontal
from textual.worker import get_current_worker

from peft_tui.config import ConfigError, DataConfig, RunConfig, store_path
from peft_tui.engine.events import RunFailed, RunFinished
from peft_tui.ui.messages import LogLine, StoreUpdate
from peft_tui.ui.state import LabState
from peft_tui.ui.widgets.charts import AccuracyChart, LossChart, MemoryChart, RunChart
from peft_tui.ui.widgets.charts import ParetoChart
from peft_tui.ui.widgets.tables import QueueTable, ResultsTable

COMPARE_METHODS = ("full", "lora", "adapters")
SWEEP_RANKS = (1, 2, 4, 8, 16)  # the `w` preset: a LoRA rank sweep
SERIES_NAMES = ("train_loss", "val_accuracy", "mem_used_mb", "mem_peak_mb", "gpu_device_used_mb")
NARROW_WIDTH, NARROW_HEIGHT = 120, 36


class MainScreen(Screen):
    """The dashboard. Bindings live here (not on the app) so modal screens do not inherit them."""

    BINDINGS = [
        Binding("n", "app.new_run", "New"),  # short: every key fits an 80-column footer
        Binding("c", "app.compare", "Compare"),
        Binding("w", "app.sweep", "Sweep", show=False),
        Binding("x", "app.cancel_run", "Cancel"),
        Binding("r", "app.retry", "Retry"),
        Binding("u", "app.resume", "Resume"),
        Binding("delete", "app.remove", "Remove", key_display="del"),
        Binding("enter", "app.details", "Details", key_display="⏎"),
        Binding("e", "app.export", "Export"),
        Binding("s", "app.sort", "Sort", show=False),
        Binding("g", "app.next_chart", "Next chart", show=False),
        Binding("1", "app.show_tab('tab-runs')", "Runs", show=False),
        Binding("2", "app.show_tab('tab-results')", "Results", show=False),
        Binding("3", "app.show_tab('tab-log')", "Log", show=False),
        Binding("q", "app.request_quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="topbar")
        with TabbedContent(initial="tab-runs", id="tabs"):
            with TabPane("1 Runs", id="tab-runs"):
                yield QueueTable(id="queue")
                with Horizontal(id="charts"):
                    yield LossChart(id="chart-loss", classes="chart -shown")
                    yield AccuracyChart(id="chart-acc", classes="chart")
                    yield MemoryChart(id="chart-mem", classes="chart")
            with TabPane("2 Results", id="tab-results"):
                yield ResultsTable(id="results")
                yield ParetoChart(id="pareto")
                yield Static("s: sort by the next column (or click a header) · e: export CSV + Markdown to the "
                             "store · w: LoRA rank sweep · eff = accuracy points per million trainable parameters", id="results-help")
            with TabPane("3 Log", id="tab-log"):
                yield RichLog(id="log", wrap=True, max_lines=5000, markup=False)
        yield Static("", id="lastlog")
        yield Footer()

    def on_resize(self, event) -> None:
        narrow = event.size.width < NARROW_WIDTH or event.size.height < NARROW_HEIGHT
        self.set_class(narrow, "-narrow")
        self.query_one(Footer).compact = narrow  # every key fits in 80 columns

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.action_details()

    @on(DataTable.HeaderSelected, "#results")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.app.sort_results(str(event.column_key.value))

    @on(TabbedContent.TabActivated)
    def _tab(self, event: TabbedContent.TabActivated) -> None:
        target = {"tab-runs": "#queue", "tab-results": "#results", "tab-log": "#log"}.get(event.pane.id or "")
        if target:
            self.query_one(target).focus()
        self.app.refresh_all()

    def on_mount(self) -> None:
        self.query_one("#queue").focus()


class PeftLab(App):
    CSS_PATH = "lab.tcss"
    TITLE = "peft-tui"
    ENABLE_COMMAND_PALETTE = False  # its footer slot is worth more to the keys at 80 columns

    def __init__(self, store, template: RunConfig, devices: list[str] | None = None, poll_s: float = 1.0,
                 chart_interval_s: float = 2.0):
        super().__init__()
        self.chart_interval_s = chart_interval_s
        self.table_interval_s = 0.5  # the run table redraws at most twice a second (UI time is training time on small CPUs)
        self._last_table = 0.0
        self._topbar_text = ""
        self.store = store
        self.template = template
        self.devices = devices
        self.poll_s = poll_s
        self.state = LabState()
        self.scheduler = None
        self.device_text = "detecting device…"
        self._sched_lock = threading.Lock()
        self._pending: list[tuple[float, Any]] = []
        self._pending_lock = threading.Lock()
        self._local_ids: set[int] = set()  # runs trained by this process: their points come as events
        self._stop = threading.Event()
        self._last_chart = 0.0
        self._last_tick_1s = 0.0
        self._chart_index = 0
        self.main = MainScreen()
        self.first_paint_s: float | None = None
        self.log_history: deque[str] = deque(maxlen=5000)  # what the log pane shows, as plain text
        self._t_created = time.perf_counter()

    # ------------------------------------------------------------------ lifecycle
    def on_mount(self) -> None:
        self.push_screen(self.main)
        self.set_interval(0.2, self._tick)
        self._describe_device()
        self._poll()
        self.call_after_refresh(self._painted)
        self.log_line(f"store {self.store.root.resolve()} · model {self.template.model} · data "
                      f"{self.template.data.source} · n: new run, c: compare full/lora/adapters")

    def _painted(self) -> None:
        self.first_paint_s = time.perf_counter() - self._t_created
        self.refresh_all()

    def on_unmount(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(cancel_running=True, timeout=10.0)

    # ------------------------------------------------------------------ engine side (worker threads)
    def _sink(self, event: Any) -> None:
        """Called on a scheduler worker thread: buffer only."""
        self._local_ids.add(event.run_id)
        with self._pending_lock:
            self._pending.append((time.time(), event))

    def _ensure_scheduler(self):
        with self._sched_lock:
            if self.scheduler is None:
                from peft_tui.engine.scheduler import Scheduler

                self.scheduler = Scheduler(self.store, self._sink, self.devices)
            return self.scheduler

    @work(thread=True, group="device", exit_on_error=False)
    def _describe_device(self) -> None:
        from peft_tui.engine.memory import device_description

        dev = self.devices[0] if self.devices else "auto"
        text = device_description(dev)
        self.call_from_thread(self._set_device, text)

    def _set_device(self, text: str) -> None:
        self.device_text = text
        self._update_topbar()

    @work(thread=True, group="poll", exclusive=True, exit_on_error=False)
    def _poll(self) -> None:
        """Once a second: rows changed in the store, and new points for runs trained by other processes."""
        worker = get_current_worker()
        last = 0.0
        followed: dict[tuple[int, str], int] = {}
        ro = None
        rounds = 0
        while not worker.is_cancelled and not self._stop.is_set():
            t = time.time()
            rounds += 1
            try:
                if rounds % 10 == 0:
                    self.store.mark_interrupted()  # runs whose process died show as interrupted
                rows = self.store.changed_since(last - 2.0)
                points: dict[tuple[int, str], list] = {}
                for r in rows:
                    rid = r["id"]
                    if rid in self._local_ids:
                        continue
                    if r["status"] == "running" or any(k[0] == rid for k in followed):
                        if ro is None:
                            ro = sqlite3.connect(f"file:{self.store.db_path}?mode=ro", uri=True, timeout=5.0)
                        for name in SERIES_NAMES:
                            after = followed.get((rid, name), -1)
                            got = ro.execute(
                                "SELECT step, value, t FROM metrics WHERE run_id=? AND name=? AND step>? "
                                "ORDER BY step, rowid", (rid, name, after)).fetchall()
                            followed[(rid, name)] = got[-1][0] if got else after
                            if got:
                                points[(rid, name)] = got
                        if r["status"] != "running":
                            for k in [k for k in followed if k[0] == rid]:
                                del followed[k]
                if rows or points:
                    self.post_message(StoreUpdate(rows, points))
                last = t
            except Exception as e:  # noqa: BLE001 - a bad poll must not stop polling
                self.post_message(LogLine(f"store poll failed: {e}", "error"))
            self._stop.wait(self.poll_s)
        if ro is not None:
            ro.close()

    def on_store_update(self, msg: StoreUpdate) -> None:
        self.state.merge_rows(msg.rows)
        for (rid, name), pts in msg.points.items():
            self.state._plot(rid)
            for step, value, t in pts:
                if name == "train_loss":
                    self.state.loss.setdefault(rid, _series()).add(step, value)
                elif name == "val_accuracy":
                    row = self.state.runs.get(rid, {})
                    total, epochs = row.get("total_steps") or 0, (row.get("config") or {}).get("epochs") or 1
                    x = step / (total / epochs) if total else step
                    self.state.acc.setdefault(rid, _series()).add(x, 100 * value)
                elif name == "mem_used_mb":
                    self.state.mem.setdefault(rid, _series()).add(t, value)
                elif name == "mem_peak_mb":
                    self.state.mem_peak[rid] = max(self.state.mem_peak.get(rid, 0.0), value)
                elif name == "gpu_device_used_mb":
                    self.state.gpu_used.setdefault(rid, _series()).add(t, value)
            self.state.dirty_charts.add({"train_loss": "loss", "val_accuracy": "acc"}.get(name, "mem"))
        self._refresh()

    def on_log_line(self, msg: LogLine) -> None:
        self.log_line(msg.text, msg.level)

    # ------------------------------------------------------------------ refresh (UI thread)
    def _tick(self) -> None:
        with self._pending_lock:
            events, self._pending = self._pending, []
        for t, ev in events:
            line = self.state.apply(ev, t)
            if line:
                level = "error" if isinstance(ev, RunFailed) else getattr(ev, "level", "info")
                self.log_line(line, level)
        self._refresh()

    def _refresh(self) -> None:
        st = self.state
        now = time.monotonic()
        try:
            queue = self.main.query_one("#queue", QueueTable)
        except Exception:
            return
        ids = set(st.dirty_runs)
        if now - self._last_tick_1s >= 1.0:  # elapsed / ETA tick
            ids |= set(st.active())
            self._last_tick_1s = now
        if ids and now - self._last_table >= self.table_interval_s:
            queue.sync(st, ids)
            st.dirty_runs.clear()
            self._last_table = now
            self._update_topbar()
        if st.results_dirty:
            st.results_dirty = False
            results = self.main.query_one("#results", ResultsTable)
            results.sync(st)
            self.main.query_one("#pareto", ParetoChart).replot_rows(results.rows_data)
        if st.dirty_charts and now - self._last_chart >= self._chart_wait():
            self._replot(st.dirty_charts)

    def _chart_wait(self) -> float:
        """Seconds between chart redraws: at least chart_interval_s, and long enough that drawing stays
        near 2% of the UI thread's time (plotext holds the GIL the training thread also needs)."""
        cost = sum(c.cost_s for c in self.main.query(RunChart))
        return min(5.0, max(self.chart_interval_s, 50 * cost))

    def _replot(self, kinds: set[str] | None = None) -> None:
        """Redraw the charts whose data changed (all when `kinds` is None). A plotext render costs
        tens of milliseconds of the GIL the training thread needs, so charts redraw about once a second."""
        self._last_chart = time.monotonic()
        for chart in self.main.query(RunChart):
            if chart.display and chart.size.width and (kinds is None or chart.kind in kinds):
                chart.replot(self.state)
        self.state.dirty_charts = set()

    def refresh_all(self) -> None:
        try:
            self.main.query_one("#queue", QueueTable).sync(self.state)
            self.main.query_one("#results", ResultsTable).sync(self.state)
        except Exception:
            return
        self._update_topbar()
        self.call_after_refresh(self._replot)

    def _update_topbar(self) -> None:
        c = self.state.counts()
        text = (f" [b]{self.device_text}[/b] │ {c['queued']} queued · {c['running']} running · {c['done']} done"
                + (f" · [red]✗ {c['failed']} failed[/red]" if c["failed"] else "")
                + f" │ store {self.store.root} │ model {self.template.model} · data "
                  f"{Path(self.template.data.source).name}")
        if text == self._topbar_text:
            return
        try:
            self.main.query_one("#topbar", Static).update(text)
            self._topbar_text = text
        except Exception:
            pass

    def log_line(self, text: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        mark, style = {"error": ("✗ ", "bold red"), "warning": ("! ", "yellow")}.get(level, ("", ""))
        line = Text(f"{stamp} {mark}{text}", style=style)
        self.log_history.append(f"{stamp} {mark}{text}")
        try:
            self.main.query_one("#log", RichLog).write(line)
            self.main.query_one("#lastlog", Static).update(Text(f" {mark}{text}", style=style or "dim"))
        except Exception:
            pass

    # ------------------------------------------------------------------ selection
    def selected_run(self) -> int | None:
        tabs = self.main.query_one("#tabs", TabbedContent)
        if tabs.active == "tab-results":
            return self.main.query_one("#results", ResultsTable).selected_run()
        return self.main.query_one("#queue", QueueTable).selected_run()

    def _need_selection(self) -> int | None:
        rid = self.selected_run()
        if rid is None:
            self.notify("no run selected: move the cursor onto a run in the table", severity="warning")
        return rid

    # ------------------------------------------------------------------ actions
    def action_new_run(self) -> None:
        from peft_tui.ui.screens.new_run import NewRunScreen

        def queued(configs: list[RunConfig] | None) -> None:
            if configs:
                self.submit(configs)

        self.push_screen(NewRunScreen(self.template), queued)

    def action_compare(self) -> None:
        t = self.template
        configs = [dataclasses.replace(t, method=m, params={}, lr=None, name=None) for m in COMPARE_METHODS]
        self.log_line(f"compare: queueing {', '.join(COMPARE_METHODS)} on {t.model} / {t.data.source} "
                      f"+ the TF-IDF baseline")
        self.submit(configs, baseline=t)

    def action_sweep(self) -> None:
        """The LoRA rank sweep preset (r = 1, 2, 4, 8, 16): its front shows in the Results tab."""
        from peft_tui.engine.sweep import grid_configs

        t = dataclasses.replace(self.template, method="lora", params={}, lr=None, name=None)
        try:
            configs = grid_configs(t, [f"r={','.join(map(str, SWEEP_RANKS))}"])
        except ConfigError as e:
            self.log_line(f"sweep not queued: {e}", "error")
            return
        self.log_line(f"sweep: queueing LoRA r={','.join(map(str, SWEEP_RANKS))} on {t.model} / {t.data.source}")
        self.submit(configs)

    @work(thread=True, group="submit", exit_on_error=False)
    def submit(self, configs: list[RunConfig], baseline: RunConfig | None = None) -> None:
        sched = self._ensure_scheduler()
        rows = []
        for cfg in configs:
            try:
                rid = sched.submit(cfg)
            except ConfigError as e:
                self.post_message(LogLine(f"not queued: {e}", "error"))
                continue
            self._local_ids.add(rid)
            rows.append(self.store.get(rid))
            self.post_message(LogLine(f"queued run {rid} {cfg.display_name} ({cfg.method} on {cfg.model})"))
        if rows:
            self.post_message(StoreUpdate(rows, {}))
        if baseline is not None:
            self._baseline(baseline)

    def _baseline(self, t: RunConfig) -> None:
        """The TF-IDF + logistic regression row (on the submit thread; takes a second or two)."""
        from peft_tui.engine.baseline import tfidf_baseline

        base = RunConfig(method="tfidf", model="tfidf+logreg", data=t.data, name="tfidf", seed=t.seed)
        rid = self.store.create_run(base, validate=False)
        self._local_ids.add(rid)
        self.post_message(StoreUpdate([self.store.get(rid)], {}))
        try:
            res = tfidf_baseline(base.data, base.seed)
            res["run_id"] = rid
            event: Any = RunFinished(rid, res)
        except Exception as e:  # noqa: BLE001 - a failing baseline is one failed row
            event = RunFailed(rid, f"{type(e).__name__}: {e}")
        try:
            self.store(event)
        finally:
            self._sink(event)

    def action_cancel_run(self) -> None:
        rid = self._need_selection()
        if rid is None:
            return
        row = self.state.runs.get(rid, {})
        if row.get("status") not in ("queued", "running"):
            self.notify(f"run {rid} is {row.get('status')}: only a queued or running run can be cancelled",
                        severity="warning")
            return
        self._cancel(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _cancel(self, rid: int) -> None:
        sched = self._ensure_scheduler()
        if sched.cancel(rid):
            self.post_message(LogLine(f"cancelling run {rid} (stops within one training step)", "warning"))
            return
        row = self.store.get(rid)
        if row["status"] == "queued":
            # queued by another dashboard session (maybe one that is gone): no worker will start it from here
            self.store.set_status(rid, "cancelled")
            self.post_message(StoreUpdate([self.store.get(rid)], {}))
            self.post_message(LogLine(f"run {rid} was queued by another dashboard session: marked cancelled",
                                      "warning"))
        else:
            self.post_message(LogLine(
                f"run {rid} is trained by another process (pid {row.get('pid')} on {row.get('host')}): "
                f"stop it there", "warning"))

    def action_retry(self) -> None:
        rid = self._need_selection()
        if rid is not None:
            self._retry(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _retry(self, rid: int) -> None:
        sched = self._ensure_scheduler()
        try:
            new = sched.retry(rid)
        except ConfigError as e:
            self.post_message(LogLine(f"retry refused: {e}", "warning"))
            self.call_from_thread(self.notify, str(e), severity="warning")
            return
        self._local_ids.add(new)
        self.post_message(LogLine(f"retrying run {rid} as run {new}"))
        self.post_message(StoreUpdate([self.store.get(new)], {}))

    def action_resume(self) -> None:
        rid = self._need_selection()
        if rid is not None:
            self._resume(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _resume(self, rid: int) -> None:
        sched = self._ensure_scheduler()
        try:
            sched.resume(rid)
        except ConfigError as e:
            self.post_message(LogLine(f"resume refused: {e}", "warning"))
            self.call_from_thread(self.notify, str(e), severity="warning")
            return
        self._local_ids.add(rid)
        self.post_message(LogLine(f"resuming run {rid} from its last epoch-end checkpoint"))
        self.post_message(StoreUpdate([self.store.get(rid)], {}))

    def action_remove(self) -> None:
        rid = self._need_selection()
        if rid is None:
            return
        status = self.state.runs.get(rid, {}).get("status")
        if status != "queued":
            self.notify(f"run {rid} is {status}: only a queued run can be removed (x cancels a running one)",
                        severity="warning")
            return
        self._remove(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _remove(self, rid: int) -> None:
        sched = self._ensure_scheduler()
        if sched.remove(rid):
            self.call_from_thread(self._forget, rid)
            return
        row = self.store.get(rid)
        if row["status"] == "queued":  # queued by another dashboard session, never started
            self.store.delete(rid)
            self.call_from_thread(self._forget, rid)
        else:
            self.post_message(LogLine(f"run {rid} is {row['status']} now: only a queued run can be removed",
                                      "warning"))

    def _forget(self, rid: int) -> None:
        self.state.forget(rid)
        self.log_line(f"removed queued run {rid}")
        self._refresh()

    def action_details(self) -> None:
        from peft_tui.ui.screens.details import DetailsScreen

        rid = self._need_selection()
        if rid is None or rid not in self.state.runs:
            return
        row = self.state.runs[rid]
        folder = str(self.store.root / "runs" / row["folder"]) if row.get("folder") else None
        self.push_screen(DetailsScreen(row, folder))

    def action_export(self) -> None:
        from peft_tui.report.table import to_csv, to_markdown

        rows = self.main.query_one("#results", ResultsTable).rows_data
        if not rows:
            self.notify("nothing to export yet: no finished runs", severity="warning")
            return
        csv_path = self.store.root / "results.csv"
        md_path = self.store.root / "results.md"
        try:
            csv_path.write_text(to_csv(rows))
            md_path.write_text(to_markdown(rows))
        except OSError as e:
            self.log_line(f"export failed: {e}", "error")
            return
        self.log_line(f"exported {len(rows)} rows to {csv_path.resolve()} and {md_path.resolve()}")
        self.notify(f"exported {len(rows)} rows to {csv_path} and results.md")

    def sort_results(self, key: str) -> None:
        self.main.query_one("#results", ResultsTable).sort_by(key, self.state)

    def action_sort(self) -> None:
        key = self.main.query_one("#results", ResultsTable).cycle_sort(self.state)
        self.notify(f"results sorted by {key}")

    def action_show_tab(self, tab: str) -> None:
        self.main.query_one("#tabs", TabbedContent).active = tab

    def action_next_chart(self) -> None:
        charts = list(self.main.query(RunChart))
        self._chart_index = (self._chart_index + 1) % len(charts)
        for i, c in enumerate(charts):
            c.set_class(i == self._chart_index, "-shown")
        self.call_after_refresh(self._replot)

    def action_request_quit(self) -> None:
        active = self.scheduler is not None and self.scheduler.busy
        if not active:
            self.exit()
            return
        from peft_tui.ui.screens.confirm import ConfirmScreen

        n = len(self.scheduler.queued()) + len(self.scheduler.running())
        self.push_screen(
            ConfirmScreen(f"{n} run(s) are queued or running in this dashboard.\n"
                          f"Quitting cancels them (finished runs stay in the store). Quit?"),
            lambda yes: self.exit() if yes else None,
        )


def _series():
    from peft_tui.ui.state import Series

    return Series()


def create_app(model: str = "minilm", data: str = "synthetic", store: str | Path | None = None, *,
               template: RunConfig | None = None, devices: list[str] | None = None,
               poll_s: float = 1.0) -> PeftLab:
    """The dashboard over the store at `store` (default ./peft-runs or $PEFT_TUI_STORE).

    `template` is the starting point for new runs and the compare preset (model, data, epochs, ...);
    by default the engine's defaults with `model` and `data`. Raises ConfigError for a bad store."""
    from peft_tui.engine.store import Store

    if template is None:
        template = RunConfig(model=model, data=DataConfig(source=data))
    st = Store(store_path(str(store) if store is not None else None))
    return PeftLab(st, template, devices=devices, poll_s=poll_s)
