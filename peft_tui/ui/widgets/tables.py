"""The queue table (every run, live) and the results table (finished runs, sortable)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from peft_tui.console import literal
from peft_tui.engine.estimate import grade_run
from peft_tui.report.table import COLUMNS, formatted, rows_from_runs, sort_rows
from peft_tui.safe import safe_text
from peft_tui.ui.state import (
    STATUS_WORDS,
    LabState,
    estimate_text,
    eta_text,
    fmt_duration,
    is_baseline,
    shown_result,
)

QUEUE_COLUMNS = [
    # key, header, width (None: grows with its content). The live figures come first so that an
    # 80-column terminal shows id, method, status, progress, loss, val acc and ETA without scrolling.
    # ETA: "~" while it still comes from the estimate (the run's first 20 steps), then the measured rate.
    ("id", "id", 3),
    ("method", "method", 8),
    ("status", "status", 13),
    ("progress", "progress", 11),
    ("loss", "loss", 7),
    ("acc", "val acc", 7),
    ("eta", "ETA", 7),
    ("epoch", "epoch · step", 16),
    ("elapsed", "elapsed", 7),
    ("estimate", "estimate", 13),  # peak memory and training time, estimated before the run
    ("name", "name", 12),
    ("note", "note", None),
]


def status_text(status: str) -> Text:
    symbol, style = STATUS_WORDS.get(status, ("?", ""))
    return Text(f"{symbol} {safe_text(status, 20)}", style=style)


def progress_text(row: dict[str, Any], width: int = 6) -> Text:
    total, step = row.get("total_steps") or 0, row.get("step") or 0
    if row["status"] == "done":
        frac = 1.0
    elif not total or is_baseline(row.get("method") or ""):
        return Text("-", style="dim")
    else:
        frac = min(1.0, step / total)
    filled = round(frac * width)
    return Text("█" * filled + "░" * (width - filled) + f" {100 * frac:3.0f}%")


def queue_cells(row: dict[str, Any], now: float) -> list[Any]:
    total = row.get("total_steps") or 0
    epochs = (row.get("config") or {}).get("epochs")
    ep = row.get("epoch") or 0.0
    epoch_step = f"{ep:.1f}" + (f"/{epochs}" if epochs else "") + f" · {row.get('step') or 0}/{total or '?'}"
    if row["status"] == "queued" or is_baseline(row.get("method") or "") or not total:
        epoch_step = "-"
    loss = row.get("loss")
    acc = row.get("val_accuracy")
    note = row.get("error") or ""
    if not note and row.get("result") and row["result"].get("accuracy") is not None:
        note = f"test acc {100 * row['result']['accuracy']:.1f}%"
    cells = {
        "id": str(row["id"]),
        "name": literal(row.get("name") or ""),  # never a str: DataTable reads a str cell as markup
        "method": literal(row.get("method") or ""),
        "status": status_text(row["status"]),
        "progress": progress_text(row),
        "epoch": epoch_step,
        "loss": "-" if loss is None else f"{loss:.4f}",
        "acc": "-" if acc is None else f"{100 * acc:.1f}%",
        "elapsed": fmt_duration(LabState.elapsed(row, now)),
        "eta": eta_text(LabState.eta(row, now)),
        "estimate": estimate_text(row.get("estimate")),
        "note": literal(note, style="red" if row.get("error") else "dim", limit=120),
    }
    return [cells[key] for key, _, _ in QUEUE_COLUMNS]


class QueueTable(DataTable):
    """All runs in the store, by id. Row keys are run ids as strings."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Details", key_display="⏎")]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._shown: dict[str, list[Any]] = {}  # the cells on screen, to touch only those that change
        for key, label, width in QUEUE_COLUMNS:
            self.add_column(label, key=key, width=width)

    def sync(self, state: LabState, run_ids: set[int] | None = None) -> None:
        """Add, update or remove the rows for `run_ids` (all runs when None)."""
        now = time.time()
        ids = set(state.runs) if run_ids is None else run_ids
        follow = self.row_count == 0 or self.cursor_row >= self.row_count - 1
        added = False
        for rid in sorted(ids):
            key = str(rid)
            row = state.runs.get(rid)
            if row is None:
                if key in self.rows:
                    self.remove_row(key)
                    self._shown.pop(key, None)
                continue
            cells = queue_cells(row, now)
            if key in self.rows:
                old = self._shown.get(key, [])
                for i, ((col, _, width), value) in enumerate(zip(QUEUE_COLUMNS, cells)):
                    if i >= len(old) or old[i] != value:
                        self.update_cell(key, col, value, update_width=width is None)
            else:
                self.add_row(*cells, key=key)
                added = True
            self._shown[key] = cells
        if added:
            self.sort("id", key=lambda v: int(v))
            if follow:
                self.move_cursor(row=self.row_count - 1)

    def selected_run(self) -> int | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return int(key.value) if key.value is not None else None


SORT_KEYS = ["accuracy", "f1", "efficiency", "trainable_params", "train_time_s", "samples_per_s",
             "peak_memory_mb", "id"]


class ResultsTable(DataTable):
    """Finished runs (and TF-IDF baseline rows) through report.table, sortable by any metric column."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Details", key_display="⏎")]
    sort_key = "accuracy"
    descending = True

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.rows_data: list[dict[str, Any]] = []
        self._build_columns()

    def _build_columns(self, body: list[list[str]] | None = None) -> None:
        self.clear(columns=True)
        for i, (key, header, _) in enumerate(COLUMNS):
            arrow = (" ▼" if self.descending else " ▲") if key == self.sort_key else ""
            width = max([len(header + arrow)] + [len(r[i]) for r in body or []])
            self.add_column(header + arrow, key=key, width=min(width, 24))

    def sync(self, state: LabState) -> None:
        runs = [{**r, "result": shown_result(r)} for r in state.runs.values()
                if r["status"] == "done" and r.get("result")]
        self.rows_data = sort_rows(rows_from_runs(sorted(runs, key=lambda r: r["id"]), grade_run), self.sort_key,
                                   self.descending)
        cursor = self.cursor_row
        _, body = formatted(self.rows_data)
        self._build_columns(body)
        for r, cells in zip(self.rows_data, body):
            self.add_row(*map(literal, cells), key=str(r["id"]))  # never a str: DataTable reads it as markup
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1))

    def sort_by(self, key: str, state: LabState) -> None:
        if key == self.sort_key:
            self.descending = not self.descending
        else:
            self.sort_key, self.descending = key, key not in ("train_time_s", "peak_memory_mb", "trainable_params")
        self.sync(state)

    def cycle_sort(self, state: LabState) -> str:
        i = SORT_KEYS.index(self.sort_key) if self.sort_key in SORT_KEYS else -1
        self.sort_key = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        self.descending = self.sort_key not in ("train_time_s", "peak_memory_mb", "trainable_params", "id")
        self.sync(state)
        return self.sort_key

    def selected_run(self) -> int | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return int(key.value)
