"""The store is the queue: atomic claims, cancel / resume / retry / remove through the store, and runs
whose worker died marked failed with the reason. No training here: rows are driven directly."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time

import pytest
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.engine.events import RunCancelled
from peft_tui.engine.store import Store, death_reason, serves
from peft_tui.errors import ConfigError

HOST = socket.gethostname()


def _claim_all(root: str, worker: int, out, barrier) -> None:
    st_ = Store(root)  # a fresh connection in this process
    got = []
    barrier.wait()
    while (c := st_.claim(f"w{worker}", os.getpid(), HOST, ["cpu"])) is not None:
        got.append(c.run_id)
        time.sleep(0.002)  # a worker trains between claims: let the others in
    out.put(got)


def test_workers_racing_for_one_queue_never_claim_the_same_run(tmp_path):
    st_ = Store(tmp_path / "s")
    ids = [st_.create_run(tiny_config(name=f"r{i}")) for i in range(200)]
    ctx = multiprocessing.get_context("fork")
    out, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path / "s"), i, out, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    flat = [rid for got in claimed for rid in got]
    assert sorted(flat) == ids, "every run claimed exactly once"
    assert sum(1 for got in claimed if got) >= 2, "the race really had several winners"
    assert {r["status"] for r in st_.list()} == {"running"}
    assert all(got == sorted(got) for got in claimed)  # each worker took the oldest first


def test_claims_are_first_in_first_out_and_match_devices(store):
    cpu = store.create_run(tiny_config(device="cpu"))
    gpu1 = store.create_run(tiny_config(device="cuda:1"))
    anywhere = store.create_run(tiny_config(device="auto"))
    any_gpu = store.create_run(tiny_config(device="cuda"))
    assert store.claimable(["cuda:0"]) == [anywhere, any_gpu]
    c = store.claim("g0", 1, HOST, ["cuda:0"])
    assert (c.run_id, c.device, c.resume) == (anywhere, "cuda:0", False)
    assert store.claim("g0", 1, HOST, ["cuda:0"]).run_id == any_gpu
    assert store.claim("g0", 1, HOST, ["cuda:0"]) is None
    assert store.claim("g1", 2, HOST, ["cuda:1"]).run_id == gpu1
    c = store.claim("c", 3, HOST, ["cpu"])
    assert c.run_id == cpu and c.config.device == "cpu"
    row = store.get(cpu)
    assert (row["status"], row["worker"], row["pid"], row["device"]) == ("running", "c", 3, "cpu")


@settings(max_examples=300, deadline=None)
@given(wanted=st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:7"]),
       device=st.sampled_from(["cpu", "cuda:0", "cuda:1", "cuda:7"]))
def test_serves_means_the_run_can_train_there(wanted, device):
    ok = serves(wanted, device)
    if wanted == "auto" or wanted == device:
        assert ok
    elif wanted == "cuda":
        assert ok == device.startswith("cuda")
    else:
        assert not ok


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '"text"'])
def test_a_row_whose_config_cannot_be_read_fails_alone(store, damage):
    bad = store.create_run(tiny_config(name="bad"))
    good = store.create_run(tiny_config(name="good"))
    with store._tx() as db:
        db.execute("UPDATE runs SET config=? WHERE id=?", (damage, bad))
    c = store.claim("w", 1, HOST, ["cpu"])
    assert c.run_id == good
    row = store.get(bad)
    assert row["status"] == "failed" and row["error"].startswith("its stored config cannot be read")
    assert "\n" not in row["error"]


# ------------------------------------------------------------------------------------- cancel
def test_cancel_a_queued_run_at_once_and_flag_a_running_one(store):
    a, b = store.create_run(tiny_config()), store.create_run(tiny_config())
    assert store.request_cancel(b) is True
    assert store.get(b)["status"] == "cancelled" and store.claim("w", 1, HOST, ["cpu"]).run_id == a
    assert store.heartbeat(a, os.getpid()) is False
    other = Store(store.root)  # another process's view of the same store
    assert other.request_cancel(a) is True
    row = store.get(a)
    assert row["status"] == "running" and row["cancel_requested"] == 1
    assert store.heartbeat(a, os.getpid(), startup_s=0.25) is True
    store(RunCancelled(a, 3))
    assert store.get(a)["status"] == "cancelled" and store.get(a)["startup_s"] == 0.25
    assert other.request_cancel(a) is False  # ended: nothing to cancel


# ------------------------------------------------------------------------------------- resume
def _stopped_with_checkpoint(store, step: int = 3) -> int:
    rid = store.create_run(tiny_config())
    store.request_cancel(rid)
    ckpt = store.run_dir(rid) / "checkpoint"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"step": step}))
    return rid


def test_two_concurrent_resume_requests_exactly_one_queues_and_one_claims(tmp_path):
    st_ = Store(tmp_path / "s")
    rid = _stopped_with_checkpoint(st_)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def ask():
        mine = Store(tmp_path / "s")
        barrier.wait()
        try:
            mine.request_resume(rid)
            results.append("queued")
        except ConfigError as e:
            results.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count("queued") == 1, results
    refusals = [r for r in results if r != "queued"]
    assert all(("already queued or running" in r) or ("it is queued" in r) for r in refusals), refusals
    c = st_.claim("w", 1, HOST, ["cpu"])
    assert c.run_id == rid and c.resume is True
    assert st_.claim("w2", 2, HOST, ["cpu"]) is None
    with pytest.raises(ConfigError, match="cannot be resumed: it is running"):
        st_.request_resume(rid)


def test_resume_trims_metrics_and_starts_the_event_tail_after_the_old_attempt(store):
    from peft_tui.engine.events import JsonlSink, StepLogged

    rid = _stopped_with_checkpoint(store, step=3)
    sink = JsonlSink(store.events_path(rid))
    for s in range(1, 6):
        store(StepLogged(rid, s, s / 5, 0.5, 0.1, 1.0, 1.0))
        sink(StepLogged(rid, s, s / 5, 0.5, 0.1, 1.0, 1.0))
    sink.close()
    store.request_resume(rid)
    row = store.get(rid)
    assert [s for s, _ in store.series(rid, "train_loss")] == [1, 2, 3]
    assert row["events_offset"] == store.events_path(rid).stat().st_size and row["resume"] == 1


def test_resume_refusals_are_one_line(store):
    done = store.create_run(tiny_config())
    store.claim("w", 1, HOST, ["cpu"])
    from peft_tui.engine.events import RunFinished

    store(RunFinished(done, {"run_id": done}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be resumed: it finished"):
        store.request_resume(done)
    early = store.create_run(tiny_config())
    store.request_cancel(early)
    with pytest.raises(ConfigError, match="has no checkpoint"):
        store.request_resume(early)


# ------------------------------------------------------------------------------------- retry, remove
def test_retry_and_remove_go_through_the_store(store):
    a = store.create_run(tiny_config(name="a", epochs=2))
    with pytest.raises(ConfigError, match="only a finished run can be retried"):
        store.retry(a)
    assert store.remove(a) is True and not any(r["id"] == a for r in store.list())
    b = store.create_run(tiny_config(name="b", epochs=2))
    store.claim("w", 1, HOST, ["cpu"])
    assert store.remove(b) is False  # running: not removable
    store.fail_run(b, "boom")
    new = store.retry(b)
    row = store.get(new)
    assert new != b and row["status"] == "queued" and row["config"]["epochs"] == 2 and row["name"] == "b"


# ------------------------------------------------------------------------------------- dead workers
def test_death_reasons_name_the_signal():
    assert death_reason(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert death_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert "exited with code 3" in death_reason(3)


def test_reap_fails_runs_whose_process_is_gone_and_leaves_live_ones(store):
    gone = subprocess_pid_that_exited()
    dead, alive, remote, remote_alive, queued = (store.create_run(tiny_config()) for _ in range(5))
    for rid in (dead, alive, remote, remote_alive):
        store.claim("w", os.getpid(), HOST, ["cpu"])
    with store._tx() as db:
        db.execute("UPDATE runs SET pid=? WHERE id=?", (gone, dead))
        db.execute("UPDATE runs SET host='elsewhere', heartbeat=? WHERE id=?", (time.time() - 3600, remote))
        db.execute("UPDATE runs SET host='elsewhere', heartbeat=? WHERE id=?", (time.time(), remote_alive))
    assert sorted(store.reap()) == [dead, remote]
    assert store.get(dead)["error"] == f"its process (pid {gone}) ended without recording a result"
    assert "no heartbeat from its worker on elsewhere" in store.get(remote)["error"]
    assert [store.get(i)["status"] for i in (alive, remote_alive, queued)] == ["running", "running", "queued"]


def test_a_dead_workers_run_is_failed_with_the_signal(store):
    a, b = store.create_run(tiny_config()), store.create_run(tiny_config())
    store.claim("host:1:cpu", 1, HOST, ["cpu"])
    assert store.fail_worker_runs("host:1:cpu", death_reason(-signal.SIGKILL)) == [a]
    row = store.get(a)
    assert row["status"] == "failed" and "SIGKILL" in row["error"] and "out of memory?" in row["error"]
    assert store.get(b)["status"] == "queued"  # never claimed: stays queued


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _open_many(root: str, n: int, out) -> None:
    out.put(sum(Store(root).readonly for _ in range(n)))


def test_processes_opening_one_store_at_once_all_get_it_writable(tmp_path):
    """The write probe of one process must not make another's store read-only."""
    Store(tmp_path / "s")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_many, args=(str(tmp_path / "s"), 100, out)) for _ in range(4)]
    for p in procs:
        p.start()
    readonly = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert readonly == [0, 0, 0, 0]


def test_the_worker_s_signal_replaces_the_vaguer_reason_of_an_earlier_reap(store):
    gone = subprocess_pid_that_exited()
    rid = store.create_run(tiny_config())
    store.claim("w", os.getpid(), HOST, ["cpu"])
    store.heartbeat(rid, gone)
    assert store.reap() == [rid]  # another process looked first
    assert store.fail_run(rid, death_reason(-signal.SIGKILL)) is True
    assert store.get(rid)["error"] == "killed by SIGKILL (out of memory?)"
    store.fail_run(rid, "something else")  # a real reason is never overwritten
    assert store.get(rid)["error"] == "killed by SIGKILL (out of memory?)"
