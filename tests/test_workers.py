"""Runs as processes: workers claim runs from the store and train each in a process of its own; the
dashboard's Scheduler and the CLI's `watch` are clients of the store. Real processes, the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine import trainer
from peft_tui.engine.events import (
    EvalLogged,
    LogMessage,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    fan_out,
    read_events,
)
from peft_tui.engine.scheduler import Scheduler
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

# every test here is about worker processes: the slow tier, with real workers
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker_processes")]

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300  # generous: a worker's imports take 5-20 s on a loaded 2-core machine


def quick(**kw):
    """A run of one or two steps."""
    return tiny_config(method="lora", data=DataConfig(size=40), batch_size=32, **kw)


def slow(**kw):
    """A run long enough to be stopped in the middle (hundreds of steps)."""
    return tiny_config(method="full", data=DataConfig(size=2000), batch_size=8, epochs=5, **kw)


def wait_for(condition, timeout: float = WAIT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def training(store: Store, run_id: int) -> bool:
    row = store.get(run_id)
    return row["status"] == "running" and (row["step"] or 0) > 0


def worker_process(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "peft_tui.engine.launch.worker", "--store", str(root), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------------------------------ claims
def test_two_workers_on_one_queue_train_every_run_exactly_once(tmp_path):
    store = Store(tmp_path / "s")
    ids = [store.create_run(quick(name=f"r{i}", seed=i)) for i in range(8)]
    workers = [worker_process(tmp_path / "s", "--exit-when-idle") for _ in range(2)]
    for w in workers:
        out, _ = w.communicate(timeout=WAIT_S)
        assert w.returncode == 0, out[-3000:]
    rows = [store.get(i) for i in ids]
    assert [r["status"] for r in rows] == ["done"] * len(ids), [r["error"] for r in rows]
    for r in rows:
        started = [e for e in read_events(store.events_path(r["id"])) if isinstance(e, RunStarted)]
        assert len(started) == 1, f"run {r['id']} trained {len(started)} times"
        steps = [s for s, _ in store.series(r["id"], "train_loss")]
        assert steps == sorted(set(steps)) and steps[-1] == r["result"]["steps"]
    pids = {r["worker"].split(":")[1] for r in rows}
    assert pids <= {str(w.pid) for w in workers}
    assert len({r["pid"] for r in rows}) == len(ids), "each run trained in a process of its own"
    print(f"\nruns per worker: {[sum(r['worker'].split(':')[1] == str(w.pid) for r in rows) for w in workers]}; "
          f"start-up per run (s): {[round(r['startup_s'], 3) for r in rows]}")


# ------------------------------------------------------------------------------------------ the Scheduler
def test_scheduler_streams_every_event_and_keeps_them_in_events_jsonl(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} thing {i},{i % 2}\n" for i in range(80)))
    store = Store(tmp_path / "s")
    seen = []
    sched = Scheduler(store, seen.append, ["cpu"])
    try:
        a = sched.submit(tiny_config(method="lora", data=DataConfig(source=str(csv), limit=60)))
        b = sched.submit(quick())
        c = sched.submit(quick(name="never"))
        assert sched.cancel(c) is True  # queued: cancelled at once
        assert store.get(c)["status"] == "cancelled"
        assert sched.wait_idle(WAIT_S)
    finally:
        sched.shutdown()
    assert [store.get(i)["status"] for i in (a, b, c)] == ["done", "done", "cancelled"]
    mine = [e for e in seen if e.run_id == a]
    assert mine == read_events(store.events_path(a))  # the same events, in order, from the file
    kinds = [type(e) for e in mine]
    assert kinds[-1] is RunFinished and {LogMessage, RunStarted, StepLogged, EvalLogged} <= set(kinds)
    assert any("stratified sample of 60 rows" in e.text for e in mine if isinstance(e, LogMessage))
    assert [e for e in seen if e.run_id == c] == [RunCancelled(c, 0)]
    assert [type(e) for e in seen if e.run_id == b][-1] is RunFinished
    for rid in (a, b):
        row = store.get(rid)
        assert row["result"]["memory_kind"] == "peak RSS of the run's own process" and row["startup_s"] >= 0
    retry = Scheduler(store, None, ["cpu"])
    try:
        new = retry.retry(c)
        assert retry.wait_idle(WAIT_S)
    finally:
        retry.shutdown()
    assert store.get(new)["status"] == "done" and store.get(new)["name"] == "never"


def test_cancel_from_another_store_object_stops_a_running_run(tmp_path):
    store = Store(tmp_path / "s")
    seen = []
    sched = Scheduler(store, seen.append, ["cpu"])
    try:
        rid = sched.submit(slow())
        wait_for(lambda: training(store, rid), what="the run to train")
        assert Store(tmp_path / "s").request_cancel(rid) is True
        assert sched.wait_idle(60)
    finally:
        sched.shutdown()
    row = store.get(rid)
    assert row["status"] == "cancelled" and row["step"] < 5 * 250
    assert isinstance(seen[-1], RunCancelled) and seen[-1].run_id == rid


# ------------------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("victim", ["run process", "worker process"])
def test_sigkill_mid_run_fails_that_run_and_the_next_queued_run_trains(tmp_path, victim):
    store = Store(tmp_path / "s")
    seen = []
    sched = Scheduler(store, seen.append, ["cpu"])
    try:
        doomed = sched.submit(slow(name="doomed"))
        after = sched.submit(quick(name="after"))
        wait_for(lambda: training(store, doomed), what="the run to train")
        row = store.get(doomed)
        pid = row["pid"] if victim == "run process" else int(row["worker"].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        assert sched.wait_idle(WAIT_S)
    finally:
        sched.shutdown()
    row = store.get(doomed)
    assert row["status"] == "failed", row
    assert "SIGKILL" in row["error"] and "out of memory?" in row["error"]
    assert store.get(after)["status"] == "done"
    assert RunFailed(doomed, row["error"]) in seen  # the dashboard hears of it too


def test_two_resumes_of_one_run_from_two_dashboards_train_it_once(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    cfg = tiny_config(method="bitfit", epochs=2)  # 6 steps an epoch
    rid = store.create_run(cfg)
    cancel = threading.Event()

    def stop_at_7(e):
        if isinstance(e, StepLogged) and e.step >= 7:
            cancel.set()

    monkeypatch.setattr(trainer, "LOG_INTERVAL_S", 0.0)  # a StepLogged every step
    trainer.execute(store, rid, cfg, fan_out(store, stop_at_7), cancel)  # here only to leave a checkpoint
    assert store.get(rid)["status"] == "cancelled"
    dashboards = [Scheduler(Store(tmp_path / "s"), None, ["cpu"]) for _ in range(2)]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def resume(sched):
        barrier.wait()
        try:
            sched.resume(rid)
            outcomes.append("resumed")
        except ConfigError as e:
            outcomes.append(str(e))

    try:
        threads = [threading.Thread(target=resume, args=(d,)) for d in dashboards]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert outcomes.count("resumed") == 1, outcomes
        assert all(d.wait_idle(WAIT_S) for d in dashboards)
    finally:
        for d in dashboards:
            d.shutdown()
    row = store.get(rid)
    assert row["status"] == "done" and row["result"]["steps"] == 12
    started = [e for e in read_events(store.events_path(rid)) if isinstance(e, RunStarted)]
    assert len(started) == 1, "one claim, one training"
    assert [s for s, _ in store.series(rid, "val_accuracy")] == [6, 12]  # no step trained twice


CLIENT = """
import sys
from peft_tui.engine.launch.client import watch
from peft_tui.engine.launch.local import LocalPool
from peft_tui.engine.store import Store
sys.path.insert(0, sys.argv[2])
from test_workers import quick, slow
store = Store(sys.argv[1])
with LocalPool(store.root, ["cpu"]) as pool:
    ids = [store.create_run(slow(name="first"))] + [store.create_run(quick(name=f"q{i}")) for i in range(3)]
    pool.wake()
    print("ids", *ids, flush=True)
    signum = watch(store, ids, None)
print("stopped by", signum, flush=True)
"""


def test_sigterm_of_a_watching_client_cancels_every_run_it_queued(tmp_path):
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(tmp_path / "s"), str(ROOT / "tests")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ids = [int(x) for x in client.stdout.readline().split()[1:]]
    assert len(ids) == 4, client.stderr.read()
    store = Store(tmp_path / "s")
    wait_for(lambda: training(store, ids[0]), what="the first run to train")
    client.send_signal(signal.SIGTERM)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err[-3000:]
    assert f"stopped by {int(signal.SIGTERM)}" in out
    assert [store.get(i)["status"] for i in ids] == ["cancelled"] * 4
    assert store.list(status="running") == [] and store.list(status="queued") == []
