"""Messages from the dashboard's thread workers to its widgets."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class StoreUpdate(Message):
    """Rows changed in the store (any process), plus new metric points for runs trained elsewhere.

    `points` maps (run_id, metric name) -> [(step, value, t)]. High-rate and superseded by nothing
    else, so it never coalesces; the poll runs once a second."""

    def __init__(self, rows: list[dict[str, Any]], points: dict[tuple[int, str], list[tuple[int, float, float]]]):
        super().__init__()
        self.rows = rows
        self.points = points


class LogLine(Message):
    """A line for the log pane from a worker thread."""

    def __init__(self, text: str, level: str = "info"):
        super().__init__()
        self.text = text
        self.level = level
