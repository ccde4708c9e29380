"""Store polling: what changed in the store since the last look, for runs this dashboard does not get
events for (runs trained by another process, or queued by another session).

Plain Python on a worker thread (no Textual): the app calls `StorePoller.poll()` about once a second and
posts what it returns to the UI thread. Reads only, through the store's query methods.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from peft_tui.engine.events import EventTail, RunFailed
from peft_tui.ui.state import MAX_PLOTTED, log_text

# the metrics the charts draw, as the store names them
SERIES_NAMES = ("train_loss", "val_accuracy", "mem_used_mb", "mem_peak_mb", "gpu_device_used_mb")

Points = dict[tuple[int, str], list[tuple[int, float, float]]]  # (run id, metric) -> [(step, value, t)]


class StorePoller:
    """Follows the series of running runs: remembers when it last looked and which step of each series
    it has, so every call returns only what is new. Rows are re-read with a 2 s overlap: a row written just
    before the last look may carry a timestamp a little older than it. The first call also reads the
    curves of the newest runs that already ended, so a dashboard opened after a comparison shows them."""

    OVERLAP_S = 2.0
    REAP_EVERY = 10  # polls between two looks for runs whose process died

    def __init__(self, store, streamed: Container[int]) -> None:
        self.store = store
        self.streamed = streamed  # runs whose points reach the app as engine events: not read here
        self._since = 0.0
        self._followed: dict[int, dict[str, int]] = {}  # run id -> metric -> last step read
        self._rounds = 0
        self._tails: dict[int, EventTail] = {}  # runs trained elsewhere: their events.jsonl, read as it grows
        self.log_lines: list[tuple[str, str]] = []  # (text, level) for the Log tab, from the last poll

    def poll(self, now: float) -> tuple[list[dict[str, Any]], Points]:
        """Runs changed since the last call, and the new chart points of those trained elsewhere."""
        self._rounds += 1
        if self._rounds % self.REAP_EVERY == 0 and not self.store.readonly:
            self.store.reap()  # runs whose process died show as failed, with the reason
        first = self._since == 0.0
        rows = self.store.changed_since(self._since - self.OVERLAP_S)
        self._since = now
        if first:
            ended = [r["id"] for r in rows if r["status"] not in ("queued", "running")]
            self._followed.update({rid: {} for rid in ended[-MAX_PLOTTED:]})
        points: Points = {}
        self.log_lines = []
        for row in rows:
            rid = row["id"]
            if rid in self.streamed:
                self._followed.pop(rid, None)
                self._tails.pop(rid, None)
                continue
            self._read_log(row, first)
            if row["status"] != "running" and rid not in self._followed:
                continue
            last = self._followed.setdefault(rid, {})
            for name in SERIES_NAMES:
                got = self.store.points(rid, name, last.get(name, -1))
                if got:
                    points[(rid, name)] = got
                    last[name] = got[-1][0]
            if row["status"] != "running":  # its last points are read: stop following it
                del self._followed[rid]
        return rows, points

    def _read_log(self, row: dict[str, Any], first: bool) -> None:
        """New log lines of a run trained by another process, from its events.jsonl (the runs already
        running or ended when the dashboard opened start from their end: only what happens now)."""
        rid = row["id"]
        tail = self._tails.get(rid)
        if tail is None:
            if row["status"] == "queued" or (first and row["status"] != "running"):
                return  # nothing yet, or over before this dashboard opened
            path = self.store.events_path(rid)
            tail = self._tails[rid] = EventTail(path)
            if first:  # running when the dashboard opened: its history is skipped
                tail.offset = path.stat().st_size if path.exists() else 0
        for event in tail.read():
            text = log_text(event, row.get("name") or "")
            if text:
                self.log_lines.append((text, "error" if isinstance(event, RunFailed) else getattr(event, "level", "info")))
        # an ended run keeps its tail (at the file's end): the poll's overlap returns its row again

