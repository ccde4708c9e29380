"""Headless front end helpers: a rich progress-bar sink, table printing, and `literal` for text that
came from users or files. Not part of the engine."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from peft_tui.engine.events import EvalLogged, Event, LogMessage, RunFailed, RunStarted, StepLogged
from peft_tui.report.table import EFFICIENCY_NOTE, formatted

err = Console(stderr=True)
# piped or captured output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default
out = Console() if sys.stdout.isatty() else Console(width=200)


def literal(text: Any, style: str = "") -> Text:
    """Text shown as written: never read as rich markup, control characters spelled out (\\x1b)."""
    cleaned = "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in str(text)
    )
    return Text(cleaned, style=style)


class ProgressSink:
    """Shows a progress bar per run on stderr (only when stderr is a terminal)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
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

    def __enter__(self) -> ProgressSink:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def close(self) -> None:
        """The Sink protocol's close: nothing to release per run (the `with` block ends the display)."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.tasks[event.run_id] = self.progress.add_task(
                f"#{event.run_id} {event.name}", total=event.total_steps, loss="-", acc="-"
            )
        task = self.tasks.get(getattr(event, "run_id", -1))
        if isinstance(event, StepLogged) and task is not None:
            self.progress.update(task, completed=event.step, loss=f"{event.loss:.3f}")
        elif isinstance(event, EvalLogged) and task is not None and event.split == "val":
            self.progress.update(task, acc=f"{100 * event.accuracy:.1f}%")
        elif isinstance(event, RunFailed):
            err.print(literal(f"run {event.run_id} {event.status}:", "red"), literal(event.error))
        elif isinstance(event, LogMessage) and event.level != "info":
            err.print(literal(f"{event.level}:", "yellow"), literal(event.text))


def print_comparison(rows: list[dict[str, Any]], title: str = "comparison") -> None:
    headers, body = formatted(rows)
    table = Table(title=title, caption=EFFICIENCY_NOTE)
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i >= 3 else "left")
    for r in body:
        table.add_row(*map(literal, r))
    out.print(table)
