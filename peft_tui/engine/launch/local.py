"""A pool of worker processes on this machine: one per device (CPU: one; a GPU box: one per GPU,
pinned with CUDA_VISIBLE_DEVICES; `workers=N` to change it). With `runs_per_gpu` ("auto" or N) a GPU gets
N worker slots (auto: AUTO_RUNS_PER_GPU, 8), and each of its workers claims a run only when the run's
estimated peak memory fits beside the runs already on that GPU (store/queue.py, the fit check): several
small runs train on one GPU at once, and a run that does not fit waits in the queue instead of running
out of memory. A GPU slot's worker is started only while queued runs could be claimed there now and no
idle worker of that GPU is there to take them. The CPU keeps one worker.

The pool starts a worker for a slot when the store holds queued runs that slot can serve (or at once, with
`prewarm()`, so that a command's workers pay their imports while it checks and loads its data); a worker
leaves when the queue has nothing more for it (after `idle_s`). A thread watches the workers: when one
dies by a signal, the run it had claimed becomes `failed` with that signal as the reason, and a
replacement starts while queued runs remain. With `detach=True` the workers run in their own session, so
they outlive the caller (an SSH logout); otherwise in a process group of their own, so a Ctrl-C in the
caller's terminal reaches the caller alone (which cancels its own runs through the store), and `stop()` or
`release()` ends them; they also watch the caller's pid, so a caller killed outright (SIGKILL) leaves no
worker training.

    with LocalPool(store.root) as pool:     # or pool = LocalPool(...).start(); ...; pool.stop()
        ids = [store.create_run(c) for c in configs]
        pool.wake()
        watch(store, ids, sink)
        pool.release()                      # workers leave once their current run (maybe another's) ends

Kept warm across commands (issue 19): a command whose runs all ended calls `linger(KEEP_WARM)` instead
of `release()`: its workers stay idle up to KEEP_WARM seconds (env PEFT_TUI_KEEP_WARM, default 60, 0: off)
serving any queued run of the store, then leave (worker.py, keep-warm). Each is recorded under the store
(workers/HOST-PID.json). The next pool on the store (`prewarm()` or `start()`, not detached) takes such a
worker over for its device instead of starting one that pays the imports again: same host, python and
package folder, same --runs-per-gpu, and not a pool given --trust-remote-code (a kept worker was told
`refuse`; one that does not fit is told to leave, so that it claims none of this pool's runs). The pool
watches a taken-over worker by its pid: when it dies, its run becomes `failed` with the reason and the
slot starts a worker as usual (no run is left queued); `release()` and `stop()` signal it as their own.

A run with config.nproc > 1 is still claimed by one worker, which hands it to torchrun (worker.py); its
ranks see the worker's GPU and the pool's next ones (ddp.gpus_for_run).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from peft_tui.engine.launch.ddp import POOL_GPUS_ENV
from peft_tui.engine.launch.process import worker_id
from peft_tui.engine.launch.worker import (
    LEAVE_SIGNAL,
    PACKAGE_PARENT,
    WARM_DIR,
    forget_warm,
    process_alive,
    read_warm,
    warm_path,
    write_warm,
)
from peft_tui.engine.memory import AUTO_RUNS_PER_GPU, parse_runs_per_gpu
from peft_tui.engine.store import Store, death_reason
from peft_tui.errors import ConfigError

TEND_S = 0.5  # how often the pool looks at its workers and the queue
IDLE_S = 30.0  # a worker with nothing to do waits this long before it leaves (its imports are paid)
RESTART_BACKOFF_S = 5.0  # after a worker failed, wait before starting that slot again
TAKEN_OVER_GRACE_S = 10.0  # a worker taken over that leaves a run it could claim queued this long is not waited on
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
KEEP_WARM_ENV = "PEFT_TUI_KEEP_WARM"
KEEP_WARM_S = 60.0  # a command's workers stay idle this long after it, for the next command on the store


def keep_warm_s(environ: Any = None) -> float:
    """PEFT_TUI_KEEP_WARM as seconds (unset or blank: KEEP_WARM_S; 0: workers leave with their command).
    Anything but a finite number >= 0 is a one-line ConfigError saying what to write."""
    raw = (os.environ if environ is None else environ).get(KEEP_WARM_ENV, "")
    if not raw.strip():
        return KEEP_WARM_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{KEEP_WARM_ENV}={raw!r} is not a number of seconds: write {KEEP_WARM_ENV}=60 "
                          f"(a command's workers stay idle 60 s for the next command on the store) or "
                          f"{KEEP_WARM_ENV}=0 (they leave with their command)")
    return value


def default_devices() -> list[str]:
    """cuda:0..cuda:N-1 on a GPU machine, else ["cpu"]. Without a GPU device node torch is not imported."""
    if not any(os.path.exists(p) for p in GPU_NODES):
        return ["cpu"]
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver: train on the CPU
        n = 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


@dataclass
class Warm:
    """A worker kept warm by an earlier command, taken over by this pool (it is not this process's child)."""

    pid: int
    create_time: float
    record: Path


@dataclass
class Slot:
    device: str
    proc: subprocess.Popen | None = None
    adopted: Warm | None = None  # a kept-warm worker serving this slot instead of `proc`
    unclaimed_since: float | None = None  # since when `adopted` is idle while a run it could claim is queued
    failures: int = 0
    not_before: float = 0.0  # no start before this time (backoff after a failure)

    @property
    def empty(self) -> bool:
        return self.proc is None and self.adopted is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted.pid if self.adopted is not None else None


class LocalPool:
    def __init__(self, store_root: str | Path, devices: list[str] | None = None, workers: int | None = None,
                 detach: bool = False, idle_s: float = IDLE_S, trust_remote_code: bool | None = None,
                 runs_per_gpu: int | str | None = None):
        self.root = Path(store_root)
        self.devices = devices or default_devices()
        # "auto" or N: the GPU fit check at each claim and N slots per GPU (None: one slot per device, as before)
        self.runs_per_gpu = None if runs_per_gpu is None else parse_runs_per_gpu(runs_per_gpu)
        if workers:
            self.slots = [Slot(self.devices[i % len(self.devices)]) for i in range(workers)]
        else:
            per_gpu = (1 if self.runs_per_gpu is None else AUTO_RUNS_PER_GPU if self.runs_per_gpu == "auto"
                       else int(self.runs_per_gpu))
            self.slots = [Slot(d) for k in range(per_gpu) for d in self.devices  # GPUs in turn
                          if k == 0 or d.startswith("cuda")]
        self.detach = detach
        self.idle_s = idle_s
        self.trust_remote_code = trust_remote_code  # the user's --trust-remote-code, told to each worker
        self.host = socket.gethostname()
        self.log_path = self.root / "logs" / "workers.log"
        self._db: Store | None = None  # opened on first need: a prewarmed pool must not create the store
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._adopt_done = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalPool:
        with self._lock:
            self._adopt_locked()
        self._thread = threading.Thread(target=self._watch, name="peft-tui-pool", daemon=True)
        self._thread.start()
        self.wake()
        return self

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(cancel=not self.detach)

    def wake(self) -> None:
        """Start workers now for queued runs (called after submitting, instead of waiting for the watcher)."""
        self._tend()

    def prewarm(self, runs: int | None = None) -> LocalPool:
        """Start a worker in every empty slot now (with `runs`: in at most that many, the devices in turn;
        a command passes its number of runs when packing GPUs), before any run is queued and even before
        the store exists, so that its imports (torch, transformers, peft: seconds) overlap the caller's own work
        before it queues (its checks, data load, estimate). Such a worker (worker.py --await-store) creates
        nothing: it waits up to `idle_s` for the caller to create the store, then up to `idle_s` for a
        run, and leaves cleanly (exit 0) if none came; `stop()` or `release()` before that ends it at once.
        `start()` then fills only the slots left empty. Returns the pool (not started)."""
        with self._lock:
            self._reap_locked()
            if self._stop.is_set():
                return self
            self._adopt_locked()
            now = time.monotonic()
            for s in self.slots:
                if not s.empty:  # a worker kept warm by an earlier command took it (its imports are paid)
                    runs = None if runs is None else runs - 1
                elif now >= s.not_before and (runs is None or runs > 0):
                    s.proc = self._spawn(s.device, prewarmed=True)
                    runs = None if runs is None else runs - 1
        return self

    # ------------------------------------------------------------------ keep-warm
    def linger(self, keep_warm_s: float, timeout: float = 10.0) -> None:
        """The command ended normally: stop watching and leave every worker of this pool (its own and
        those it took over) idle up to `keep_warm_s` seconds for the next command on the store, no longer
        tied to this process (their records under the store say so: worker.py). A detached pool, one
        given --trust-remote-code, or `keep_warm_s` 0: `release()`, as before."""
        if self.detach or self.trust_remote_code or keep_warm_s <= 0 or not self._store_exists():
            self.release(timeout)
            return
        self._end_watch(timeout)
        with self._lock:
            self._reap_locked()
            with self._records_locked():
                for s in self.slots:
                    if s.proc is not None:
                        pid, created = s.proc.pid, _create_time(s.proc.pid)
                        record = warm_path(self.root, self.host, pid)
                        if created is None:
                            continue
                        write_warm(record, {
                            "state": "warm", "pid": pid, "create_time": created, "host": self.host,
                            "device": s.device, "gpus": self._gpu_view(s.device), "python": sys.executable, "package": PACKAGE_PARENT,
                            "runs_per_gpu": _text(self.runs_per_gpu), "remote_code": self.trust_remote_code,
                            "keep_warm_s": keep_warm_s,
                            "since": time.time()})
                    elif s.adopted is not None:
                        old = read_warm(s.adopted.record)
                        if old is not None and old.get("owner_pid") == os.getpid():
                            write_warm(s.adopted.record, {**old, "state": "warm", "owner_pid": None,
                                                          "owner_create_time": None, "keep_warm_s": keep_warm_s,
                                                          "since": time.time()})
                            self._log(f"worker {worker_id(self.host, s.adopted.pid, s.device)} handed back, "
                                      f"kept warm for {keep_warm_s:g} s")
            for s in self.slots:  # this process no longer answers for them
                if s.proc is not None:
                    self._log(f"worker {worker_id(self.host, s.proc.pid, s.device)} kept warm for "
                              f"{keep_warm_s:g} s")
                s.proc = s.adopted = None

    def _adopt_locked(self) -> None:
        """Take over the idle workers kept warm on this store that fit this pool, one per empty slot of
        their device; tell those that do not fit to leave (they would claim this pool's runs). Once per pool."""
        if self._adopt_done or self.detach or not self._store_exists():
            return
        self._adopt_done = True
        folder = self.root / WARM_DIR
        if not folder.is_dir():
            return
        busy = self._store.busy_workers()
        with self._records_locked():
            for path in sorted(folder.glob("*.json")):
                r = read_warm(path)
                if r is None or r.get("state") != "warm" or r.get("host") != self.host:
                    continue
                pid, created = r.get("pid"), r.get("create_time")
                if (not isinstance(pid, int) or not isinstance(created, float) or not process_alive(pid, created)
                        or not self._serves_this_store(pid, str(r.get("device")))):
                    forget_warm(path)  # killed outright (its record stayed), or not a worker of this store at all
                    continue
                if worker_id(self.host, pid, str(r.get("device"))) in busy:
                    continue  # training another command's run: not the idle worker this pool needs
                slot = next((s for s in self.slots if s.empty and s.device == r.get("device")), None)
                fits = (slot is None or r.get("gpus") == self._gpu_view(slot.device)) and (
                        r.get("python") == sys.executable and r.get("package") == PACKAGE_PARENT
                        and r.get("runs_per_gpu") == _text(self.runs_per_gpu)
                        and r.get("remote_code") == self.trust_remote_code and not self.trust_remote_code)
                if slot is None or not fits:
                    if not fits:
                        forget_warm(path)
                        with contextlib.suppress(OSError):
                            os.kill(pid, LEAVE_SIGNAL)
                        self._log(f"worker {worker_id(self.host, pid, str(r.get('device')))} kept warm does not "
                                  "fit this command (python, package folder, GPUs, --runs-per-gpu or --trust-remote-code): "
                                  "told to leave")
                    continue
                me = _create_time(os.getpid())
                write_warm(path, {**r, "state": "adopted", "owner_pid": os.getpid(), "owner_create_time": me,
                                  "since": time.time()})
                slot.adopted = Warm(pid, created, path)
                self._log(f"worker {worker_id(self.host, pid, slot.device)} kept warm: taken over by pid {os.getpid()}")

    def _serves_this_store(self, pid: int, device: str) -> bool:
        """The process `pid` is a worker (worker.py) of this store for `device`: a record under the store is
        data anyone who can write there may change, so no other process is signalled or waited on."""
        import psutil

        try:
            proc = psutil.Process(pid)
            cmd, cwd = proc.cmdline(), proc.cwd()
        except psutil.Error:
            return False
        def value(flag: str) -> str | None:
            return cmd[cmd.index(flag) + 1] if flag in cmd[:-1] else None
        store = value("--store")
        return ("peft_tui.engine.launch.worker" in cmd and store is not None and value("--device") == device
                and (Path(cwd) / store).resolve() == self.root.resolve())

    def _gpu_view(self, device: str) -> str | None:
        """The GPUs a worker of `device` is shown (CUDA_VISIBLE_DEVICES, then the pool's for --gpus N)."""
        if not device.startswith("cuda"):
            return None
        return f"{_physical_gpu(device)}/" + ",".join(
            dict.fromkeys(_physical_gpu(d) for d in self.devices if d.startswith("cuda")))

    @contextlib.contextmanager
    def _records_locked(self) -> Iterator[None]:
        """The records of kept workers change under this lock (two commands never take over the same one)."""
        folder = self.root / WARM_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def _store(self) -> Store:
        if self._db is None:
            self._db = Store(self.root)
        return self._db

    def _store_exists(self) -> bool:
        return (self.root / "runs.db").exists()

    def stop(self, cancel: bool = True, timeout: float = 30.0) -> None:
        """Stop watching. With `cancel`, SIGTERM every worker (its run ends `cancelled`) and wait for them;
        without, leave them to finish the queue and leave when idle."""
        self._end_watch(timeout)
        if cancel:
            self._signal_all(signal.SIGTERM, timeout)

    def release(self, timeout: float = 10.0) -> None:
        """Stop watching and ask every worker to leave once its current run has ended (a run of another
        command on this store is not cut short); wait up to `timeout` for them."""
        self._end_watch(timeout)
        self._signal_all(LEAVE_SIGNAL, timeout)

    def _end_watch(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _signal_all(self, sig: int, timeout: float) -> None:
        with self._lock:
            live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
            for proc in live:
                proc.send_signal(sig)
            adopted = [s.adopted for s in self.slots if s.adopted is not None]
            for w in adopted:  # kept warm by an earlier command, taken over here: treated as our own
                if process_alive(w.pid, w.create_time):
                    with contextlib.suppress(OSError):
                        os.kill(w.pid, sig)
            deadline = time.monotonic() + timeout
            for proc in live:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            while any(process_alive(w.pid, w.create_time) for w in adopted) and time.monotonic() < deadline:
                time.sleep(0.05)  # not our child: no wait() to block on
            self._reap_locked()

    def pids(self) -> dict[int, str]:
        """Live workers (its own and those it took over): pid -> device."""
        with self._lock:
            return {s.pid: s.device for s in self.slots if s.pid is not None and (
                s.proc.poll() is None if s.proc is not None else
                s.adopted is not None and process_alive(s.adopted.pid, s.adopted.create_time))}

    # ------------------------------------------------------------------ watching
    def _watch(self) -> None:
        while not self._stop.wait(TEND_S):
            try:
                self._tend()
            except Exception as e:  # noqa: BLE001 - a busy store must not end the watching
                self._log(f"pool: {type(e).__name__}: {e}")

    def _tend(self) -> None:
        with self._lock:
            self._reap_locked()
            if self._stop.is_set() or not self._store_exists():  # no store yet: nothing queued
                return
            now = time.monotonic()
            self._check_taken_over_locked(now)
            if self.runs_per_gpu is None:
                for s in self.slots:
                    if s.empty and now >= s.not_before and self._store.claimable([s.device]):
                        s.proc = self._spawn(s.device)
                return
            busy = self._store.busy_workers()
            for device in dict.fromkeys(s.device for s in self.slots):
                mine = [s for s in self.slots if s.device == device]
                idle = sum(1 for s in mine if s.pid is not None
                           and worker_id(self.host, s.pid, device) not in busy)
                wanted = len(self._store.claimable([device], self.runs_per_gpu, self.host)) - idle
                for s in mine:  # only as many new workers as there are runs that may start there now
                    if wanted > 0 and s.empty and now >= s.not_before:
                        s.proc = self._spawn(device)
                        wanted -= 1

    def _check_taken_over_locked(self, now: float) -> None:
        """A worker taken over claims within a poll (0.5 s) what it can; one that leaves such a run queued
        for TAKEN_OVER_GRACE_S is no longer counted (the slot starts a worker): no run waits on it."""
        busy: set[str] | None = None
        for s in self.slots:
            w = s.adopted
            if w is None:
                continue
            busy = self._store.busy_workers() if busy is None else busy
            if (worker_id(self.host, w.pid, s.device) in busy
                    or not self._store.claimable([s.device], self.runs_per_gpu, self.host)):
                s.unclaimed_since = None
            elif s.unclaimed_since is None:
                s.unclaimed_since = now
            elif now - s.unclaimed_since >= TAKEN_OVER_GRACE_S:
                self._log(f"worker pid {w.pid} (kept warm) left a run it could claim queued for "
                          f"{TAKEN_OVER_GRACE_S:g} s: starting a worker in its place")
                s.adopted, s.unclaimed_since = None, None

    def _reap_locked(self) -> None:
        """Workers that ended: a signal or an error fails the run they held; a clean exit frees the slot.
        A worker taken over (not our child: its exit status is unknown) that is gone fails the run it held."""
        for s in self.slots:
            w = s.adopted
            if w is not None and not process_alive(w.pid, w.create_time):
                wid = worker_id(self.host, w.pid, s.device)
                reason = (f"its worker (pid {w.pid}, kept warm from an earlier command) ended while training it, "
                          f"without recording a result (killed? see {self.log_path})")
                failed = self._store.fail_worker_runs(wid, reason) if self._store_exists() else []
                self._log(f"worker {wid} (kept warm) ended; runs failed: {failed or 'none'}")
                forget_warm(w.record)
                s.adopted = None
                if failed:
                    s.failures += 1
                    s.not_before = time.monotonic() + RESTART_BACKOFF_S * min(s.failures, 6)
            if s.proc is None or s.proc.poll() is None:
                continue
            rc = s.proc.returncode
            if rc == 0:
                s.failures = 0
            elif self._store_exists():  # (no store: a prewarmed worker stopped before it was made held nothing)
                wid = worker_id(self.host, s.proc.pid, s.device)
                reason = death_reason(rc) if rc < 0 else f"its worker exited with code {rc} (see {self.log_path})"
                failed = self._store.fail_worker_runs(wid, reason)
                self._log(f"worker {wid} ended: {death_reason(rc)}; runs failed: {failed or 'none'}")
                s.failures += 1
                s.not_before = time.monotonic() + RESTART_BACKOFF_S * min(s.failures, 6)
            s.proc = None

    def _spawn(self, device: str, prewarmed: bool = False) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        if device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = _physical_gpu(device)
            # a run over several GPUs (--gpus N) widens its ranks' view to the pool's other GPUs (ddp.py)
            env[POOL_GPUS_ENV] = ",".join(dict.fromkeys(_physical_gpu(d) for d in self.devices if d.startswith("cuda")))
        if prewarmed and not self._store_exists():  # its output joins the log once there is one (worker.await_store)
            log: Any = contextlib.nullcontext(subprocess.DEVNULL)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
        with log as out:
            return subprocess.Popen(
                [sys.executable, "-m", "peft_tui.engine.launch.worker", "--store", str(self.root), "--device", device,
                 "--exit-when-idle", "--idle-s", str(self.idle_s),
                 *([] if self.detach else ["--parent-pid", str(os.getpid())]),
                 *(["--await-store"] if prewarmed else []),
                 *(["--runs-per-gpu", str(self.runs_per_gpu)] if self.runs_per_gpu is not None else []),
                 *([] if self.trust_remote_code is None else
                   ["--remote-code", "allow" if self.trust_remote_code else "refuse"])],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=self.detach,
                process_group=None if self.detach else 0, close_fds=True,
            )

    def _log(self, line: str) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        except OSError:
            pass


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _text(runs_per_gpu: int | str | None) -> str | None:
    return None if runs_per_gpu is None else str(runs_per_gpu)


def _physical_gpu(device: str) -> str:
    """The CUDA_VISIBLE_DEVICES entry for cuda:N as this process numbers its GPUs."""
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)
