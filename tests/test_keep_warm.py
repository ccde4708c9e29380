"""Workers kept warm across commands (issue 19; engine/launch/local.py LocalPool.linger, worker.py): a
command whose runs ended leaves its worker idle up to PEFT_TUI_KEEP_WARM seconds, and the next command on
the store has its run claimed by that worker instead of starting one that imports torch again.

The commands run as real `python -m peft_tui.cli` processes (the first one exits before the second
starts, as in a shell). conftest.py sets PEFT_TUI_KEEP_WARM=0 for every other test; each test here sets
its own value in the commands' environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.engine.launch.local import KEEP_WARM_ENV, KEEP_WARM_S, keep_warm_s
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

REPO = str(Path(__file__).resolve().parents[1])
TINY = ["--method", "lora", "--model", "tiny", "--set", "data.size=120", "--epochs", "1", "--batch-size", "16",
        "--device", "cpu"]
LONG = ["--method", "lora", "--model", "tiny", "--set", "data.size=4000", "--epochs", "30", "--batch-size", "8",
        "--device", "cpu"]  # long enough to be caught training (the tiny model: about 20 steps a second)


def workers_of(root: Path) -> set[int]:
    """The live worker processes serving the store at `root` (not the run processes they fork)."""
    found: dict[int, int] = {}
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if ("peft_tui.engine.launch.worker" in cmd and str(root) in cmd
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            found[p.info["pid"]] = p.info["ppid"]
    return {pid for pid, ppid in found.items() if ppid not in found}


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "workers").glob("*.json"))]


def cli(root: Path, args: list[str], keep_warm: str, wait: bool = True):
    env = {**os.environ, "PEFT_TUI_INPROCESS_POOL": "0", KEEP_WARM_ENV: keep_warm,
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "peft_tui.cli", "run", *args, "--store", str(root)]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)


def run_row(root: Path, run_id: int) -> dict:
    return Store(root).get(run_id)


def worker_pid(row: dict) -> int:
    return int(row["worker"].split(":")[1])


@pytest.fixture()
def store_root(tmp_path):
    """The store the commands use; whatever worker still serves it at the end is stopped."""
    root = tmp_path / "s"
    yield root
    for pid in workers_of(root):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_for(lambda: not workers_of(root), 30, "the test's workers leave")


def warm_worker(root: Path, keep_warm: str) -> int:
    """Run one command to its end with keep-warm on; returns the pid of the worker it left warm."""
    res = cli(root, TINY, keep_warm)
    assert res.returncode == 0, res.stderr[-2000:]
    [row] = Store(root).list()
    assert row["status"] == "done", row["error"]
    pid = worker_pid(row)
    assert workers_of(root) == {pid}  # its command has exited; its worker has not
    [record] = records(root)
    assert record["state"] == "warm" and record["pid"] == pid and record["keep_warm_s"] == float(keep_warm)
    return pid


# ---------------------------------------------------------------------------- the environment variable
def test_keep_warm_values():
    assert keep_warm_s({}) == KEEP_WARM_S == 60.0
    assert keep_warm_s({KEEP_WARM_ENV: "  "}) == 60.0  # blank: unset
    assert keep_warm_s({KEEP_WARM_ENV: "0"}) == 0.0
    assert keep_warm_s({KEEP_WARM_ENV: " 2.5 "}) == 2.5
    assert keep_warm_s({KEEP_WARM_ENV: "1e3"}) == 1000.0


def not_seconds(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return bool(text.strip())
    return not (value >= 0 and value != float("inf"))


BAD = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False).map(repr),  # negative
    st.sampled_from(["nan", "inf", "-inf", "+Infinity", "NaN", "1e999", "-0.5", "60s", "1,5", "sixty", "off"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
            max_size=30).filter(not_seconds),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=BAD)
def test_a_bad_keep_warm_value_is_one_line_and_exit_2(tmp_path, value):
    with pytest.raises(ConfigError):
        keep_warm_s({KEEP_WARM_ENV: value})
    root = tmp_path / "never"
    res = CliRunner().invoke(app, ["run", *TINY, "--store", str(root)], env={KEEP_WARM_ENV: value})
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {KEEP_WARM_ENV}=") and f"write {KEEP_WARM_ENV}=60" in lines[0]
    assert f"{KEEP_WARM_ENV}=0" in lines[0]
    assert not root.exists()  # refused before any worker or store


# ---------------------------------------------------------------------------- real worker processes
@pytest.mark.slow
def test_the_next_command_is_served_by_the_worker_the_first_one_kept_warm(store_root):
    root = store_root
    pid = warm_worker(root, "60")
    res = cli(root, TINY, "60")
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = sorted(Store(root).list(), key=lambda r: r["id"])
    assert second["status"] == "done", second["error"]
    assert second["worker"] == first["worker"] == f"{socket.gethostname()}:{pid}:cpu"  # the same worker claimed it
    assert second["claimed_at"] - second["queued_at"] < 2.0  # at once: no process start, no imports
    assert workers_of(root) == {pid}  # the second command started no worker of its own
    log = (root / "logs" / "workers.log").read_text()
    assert f"worker {second['worker']} kept warm: taken over by pid" in log
    [record] = records(root)  # handed back, warm again, for the next command
    assert record["state"] == "warm" and record["pid"] == pid and record["owner_pid"] is None
    # its store deleted, a kept worker leaves promptly (it does not wait out its 60 s)
    t0 = time.monotonic()
    shutil.rmtree(root)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 15,
             "the kept worker leaves once its store is deleted")
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
def test_a_kept_worker_leaves_after_keep_warm_idle_seconds(store_root):
    root = store_root
    pid = warm_worker(root, "3")
    ended = time.monotonic()  # the command has just exited
    wait_for(lambda: not workers_of(root), 30, "the kept worker leaves after 3 s idle")
    lingered = time.monotonic() - ended
    assert 2.5 <= lingered < 30, lingered  # it stayed about its 3 s (from when it saw its record), then left
    # (its command line reads empty while the process tears down, before it is gone: wait for the end)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 15,
             "the kept worker's process to end")
    assert records(root) == []  # it removed its record


@pytest.mark.slow
def test_keep_warm_0_leaves_no_process_after_the_command(store_root):
    root = store_root
    res = cli(root, TINY, "0")
    assert res.returncode == 0, res.stderr[-2000:]
    [row] = Store(root).list()
    assert row["status"] == "done", row["error"]
    assert workers_of(root) == set()  # gone when the command returned (it waits for them)
    assert records(root) == []


@pytest.mark.slow
def test_a_kept_worker_killed_mid_run_fails_that_run_and_the_next_command_gets_its_run_done(store_root):
    root = store_root
    pid = warm_worker(root, "60")
    proc = cli(root, LONG, "60", wait=False)
    try:
        row = training(root, 2)
        assert worker_pid(row) == pid  # the kept worker claimed it
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=120)  # the command sees its run end and exits
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    row = run_row(root, 2)
    assert row["status"] == "failed"
    # the command's pool saw the worker it took over die (no other process opened the store meanwhile)
    assert row["error"].startswith(f"its worker (pid {pid}, kept warm from an earlier command) ended while "
                                   "training it, without recording a result"), row["error"]
    assert not any(r["status"] in ("queued", "running") for r in Store(root).list())  # the store is consistent
    res = cli(root, TINY, "0")  # the next command: its record is stale, it starts a worker of its own
    assert res.returncode == 0, res.stderr[-2000:]
    row = run_row(root, 3)
    assert row["status"] == "done", row["error"]
    assert worker_pid(row) != pid
    assert records(root) == []  # the dead worker's record was removed


@pytest.mark.slow
def test_ctrl_c_of_the_next_command_cancels_its_run_on_the_kept_worker_which_then_leaves(store_root):
    root = store_root
    pid = warm_worker(root, "60")
    proc = cli(root, LONG, "60", wait=False)
    try:
        row = training(root, 2)
        assert worker_pid(row) == pid
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the command's terminal (the worker is not in its group)
        assert proc.wait(timeout=120) == 130, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    row = run_row(root, 2)
    assert row["status"] == "cancelled", (row["status"], row["error"])
    wait_for(lambda: not workers_of(root), 30, "the kept worker leaves after an interrupted command")
    assert records(root) == []


@pytest.mark.slow
def test_a_kept_worker_whose_new_command_is_killed_outright_cancels_its_run_and_leaves(store_root):
    """As with the command's own workers: the command that took the worker over dies by SIGKILL (it hands
    nothing back), so the worker cancels that command's run and stops instead of training on."""
    root = store_root
    pid = warm_worker(root, "60")
    proc = cli(root, LONG, "60", wait=False)
    try:
        row = training(root, 2)
        assert worker_pid(row) == pid
        assert records(root)[0]["owner_pid"] == proc.pid  # taken over by that command
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: run_row(root, 2)["status"] == "cancelled", 60, "run 2 ends cancelled")
    wait_for(lambda: not workers_of(root), 30, "the kept worker leaves")
    assert records(root) == []
    log = (root / "logs" / "workers.log").read_text()
    assert f"the command that took it over (pid {proc.pid}) is gone: cancelling its run and stopping" in log


# ---------------------------------------------------------------------------- the pool's side, no worker started
def test_linger_releases_instead_when_keep_warm_is_off_detached_or_trusting(tmp_path, monkeypatch):
    from peft_tui.engine.launch.local import LocalPool

    Store(tmp_path / "s")
    released = []
    monkeypatch.setattr(LocalPool, "release", lambda self, timeout=10.0: released.append(self))
    pools = [LocalPool(tmp_path / "s", devices=["cpu"], trust_remote_code=False),  # keep-warm 0
             LocalPool(tmp_path / "s", devices=["cpu"], detach=True),
             LocalPool(tmp_path / "s", devices=["cpu"], trust_remote_code=True)]
    pools[0].linger(0.0)
    pools[1].linger(60.0)
    pools[2].linger(60.0)
    assert released == pools
    assert not (tmp_path / "s" / "workers").exists() or records(tmp_path / "s") == []  # nothing kept


def training(root: Path, run_id: int) -> dict:
    """The row of `run_id` once it has taken a step."""
    return wait_for(lambda: next((r for r in Store(root).list() if r["id"] == run_id and (r["step"] or 0) >= 1),
                                 None), 300, f"run {run_id} trains")


UNTIL_KILLED = "import sys; sys.stdin.read()"  # a process that lives until the test kills it (stdin stays open)


def stand_in_worker(root: Path) -> subprocess.Popen:
    """A process that looks like a CPU worker of the store at `root` (its command line) and does nothing."""
    return subprocess.Popen([sys.executable, "-c", UNTIL_KILLED, "peft_tui.engine.launch.worker",
                             "--store", str(root), "--device", "cpu"], stdin=subprocess.PIPE)


def record_warm(root: Path, pid: int, created: float) -> None:
    from peft_tui.engine.launch.worker import PACKAGE_PARENT, warm_path, write_warm

    host = socket.gethostname()
    write_warm(warm_path(root, host, pid), {
        "state": "warm", "pid": pid, "create_time": created, "host": host, "device": "cpu", "gpus": None,
        "python": sys.executable, "package": PACKAGE_PARENT, "runs_per_gpu": None, "remote_code": False,
        "keep_warm_s": 60.0, "since": time.time()})


def test_a_pool_takes_over_a_kept_worker_and_fails_its_run_when_it_dies(tmp_path):
    """A stand-in process (nothing imports torch) recorded as kept warm: the next pool counts it as its CPU
    worker (starts none); it removes the record of a dead worker and of a live process that is no worker
    of this store (never signalled); when the one it took over dies holding a run, that run is failed."""
    from conftest import tiny_config

    from peft_tui.engine.launch.local import LocalPool
    from peft_tui.engine.launch.process import worker_id

    root = tmp_path / "s"
    store = Store(root)
    host = socket.gethostname()
    stand_in = stand_in_worker(root)
    other = subprocess.Popen([sys.executable, "-c", UNTIL_KILLED], stdin=subprocess.PIPE)  # a live process, but not a worker: a forged record
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        for proc in (stand_in, other):
            record_warm(root, proc.pid, psutil.Process(proc.pid).create_time())
        record_warm(root, dead.pid, 1.0)
        pool = LocalPool(root, devices=["cpu"], trust_remote_code=False).prewarm()
        assert pool.pids() == {stand_in.pid: "cpu"}  # taken over: no worker process started
        assert all(s.proc is None for s in pool.slots)
        [record] = records(root)  # the dead one's record and the forged one are removed
        assert record["pid"] == stand_in.pid and record["state"] == "adopted" and record["owner_pid"] == os.getpid()
        assert other.poll() is None  # the forged record's process was not signalled
        rid = store.create_run(tiny_config(method="lora"))
        wid = worker_id(host, stand_in.pid, "cpu")
        assert store.claim(wid, stand_in.pid, host, ["cpu"]) is not None  # as the kept worker would
        stand_in.kill()
        stand_in.wait()
        pool.wake()  # the watcher's look: the worker it took over is gone
        row = store.get(rid)
        assert row["status"] == "failed"
        assert row["error"].startswith(f"its worker (pid {stand_in.pid}, kept warm from an earlier command)")
        assert pool.pids() == {} and records(root) == []  # nothing queued: no worker started in its place
        assert pool.slots[0].not_before > time.monotonic()  # a slot whose worker died waits before restarting
    finally:
        for proc in (stand_in, other):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_taken_over_worker_that_does_not_claim_is_not_waited_on(tmp_path, monkeypatch):
    """No run waits on a kept worker that does not claim it: after the grace time the slot starts one."""
    from conftest import tiny_config

    from peft_tui.engine.launch import local

    root = tmp_path / "s"
    store = Store(root)
    stand_in = stand_in_worker(root)
    started: list[subprocess.Popen] = []
    monkeypatch.setattr(local, "TAKEN_OVER_GRACE_S", 0.3)
    monkeypatch.setattr(local.LocalPool, "_spawn", lambda self, device, prewarmed=False: started.append(
        subprocess.Popen([sys.executable, "-c", UNTIL_KILLED], stdin=subprocess.PIPE)) or started[-1])  # no real worker: only that one is started
    try:
        record_warm(root, stand_in.pid, psutil.Process(stand_in.pid).create_time())
        pool = local.LocalPool(root, devices=["cpu"], trust_remote_code=False).prewarm()
        assert pool.pids() == {stand_in.pid: "cpu"} and started == []
        store.create_run(tiny_config(method="lora"))  # queued; the stand-in never claims it

        def replaced():
            pool.wake()
            return started
        wait_for(replaced, 10, "the pool starts a worker in place of the one that does not claim")
        assert pool.pids() == {started[0].pid: "cpu"}
        assert stand_in.poll() is None  # left alone (it was not ours to stop)
    finally:
        for proc in (stand_in, *started):
            proc.kill()
            proc.wait()


def test_a_process_is_known_by_its_birth_across_a_moved_boot_time(monkeypatch):
    """psutil reads the boot time again on every create_time call, and /proc/stat's btime moves by whole
    seconds when the clock is adjusted: a record written a moment earlier still names the same process
    (a 0.01 s tolerance failed a CI run here), while a pid born later is not it."""
    import psutil

    from peft_tui.engine.launch.worker import CREATE_TIME_SLACK_S, process_alive

    proc = subprocess.Popen([sys.executable, "-c", UNTIL_KILLED], stdin=subprocess.PIPE)
    try:
        born = psutil.Process(proc.pid).create_time()
        real = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self, *a, **k: real(self, *a, **k) + 1.0)
        assert process_alive(proc.pid, born)  # the boot time moved by a second between the two reads
        monkeypatch.setattr(psutil.Process, "create_time", real)
        assert process_alive(proc.pid, born)
        assert not process_alive(proc.pid, born - CREATE_TIME_SLACK_S - 5)  # another process, once on this pid
        assert not process_alive(proc.pid, born + 60)
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, born)  # gone


@pytest.mark.slow
def test_a_study_leaves_its_worker_warm_for_the_next_command(store_root):
    """`tune` keeps its local worker warm as `run` does once the study has ended: the next command's run is
    claimed by it. (Ctrl-C, errors and --detach release the workers, as for `run`.)"""
    root = store_root
    env = {**os.environ, "PEFT_TUI_INPROCESS_POOL": "0", KEEP_WARM_ENV: "60",
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run([sys.executable, "-m", "peft_tui.cli", "tune", "--store", str(root), "--model", "tiny",
                          "--methods", "lora", "--trials", "1", "--seeds", "1", "--pruner", "none",
                          "--set", "data.size=120", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--json"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["state"] == "done"
    [record] = records(root)
    assert record["state"] == "warm" and record["keep_warm_s"] == 60.0 and workers_of(root) == {record["pid"]}
    served = cli(root, TINY, "60")
    assert served.returncode == 0, served.stderr[-2000:]
    latest = max(Store(root).list(), key=lambda r: r["id"])
    assert latest["status"] == "done" and worker_pid(latest) == record["pid"]  # no new worker paid the imports
