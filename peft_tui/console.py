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
