"""The store and the event sinks: events.jsonl keeps every event, store failures stop the run, damaged
rows and read-only stores are still readable, old databases are migrated."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_tui.config import DataConfig
from peft_tui.engine import trainer
from peft_tui.engine.events import (
    EventTail,
    JsonlSink,
    LogMessage,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    fan_out,
    read_events,
)
from peft_tui.engine.methods import validate as validate_run
from peft_tui.engine.result import RunResult
from peft_tui.engine.store import Store, StoreError
from peft_tui.errors import ConfigError


def _csv(tmp_path: Path, n: int = 120) -> str:
    rows = ["text,label"] + [f"{'good great fine' if i % 2 else 'bad awful poor'} item {i},{i % 2}" for i in range(n)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------- JSONL
def test_events_jsonl_keeps_every_event_of_a_run_including_logs(store, tmp_path):
    cfg = tiny_config(method="lora", data=DataConfig(source=_csv(tmp_path), limit=100))
    rid = store.create_run(cfg)
    seen = []
    jsonl = JsonlSink(store.events_path(rid))
    sink = fan_out(store, jsonl, seen.append)
    assert trainer.execute(store, rid, cfg, sink) is not None
    sink.close()
    assert jsonl._fh.closed
    got = read_events(store.events_path(rid))
    assert [type(e) for e in got] == [type(e) for e in seen]
    kinds = {type(e).__name__ for e in got}
    assert {"LogMessage", "RunStarted", "StepLogged", "EvalLogged", "MemorySampled", "RunFinished"} <= kinds
    assert any("stratified sample of 100 rows" in e.text for e in got if isinstance(e, LogMessage))
    for a, b in zip(seen, got):
        if isinstance(a, RunFinished):
            assert isinstance(b.result, RunResult) and b.result.accuracy == a.result_dict()["accuracy"]
            assert b.result.steps == store.get(rid)["result"]["steps"]
        else:
            assert a == b
    assert [m.text for m in store.log_messages(rid)] == [e.text for e in got if isinstance(e, LogMessage)]


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
events = st.one_of(
    st.builds(LogMessage, st.integers(1, 10**6), st.sampled_from(["info", "warning", "error"]), texts),
    st.builds(RunFailed, st.integers(1, 10**6), texts, st.sampled_from(["failed", "diverged"])),
    st.builds(RunCancelled, st.integers(1, 10**6), st.integers(0, 10**9)),
    st.builds(StepLogged, st.integers(1, 10**6), st.integers(0, 10**9), st.floats(0, 1e6), st.floats(allow_nan=False),
              st.floats(allow_nan=False), st.floats(0, 1e9), st.floats(0, 1e9)),
    st.builds(RunStarted, st.integers(1, 10**6), texts, texts, st.integers(0, 10**12), st.integers(1, 100),
              st.integers(0, 10**9), st.integers(0, 10**9), texts, texts, st.integers(0, 10**6), st.integers(2, 50)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(events, max_size=8))
def test_jsonl_round_trips_any_event(tmp_path, batch):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "events.jsonl"
    sink = JsonlSink(path)
    for e in batch:
        sink(e)
    sink.close()
    assert read_events(path) == batch
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(batch)  # newlines in texts stay escaped


def test_event_tail_reads_complete_lines_only_and_skips_damaged_ones(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # no file yet
    line = json.dumps({"event": "RunCancelled", "run_id": 3, "step": 4})
    path.write_text(line[:10])
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write(line[10:] + "\n{not json\n" + json.dumps({"event": "FromTheFuture", "run_id": 1}) + "\n")
    assert tail.read() == [RunCancelled(3, 4)]
    assert tail.read() == []


# ---------------------------------------------------------------------------------------- fan_out
def test_a_critical_sink_failure_reaches_the_caller_after_the_others_had_the_event(caplog):
    got = []

    class Critical:
        critical = True
        closed = False

        def __call__(self, e):
            raise StoreError("disk full")

        def close(self):
            self.closed = True

    def loose(e):
        raise RuntimeError("console gone")

    crit = Critical()
    emit = fan_out(crit, loose, None, got.append)
    with caplog.at_level("WARNING", logger="peft_tui"), pytest.raises(StoreError, match="disk full"):
        emit(RunCancelled(1, 0))
    assert got == [RunCancelled(1, 0)]
    assert "console gone" in caplog.text  # the non-critical failure is logged, not raised
    emit.close()
    assert crit.closed


# ---------------------------------------------------------------------------------------- failed writes
def test_a_number_too_large_for_sqlite_is_refused_before_the_store_sees_it(store):
    with pytest.raises(ConfigError, match=r"^epochs=10+ is too large: it must fit in 64 bits") as info:
        validate_run(tiny_config(method="bitfit", epochs=10**30))
    assert "\n" not in str(info.value)
    assert store.list() == []  # nothing half-created


def _damage_metric_pages(store: Store) -> None:
    store.close()
    db = sqlite3.connect(store.db_path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='metrics'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()  # the last connection: the WAL is checkpointed into the file
    with open(store.db_path, "r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(b"\xff" * size)


def test_damaged_metric_pages_stop_the_run_and_reads_say_so_in_one_line(tmp_path):
    st_ = Store(tmp_path / "s")
    warm = st_.create_run(tiny_config())
    for i in range(200):
        st_(StepLogged(warm, i, 0.1, 0.5, 0.1, 1.0, 1.0))
    cfg = tiny_config(method="head")
    rid = st_.create_run(cfg)
    _damage_metric_pages(st_)
    st_ = Store(tmp_path / "s")
    assert trainer.execute(st_, rid, cfg, st_) is None
    row = st_.get(rid)
    assert row["status"] == "failed"
    assert "the store could not record" in row["error"] and "malformed" in row["error"]
    assert "\n" not in row["error"]
    with pytest.raises(StoreError, match="cannot be read .*malformed.*doctor") as info:
        st_.series(warm, "train_loss")
    assert "\n" not in str(info.value)
    assert [r["id"] for r in st_.list()] == [warm, rid]  # the runs table is intact


# ---------------------------------------------------------------------------------------- damaged rows
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.text(min_size=1, max_size=60).filter(lambda s: not _is_json(s)),
       column=st.sampled_from(["config", "result"]))
def test_one_row_with_invalid_json_does_not_hide_the_others(store, garbage, column):
    good = store.create_run(tiny_config(name="good"))
    bad = store.create_run(tiny_config(name="bad"))
    with store._tx() as db:
        db.execute(f"UPDATE runs SET {column}=? WHERE id=?", (garbage, bad))
    rows = {r["id"]: r for r in store.list()}
    assert rows[good]["damaged"] is None and rows[good]["config"]["name"] == "good"
    assert rows[bad]["damaged"].startswith(f"its {column} is not valid JSON")
    assert store.get(bad)["name"] == "bad"


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("run_id", [2**63, 10**30, -1])
def test_an_id_too_large_for_sqlite_does_not_exist(store, run_id):
    with pytest.raises(ConfigError, match=f"run {run_id} does not exist"):
        store.get(run_id)


# ---------------------------------------------------------------------------------------- read-only
@pytest.fixture()
def finished_store(tmp_path):
    st_ = Store(tmp_path / "s")
    cfg = tiny_config(method="head")
    rid = st_.create_run(cfg)
    sink = fan_out(st_, JsonlSink(st_.events_path(rid)))
    sink(LogMessage(rid, "info", "hello from the run"))
    assert trainer.execute(st_, rid, cfg, sink) is not None
    sink.close()
    st_.create_run(tiny_config(name="waiting"))
    st_.close()
    return tmp_path / "s", rid


def _read_everything(root: Path, rid: int, **kw) -> dict:
    st_ = Store(root, **kw)
    return {
        "readonly": st_.readonly,
        "statuses": [r["status"] for r in st_.list()],
        "done": st_.get(rid)["result"]["steps"],
        "loss_points": len(st_.series(rid, "train_loss")),
        "counts": st_.counts(),
        "changed": len(st_.changed_since(0)),
        "logs": [m.text for m in st_.log_messages(rid)],
    }


def test_a_store_opened_read_only_answers_every_query_and_refuses_writes(finished_store):
    root, rid = finished_store
    want = _read_everything(root, rid)
    got = _read_everything(root, rid, readonly=True)
    assert got == {**want, "readonly": True}
    assert got["statuses"] == ["done", "queued"] and got["loss_points"] > 0 and "hello from the run" in got["logs"]
    ro = Store(root, readonly=True)
    for write in (lambda: ro.create_run(tiny_config()), lambda: ro.request_cancel(2), lambda: ro(RunCancelled(2, 0))):
        with pytest.raises(StoreError, match="is not writable .*opened read-only"):
            write()
    assert ro.get(2)["status"] == "queued"


def test_a_store_the_user_cannot_write_opens_read_only(finished_store):
    """A copy with every file and folder read-only, opened by a user who cannot write it: as root,
    chmod does not stop writes, so the reading runs in a forked child that became `nobody`."""
    root, rid = finished_store
    want = _read_everything(root, rid)  # also imports everything the child needs
    outside = Path(tempfile.mkdtemp())  # pytest's own folders are private to root
    copy = outside / "ro"
    shutil.copytree(root, copy)
    for p in [outside, copy, *copy.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        got = _as_another_user(lambda: _read_everything(copy, rid))
    finally:
        for p in [outside, copy, *copy.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(outside)
    assert got == {**want, "readonly": True}
    assert got["statuses"] == ["done", "queued"] and got["loss_points"] > 0 and "hello from the run" in got["logs"]


def _as_another_user(fn):
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, answer through the pipe, never return into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fn()).encode())
        except BaseException as e:  # noqa: BLE001
            os.write(w, json.dumps({"error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = json.loads(fh.read())
    os.waitpid(pid, 0)
    return out


# ---------------------------------------------------------------------------------------- layout, migration
def test_cache_dir_is_in_the_store(store):
    assert store.cache_dir == store.root / "cache"


def test_an_old_database_is_migrated_and_its_stale_queued_rows_are_never_claimed(tmp_path):
    from peft_tui.engine.store import QUEUE_COLUMNS, SCHEMA

    (tmp_path / "s").mkdir()
    db = sqlite3.connect(tmp_path / "s" / "runs.db")
    db.executescript(SCHEMA)
    cfg = tiny_config(name="old")
    db.execute("INSERT INTO runs (name, method, model, data, status, config, created_at, folder) "
               "VALUES ('old', 'lora', 'tiny', 'synthetic', 'queued', ?, 1.0, '0001-old')", (cfg.to_json(),))
    db.commit()
    db.close()
    st_ = Store(tmp_path / "s")
    cols = {r[1] for r in st_._conn().execute("PRAGMA table_info(runs)")}
    assert set(QUEUE_COLUMNS) <= cols
    new = st_.create_run(tiny_config(name="new"))
    assert [r["id"] for r in st_.stuck()] == [1]
    claim = st_.claim("w", os.getpid(), "h", ["cpu"])
    assert claim is not None and claim.run_id == new
    assert st_.claim("w", os.getpid(), "h", ["cpu"]) is None
    assert st_.get(1)["status"] == "queued"


def test_run_finished_accepts_a_result_dataclass_or_a_dict(store):
    a, b = store.create_run(tiny_config()), store.create_run(tiny_config())
    store(RunFinished(a, RunResult(run_id=a, accuracy=0.75, steps=3)))
    store(RunFinished(b, {"run_id": b, "accuracy": 0.5}))  # type: ignore[arg-type]
    assert store.get(a)["result"]["accuracy"] == 0.75 and store.get(a)["result"]["steps"] == 3
    assert json.loads((store.run_dir(b) / "result.json").read_text())["accuracy"] == 0.5
    assert dataclasses.asdict(RunResult.from_dict(store.get(a)["result"])) == store.get(a)["result"]
