"""A worker: one process serving one device, training the runs it claims from the store.

    python -m peft_tui.engine.launch.worker --store PATH [--device D] [--exit-when-idle] [--idle-s S] [--parent-pid P]
        [--runs-per-gpu auto|N]

It imports the training stack once, then loops: claim the oldest queued run it can serve, train it in a
child process forked for that run alone, and record how the child ended. A process per run makes the
run's peak memory its own (the child's peak RSS) and confines a hard crash to that run; forking after
the imports keeps the start-up each run pays to milliseconds. In the child, a thread writes the
heartbeat and polls the store for a cancel request about twice a second.

SIGTERM, SIGINT or SIGHUP cancels the current run cleanly (it ends `cancelled`) and stops the worker.
SIGUSR1 lets the current run finish, then stops the worker (what a CLI command's pool sends at its end:
a run the worker took from another command's queue is not cut short).
A child killed by a signal (the kernel's out-of-memory killer sends SIGKILL) leaves its run `failed`
with that signal as the reason, and the worker goes on with the next run.
With --parent-pid (a command's own, not detached, workers): when that process is gone, even killed by
SIGKILL, the worker acts as on SIGTERM: its run ends `cancelled` and it claims no other.
--await-store (a worker a command started before its checks, LocalPool.prewarm): import first, then wait
up to --idle-s for the command to create the store, which it does only once its runs' inputs are checked
(a refused command leaves no store behind); until then it writes nothing (its output joins the store's
workers.log once the store is there), and a stop or leave signal ends it at once with exit 0.
Keep-warm (LocalPool.linger): when the command that started it ends normally, its pool writes this
worker's record under the store (workers/HOST-PID.json, state `warm`, with how long to stay: KEEP_WARM
seconds). From then on the worker no longer follows that command's pid: it stays idle up to that many
seconds, training any queued run of the store, and leaves after that idle time, at once when the store's
database is gone or replaced, or when the record is removed. The next command on the store takes it over
(state `adopted`, with that command's pid: when that command dies without handing it back, the worker acts
as on SIGTERM) instead of starting an importing worker. A worker told `--remote-code allow` never lingers.
--remote-code refuse|allow: whether the user who started the worker (through a command's pool) gave
--trust-remote-code. With `refuse`, a claimed run whose stored config asks for the model's own code fails
at once with the reason: a row of runs.db is data anyone with write access to the store can change.
(Without the option, a worker started by hand, the stored config decides, as before.)
--runs-per-gpu auto|N (a pool packing several workers on one GPU, LocalPool): on a CUDA device, claim a run
only when its estimated peak memory fits beside the runs already training there (store/queue.py), at most
N at once; a run that does not fit yet stays queued. No effect on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from peft_tui.engine.events import JsonlSink, Sink, fan_out
from peft_tui.engine.launch.process import (
    POLL_S,
    STOP_SIGNALS,
    ProcessFigures,
    die_with,
    keep_alive,
    worker_id,
)
from peft_tui.engine.memory import parse_runs_per_gpu
from peft_tui.engine.store import Claim, Store, death_reason
from peft_tui.errors import ConfigError, OneLineError, first_line

LEAVE_SIGNAL = signal.SIGUSR1  # finish the current run, claim no other


def local_device(device: str) -> str:
    """The device as this process sees it: a worker pinned to one GPU with CUDA_VISIBLE_DEVICES sees
    that GPU as cuda:0, whatever its number on the machine."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return "cuda:0" if device.startswith("cuda") and len(visible) == 1 else device


WARM_DIR = "workers"  # under the store: one record per worker kept warm (see the module's doc)
PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])  # the folder holding peft_tui/ (a record must match it)


def warm_path(root: str | Path, host: str, pid: int) -> Path:
    """The record of the worker `pid` of `host` kept warm on the store at `root`."""
    return Path(root) / WARM_DIR / f"{host}-{pid}.json"


def read_warm(path: Path) -> dict[str, Any] | None:
    """A worker's keep-warm record, or None (none, or unreadable: written whole with os.replace)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_warm(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def forget_warm(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def file_id(path: Path) -> tuple[int, int] | None:
    """Which file `path` is now (device, inode), None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# psutil's create_time is the process's ticks since boot plus the boot time, which it reads again on every
# call (/proc/stat btime = the wall clock less the uptime: whole seconds that move when the clock is adjusted).
# Two reads of one process can differ by a second; a reused pid is born far later (the pid space wraps first).
CREATE_TIME_SLACK_S = 1.5


def process_alive(pid: int, create_time: float | None) -> bool:
    """The process `pid` runs, and is the one created at `create_time`, give or take CREATE_TIME_SLACK_S
    (a reused pid is not it)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (
            create_time is None or abs(proc.create_time() - create_time) < CREATE_TIME_SLACK_S)
    except psutil.Error:
        return False


def process_start_time() -> float:
    """When this process was created (unix time): start-up is measured from here."""
    import psutil

    return psutil.Process().create_time()


def preload() -> None:
    """The imports every run needs, paid once per worker instead of once per run."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import peft_tui.engine.methods
    import peft_tui.engine.trainer  # noqa: F401


class Worker:
    def __init__(self, store: Store, device: str, trust_remote_code: bool | None = None,
                 runs_per_gpu: int | str | None = None):
        self.store = store
        self.device = device
        self.trust_remote_code = trust_remote_code  # the user's flag (None: not told, the stored config decides)
        self.runs_per_gpu = runs_per_gpu  # "auto" or N: the GPU fit check at each claim (None: claims as before)
        self.host = socket.gethostname()
        self.id = worker_id(self.host, os.getpid(), device)
        self.stopping = threading.Event()  # a stop signal came: cancel the current run, claim no other
        self.leaving = False  # LEAVE_SIGNAL came: no claim after the current run
        self._child: multiprocessing.process.BaseProcess | None = None
        self._preloading = True  # until its imports are done: nothing claimed, nothing to clean up
        # kept warm (LocalPool.linger): its command ended, it stays idle up to keep_warm_s, counted from
        # its last run or from warm_since (when its record last changed: written, taken over, handed back)
        self.lingering = False
        self.keep_warm_s = 0.0
        self.warm_since = 0.0
        self.warm_record = warm_path(store.root, self.host, os.getpid())

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._preloading:  # a prewarmed worker its command no longer needs: leave now, not after the imports
            os._exit(0)
        self.stopping.set()
        child = self._child
        if child is not None and child.pid is not None and child.exitcode is None:
            os.kill(child.pid, signal.SIGTERM)  # the run ends cancelled

    def _on_leave(self, signum: int, frame: Any) -> None:
        if self._preloading:
            os._exit(0)
        self.leaving = True  # an idle worker sees it within POLL_S

    def serve(self, exit_when_idle: bool = False, idle_s: float = 0.0, parent_pid: int | None = None) -> int:
        """Train queued runs until stopped (or, with `exit_when_idle`, until idle for `idle_s`, or for its
        keep-warm time once kept warm; with `parent_pid`, until that process is gone, unless it kept this
        worker warm: see the module's doc)."""
        started = process_start_time()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(LEAVE_SIGNAL, self._on_leave)
        if parent_pid:
            threading.Thread(target=self._watch_owner, args=(parent_pid,), name="peft-tui-owner",
                             daemon=True).start()
        preload()
        self._preloading = False
        ready_since = started  # start-up a run pays is counted from when this worker was free for it
        idle_since = time.time()
        while not (self.stopping.is_set() or self.leaving):
            claim = self._claim()
            if claim is None:
                limit = self.keep_warm_s if self.lingering else idle_s
                if exit_when_idle and time.time() - max(idle_since, self.warm_since) >= limit:
                    break
                self.stopping.wait(POLL_S)
                continue
            self._train(claim, startup_from=max(ready_since, claim.queued_at))
            ready_since = idle_since = time.time()
        return 0

    def _record(self) -> dict[str, Any] | None:
        """Its keep-warm record (never for a worker told --remote-code allow: such a worker never lingers)."""
        return None if self.trust_remote_code else read_warm(self.warm_record)

    def _watch_owner(self, parent_pid: int) -> None:
        """Whoever answers for this worker is gone: cancel the run and stop, as SIGTERM does. That is the
        command that started it (its death makes this process an orphan, so the parent pid it sees
        changes) unless that command kept it warm (its record, written before the command ended), then
        the command that took it over, if any. Kept warm, it also leaves when the store's database is
        gone or replaced, or its record removed. A record that changes restarts its idle time."""
        database = Path(self.store.root) / "runs.db"
        db_file = file_id(database)
        seen: tuple[Any, ...] | None = None
        while not self.stopping.wait(POLL_S):
            record = self._record()
            if record is None:
                if self.lingering:
                    self._say("its keep-warm record is gone: leaving after its current run")
                    self.leaving = True
                    return
                if os.getppid() != parent_pid and self._record() is None:  # (the record is written first)
                    self._say(f"the command that started it (pid {parent_pid}) is gone: cancelling its run and "
                              "stopping")
                    self._on_signal(signal.SIGTERM, None)
                    return
                continue
            if file_id(database) != db_file:
                self._say(f"the store's database {database} is gone or replaced: cancelling its run and stopping")
                self._on_signal(signal.SIGTERM, None)
                return
            state = (record.get("state"), record.get("owner_pid"), record.get("keep_warm_s"))
            if state != seen:
                seen = state
                keep = record.get("keep_warm_s")  # (a record is data: a damaged value means 0, leave when idle)
                self.keep_warm_s = float(keep) if isinstance(keep, (int, float)) and 0 <= keep < math.inf else 0.0
                self.warm_since = time.time()
                self.lingering = True
            owner, owner_created = record.get("owner_pid"), record.get("owner_create_time")
            if (record.get("state") == "adopted" and isinstance(owner, int)
                    and not process_alive(owner, owner_created if isinstance(owner_created, float) else None)
                    and self._record() == record):
                self._say(f"the command that took it over (pid {owner}) is gone: cancelling its run and stopping")
                self._on_signal(signal.SIGTERM, None)
                return

    def _say(self, line: str) -> None:
        sys.stderr.write(f"worker {self.id}: {line}\n")
        sys.stderr.flush()

    def _claim(self) -> Claim | None:
        # a read first: idle workers (and those waiting for room on their GPU) take no write lock
        if not self.store.claimable([self.device], self.runs_per_gpu, self.host):
            return None
        return self.store.claim(self.id, os.getpid(), self.host, [self.device], self.runs_per_gpu)

    def _train(self, claim: Claim, startup_from: float) -> None:
        """Train one claimed run in a child process; record how it ended when it could not.
        A run across several processes (config.nproc > 1) is handed to torchrun (launch/ddp.py)."""
        if claim.config.trust_remote_code and self.trust_remote_code is False:
            self.store.fail_run(claim.run_id, "its stored config asks to run the model's own Python code "
                                "(trust_remote_code), and the command that started this worker was not given "
                                "--trust-remote-code: queue it again from a command given that flag")
            return
        if claim.config.nproc > 1:
            from peft_tui.engine.launch import ddp

            ddp.launch(self.store.root, claim.run_id, claim.config.nproc, local_device(self.device))
            return
        from peft_tui.engine.models import warm

        warm(claim.config.model)  # the architecture's modules: this run's child and every later one inherit them
        ctx = multiprocessing.get_context("fork")  # after `preload`: the child starts warm
        child = ctx.Process(target=train_one, args=(str(self.store.root), claim, local_device(self.device),
                                                    startup_from, os.getpid()), name=f"peft-tui-run-{claim.run_id}")
        child.start()
        self._child = child
        if self.stopping.is_set():  # stopped between the claim and the start: cancel at once
            os.kill(child.pid or 0, signal.SIGTERM)
        child.join()
        self._child = None
        if child.exitcode != 0:
            self.store.fail_run(claim.run_id, death_reason(child.exitcode or 0))


def train_one(root: str, claim: Claim, device: str, startup_from: float, worker_pid: int) -> None:
    """The child process: train one claimed run, recording every event in the store and events.jsonl.
    Its start-up (from when the worker was free for this run to now) is recorded with the first heartbeat."""
    from peft_tui.engine.trainer import execute

    cancel = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: cancel.set())
    die_with(worker_pid)
    store = Store(root)  # never the parent's connection: SQLite connections do not survive a fork
    run_id = claim.run_id
    startup_s = time.time() - startup_from
    try:  # what stops the run before it can record its own events: recorded here, with the reason
        check_run_folder(store, run_id)
        events = JsonlSink(store.events_path(run_id))
    except (ConfigError, OSError) as e:
        store.fail_run(run_id, f"its folder cannot be used ({first_line(e, 300)})")
        return
    if store.heartbeat(run_id, os.getpid(), startup_s=startup_s):
        cancel.set()
    done = threading.Event()
    beat = threading.Thread(target=keep_alive, args=(store, run_id, cancel, done), daemon=True)
    beat.start()
    sink: Sink = ProcessFigures(fan_out(store, events), startup_s, device == "cpu")
    config = dataclasses.replace(claim.config, device=device)
    try:
        execute(store, run_id, config, sink, cancel, resume=claim.resume, cache_dir=store.cache_dir)
    except Exception as e:  # noqa: BLE001 - even its failure could not be recorded: say so, exit 1
        sys.stderr.write(f"run {run_id}: {first_line(e)}\n")
        sys.exit(1)
    finally:
        done.set()
        sink.close()


def check_run_folder(store: Store, run_id: int) -> None:
    """A queued run's folder must still be the folder the store made: not a symbolic link (which would
    write the run's weights and events wherever it points, maybe into another run), and a folder."""
    folder = Path(store.root) / "runs" / str(store.get(run_id)["folder"])
    if folder.is_symlink():
        raise ConfigError(f"{folder} was replaced by a symbolic link (to {os.readlink(folder)}); the run never "
                          "writes through links: remove the link and retry the run")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not the run's folder: move it aside and retry the run")


def await_store(root: str, wait_s: float, parent_pid: int | None) -> bool:
    """--await-store: pay the imports, then wait up to `wait_s` for the store at `root` to be created by the
    command that started this worker (while that command lives), and send this process's output to the
    store's workers.log. A stop or leave signal until then ends the process at once (it holds nothing).
    False: the store never came."""
    def leave(*_: Any) -> None:
        os._exit(0)

    for sig in (*STOP_SIGNALS, LEAVE_SIGNAL):
        signal.signal(sig, leave)
    preload()
    deadline = time.monotonic() + wait_s
    while not (Path(root) / "runs.db").exists():
        if time.monotonic() >= deadline or (parent_pid and os.getppid() != parent_pid
                                            and read_warm(warm_path(root, socket.gethostname(), os.getpid())) is None):
            return False
        time.sleep(POLL_S)
    log = Path(root) / "logs" / "workers.log"  # LocalPool.log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peft_tui.engine.launch.worker",
                                     description="Train the runs queued in a store, one process per run.")
    parser.add_argument("--store", required=True, help="the run store folder")
    parser.add_argument("--device", default="cpu", help="the device this worker serves: cpu or cuda:N")
    parser.add_argument("--exit-when-idle", action="store_true", help="stop when no queued run is left")
    parser.add_argument("--idle-s", type=float, default=0.0, help="with --exit-when-idle: wait this long first")
    parser.add_argument("--remote-code", choices=("allow", "refuse"), default=None,
                        help="whether runs may run their model's own code (the starting command's --trust-remote-code)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop (cancelling the current run) when this process, the one that started it, is gone")
    parser.add_argument("--runs-per-gpu", default=None, metavar="auto|N",
                        help="on a GPU, claim a run only when it fits beside the runs there, at most N (auto: 8)")
    parser.add_argument("--await-store", action="store_true",
                        help="import first, then wait up to --idle-s for the store to be created (a prewarmed worker)")
    args = parser.parse_args(argv)
    try:
        return serve(args)
    finally:  # a worker kept warm leaves no record behind (one killed outright: the next pool removes it)
        forget_warm(warm_path(args.store, socket.gethostname(), os.getpid()))


def serve(args: argparse.Namespace) -> int:
    if args.await_store and not await_store(args.store, args.idle_s, args.parent_pid):
        return 0
    try:
        store = Store(args.store)
    except OneLineError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    trust = None if args.remote_code is None else args.remote_code == "allow"
    try:
        per_gpu = None if args.runs_per_gpu is None else parse_runs_per_gpu(args.runs_per_gpu)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return Worker(store, args.device, trust, per_gpu).serve(args.exit_when_idle, args.idle_s, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
