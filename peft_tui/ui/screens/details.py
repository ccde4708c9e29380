"""One run in full: status, error, config, result and its folder. Read-only."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from peft_tui.console import grade_lines
from peft_tui.engine.estimate import grade_run
from peft_tui.report.table import human_count
from peft_tui.safe import safe_lines, safe_text
from peft_tui.ui.state import LabState, estimate_text, eta_text, fmt_duration, is_baseline, shown_result
from peft_tui.ui.widgets.tables import status_text


def describe(row: dict[str, Any], folder: str | None) -> Text:
    """The details as a rich Text built from parts: nothing in it is read as markup (rich's `escape`
    cannot protect every value: a backslash before a bracket is eaten), user values through `safe_text`."""
    lines = [Text.assemble((f"run {row['id']}", "bold"), f"  {safe_text(row.get('name') or '')}   method ",
                           (safe_text(row.get("method") or ""), "bold"), "   status ",
                           (status_text(row["status"]).plain, "bold"))]
    if row.get("error"):
        lines.append(Text.assemble(("error:", "red"), f" {safe_text(row['error'])}"))
    elapsed = f"elapsed {fmt_duration(LabState.elapsed(row))}"
    if is_baseline(row.get("method") or ""):  # no steps or epochs: one fit
        lines.append(Text(elapsed))
    else:
        step, total = row.get("step") or 0, row.get("total_steps") or 0
        lines.append(Text(f"step {step}/{total or '?'}   epoch {row.get('epoch') or 0:.2f}   {elapsed}   "
                          f"ETA {eta_text(LabState.eta(row))}"))
    if folder:
        lines.append(Text(f"folder: {safe_text(folder)}"))
    if row.get("estimate"):  # before the run, and (once it finished) against what it measured
        lines.append(Text(f"estimate before the run: {estimate_text(row['estimate'])}"))
        lines += [Text(f"  {line}") for line in grade_lines(grade_run(row) or {})]
    res = shown_result(row)
    if res:
        lines += [Text(""), Text("result", style="bold")]
        shown = [  # label, result key, format; a key the result lacks is left out, a None is a dash
            ("test accuracy", "accuracy", lambda v: f"{100 * v:.2f}%"),
            ("test macro F1", "f1", lambda v: f"{100 * v:.2f}%"),
            ("trainable params", "trainable_params", human_count),
            ("trainable share", "trainable_pct", lambda v: f"{v:.2f}%"),
            ("train time", "train_time_s", lambda v: f"{v:.1f} s"),
            ("throughput", "samples_per_s", lambda v: f"{v:.0f} samples/s"),
            ("peak memory", "peak_memory_mb", lambda v: f"{v:.0f} MB ({res.get('memory_kind') or '?'})"),
            ("efficiency", "efficiency", lambda v: f"{v:.2f} acc points / M trainable"),
        ]
        lines += [Text(safe_text(f"  {label:<17} {'-' if res[key] is None else fmt(res[key])}"))
                  for label, key, fmt in shown if key in res]
        rest = {k: v for k, v in res.items() if k not in ("versions", "label_names") and not isinstance(v, dict)}
        lines.append(Text.assemble("  ", (safe_text(json.dumps(rest, default=str), 600), "dim")))
    cfg = row.get("config") or {}
    if cfg:
        lines += [Text(""), Text("config", style="bold"), Text(safe_lines(json.dumps(cfg, indent=2, default=str)))]
    return Text("\n").join(lines)


class DetailsScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, row: dict[str, Any], folder: str | None) -> None:
        super().__init__()
        self.row = row
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(id="details"):
            yield Static("Run details  [dim](esc: close)[/dim]", id="details-title")
            with VerticalScroll():
                yield Static(describe(self.row, self.folder), id="details-body")

    def action_close(self) -> None:
        self.dismiss(None)
