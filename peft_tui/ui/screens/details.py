"""One run in full: status, error, config, result and its folder. Read-only."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from peft_tui.report.table import human_count
from peft_tui.ui.state import LabState, fmt_duration
from peft_tui.ui.widgets.tables import status_text


def describe(row: dict[str, Any], folder: str | None) -> str:
    from rich.markup import escape

    lines = [f"[b]run {row['id']}[/b]  {escape(row.get('name') or '')}   method [b]{escape(row.get('method') or '')}[/b]"
             f"   status [b]{escape(status_text(row['status']).plain)}[/b]"]
    if row.get("error"):
        lines.append(f"[red]error:[/red] {escape(row['error'])}")
    step, total = row.get("step") or 0, row.get("total_steps") or 0
    lines.append(f"step {step}/{total or '?'}   epoch {row.get('epoch') or 0:.2f}   "
                 f"elapsed {fmt_duration(LabState.elapsed(row))}   ETA {fmt_duration(LabState.eta(row))}")
    if folder:
        lines.append(f"folder: {escape(folder)}")
    res = row.get("result") or {}
    if res:
        lines.append("")
        lines.append("[b]result[/b]")
        pretty = {
            "test accuracy": f"{100 * res['accuracy']:.2f}%" if "accuracy" in res else None,
            "test macro F1": f"{100 * res['f1']:.2f}%" if "f1" in res else None,
            "trainable params": (f"{human_count(res['trainable_params'])} ({res.get('trainable_pct', 0):.2f}%)"
                                 if "trainable_params" in res else None),
            "train time": f"{res['train_time_s']:.1f} s" if "train_time_s" in res else None,
            "throughput": f"{res['samples_per_s']:.0f} samples/s" if "samples_per_s" in res else None,
            "peak memory": (f"{res['peak_memory_mb']:.0f} MB ({res.get('memory_kind', '')})"
                            if "peak_memory_mb" in res else None),
            "efficiency": f"{res['efficiency']:.2f} acc points / M trainable" if "efficiency" in res else None,
        }
        lines += [f"  {k:<17} {v}" for k, v in pretty.items() if v is not None]
        rest = {k: v for k, v in res.items() if k not in ("versions", "label_names") and not isinstance(v, dict)}
        lines.append(f"  [dim]{escape(json.dumps(rest, default=str))[:600]}[/dim]")
    cfg = row.get("config") or {}
    if cfg:
        lines.append("")
        lines.append("[b]config[/b]")
        lines.append(escape(json.dumps(cfg, indent=2, default=str)))
    return "\n".join(lines)


class DetailsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

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
