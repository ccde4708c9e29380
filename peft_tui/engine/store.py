"""The run store: an SQLite database (WAL) of runs and metrics, plus one folder per run.

    <store>/runs.db                  runs + metrics tables
    <store>/runs/<id>-<name>/        config.json, result.json, weights (model/, adapter/, adapters/, ...)

Several processes may share a store (two headless runs and a dashboard): each opens its own
connection with a busy timeout, and writes are short transactions.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from peft_tui.config import ConfigError
from peft_tui.engine.events import (
    EvalLogged,
    Event,
    LogMessage,
    MemorySampled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,            -- queued | running | done | failed | diverged | cancelled | interrupted
    config TEXT NOT NULL,            -- JSON RunConfig
    result TEXT,                     -- JSON result, when done
    error TEXT,                      -- one line, when failed
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    host TEXT,
    step INTEGER DEFAULT 0,
    total_steps INTEGER DEFAULT 0,
    epoch REAL DEFAULT 0,
    loss REAL,
    val_accuracy REAL,
    heartbeat REAL,
    folder TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name, step);
"""

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "diverged", "cancelled", "interrupted")


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"store path {self.root} is a file: pass a folder with --store or PEFT_TUI_STORE")
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(
                f"store folder {self.root} is not writable ({e.strerror}): pass another folder with --store"
            ) from None
        self.db_path = self.root / "runs.db"
        self._local = threading.local()
        try:
            self._conn().executescript(SCHEMA)
            self.mark_interrupted()
        except sqlite3.DatabaseError as e:  # not a database, corrupt, or locked for 30 s
            self.close()
            raise ConfigError(
                f"store database {self.db_path} cannot be used ({e}): move it aside or pass another --store"
            ) from None

    # ------------------------------------------------------------------ connection
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            for attempt in range(50):
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    return self.conn
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    time.sleep(0.05 * (attempt + 1))
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> Store._Tx:
        return Store._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ runs
    def create_run(self, config, validate: bool = True) -> int:
        """A queued run row plus its folder with config.json. Returns the run id."""
        from peft_tui.engine.weights import write_json

        if validate:
            config.validate()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (name, method, model, data, status, config, created_at, host) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (config.display_name, config.method, config.model, config.data.source, config.to_json(), _now(),
                 socket.gethostname()),
            )
            run_id = int(cur.lastrowid)
            folder = self.run_folder_name(run_id, config.display_name)
            db.execute("UPDATE runs SET folder=? WHERE id=?", (folder, run_id))
        path = self.root / "runs" / folder
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", config.to_dict())
        return run_id

    @staticmethod
    def run_folder_name(run_id: int, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._") or "run"
        return f"{run_id:04d}-{safe[:48]}"

    def run_dir(self, run_id: int) -> Path:
        row = self.get(run_id)
        path = (self.root / "runs" / row["folder"]).resolve()
        if (self.root / "runs").resolve() not in path.parents:  # never leave the store
            raise ConfigError(f"run {run_id} has a folder outside the store: the store is corrupt")
        return path

    def get(self, run_id: int) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"run {run_id} does not exist in {self.root}: `peft-tui runs` lists the runs")
        return self._row(row)

    def list(self, status: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        q = "SELECT * FROM runs"
        args: tuple = ()
        if status:
            q += " WHERE status=?"
            args = (status,)
        q += " ORDER BY id"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [self._row(r) for r in self._conn().execute(q, args).fetchall()]

    def changed_since(self, t: float) -> list[dict[str, Any]]:
        """Runs whose row changed after time `t` (for the dashboard's polling)."""
        rows = self._conn().execute(
            "SELECT * FROM runs WHERE max(created_at, coalesce(heartbeat, 0), coalesce(finished_at, 0)) > ? ORDER BY id",
            (t,),
        ).fetchall()
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["config"] = json.loads(d["config"]) if d["config"] else {}
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return d

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        with self._tx() as db:
            fin = _now() if status in FINAL else None
            db.execute(
                "UPDATE runs SET status=?, error=coalesce(?, error), finished_at=coalesce(?, finished_at), "
                "heartbeat=? WHERE id=?",
                (status, error, fin, _now(), run_id),
            )

    def delete(self, run_id: int) -> None:
        """Remove a queued run (the dashboard's 'remove')."""
        import shutil

        folder = self.run_dir(run_id)
        with self._tx() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(folder, ignore_errors=True)

    def reopen(self, run_id: int, after_step: int) -> None:
        """Queue a stopped run again for resuming: metrics logged after `after_step` (the checkpoint)
        are dropped so the curve continues from the checkpoint without duplicate steps."""
        with self._tx() as db:
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, after_step))
            db.execute(
                "UPDATE runs SET status='queued', error=NULL, finished_at=NULL, step=?, heartbeat=? WHERE id=?",
                (after_step, _now(), run_id),
            )

    def counts(self) -> dict[str, int]:
        """Number of runs by status."""
        rows = self._conn().execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}

    def integrity(self) -> str:
        """SQLite's own integrity check: 'ok' or the first problem."""
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process on this host that is gone are 'interrupted'."""
        host = socket.gethostname()
        rows = self._conn().execute("SELECT id, pid, host FROM runs WHERE status='running'").fetchall()
        dead = [r["id"] for r in rows if r["host"] == host and r["pid"] and not _pid_alive(r["pid"])]
        if dead:
            with self._tx() as db:
                for run_id in dead:
                    db.execute(
                        "UPDATE runs SET status='interrupted', error='the process running it stopped', "
                        "finished_at=? WHERE id=? AND status='running'",
                        (_now(), run_id),
                    )
        return len(dead)

    # ------------------------------------------------------------------ metrics
    def metrics(self, run_id: int, name: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT step, epoch, name, value, t FROM metrics WHERE run_id=?"
        args: tuple = (run_id,)
        if name:
            q += " AND name=?"
            args += (name,)
        return [dict(r) for r in self._conn().execute(q + " ORDER BY step, rowid", args).fetchall()]

    def series(self, run_id: int, name: str, after_step: int = -1) -> list[tuple[int, float]]:
        rows = self._conn().execute(
            "SELECT step, value FROM metrics WHERE run_id=? AND name=? AND step>? ORDER BY step, rowid",
            (run_id, name, after_step),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def _log_metrics(self, db, run_id: int, step: int, epoch: float, values: dict[str, float]) -> None:
        t = _now()
        db.executemany(
            "INSERT INTO metrics (run_id, step, epoch, name, value, t) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, step, epoch, k, float(v), t) for k, v in values.items()],
        )

    # ------------------------------------------------------------------ the sink
    def __call__(self, event: Event) -> None:
        """Write one engine event. Called from the thread that trains."""
        from peft_tui.engine.weights import write_json

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
                db.execute(
                    "UPDATE runs SET step=?, epoch=?, loss=?, heartbeat=? WHERE id=?",
                    (event.step, event.epoch, event.loss, t, event.run_id),
                )
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
            with self._tx() as db:
                db.execute(
                    "UPDATE runs SET status='done', result=?, finished_at=?, heartbeat=?, step=total_steps WHERE id=?",
                    (json.dumps(event.result, default=str), t, t, event.run_id),
                )
            write_json(self.run_dir(event.run_id) / "result.json", event.result)
        elif isinstance(event, RunFailed):
            self.set_status(event.run_id, event.status, event.error)
        elif isinstance(event, RunCancelled):
            self.set_status(event.run_id, "cancelled")
        elif isinstance(event, LogMessage):
            pass
