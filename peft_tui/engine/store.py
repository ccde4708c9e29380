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

import builtins
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.events import (
    EVENTS_FILE,
    EvalLogged,
    Event,
    LogMessage,
    MemorySampled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    read_events,
)
from peft_tui.errors import ConfigError, first_line

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

# Columns added since the first schema (the queue's, the estimate's), added to older databases when they
# open (ALTER TABLE ADD COLUMN), so a store made by any earlier version still opens.
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
    "grade": "TEXT",  # JSON engine.estimate.grade: that estimate against what the finished run measured
}

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "diverged", "cancelled", "interrupted")
REAPED = "its process (pid {pid}) ended without recording a result"  # what `reap` knows of a death
STALE_AFTER_S = 300.0  # a worker on another host that sent no heartbeat for this long is dead
QUIET_S = 600.0  # a queued run is stuck when nothing trained or was submitted on the store for this long
SQLITE_MAX_INT = 2**63 - 1


class StoreError(ConfigError):
    """The store cannot be read or written: one line saying where and why, and what to do."""


@dataclass(frozen=True)
class Claim:
    """A run a worker has claimed: train `config` on `device` (resume from the checkpoint if `resume`)."""

    run_id: int
    config: RunConfig
    resume: bool
    device: str
    queued_at: float


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def death_reason(returncode: int) -> str:
    """Why a process ended, from its exit status (negative: killed by that signal)."""
    if returncode >= 0:
        return f"its process exited with code {returncode} without recording a result"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (out of memory?)" if -returncode == signal.SIGKILL else f"killed by {name}"


def _graded(estimate_json: str | None, result: dict[str, Any]) -> str | None:
    """The grade (JSON) of a run's stored estimate against its result; None without a readable estimate."""
    from peft_tui.engine.estimate import Estimate, grade

    try:
        return json.dumps(grade(Estimate.from_dict(json.loads(estimate_json)), result)) if estimate_json else None
    except (ValueError, TypeError, KeyError):  # an estimate written by another version
        return None


def serves(wanted: str, device: str) -> bool:
    """Can a worker on `device` ("cpu", "cuda:N") train a run that asked for `wanted`?"""
    if wanted in ("auto", device):
        return True
    return wanted == "cuda" and device.startswith("cuda")


class Store:
    # a run cannot go on without its records: a failed write stops it (see events.FanOut)
    critical = True

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"store path {self.root} is a file: pass a folder with --store or PEFT_TUI_STORE")
        self.db_path = self.root / "runs.db"
        self._local = threading.local()
        self.readonly_reason = "it was opened read-only" if readonly else self._probe_writable()
        if self.readonly_reason and not self.db_path.exists():
            raise ConfigError(
                f"store folder {self.root} is not writable ({self.readonly_reason}): pass another folder with --store"
            )
        try:
            if self.readonly_reason is None:
                self._conn().executescript(SCHEMA)
                self._migrate()
                self.reap()
            else:
                self._conn().execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as e:  # not a database, corrupt, or locked for 30 s
            self.close()
            raise ConfigError(
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
                conn.execute("PRAGMA journal_mode=WAL")
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

        def __init__(self, store: Store):
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

    def _tx(self) -> Store._Tx:
        return Store._Tx(self)

    def _migrate(self) -> None:
        have = {r[1] for r in self._conn().execute("PRAGMA table_info(runs)")}
        missing = [(n, t) for n, t in QUEUE_COLUMNS.items() if n not in have]
        if missing:
            with self._tx() as db:
                for name, decl in missing:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")

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
    def create_run(self, config: RunConfig, validate: bool = True, estimate: dict[str, Any] | None = None) -> int:
        """A queued run row plus its folder with config.json. Returns the run id. `estimate`: the run's
        Estimate as a dict (engine/estimate.py), kept to be graded when the run finishes."""
        if validate:
            config.validate()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (name, method, model, data, status, config, created_at, queued_at, host, estimate) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (config.display_name, config.method, config.model, config.data.source, config.to_json(), _now(),
                 _now(), socket.gethostname(), json.dumps(estimate) if estimate else None),
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
        scheduler). The run is graded against it when it finishes."""
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
        for key, empty in (("config", {}), ("result", None), ("estimate", None), ("grade", None)):
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

    # ------------------------------------------------------------------ the queue
    def claimable(self, devices: Sequence[str]) -> builtins.list[int]:
        """Queued runs a worker on one of `devices` could claim, oldest first."""
        rows = self._query(
            "SELECT id, config FROM runs WHERE status='queued' AND queued_at IS NOT NULL ORDER BY queued_at, id"
        )
        return [r["id"] for r in rows if self._device_for(r["config"], devices) is not None]

    @staticmethod
    def _device_for(config_json: str, devices: Sequence[str]) -> str | None:
        try:
            wanted = str(json.loads(config_json).get("device", "auto"))
        except (ValueError, AttributeError):
            return devices[0] if devices else None  # claimed, then failed with the reason
        return next((d for d in devices if serves(wanted, d)), None)

    def claim(self, worker_id: str, pid: int, host: str, devices: Sequence[str]) -> Claim | None:
        """Claim the oldest queued run that a worker on one of `devices` can serve, in one transaction:
        two workers never get the same run. A queued row whose config cannot be read is failed on the
        way. None when there is nothing to claim."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, config, resume, queued_at FROM runs WHERE status='queued' AND queued_at IS NOT NULL "
                "ORDER BY queued_at, id"
            ).fetchall()
            for r in rows:
                device = self._device_for(r["config"], devices)
                if device is None:
                    continue
                t = _now()
                try:
                    config = RunConfig.from_dict(json.loads(r["config"]))
                except Exception as e:  # noqa: BLE001 - a damaged row fails alone
                    db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=?",
                               (f"its stored config cannot be read ({first_line(e)})", t, r["id"]))
                    continue
                db.execute(
                    "UPDATE runs SET status='running', worker=?, pid=?, host=?, device=?, claimed_at=?, heartbeat=?, "
                    "startup_s=NULL, cancel_requested=0, error=NULL WHERE id=? AND status='queued'",
                    (worker_id, pid, host, device, t, t, r["id"]),
                )
                return Claim(r["id"], config, bool(r["resume"]), device, r["queued_at"])
        return None

    def heartbeat(self, run_id: int, pid: int, startup_s: float | None = None) -> bool:
        """Called about twice a second by the process training a run: records that process and that it
        is alive (and, once, the start-up it paid). Returns True when a cancel was requested."""
        with self._tx() as db:
            db.execute("UPDATE runs SET heartbeat=?, pid=?, startup_s=coalesce(?, startup_s) WHERE id=?",
                       (_now(), pid, startup_s, run_id))
            row = db.execute("SELECT cancel_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def request_cancel(self, run_id: int) -> bool:
        """A queued run is cancelled at once; a running one is asked to stop (its worker polls the flag and
        stops within one step). False when the run is neither queued nor running."""
        with self._tx() as db:
            t = _now()
            cur = db.execute(
                "UPDATE runs SET status='cancelled', finished_at=?, heartbeat=? WHERE id=? AND status='queued'",
                (t, t, run_id),
            )
            if cur.rowcount:
                return True
            cur = db.execute("UPDATE runs SET cancel_requested=1 WHERE id=? AND status='running'", (run_id,))
            return bool(cur.rowcount)

    def request_resume(self, run_id: int, trust_remote_code: bool = False) -> None:
        """Queue a stopped run (interrupted, failed, diverged, cancelled) again, to continue from its last
        epoch-end checkpoint under the same id. Of several concurrent requests exactly one succeeds; the
        others raise ConfigError, as does a run that cannot be resumed. A stored config asking for the
        model's own code is refused without `trust_remote_code` (the user's flag; RunConfig.from_stored)."""
        from peft_tui.engine import checkpoint

        row = self.get(run_id)
        RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}")
        if row["status"] not in checkpoint.RESUMABLE:
            why = {"done": "it finished", "running": "it is running", "queued": "it is queued"}.get(row["status"])
            raise ConfigError(f"run {run_id} cannot be resumed: {why or row['status']} "
                              "(only interrupted, failed, diverged or cancelled runs)")
        path = checkpoint.find(self.run_dir(run_id))
        if path is None:
            raise ConfigError(
                f"run {run_id} has no checkpoint (it stopped before its first epoch ended): "
                "start it again instead (retry in the dashboard, or `peft-tui run`)"
            )
        RunConfig.from_dict(row["config"]).validate()
        self.reopen(run_id, int(checkpoint.read_meta(path)["step"]))

    def reopen(self, run_id: int, after_step: int) -> None:
        """Queue a stopped run again for resuming, atomically: metrics logged after `after_step` (the
        checkpoint) are dropped so the curve continues without duplicate steps. Raises ConfigError when
        the run is no longer stopped (another resume got there first)."""
        from peft_tui.engine.checkpoint import RESUMABLE

        events = self.events_path(run_id)
        offset = events.stat().st_size if events.exists() else 0
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE runs SET status='queued', resume=1, queued_at=?, error=NULL, finished_at=NULL, step=?, "
                f"heartbeat=?, cancel_requested=0, events_offset=? "
                f"WHERE id=? AND status IN ({','.join('?' * len(RESUMABLE))})",
                (_now(), after_step, _now(), offset, run_id, *RESUMABLE),
            )
            if not cur.rowcount:
                raise ConfigError(f"run {run_id} is already queued or running: another resume claimed it")
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, after_step))

    def retry(self, run_id: int, trust_remote_code: bool = False) -> int:
        """Queue a new run with the config of a run that has ended (its trust_remote_code: the user's flag,
        see RunConfig.from_stored). Returns the new run's id."""
        row = self.get(run_id)
        if row["status"] in ACTIVE:
            raise ConfigError(f"run {run_id} is {row['status']}: only a finished run can be retried")
        if row["damaged"]:
            raise ConfigError(f"run {run_id} cannot be retried: {row['damaged']}")
        return self.create_run(RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}"),
                               estimate=row["estimate"])

    def remove(self, run_id: int) -> bool:
        """Delete a run that is still queued (never claimed) with its folder. False when it is not queued."""
        folder = self.run_dir(run_id)
        with self._tx() as db:
            cur = db.execute("DELETE FROM runs WHERE id=? AND status='queued'", (run_id,))
            if not cur.rowcount:
                return False
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def stuck(self, quiet_s: float = QUIET_S) -> builtins.list[dict[str, Any]]:
        """Rows left behind by older versions or by killed commands, each with what `unstick` makes of it
        (`fix`: the status, `reason`: the recorded error):
        - `queued` that no worker will claim: left by a version before the store was the queue (no
          queued_at), or queued while no run has trained and nothing was submitted for `quiet_s`;
        - `interrupted` (an older version's mark for a run whose process ended mid-way), and `running`
          with no process recorded and no heartbeat for `quiet_s` (`reap` fails those with a pid)."""
        now = _now()
        rows = self._query("SELECT id, name, status, queued_at, created_at, heartbeat, pid FROM runs "
                           "WHERE status IN ('queued', 'running', 'interrupted') ORDER BY id")
        live = any(r["status"] == "running" and now - (r["heartbeat"] or 0) < quiet_s for r in rows)
        latest = max((r["queued_at"] for r in rows if r["status"] == "queued" and r["queued_at"]), default=0)
        idle = not live and now - latest >= quiet_s
        out = []
        for r in rows:
            if r["status"] == "queued" and (r["queued_at"] is None or idle):
                out.append({"id": r["id"], "name": r["name"], "status": "queued", "fix": "cancelled",
                            "reason": "left queued with no worker to train it (cleared by `peft-tui doctor --fix`)"})
            elif r["status"] == "interrupted" or (r["status"] == "running" and not r["pid"]
                                                  and now - (r["heartbeat"] or 0) >= quiet_s):
                out.append({"id": r["id"], "name": r["name"], "status": r["status"], "fix": "failed",
                            "reason": "its process ended mid-run (cleared by `peft-tui doctor --fix`)"})
        return out

    def unstick(self, stuck: builtins.list[dict[str, Any]]) -> builtins.list[int]:
        """Apply the `fix` of each row `stuck` returned, where the row has not moved since. Returns the ids
        changed."""
        changed = []
        with self._tx() as db:
            for r in stuck:
                t = _now()
                cur = db.execute("UPDATE runs SET status=?, error=coalesce(error, ?), finished_at=?, heartbeat=? "
                                 "WHERE id=? AND status=?", (r["fix"], r["reason"], t, t, r["id"], r["status"]))
                if cur.rowcount:
                    changed.append(r["id"])
        return changed

    def fail_worker_runs(self, worker_id: str, reason: str) -> builtins.list[int]:
        """The worker `worker_id` died (its pool saw how): its running run becomes failed with `reason`."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE worker=? AND status='running'", (worker_id,))]
            for run_id in ids:
                self._fail(db, run_id, reason)
        return ids

    def fail_run(self, run_id: int, reason: str) -> bool:
        """A running run whose process died (its worker saw how) becomes failed with `reason`, which
        also replaces the vaguer reason `reap` may have written in the moment since it died."""
        with self._tx() as db:
            if self._fail(db, run_id, reason):
                return True
            cur = db.execute("UPDATE runs SET error=? WHERE id=? AND status='failed' AND error LIKE ?",
                             (reason, run_id, REAPED.format(pid="%")))
            return bool(cur.rowcount)

    def fail_queued(self, run_ids: Iterable[int], reason: str) -> builtins.list[int]:
        """Runs still queued that nothing will train (their launcher failed) become failed with `reason`."""
        t, failed = _now(), []
        with self._tx() as db:
            for run_id in run_ids:
                cur = db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=? AND "
                                 "status='queued'", (reason, t, run_id))
                failed += [run_id] if cur.rowcount else []
        return failed

    @staticmethod
    def _fail(db: sqlite3.Connection, run_id: int, reason: str) -> bool:
        t = _now()
        cur = db.execute("UPDATE runs SET status='failed', error=?, finished_at=?, heartbeat=? "
                         "WHERE id=? AND status='running'", (reason, t, t, run_id))
        return bool(cur.rowcount)

    def reap(self, stale_after_s: float = STALE_AFTER_S) -> builtins.list[int]:
        """Running runs whose worker is gone become failed: on this host when the training process no
        longer exists, elsewhere when no heartbeat came for `stale_after_s`. Returns their ids."""
        host, now = socket.gethostname(), _now()
        dead = {}
        for r in self._query("SELECT id, pid, host, heartbeat FROM runs WHERE status='running'"):
            if r["host"] == host and r["pid"] and not _pid_alive(r["pid"]):
                dead[r["id"]] = REAPED.format(pid=r["pid"])
            elif r["host"] != host and now - (r["heartbeat"] or 0) > stale_after_s:
                dead[r["id"]] = f"no heartbeat from its worker on {r['host']} for {stale_after_s:.0f} s"
        if dead:
            with self._tx() as db:
                for run_id, reason in dead.items():
                    self._fail(db, run_id, reason)
        return list(dead)

    # ------------------------------------------------------------------ the sink
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
                row = db.execute("SELECT estimate FROM runs WHERE id=?", (event.run_id,)).fetchone()
                db.execute(
                    "UPDATE runs SET status='done', result=?, grade=?, finished_at=?, heartbeat=?, step=total_steps "
                    "WHERE id=?",
                    (json.dumps(result, default=str), _graded(row[0] if row else None, result), t, t, event.run_id),
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
