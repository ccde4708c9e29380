"""Prewarmed workers (LocalPool.prewarm, commands/queueing.command_pool): a command starts its worker
processes before it loads its data, so their imports overlap its own work; a worker that gets no run
leaves cleanly; a command stopped before it queues leaves no worker behind."""

from __future__ import annotations

import time

import psutil
import pytest
from conftest import tiny_config, wait_for
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.engine.launch.local import LocalPool
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

# every test here starts real worker processes: the slow tier
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker_processes")]

TINY = ["--model", "tiny", "--set", "data.size=120", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def importing(*pids: int) -> bool:
    """Each process has mapped torch's library: inside its imports (`preload`), or past them."""
    try:
        return all("libtorch" in "".join(m.path for m in psutil.Process(pid).memory_maps()) for pid in pids)
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_prewarmed_worker_runs_before_the_store_exists_then_trains_the_run_queued_later(tmp_path):
    root = tmp_path / "s"
    pool = LocalPool(root, devices=["cpu"], idle_s=120).prewarm()
    try:
        [pid] = pool.pids()
        assert psutil.Process(pid).cmdline()[2] == "peft_tui.engine.launch.worker"
        wait_for(lambda: importing(pid), 120, "the worker imports torch", every=0.05)
        assert not root.exists()  # it creates nothing: the command makes the store once its inputs pass
        store = Store(root)  # now the command opens the store and queues its run
        rid = store.create_run(tiny_config(method="lora"))
        pool.start()
        assert list(pool.pids()) == [pid]  # the watcher's first look started no second worker
        def finished():
            assert set(pool.pids()) <= {pid}, "a second worker was started"
            return store.get(rid)["status"] not in ("queued", "running")
        wait_for(finished, 300, f"run {rid} ends")
        row = store.get(rid)
        assert row["status"] == "done", row["error"]
        assert row["worker"].split(":")[1] == str(pid)  # the prewarmed worker trained it
        assert 0.0 <= row["result"]["accuracy"] <= 1.0 and row["result"]["steps"] > 0
        assert row["startup_s"] > 0
    finally:
        pool.release()
    assert gone(pid)
    assert "Traceback" not in pool.log_path.read_text()  # its output went to the store's log (once there)


@pytest.mark.parametrize("store_made", [True, False])
def test_a_prewarmed_worker_with_no_run_leaves_cleanly_and_is_not_replaced(tmp_path, store_made):
    """No run came (or not even a store: its command died before making it): it leaves by itself, exit 0."""
    root = tmp_path / "s"
    if store_made:
        Store(root)
    pool = LocalPool(root, devices=["cpu"], idle_s=0.5).prewarm().start()
    try:
        [proc] = [s.proc for s in pool.slots]
        assert proc is not None and proc.poll() is None
        wait_for(lambda: proc.poll() is not None, 300, "the idle worker leaves")
        assert proc.returncode == 0  # left by itself: no signal, no error
        pool.wake()  # the watcher's look at the queue: nothing queued, so no new worker
        assert pool.pids() == {} and all(s.proc is None and s.failures == 0 for s in pool.slots)
        log = pool.log_path.read_text() if pool.log_path.exists() else ""
        assert "ended" not in log, log  # the pool recorded no failed worker
        assert root.exists() == store_made  # and nothing was created
    finally:
        pool.stop()


@pytest.mark.parametrize("refusal, message, store_made", [
    (["--max-time", "0.001"], "above its 0 s limit", True),  # the estimate refuses it (in the store)
    (["--data", "BAD_CSV"], "column 'label' not found", False),  # the data refuses it: no store made
    (["--model", "no/such/model"], "does not exist", False),
])
def test_a_command_refused_after_the_prewarm_leaves_no_worker(tmp_path, monkeypatch, refusal, message,
                                                             store_made):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,lbl\nhello,1\nbye,0\n")
    started: list[int] = []
    original = LocalPool.prewarm

    def prewarm(self):
        out = original(self)
        started.extend(self.pids())
        return out

    monkeypatch.setattr(LocalPool, "prewarm", prewarm)
    args = [a.replace("BAD_CSV", str(bad)) for a in refusal]
    res = CliRunner().invoke(app, ["run", *TINY, *args, "--store", str(tmp_path / "s")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert len(started) == 1  # a worker was started before the refusal...
    assert all(gone(pid) for pid in started)  # ...and had left when the command returned
    assert (tmp_path / "s").exists() == store_made
    if store_made:
        assert Store(tmp_path / "s").list() == []  # nothing queued


@pytest.mark.parametrize("stop", [ConfigError("refused"), KeyboardInterrupt()])
def test_command_pool_stops_its_importing_workers_at_once_on_any_error(tmp_path, stop):
    """A worker still importing torch when the command stops leaves on the spot (exit 0), not after."""
    from peft_tui.commands.queueing import command_pool

    root = tmp_path / "s"
    with pytest.raises(type(stop)), command_pool(str(root), [tiny_config()], workers=2) as launch:
        assert launch.prewarmed is not None
        procs = [s.proc for s in launch.prewarmed.slots]
        assert len(procs) == 2 and all(p is not None and p.poll() is None for p in procs)
        wait_for(lambda: importing(*(p.pid for p in procs)), 120, "the workers import torch", every=0.02)
        t0 = time.monotonic()
        raise stop
    took = time.monotonic() - t0
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    assert took < 5.0, f"the workers took {took:.1f} s to leave"  # the release waits 10 s at most
    assert launch.prewarmed.pids() == {} and not root.exists()
