"""The tune view: starts a study (the `t` preset on the main screen: full, LoRA and adapters on the
dashboard's model and data) or follows one already in the store, and shows per method the best validation
accuracy so far over trials (pruned trials marked x, failed ones !), then the final table when the study ends.

The study runs in a thread worker through the engine (engine/tune) with its own pool of workers;
the screen reads the study's summary from the store every second and draws it. Its trials are ordinary
runs: they show in the main screen's queue, grouped by study, and can be cancelled there like any run.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from peft_tui.config import RunConfig
from peft_tui.console import literal
from peft_tui.errors import OneLineError

TUNE_METHODS = ("full", "lora", "adapters")
TUNE_TRIALS = 4
MARK = {"pruned": "x", "failed": "!", "diverged": "!"}


class BestSoFarChart(PlotextPlot):
    """Per method: the best validation accuracy after each trial (a line), each trial's own value (a
    point; pruned trials marked x at their last reported value)."""

    def draw(self, doc: dict[str, Any] | None) -> None:
        from peft_tui.report.tune import best_so_far

        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("best validation accuracy so far, per method")
        plt.xlabel("trial")
        plt.ylabel("val acc %")
        curves = {method: best_so_far(m["trials"]) for method, m in (doc or {}).get("methods", {}).items()}
        for method, curve in curves.items():
            points = [(c["trial"], 100 * c["best"]) for c in curve if c["best"] is not None]
            if points:
                plt.plot([p[0] for p in points], [p[1] for p in points], label=method)
        # the trials' own points after every line, and the pruned ones last: where two trials share a point,
        # no method's line or o covers another method's x
        for status, marker in (("done", "o"), ("pruned", "x")):
            for curve in curves.values():
                own = [(c["trial"], 100 * c["val_accuracy"]) for c in curve
                       if c["status"] == status and c["val_accuracy"] is not None]
                if own:
                    plt.scatter([p[0] for p in own], [p[1] for p in own], marker=marker)
        self.refresh()


class TuneScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "stop", "Stop study"),
        Binding("escape", "back", "Back (stops it)"),
    ]

    def __init__(self, template: RunConfig | None = None, study: str | None = None,
                 methods: tuple[str, ...] = TUNE_METHODS, trials: int = TUNE_TRIALS, seeds: int = 3) -> None:
        super().__init__()
        self.template, self.study_name = template, study
        self.methods, self.trials, self.seeds = methods, trials, seeds
        self.stop_event = threading.Event()
        self.spec = None
        self.doc: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("starting the study…", id="tune-status")
            yield BestSoFarChart(id="tune-chart")
            yield Static("", id="tune-table")
        yield Footer()

    def on_mount(self) -> None:
        if self.template is not None:
            self._run_study()
        self._follow()

    # ------------------------------------------------------------------ threads
    @work(thread=True, group="tune", exit_on_error=False)
    def _run_study(self) -> None:
        """Prepare the configs, create the study and run it to its end (or until stopped)."""
        from peft_tui.engine import tune as studies
        from peft_tui.engine.submit import make_pool, prepare

        store = self.app.store
        bases = [dataclasses.replace(self.template, method=m, params={}, lr=None, name=None) for m in self.methods]
        try:
            splits = prepare(bases)
            if self.stop_event.is_set():  # stopped while the data loaded: create nothing to resume
                self.app.call_from_thread(self._say, "study not started: stopped before its first trial")
                return
            self.spec = studies.new_study(store, bases, trials=self.trials, seeds=self.seeds,
                                          parallel=getattr(self.app, "worker_count", None) or 1,
                                          train_rows=len(splits.train.labels), val_rows=len(splits.val.labels))
            self.study_name = self.spec.name
            pool = make_pool(store, ray=getattr(self.app, "ray_address", None),
                             workers=getattr(self.app, "worker_count", None),
                             runs_per_gpu=getattr(self.app, "runs_per_gpu", None))
            pool.start()
            try:
                studies.Tuner(store, self.spec, pool, data=splits).run(self.stop_event)
            finally:
                pool.release()
            if self.stop_event.is_set():
                self.app.call_from_thread(self._say, f"study {self.spec.name} stopped: continue it with "
                                                     f"`peft-tui tune --resume {self.spec.name}`")
        except OneLineError as e:
            self.app.call_from_thread(self._say, f"study not started: {e}")

    @work(thread=True, group="tune-follow", exclusive=True, exit_on_error=False)
    def _follow(self) -> None:
        from peft_tui.engine import tune as studies

        while True:
            name = self.study_name
            if name:
                try:
                    spec = studies.load_study(self.app.store, name)
                    doc = studies.summary(self.app.store, spec)
                    self.app.call_from_thread(self._show, doc)
                    if doc["state"] == "done":
                        return
                except OneLineError as e:
                    self.app.call_from_thread(self._say, str(e))
            if self.stop_event.wait(1.0):
                return

    # ------------------------------------------------------------------ UI thread
    def _say(self, text: str) -> None:
        if self.is_mounted:  # a thread may report after the view was left
            self.query_one("#tune-status", Static).update(literal(text))

    def _show(self, doc: dict[str, Any]) -> None:
        from peft_tui.report.tune import progress_line, to_text

        self.doc = doc
        budget = str(doc["settings"]["trials"] or "-")
        lines = [f"study {doc['study']} ({doc['state']})"] + [progress_line(m, v, budget)
                                                              for m, v in doc["methods"].items()]
        self._say("   ".join(lines))
        self.query_one(BestSoFarChart).draw(doc)
        if doc["state"] == "done":
            self.query_one("#tune-table", Static).update(literal(to_text(doc, chart=False)))

    def action_stop(self) -> None:
        """Stop the study: its runs are cancelled; `peft-tui tune --resume NAME` continues it. Before the study
        exists (its data still loading) nothing is created; the study thread says which it was."""
        self.stop_event.set()
        self._say(f"study {self.study_name} stopping…" if self.study_name else "stopping before the study starts…")

    def action_back(self) -> None:
        self.app.pop_screen()

    def on_unmount(self) -> None:
        self.stop_event.set()  # leaving the view stops the study (resumable); its threads end with it
