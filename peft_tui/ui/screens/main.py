"""The dashboard screen: the Runs, Results and Log tabs, every key binding and the action behind it.

Bindings live here, not on the app, so modal screens do not inherit them. Actions that touch the store or
the scheduler run on thread workers (`group="control"`), never on the UI thread; what they learn comes
back to the app as `LogLine` and `StoreUpdate` messages.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, RichLog, Static, TabbedContent, TabPane

from peft_tui.config import RunConfig
from peft_tui.console import literal
from peft_tui.errors import OneLineError
from peft_tui.safe import safe_text
from peft_tui.ui.messages import LogLine, StoreUpdate
from peft_tui.ui.widgets.charts import (
    AccuracyChart,
    Legend,
    LossChart,
    MemoryChart,
    ParetoChart,
    RunChart,
    runs_legend,
)
from peft_tui.ui.widgets.tables import QueueTable, ResultsTable

COMPARE_METHODS = ("full", "lora", "adapters")
SWEEP_RANKS = (1, 2, 4, 8, 16)  # the `w` preset: a LoRA rank sweep
NARROW_WIDTH, NARROW_HEIGHT = 120, 36
TABLE_INTERVAL_S = 0.5  # the run table redraws at most twice a second (UI time is training time on small CPUs)


def baseline_config(template: RunConfig) -> RunConfig:
    """The TF-IDF + logistic regression row of a comparison, on the template's data and seed."""
    return RunConfig(method="tfidf", model="tfidf+logreg", data=template.data, seed=template.seed, name="tfidf")


def shown_path(path: Path) -> str:
    """`path` relative to the working folder when it lies inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def topbar_text(device: str, counts: dict[str, int], store: str, model: str, data: str) -> Text:
    """The line above the tabs; the names in it are shown literally."""
    text = Text(" ") + literal(device, "bold")
    text.append(f" │ {counts['queued']} queued · {counts['running']} running · {counts['done']} done")
    if counts["failed"]:
        text.append(f" · ✗ {counts['failed']} failed", style="red")
    return text + literal(f" │ store {store} │ model {model} · data {data}")


class MainScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_run", "New"),  # short: every key fits an 80-column footer
        Binding("c", "compare", "Compare"),
        Binding("w", "sweep", "Sweep", show=False),
        Binding("t", "tune", "Tune", show=False),
        Binding("x", "cancel_run", "Cancel"),
        Binding("r", "requeue(False)", "Retry"),
        Binding("u", "requeue(True)", "Resume"),
        Binding("delete", "remove", "Remove", key_display="del"),
        Binding("enter", "details", "Details", key_display="⏎"),
        Binding("e", "export", "Export"),
        Binding("s", "sort", "Sort", show=False),
        Binding("g", "next_chart", "Next chart", show=False),
        Binding("1", "show_tab('tab-runs')", "Runs", show=False),
        Binding("2", "show_tab('tab-results')", "Results", show=False),
        Binding("3", "show_tab('tab-log')", "Log", show=False),
        Binding("q", "request_quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._last_table = 0.0
        self._last_tick_1s = 0.0
        self._last_chart = 0.0
        self._chart_index = 0
        self._topbar_text = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="topbar")
        with TabbedContent(initial="tab-runs", id="tabs"):
            with TabPane("1 Runs", id="tab-runs"):
                yield QueueTable(id="queue")
                yield Legend(id="run-legend")
                with Horizontal(id="charts"):
                    yield LossChart(id="chart-loss", classes="chart -shown")
                    yield AccuracyChart(id="chart-acc", classes="chart")
                    yield MemoryChart(id="chart-mem", classes="chart")
            with TabPane("2 Results", id="tab-results"):
                yield ResultsTable(id="results")
                yield Legend(id="pareto-legend")
                yield ParetoChart(id="pareto")
                yield Static("s: sort · e: export CSV/Markdown · w: LoRA sweep · eff: acc points/M trainable",
                             id="results-help")
            with TabPane("3 Log", id="tab-log"):
                yield RichLog(id="log", wrap=True, max_lines=5000, markup=False)
        yield Static("", id="lastlog")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queue").focus()

    def on_resize(self, event) -> None:
        narrow = event.size.width < NARROW_WIDTH or event.size.height < NARROW_HEIGHT
        self.set_class(narrow, "-narrow")
        self.query_one(Footer).compact = narrow  # every key fits in 80 columns

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    @on(DataTable.HeaderSelected, "#results")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.query_one("#results", ResultsTable).sort_by(str(event.column_key.value), self.app.state)

    @on(TabbedContent.TabActivated)
    def _tab(self, event: TabbedContent.TabActivated) -> None:
        target = {"tab-runs": "#queue", "tab-results": "#results", "tab-log": "#log"}.get(event.pane.id or "")
        if target:
            self.query_one(target).focus()
        self.refresh_all()

    # ------------------------------------------------------------------ drawing (UI thread)
    def _app_gone(self) -> bool:
        """True once the app shuts down: its widgets go while timers and worker messages still arrive."""
        return not self.app.is_running

    def refresh_view(self) -> None:
        """Redraw what changed in the app's state, within the table and chart redraw budgets."""
        if self._app_gone():
            return
        st = self.app.state
        now = time.monotonic()
        ids = set(st.dirty_runs)
        if now - self._last_tick_1s >= 1.0:  # elapsed / ETA tick
            ids |= set(st.active())
            self._last_tick_1s = now
        if ids and now - self._last_table >= TABLE_INTERVAL_S:
            self.query_one("#queue", QueueTable).sync(st, ids)
            st.dirty_runs.clear()
            self._last_table = now
            self.update_topbar()
        if st.results_dirty:
            st.results_dirty = False
            self._show_results()
        if st.dirty_charts and now - self._last_chart >= self._chart_wait():
            self.replot()

    def refresh_all(self) -> None:
        """Redraw everything now (tab switches, first paint)."""
        if self._app_gone():
            return
        self.query_one("#queue", QueueTable).sync(self.app.state)
        self._show_results()
        self.update_topbar()
        self.call_after_refresh(self.replot)

    def _show_results(self) -> None:
        results = self.query_one("#results", ResultsTable)
        results.sync(self.app.state)
        legend = self.query_one("#pareto", ParetoChart).replot_rows(results.rows_data)
        self.query_one("#pareto-legend", Legend).update(legend)

    def _chart_wait(self) -> float:
        """Seconds between chart redraws: at least the app's chart interval, and long enough that drawing
        stays near 2% of the UI thread's time (plotext holds the GIL the training thread also needs)."""
        cost = sum(c.cost_s for c in self.query(RunChart))
        return min(5.0, max(self.app.chart_interval_s, 50 * cost))

    def replot(self, kinds: set[str] | None = None) -> None:
        """Redraw the shown charts whose data changed (all of them when `kinds` is None)."""
        if self._app_gone():
            return
        self._last_chart = time.monotonic()
        for chart in self.query(RunChart):
            if chart.display and chart.size.width and (kinds is None or chart.kind in kinds):
                chart.replot(self.app.state)
        self.query_one("#run-legend", Legend).update(runs_legend(self.app.state))
        self.app.state.dirty_charts = set()

    def update_topbar(self) -> None:
        if self._app_gone():
            return
        app = self.app
        text = topbar_text(app.device_text, app.state.counts(), shown_path(app.store.root), app.template.model,
                             Path(app.template.data.source).name)
        if text != self._topbar_text:
            self.query_one("#topbar", Static).update(text)
            self._topbar_text = text

    def show_log(self, stamp: str, text: str, style: str) -> None:
        """A line in the Log tab, and (without its time stamp) in the status line under the tabs."""
        if self._app_gone():
            return
        self.query_one("#log", RichLog).write(literal(f"{stamp} {text}", style))
        self.query_one("#lastlog", Static).update(literal(f" {text}", style or "dim"))

    # ------------------------------------------------------------------ selection
    def selected_run(self) -> int | None:
        if self.query_one("#tabs", TabbedContent).active == "tab-results":
            return self.query_one("#results", ResultsTable).selected_run()
        return self.query_one("#queue", QueueTable).selected_run()

    def _need_selection(self) -> int | None:
        rid = self.selected_run()
        if rid is None:
            self.notify("no run selected: move the cursor onto a run in the table", severity="warning")
        return rid

    def _status(self, rid: int) -> str | None:
        return self.app.state.runs.get(rid, {}).get("status")

    def _say(self, text: str, level: str = "info") -> None:
        """A log line from a thread worker."""
        self.app.post_message(LogLine(text, level))

    def _show_rows(self, *run_ids: int) -> None:
        """Send the stored rows of `run_ids` to the app (from a thread worker)."""
        self.app.post_message(StoreUpdate([self.app.store.get(rid) for rid in run_ids], {}))

    # ------------------------------------------------------------------ queueing runs
    def action_new_run(self) -> None:
        from peft_tui.ui.screens.new_run import NewRunScreen

        def queued(configs: list[RunConfig] | None) -> None:
            if configs:
                self.app.submit(configs)

        self.app.push_screen(NewRunScreen(self.app.template), queued)

    def action_compare(self) -> None:
        t = self.app.template
        configs = [dataclasses.replace(t, method=m, params={}, lr=None, name=None) for m in COMPARE_METHODS]
        self.app.log_line(f"compare: queueing {', '.join(COMPARE_METHODS)} on {t.model} / {t.data.source} "
                          f"+ the TF-IDF baseline")
        self.app.submit(configs + [baseline_config(t)])

    def action_sweep(self) -> None:
        """The LoRA rank sweep preset (r = 1, 2, 4, 8, 16): its front shows in the Results tab."""
        from peft_tui.engine.sweep import grid_configs

        t = dataclasses.replace(self.app.template, method="lora", params={}, lr=None, name=None)
        ranks = ",".join(map(str, SWEEP_RANKS))
        try:
            configs = grid_configs(t, [f"r={ranks}"])
        except OneLineError as e:
            self.app.log_line(f"sweep not queued: {e}", "error")
            return
        self.app.log_line(f"sweep: queueing LoRA r={ranks} on {t.model} / {t.data.source}")
        self.app.submit(configs)

    def action_tune(self) -> None:
        """The tune preset: a study of full, LoRA and adapters on the template (ui/screens/tune.py)."""
        from peft_tui.ui.screens.tune import TuneScreen

        self.app.push_screen(TuneScreen(self.app.template))

    # ------------------------------------------------------------------ controlling runs
    def action_cancel_run(self) -> None:
        rid = self._need_selection()
        if rid is None:
            return
        if self._status(rid) not in ("queued", "running"):
            self.notify(f"run {rid} is {self._status(rid)}: only a queued or running run can be cancelled",
                        severity="warning")
            return
        self._cancel(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _cancel(self, rid: int) -> None:
        sched = self.app.started_scheduler
        if sched is not None and sched.cancel(rid):
            self._say(f"cancelling run {rid} (stops within one training step)", "warning")
            return
        # queued or trained elsewhere (another dashboard session, a headless run): through the store
        if not self.app.store.request_cancel(rid):
            self._say(f"run {rid} is no longer queued or running", "warning")
        elif self.app.store.get(rid)["status"] == "cancelled":
            self._say(f"run {rid} (queued by another session) cancelled", "warning")
        else:
            self._say(f"run {rid} runs in another process: asked it to stop within one step", "warning")
        self._show_rows(rid)

    def action_requeue(self, resume: bool) -> None:
        """r: retry the selected run as a new run; u: resume it from its last epoch-end checkpoint."""
        rid = self._need_selection()
        if rid is not None:
            self._requeue(rid, resume)

    @work(thread=True, group="control", exit_on_error=False)
    def _requeue(self, rid: int, resume: bool) -> None:
        sched = self.app.scheduler
        try:
            new = sched.resume(rid) if resume else sched.retry(rid)
        except OneLineError as e:
            self._say(f"{'resume' if resume else 'retry'} refused: {e}", "warning")
            self.app.call_from_thread(self.notify, safe_text(e, 300), severity="warning", markup=False)
            return
        self._say(f"resuming run {rid} from its last epoch-end checkpoint" if resume
                  else f"retrying run {rid} as run {new}")
        self._show_rows(new)

    def action_remove(self) -> None:
        rid = self._need_selection()
        if rid is None:
            return
        if self._status(rid) != "queued":
            self.notify(f"run {rid} is {self._status(rid)}: only a queued run can be removed "
                        f"(x cancels a running one)", severity="warning")
            return
        self._remove(rid)

    @work(thread=True, group="control", exit_on_error=False)
    def _remove(self, rid: int) -> None:
        # not in this dashboard's queue: queued by another session, and removed if still unclaimed
        sched = self.app.started_scheduler
        if (sched is not None and sched.remove(rid)) or self.app.store.remove(rid):
            self.app.call_from_thread(self._forget, rid)
        else:
            self._say(f"run {rid} is {self.app.store.get(rid)['status']} now: only a queued run can be removed",
                      "warning")

    def _forget(self, rid: int) -> None:
        self.app.state.forget(rid)
        self.app.log_line(f"removed queued run {rid}")
        self.refresh_view()

    # ------------------------------------------------------------------ views
    def action_details(self) -> None:
        from peft_tui.ui.screens.details import DetailsScreen

        rid = self._need_selection()
        if rid is None or rid not in self.app.state.runs:
            return
        row = self.app.state.runs[rid]
        folder = shown_path(self.app.store.root / "runs" / row["folder"]) if row.get("folder") else None
        self.app.push_screen(DetailsScreen(row, folder))

    def action_export(self) -> None:
        from peft_tui.report.table import to_csv, to_markdown

        rows = self.query_one("#results", ResultsTable).rows_data
        if not rows:
            self.notify("nothing to export yet: no finished runs", severity="warning")
            return
        csv_path = self.app.store.root / "results.csv"
        md_path = self.app.store.root / "results.md"
        try:
            csv_path.write_text(to_csv(rows))
            md_path.write_text(to_markdown(rows))
        except OSError as e:
            self.app.log_line(f"export failed: {e}", "error")
            return
        self.app.log_line(f"exported {len(rows)} rows to {csv_path.resolve()} and {md_path.resolve()}")
        self.notify(safe_text(f"exported {len(rows)} rows to {csv_path} and results.md"), markup=False)

    def action_sort(self) -> None:
        key = self.query_one("#results", ResultsTable).cycle_sort(self.app.state)
        self.notify(f"results sorted by {key}")

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_next_chart(self) -> None:
        charts = list(self.query(RunChart))
        self._chart_index = (self._chart_index + 1) % len(charts)
        for i, c in enumerate(charts):
            c.set_class(i == self._chart_index, "-shown")
        self.call_after_refresh(self.replot)

    def action_request_quit(self) -> None:
        n = self.app.runs_here()
        if not n:
            self.app.exit()
            return

        def answer(choice: str | None) -> None:
            if choice is not None:
                self.app.keep_training = choice == "keep"
                self.app.exit()

        self.app.push_screen(QuitScreen(n), answer)


class QuitScreen(ModalScreen[str | None]):
    """Quitting with runs in flight: keep them training in the background (the workers outlive the
    dashboard and leave when the queue is empty), cancel them, or stay."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("k", "choose('keep')", "Keep training"),
                                             Binding("c", "choose('cancel')", "Cancel them"),
                                             Binding("escape", "choose('')", "Stay")]

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(f"{self.n} run(s) are queued or running in this dashboard.", id="confirm-text")
            with Horizontal(id="confirm-buttons"):
                yield Button("Keep training in the background (k)", variant="primary", id="keep")
                yield Button("Cancel them (c)", variant="error", id="cancel")
                yield Button("Stay (esc)", id="stay")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose("" if event.button.id == "stay" else str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
