"""The recorder: the store as a sink of engine events. Each event becomes a short write (the run's row,
its metrics). A finished run's result is recorded as measured: the grade of the estimate it was queued
with is computed by whoever reads the run (engine.estimate.grade_run), never stored."""

from __future__ import annotations

import json
import os
import socket
import sqlite3

from peft_tui.engine.events import (
    EvalLogged,
    Event,
    MemorySampled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
)
from peft_tui.engine.store.database import Database, _now, _write_json
from peft_tui.errors import StoreError, first_line


class Recorder(Database):
    """Writes one engine event (see `__call__`)."""

    def __call__(self, event: Event) -> None:
        """Write one engine event. A write that fails raises StoreError (one line): the run must stop."""
        try:
            self._record(event)
        except (sqlite3.Error, OverflowError, OSError) as e:
            fix = ("a value is too large to store: use smaller numbers in the run's config"
                   if isinstance(e, OverflowError) else f"check {self.db_path} with `peft-tui doctor`")
            raise StoreError(
                f"the store could not record {type(event).__name__} for run {event.run_id} ({first_line(e)}): {fix}"
            ) from None

    def _record(self, event: Event) -> None:
        t = _now()
        if isinstance(event, RunStarted):
            with self._tx() as db:
                db.execute(
                    "UPDATE runs SET status='running', started_at=?, heartbeat=?, pid=?, host=?, total_steps=?, "
                    "step=0, error=NULL, result=NULL WHERE id=?",
                    (t, t, os.getpid(), socket.gethostname(), event.total_steps, event.run_id),
                )
        elif isinstance(event, StepLogged):
            with self._tx() as db:
                db.execute("UPDATE runs SET step=?, epoch=?, loss=?, heartbeat=? WHERE id=?",
                           (event.step, event.epoch, event.loss, t, event.run_id))
                self._log_metrics(db, event.run_id, event.step, event.epoch,
                                  {"train_loss": event.loss, "lr": event.lr, "samples_per_s": event.samples_per_s})
        elif isinstance(event, EvalLogged):
            with self._tx() as db:
                if event.split == "val":
                    db.execute("UPDATE runs SET val_accuracy=?, heartbeat=? WHERE id=?",
                               (event.accuracy, t, event.run_id))
                p = event.split
                self._log_metrics(db, event.run_id, event.step, event.epoch,
                                  {f"{p}_loss": event.loss, f"{p}_accuracy": event.accuracy, f"{p}_f1": event.f1})
        elif isinstance(event, MemorySampled):
            with self._tx() as db:
                values = {"mem_used_mb": event.used_mb, "mem_peak_mb": event.peak_mb}
                if event.device_used_mb:
                    values["gpu_device_used_mb"] = event.device_used_mb
                self._log_metrics(db, event.run_id, event.step, 0.0, values)
        elif isinstance(event, RunFinished):
            result = event.result_dict()
            with self._tx() as db:
                db.execute(
                    "UPDATE runs SET status='done', result=?, finished_at=?, heartbeat=?, step=total_steps WHERE id=?",
                    (json.dumps(result, default=str), t, t, event.run_id),
                )
            _write_json(self.run_dir(event.run_id) / "result.json", result)
        elif isinstance(event, RunFailed):
            self._finish(event.run_id, event.status, event.error)
        elif isinstance(event, RunCancelled):
            self._finish(event.run_id, "cancelled", None)
        # LogMessage: kept in the run's events.jsonl, not in the database

    def _finish(self, run_id: int, status: str, error: str | None) -> None:
        t = _now()
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, error=coalesce(?, error), finished_at=?, heartbeat=? WHERE id=?",
                       (status, error, t, t, run_id))

    @staticmethod
    def _log_metrics(db: sqlite3.Connection, run_id: int, step: int, epoch: float, values: dict[str, float]) -> None:
        t = _now()
        db.executemany(
            "INSERT INTO metrics (run_id, step, epoch, name, value, t) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, step, epoch, k, float(v), t) for k, v in values.items()],
        )

