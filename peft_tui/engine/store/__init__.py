"""The run store: an SQLite database (WAL) of runs and metrics, one folder per run, and the queue.

    <store>/runs.db                  runs + metrics tables
    <store>/runs/<id>-<name>/        config.json, events.jsonl, result.json, weights (model/, adapter/, ...)
    <store>/cache/                   tokenisation cache shared by all runs
    <store>/logs/                    worker process logs

Several processes share a store (workers, dashboards, CLI commands): each opens its own connection
with a busy timeout, and writes are short `BEGIN IMMEDIATE` transactions.

The store is the queue. A run is created `queued`; a worker `claim`s the oldest queued run it can
serve in one transaction (so two workers never train the same run), records its pid, host and a
heartbeat, and the run's events move it to `done`, `failed`, `diverged` or `cancelled`. Cancel, resume,
retry and remove are store methods, so they work from any process on the same store. A running run
whose worker died is `reap`ed to `failed` with the reason.

A store the user cannot write to opens read-only: every query works, every write raises StoreError.
"""

from __future__ import annotations

from peft_tui.engine.store.database import MIGRATIONS, QUEUE_COLUMNS, SCHEMA, SCHEMA_VERSION, STUDY_COLUMNS, Database
from peft_tui.engine.store.queue import (
    ACTIVE,
    FINAL,
    QUIET_S,
    REAPED,
    STALE_AFTER_S,
    Claim,
    Queue,
    death_reason,
    serves,
)
from peft_tui.engine.store.recorder import Recorder
from peft_tui.errors import StoreError

__all__ = ["ACTIVE", "FINAL", "MIGRATIONS", "QUEUE_COLUMNS", "QUIET_S", "REAPED", "SCHEMA", "SCHEMA_VERSION",
           "STALE_AFTER_S", "STUDY_COLUMNS", "Claim", "Database", "Store", "StoreError", "death_reason", "serves"]


class Store(Recorder, Queue):
    """A run store: the database (database.py), the queue (queue.py) and the event recorder (recorder.py)."""

    # a run cannot go on without its records: a failed write stops it (see events.FanOut)
    critical = True
