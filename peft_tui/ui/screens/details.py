"""One run in full: status, error, config, result and its folder. Read-only."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from peft_tui.report.table import human_count
from peft_tui.safe import safe_lines, safe_text
from peft_tui.ui.state import LabState, fmt_duration, is_baseline, shown_result
from peft_tui.ui.widgets.tables import status_text


def _shown(text: str) -> str:
    """User or file text for a markup string: literal, no control characters."""
    return escape(safe_text(text))


def describe(row: dict[str, Any], folder: str | None) -> str:
    lines = [(f"[b]run {row['id']}[/b]  {_shown(row.get('name') or '')}   "
              f"method [b]{_shown(row.get('method') or '')}[/b]   "
              f"status [b]{escape(status_text(row['status']).plain)}[/b]")]
    if row.get("error"):
        lines.append(f"[red]error:[/red] {_shown(row['error'])}")
    elapsed = f"elapsed {fmt_duration(LabState.elapsed(row))}"
    if is_baseline(row.get("method") or ""):  # no steps or epochs: one fit
        lines.append(elapsed)
    else:
        step, total = row.get("step") or 0, row.get("total_steps") or 0
        lines.append(f"step {step}/{total or '?'}   epoch {row.get('epoch') or 0:.2f}   {elapsed}   "
                     f"ETA {fmt_duration(LabState.eta(row))}")
    if folder:
        lines.append(f"folder: {_shown(folder)}")
    res = shown_result(row)
    if res:
        lines.append("")
        lines.append("[b]result[/b]")
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
        lines += [f"  {label:<17} {'-' if res[key] is None else fmt(res[key])}"
                  for label, key, fmt in shown if key in res]
        rest = {k: v for k, v in res.items() if k not in ("versions", "label_names") and not isinstance(v, dict)}
        lines.append(f"  [dim]{escape(safe_text(json.dumps(rest, default=str), 600))}[/dim]")
    cfg = row.get("config") or {}
    if cfg:
        lines.append("")
        lines.append("[b]config[/b]")
        lines.append(escape(safe_lines(json.dumps(cfg, indent=2, default=str))))
    return "\n".join(lines)


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
