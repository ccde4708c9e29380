"""The store is created and migrated safely by any number of processes at once (issue 17: two processes
opening a brand-new store both added `queued_at`, and one failed with 'duplicate column name')."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from peft_tui.engine.store import MIGRATIONS, SCHEMA, SCHEMA_VERSION, Store
from tests.conftest import tiny_config

N_PROCS = 8


def _open(root: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=180)  # 8 processes importing on a loaded 2-core machine
        st = Store(root)
        rid = st.create_run(tiny_config(name="p"))
        results.put(("ok", rid))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(e).__name__}: {e}"))


def _all_columns() -> set[str]:
    return {name for cols in MIGRATIONS.values() for name in cols}


def _columns(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[1] for r in db.execute("PRAGMA table_info(runs)")}


def _version(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def _race(root, n: int = N_PROCS) -> list[tuple[str, object]]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(root), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    return out


@pytest.mark.parametrize("attempt", range(3))
def test_eight_processes_open_one_brand_new_store_at_the_same_moment(tmp_path, attempt):
    root = tmp_path / f"store{attempt}"
    out = _race(root)
    errors = [v for k, v in out if k == "error"]
    assert errors == []
    ids = sorted(v for _, v in out)
    assert ids == list(range(1, N_PROCS + 1))  # every process queued its run, no id twice
    assert _version(root / "runs.db") == SCHEMA_VERSION
    assert _all_columns() <= _columns(root / "runs.db")


def _old_store(root, rows: int = 50) -> None:
    """A store as the first version wrote it: the first schema, no queue columns, user_version 0, in WAL mode
    (every version opened its store in WAL, so readers never block the migration's writer)."""
    root.mkdir()
    db = sqlite3.connect(root / "runs.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    cfg = tiny_config(name="old")
    for i in range(rows):
        db.execute("INSERT INTO runs (name, method, model, data, status, config, created_at, folder) "
                   "VALUES ('old', 'lora', 'tiny', 'synthetic', 'done', ?, ?, ?)", (cfg.to_json(), float(i), f"{i:04d}-old"))
    db.commit()
    db.close()


def _read_loop(path: str, stop, results) -> None:
    """A reader of an older version: counts rows over and over while the migration runs."""
    counts, errors = set(), []
    db = sqlite3.connect(path, timeout=30)
    while not stop.is_set():
        try:
            counts.add(db.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.Error as e:
            errors.append(str(e))
    results.put((sorted(counts), errors))


def test_an_old_store_is_migrated_while_another_process_reads_it(tmp_path):
    root = tmp_path / "old"
    _old_store(root)
    ctx = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_loop, args=(str(root / "runs.db"), stop, results))
    reader.start()
    try:
        out = _race(root, n=4)  # four new-version processes migrate it at once, beside the reader
    finally:
        time.sleep(0.05)
        stop.set()
    counts, errors = results.get(timeout=120)
    reader.join(30)
    assert [k for k, _ in out] == ["ok"] * 4, out
    assert errors == []
    assert set(counts) <= {50, 51, 52, 53, 54} and 50 in counts
    assert _version(root / "runs.db") == SCHEMA_VERSION
    assert _all_columns() <= _columns(root / "runs.db")
    st = Store(root)
    assert len(st.list(status="done")) == 50 and len(st.list(status="queued")) == 4


def test_a_current_store_opens_without_taking_the_write_lock(tmp_path):
    Store(tmp_path / "s").close()
    holder = sqlite3.connect(tmp_path / "s" / "runs.db", timeout=0.1, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        t0 = time.monotonic()
        st = Store(tmp_path / "s")
        assert time.monotonic() - t0 < 5
        assert st.list() == []
    finally:
        holder.execute("ROLLBACK")


# ---------------------------------------------------------------------------------------- SQLite's path limit
def test_a_store_path_too_long_for_sqlite_is_refused_in_one_line_naming_the_limit(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    from peft_tui.engine.store.database import MAX_DB_PATH_BYTES
    from peft_tui.errors import ConfigError

    base = len(str(tmp_path)) + len("/runs.db")

    @settings(max_examples=25, deadline=None)
    @given(hs.integers(min_value=1, max_value=700), hs.integers(min_value=1, max_value=60))
    def check(total: int, part: int) -> None:
        parts, size = [], base
        while size + part + 1 <= base + total:
            parts.append("d" * part)
            size += part + 1
        root = tmp_path.joinpath(*parts) if parts else tmp_path / "s"
        length = len(str(root / "runs.db").encode())
        if length > MAX_DB_PATH_BYTES:
            with pytest.raises(ConfigError) as e:
                Store(root)
            [line] = str(e.value).splitlines()
            assert "too long for SQLite" in line and f"{length} bytes" in line and "--store" in line
        else:
            st = Store(root)
            assert st.list() == []
            st.close()

    check()
