"""The store's database: its folder, the SQLite connection (one per thread, WAL, a busy timeout), the
schema and its versioned migrations, and the runs' rows and metrics as they are read. `Store`
(store/__init__.py) adds the queue (queue.py) and the recorder of engine events (recorder.py)."""

from __future__ import annotations

import builtins
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.events import (
    EVENTS_FILE,
    LogMessage,
    read_events,
)
from peft_tui.errors import ConfigError, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,            -- queued | running | done | failed | diverged | cancelled | interrupted
    config TEXT NOT NULL,            -- JSON RunConfig
    result TEXT,                     -- JSON RunResult, when done
    error TEXT,                      -- one line, when failed
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,                     -- the process training it
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

# Columns added since the first schema, added to older databases when they open (ALTER TABLE ADD COLUMN),
# so a store made by any earlier version still opens. Each schema version adds the columns listed under it.
QUEUE_COLUMNS = {
    "queued_at": "REAL",  # NULL: left queued by an older version; never claimed (see `stuck`)
    "resume": "INTEGER DEFAULT 0",  # 1: the claim continues from the run's checkpoint
    "cancel_requested": "INTEGER DEFAULT 0",  # polled by the worker training the run
    "worker": "TEXT",  # "<host>:<pid>:<device>" of the worker that claimed it
    "device": "TEXT",  # the device that worker serves
    "claimed_at": "REAL",
    "startup_s": "REAL",  # worker start-up paid by this run (see launch/worker.py)
    "events_offset": "INTEGER DEFAULT 0",  # where this attempt's events begin in events.jsonl
    "estimate": "TEXT",  # JSON engine.estimate.Estimate, written by whoever queued the run (see `set_estimate`)
    # written by versions that graded runs in the store; no longer written or read: the grade is computed
    # where a run is read (engine.estimate.grade_run), from `estimate` and `result`
    "grade": "TEXT",
}
STUDY_COLUMNS = {
    "study": "TEXT",  # the tuning study this run is a trial of (engine/tune), else NULL
    "trial": "INTEGER",  # its trial number in that study
}
# PRAGMA user_version -> the columns that version added. A database at an older version is brought up to
# SCHEMA_VERSION in one BEGIN IMMEDIATE transaction (`_create_or_migrate`): any number of processes may
# open a brand-new or old store at once; exactly one of them migrates, the others find it done.
MIGRATIONS: dict[int, dict[str, str]] = {1: QUEUE_COLUMNS, 2: STUDY_COLUMNS}
SCHEMA_VERSION = max(MIGRATIONS)
SQLITE_MAX_INT = 2**63 - 1
# SQLite's unix VFS opens paths of at most 512 bytes, and the journal (-journal, -wal) adds to runs.db's: a
# longer one fails as 'unable to open database file' (measured: 504 bytes open, 506 do not)
MAX_DB_PATH_BYTES = 504


def _now() -> float:
    return time.time()


def _write_json(path: Path, obj: Any) -> None:
    """Written whole or not at all (a temporary file renamed into place). Clients never import torch,
    so this is not weights.write_json."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a write cut short (a full disk) leaves nothing behind


def _set_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """WAL mode. Switching a brand-new database to WAL while other processes open it too can answer
    'database is locked' at once (SQLite does not wait in its busy handler there, to avoid a deadlock):
    try again for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Database:
    """The store folder and its database: open (creating or migrating it), read runs and metrics."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"store path {self.root} is a file: pass a folder with --store or PEFT_TUI_STORE")
        self.db_path = self.root / "runs.db"
        length = len(os.fsencode(os.path.abspath(self.db_path)))
        if length > MAX_DB_PATH_BYTES:
            raise ConfigError(
                f"store path is too long for SQLite ({length} bytes to runs.db; SQLite opens paths of at most "
                f"{MAX_DB_PATH_BYTES} bytes, its journal files included): pass a shorter --store path"
            )
        self._local = threading.local()
        self.readonly_reason = "it was opened read-only" if readonly else self._probe_writable()
        if self.readonly_reason and not self.db_path.exists():
            raise ConfigError(
                f"store folder {self.root} is not writable ({self.readonly_reason}): pass another folder with --store"
            )
        try:
            if self.readonly_reason is None:
                self._create_or_migrate()
                self.reap()
            else:
                self._conn().execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as e:  # not a database, corrupt, or locked for 30 s
            self.close()
            raise StoreError(
                f"store database {self.db_path} cannot be used ({e}): move it aside or pass another --store"
            ) from None

    @property
    def readonly(self) -> bool:
        return self.readonly_reason is not None

    @property
    def cache_dir(self) -> Path:
        """The tokenisation cache shared by the runs of this store."""
        return self.root / "cache"

    def _probe_writable(self) -> str | None:
        """None when the store folder can be written; else why not (the store then opens read-only)."""
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink(missing_ok=True)  # another process opening the store may have removed it first
        except OSError as e:
            if not self.root.is_dir():
                raise ConfigError(
                    f"store folder {self.root} cannot be created ({e.strerror}): pass another folder with --store"
                ) from None
            return e.strerror or type(e).__name__
        return None

    # ------------------------------------------------------------------ connection
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = self._connect_readonly()
            else:
                conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
                _set_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.db_path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
            return conn
        except sqlite3.OperationalError:
            # a WAL database in a folder we cannot write, with no -shm file to share: nobody is writing
            # it now, so read it as an immutable file
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30.0, isolation_level=None)

    class _Tx:
        """One write transaction; SQLite's busy timeout waits for other writers."""

        def __init__(self, store: Database):
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            if self.store.readonly:
                raise StoreError(
                    f"store folder {self.store.root} is not writable ({self.store.readonly_reason}): "
                    "pass another folder with --store"
                )
            conn = self.store._conn()
            conn.execute("BEGIN IMMEDIATE")
            return conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.store._conn().execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> Database._Tx:
        return Database._Tx(self)

    def _create_or_migrate(self) -> None:
        """Create the schema or bring an older one up to SCHEMA_VERSION, all in one write transaction:
        the version is read inside it, so of several processes opening one store at the same moment one
        migrates and the others see the new version (no 'duplicate column'). A current store takes no
        write lock."""
        conn = self._conn()
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:  # another process migrated while we waited for the lock
                return
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # stores of versions before user_version was kept have some of the columns already
            have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            for v in sorted(MIGRATIONS):
                for name, decl in MIGRATIONS[v].items():
                    if name not in have:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read; a damaged database becomes one line."""
        try:
            return self._conn().execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"store database {self.db_path} cannot be read ({e}): run `peft-tui doctor`, "
                "or move it aside"
            ) from None

    # ------------------------------------------------------------------ runs: create and read
    def create_run(self, config: RunConfig, estimate: dict[str, Any] | None = None,
                   study: str | None = None, trial: int | None = None) -> int:
        """A queued run row plus its folder with config.json. Returns the run id. The config was validated
        by whoever submits it (engine/submit.py, the one path). `estimate`: the run's Estimate as a dict
        (engine/estimate), kept so that whoever reads the finished run can grade it; `study`, `trial`: the
        tuning study (engine/tune) this run is a trial of."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (name, method, model, data, status, config, created_at, queued_at, host, estimate, "
                "study, trial) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (config.display_name, config.method, config.model, config.data.source, config.to_json(), _now(),
                 _now(), socket.gethostname(), json.dumps(estimate) if estimate else None, study, trial),
            )
            run_id = int(cur.lastrowid or 0)
            folder = self.run_folder_name(run_id, config.display_name)
            db.execute("UPDATE runs SET folder=? WHERE id=?", (folder, run_id))
        path = self.root / "runs" / folder
        path.mkdir(parents=True, exist_ok=True)
        _write_json(path / "config.json", config.to_dict())
        return run_id

    def set_estimate(self, run_id: int, estimate: dict[str, Any]) -> None:
        """Record the estimate of a run queued without one (the dashboard queues first, through its
        scheduler). Readers grade the finished run against it."""
        with self._tx() as db:
            db.execute("UPDATE runs SET estimate=? WHERE id=?", (json.dumps(estimate), run_id))

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

    def events_path(self, run_id: int) -> Path:
        """The run's events.jsonl (every event, log messages included)."""
        return self.run_dir(run_id) / EVENTS_FILE

    def get(self, run_id: int) -> dict[str, Any]:
        rows = self._query("SELECT * FROM runs WHERE id=?", (run_id,)) if 0 <= run_id <= SQLITE_MAX_INT else []
        if not rows:
            raise ConfigError(f"run {run_id} does not exist in {self.root}: `peft-tui runs` lists the runs")
        return self._row(rows[0])

    def list(self, status: str | None = None, limit: int = 0,
             ids: Iterable[int] | None = None) -> builtins.list[dict[str, Any]]:
        """Runs in id order, optionally only those with `status` or among `ids`."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if status:
            where.append("status=?")
            args.append(status)
        if ids is not None:
            wanted = [int(i) for i in ids]
            where.append(f"id IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        q = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [self._row(r) for r in self._query(q, args)]

    def changed_since(self, t: float) -> builtins.list[dict[str, Any]]:
        """Runs whose row changed after time `t` (for the dashboard's polling)."""
        rows = self._query(
            "SELECT * FROM runs WHERE max(created_at, coalesce(heartbeat, 0), coalesce(finished_at, 0)) > ? ORDER BY id",
            (t,),
        )
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of runs by status."""
        return {r[0]: r[1] for r in self._query("SELECT status, count(*) FROM runs GROUP BY status")}

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        """A row as a dict with `config` and `result` decoded. A value that is not valid JSON does not
        hide the row: it is returned with `damaged` saying what is wrong (None for a sound row)."""
        d = dict(row)
        d["damaged"] = None
        d.pop("grade", None)  # an older version's stored grade: readers compute it (engine.estimate.grade_run)
        for key, empty in (("config", {}), ("result", None), ("estimate", None)):
            try:
                d[key] = json.loads(d[key]) if d.get(key) else empty
            except ValueError as e:
                d[key] = empty
                d["damaged"] = f"its {key} is not valid JSON ({e})"
                continue
            if d[key] is not empty and not isinstance(d[key], dict):  # JSON, but a number or a list
                d["damaged"] = f"its {key} is not a JSON object but {type(d[key]).__name__}"
                d[key] = empty
        return d

    # ------------------------------------------------------------------ metrics and logs
    def series(self, run_id: int, name: str, after_step: int = -1) -> builtins.list[tuple[int, float]]:
        """One metric of a run as (step, value), in step order."""
        return [(s, v) for s, v, _ in self.points(run_id, name, after_step)]

    def points(self, run_id: int, name: str, after_step: int = -1) -> builtins.list[tuple[int, float, float]]:
        """One metric of a run as (step, value, unix time written), in step order."""
        rows = self._query(
            "SELECT step, value, t FROM metrics WHERE run_id=? AND name=? AND step>? ORDER BY step, rowid",
            (run_id, name, after_step),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def log_messages(self, run_id: int) -> builtins.list[LogMessage]:
        """The run's log messages, from its events.jsonl."""
        return [e for e in read_events(self.events_path(run_id)) if isinstance(e, LogMessage)]

    def integrity(self) -> str:
        """SQLite's own integrity check: 'ok' or the first problem."""
        return str(self._query("PRAGMA integrity_check")[0][0])

    def reap(self, stale_after_s: float = 0.0) -> builtins.list[int]:
        """Fail the running runs whose worker is gone (queue.py); nothing to reap at this level."""
        return []
