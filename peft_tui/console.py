"""Headless front end helpers: a rich progress-bar sink, table printing, `literal` (text that came from
users or files, as a rich Text) and `warn` (one line on stderr). Not part of the engine."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from peft_tui.engine.events import EvalLogged, Event, LogMessage, RunFailed, RunStarted, StepLogged
from peft_tui.report.table import EFFICIENCY_NOTE, formatted
from peft_tui.safe import safe_lines, safe_text

err = Console(stderr=True)
# piped or captured output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default
out = Console() if sys.stdout.isatty() else Console(width=200)


def literal(text: Any, style: str = "", limit: int | None = None) -> Text:
    """Text shown as written: never read as rich markup, with no escape sequences or control characters
    (`safe_text`)."""
    return Text(safe_text(text, limit), style=style)


def literal_lines(text: Any, style: str = "") -> Text:
    """A block of lines (a JSON document, a summary) shown as written, each line through `safe_text`."""
    return Text(safe_lines(str(text)), style=style)


def warn(message: str) -> None:
    """One line on stderr: `warning: ...` (the message's user values shown literally)."""
    sys.stderr.write(f"warning: {safe_text(message, 500)}\n")


class ProgressSink:
    """Shows a progress bar per run on stderr (only when stderr is a terminal)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # a run's name is not markup
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
            disable=not self.enabled,
        )
        self.tasks: dict[int, Any] = {}
        self.names: dict[int, str] = {}  # run id -> the bar's description

    def __enter__(self) -> ProgressSink:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def close(self) -> None:
        """The Sink protocol's close: nothing to release per run (the `with` block ends the display)."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.names[event.run_id] = safe_text(f"#{event.run_id} {event.name}", 40)
            self.tasks[event.run_id] = self.progress.add_task(
                self.names[event.run_id], total=event.total_steps, loss="-", acc="-"
            )
        task = self.tasks.get(getattr(event, "run_id", -1))
        if isinstance(event, StepLogged) and task is not None:
            self.progress.update(task, completed=event.step, loss=f"{event.loss:.3f}")
        elif isinstance(event, EvalLogged) and task is not None and event.split == "val":
            self.progress.update(task, acc=f"{100 * event.accuracy:.1f}%")
        elif isinstance(event, RunFailed) and task is not None:
            # the bar says it stopped; the reason is printed once, after the runs (commands/common.py)
            self.progress.update(task, description=f"{self.names[event.run_id]} {event.status}")
        elif isinstance(event, LogMessage) and event.level != "info":
            err.print(literal(f"{event.level}:", "yellow"), literal(event.text), soft_wrap=True)  # one line


def print_comparison(rows: list[dict[str, Any]], title: str = "comparison") -> None:
    headers, body = formatted(rows)
    table = Table(title=literal(title), caption=EFFICIENCY_NOTE)  # a title names the model and data
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i >= 3 else "left")
    for r in body:
        table.add_row(*map(literal, r))
    out.print(table)


def print_plan(rows: list[dict[str, Any]]) -> None:
    """`peft-tui plan`'s table: per method, trainable parameters, estimated peak memory against free memory,
    estimated time; then, for what will not fit, what would."""
    table = Table(title="estimates before training", caption="memory: estimated peak (range) vs free now")
    for h in ("method", "trainable", "peak MB", "free MB", "fits", "epoch", "total"):
        table.add_column(h, justify="left" if h in ("method", "fits") else "right")
    for r in rows:
        e = r["estimate"]
        table.add_row(literal(r["method"]), f"{e['trainable_params']:,}",
                      f"{e['peak_mb']:,.0f} ({e['peak_low_mb']:,.0f}-{e['peak_high_mb']:,.0f})",
                      f"{r['free_mb']:,.0f}", "yes" if r["fits"] else literal("NO", "red"),
                      f"{e['epoch_s']:.0f} s", f"{e['total_s']:.0f} s ({e['total_low_s']:.0f}-{e['total_high_s']:.0f})")
    out.print(table)
    from peft_tui.engine.estimate import duration_text

    for r in rows:
        for tip in r["estimate"].get("suggestions") or []:
            out.print(literal(f"{r['method']} will not fit: {tip}"))
        if not r.get("fits_time", True):
            out.print(literal(f"{r['method']} would take about {duration_text(r['estimate']['total_s'])}, above its "
                              f"{duration_text(r['time_limit_s'])} limit: fewer epochs, or --max-time to allow longer"))


def print_estimate(estimate: dict[str, Any] | None, grade: dict[str, Any] | None) -> None:
    """`peft-tui show`'s estimate lines: what was estimated before the run, what it measured, the error."""
    if not estimate:
        out.print(literal("estimate: none (a baseline, or queued by a version that did not estimate)", "dim"))
        return
    nominal = " (nominal figures: `peft-tui plan` calibrates this machine)" if estimate.get("calibration") == "nominal" else ""
    out.print(literal(f"estimate{nominal}: peak {estimate['peak_mb']:,.0f} MB "
                      f"({estimate['peak_low_mb']:,.0f}-{estimate['peak_high_mb']:,.0f}), training "
                      f"{estimate['total_s']:.1f} s ({estimate['total_low_s']:.1f}-{estimate['total_high_s']:.1f}), "
                      f"{estimate['steps']} steps on {estimate['device']}"))
    for line in grade_lines(grade or {}):
        out.print(literal(line))


def grade_lines(grade: dict[str, Any]) -> list[str]:
    """The measured figures against the estimate, one line each ("" parts left out)."""
    lines = []
    if grade.get("measured_peak_mb") is not None:
        inside = "inside" if grade["peak_in_range"] else "outside"
        lines.append(f"measured peak {grade['measured_peak_mb']:,.0f} MB: estimate off by "
                     f"{grade['peak_error_pct']:+.1f}% ({inside} its range)")
    if grade.get("measured_time_s") is not None:
        inside = "inside" if grade["time_in_range"] else "outside"
        lines.append(f"measured training {grade['measured_time_s']:.1f} s: estimate off by "
                     f"{grade['time_error_pct']:+.1f}% ({inside} its range)")
    return lines
