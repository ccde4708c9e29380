"""Runs on a Ray cluster: the store stays on this machine, the training happens on the cluster.

    run_queue(store, address)           # serve the store's queue through Ray (until stopped, or idle)
    submit(store, run_ids, address)     # train these queued runs through Ray; returns when they have ended
    python -m peft_tui.engine.launch.ray --store PATH --address auto [--exit-when-idle] [--idle-s S]

`address`: "auto" (the cluster this machine belongs to, `ray start`), a cluster address
("HOST:6379", "ray://HOST:10001"), or None: the Ray already initialised in this process, else a new
local instance. Ray is an optional extra: without it, `require_ray()` raises a one-line ConfigError
that says `pip install 'peft-tui[ray]'`.

A driver (the process calling these) claims queued runs from the store as a worker does, and sends
each to the cluster: a run of one process as a Ray task asking for one GPU (one CPU on a cluster without
GPUs), in a fresh worker process so that its peak memory is its own; a run with nproc > 1 through Ray
Train's TorchTrainer (ScalingConfig(num_workers=nproc, use_gpu=...)), whose ranks run
`trainer.execute` with a `Dist` as under torchrun (ddp.py). Runs pinned to one GPU of this machine
("cuda:N") are not sent.

Events come back through a relay actor: the task's sink sends each event to it, and the driver drains
it into the run's sinks here (store + events.jsonl), so every client follows a Ray run like a local
one. Weights come back as bytes: when a run ends, the task sends every file of its run folder (a
temporary folder on its node) to the relay before the terminal event, and the driver writes them into
the run's folder, so a run is `done` only once its weights are in place, and no shared filesystem is
needed. A resumed run's checkpoint travels the other way, as the task's argument.

Cancel: the driver sends the heartbeat of its runs; when the store says a run is to be cancelled, the
driver tells the relay, and a thread in the task that polls the relay sets the run's cancel Event (the
run stops at the next step). A task that dies (its node lost, killed for memory) fails its run with
Ray's reason. A driver that is stopped cancels its runs and waits for their ends; one that dies takes its
tasks with it (Ray ends the tasks of a driver that has gone), and the store reaps the runs it held.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.events import (
    TERMINAL,
    Event,
    JsonlSink,
    RunFailed,
    RunFinished,
    Sink,
    event_from_dict,
    event_to_dict,
    fan_out,
)
from peft_tui.engine.launch.worker import with_extra, with_process_peak
from peft_tui.engine.store import Claim, Store
from peft_tui.errors import ConfigError, OneLineError, StoreError, first_line

INSTALL_HINT = "pip install 'peft-tui[ray]'"
POLL_S = 0.3  # driver: relay draining, heartbeats, claims; task: cancel polling
STOP_WAIT_S = 120.0  # a stopped driver waits this long for its cancelled runs to end
NODE_CACHE = Path(tempfile.gettempdir()) / "peft-tui-cache"  # tokenisation cache on each node
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # peft_tui/, shipped to a cluster the driver joins


def require_ray():
    """The `ray` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------------------------------------
# on the cluster
# ------------------------------------------------------------------------------------------------
class Relay:
    """An actor between the tasks and the driver: events and files up, cancel requests down. Its calls
    run one at a time, in the order each caller made them."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str, Any]] = []
        self._cancelled: set[int] = set()

    def put(self, run_id: int, kind: str, payload: Any) -> None:
        """kind "started": the task has begun (payload None); "event": an event as a dict; "files":
        {relative path: bytes} of the run folder."""
        self._items.append((run_id, kind, payload))

    def take(self) -> list[tuple[int, str, Any]]:
        items, self._items = self._items, []
        return items

    def cancel(self, run_id: int) -> None:
        self._cancelled.add(run_id)

    def is_cancelled(self, run_id: int) -> bool:
        return run_id in self._cancelled


class RelaySink:
    """A task's sink: each event goes to the relay; before the terminal event, the run folder's files,
    and both are waited for, so that they have arrived before the task ends. With `own_process` (a
    1-process run on CPU, in a Ray worker process of its own), the result's peak memory is that
    process's peak RSS."""

    def __init__(self, relay, run_id: int, folder: Path, own_process: bool = False):
        self.relay, self.run_id, self.folder, self.own_process = relay, run_id, folder, own_process

    def __call__(self, event: Event) -> None:
        put = self.relay.put.remote
        if isinstance(event, RunFinished) and self.own_process:
            event = RunFinished(event.run_id, with_process_peak(event.result))
        if isinstance(event, TERMINAL):
            import ray

            ray.get(put(self.run_id, "files", read_folder(self.folder)))
            ray.get(put(self.run_id, "event", event_to_dict(event)))
        else:
            put(self.run_id, "event", event_to_dict(event))

    def close(self) -> None:
        pass


class RunFolder:
    """What `trainer.execute` asks of a store, on a node: the run's folder (temporary, node-local)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def run_dir(self, run_id: int) -> Path:
        return self.folder


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` (from `read_folder`) under `folder`; a path that would leave it is refused."""
    root = folder.resolve()
    for name, data in files.items():
        path = (root / name).resolve()
        if root not in path.parents:
            raise ConfigError(f"a file sent back by a Ray task would leave the run folder ({name!r}): not written")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run_on_node(run_id: int, config_dict: dict[str, Any], resume: bool, files: dict[str, bytes], relay,
                dist=None, device: str | None = None) -> str | None:
    """Train one run (or, with `dist`, one rank of it) on this node: the run folder is a temporary
    folder seeded with `files`; the run's events go to the relay (rank 0 only); the relay's cancel
    request sets the cancel Event. Returns the error when the run failed on this rank."""
    from peft_tui.engine.launch.ddp import train_rank

    config = RunConfig.from_dict(config_dict)
    if device is not None:
        config = replace(config, device=device)
    if dist is None or dist.is_main:
        relay.put.remote(run_id, "started", None)
    folder = Path(tempfile.mkdtemp(prefix=f"peft-tui-run-{run_id}-"))
    write_folder(folder, files)
    cancel, done = threading.Event(), threading.Event()
    threading.Thread(target=_poll_cancel, args=(relay, run_id, cancel, done), daemon=True).start()
    sink = RelaySink(relay, run_id, folder, own_process=config.device == "cpu" and dist is None)
    try:
        if dist is None:
            from peft_tui.engine.trainer import Dist

            dist = Dist()
        return train_rank(RunFolder(folder), run_id, config, resume, dist, sink, cancel, NODE_CACHE)
    finally:
        done.set()
        shutil.rmtree(folder, ignore_errors=True)


def _poll_cancel(relay, run_id: int, cancel: threading.Event, done: threading.Event) -> None:
    import ray

    while not done.wait(POLL_S):
        try:
            if ray.get(relay.is_cancelled.remote(run_id)):
                cancel.set()
                return
        except Exception:  # noqa: BLE001 - the relay is gone: the driver is gone, Ray ends this task
            return


def train_task(run_id: int, config_dict: dict[str, Any], resume: bool, files: dict[str, bytes], relay) -> None:
    """A Ray task: one run in one process. Its events say how the run ended (a failure goes to the task's
    log too)."""
    failure = run_on_node(run_id, config_dict, resume, files, relay)
    if failure is not None:
        sys.stderr.write(f"run {run_id}: {failure}\n")


def fit_task(run_id: int, config_dict: dict[str, Any], resume: bool, files: dict[str, bytes], relay,
             nproc: int, use_gpu: bool) -> None:
    """A Ray task (no resources of its own) that runs one run over `nproc` Ray Train workers."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix=f"peft-tui-train-{run_id}-")
    try:
        TorchTrainer(
            train_loop,
            train_loop_config={"run_id": run_id, "config": config_dict, "resume": resume, "files": files,
                               "relay": relay},
            scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu),
            run_config=TrainRunConfig(name=f"peft-tui-run-{run_id}", storage_path=storage,
                                      failure_config=FailureConfig(max_failures=0)),
        ).fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def train_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: one rank of the run (Ray Train has set up torch.distributed). A rank on
    which the run failed raises, so that Ray Train stops the others."""
    import ray.train
    import ray.train.torch

    from peft_tui.engine.trainer import Dist

    ctx = ray.train.get_context()
    dist = Dist(ctx.get_world_rank(), ctx.get_world_size())
    failure = run_on_node(cfg["run_id"], cfg["config"], cfg["resume"], cfg["files"], cfg["relay"], dist,
                          str(ray.train.torch.get_device()))
    if failure is not None:
        raise RuntimeError(f"rank {dist.rank}: {failure}")


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
@dataclass
class Flight:
    """A run sent to the cluster."""

    run_id: int
    ref: Any  # the task's ObjectRef
    sink: Sink
    slots: int
    sent_at: float  # time.monotonic() when it was sent
    startup_s: float | None = None  # from sending to the task's start
    ended: bool = False  # its terminal event has been recorded
    cancel_sent: bool = False


class Driver:
    """Claims queued runs from the store, sends them to Ray, and records what comes back. Call `poll()`
    repeatedly; `stop()` cancels the runs in flight."""

    def __init__(self, store: Store, address: str | None):
        self.ray = ray = require_ray()
        if not ray.is_initialized():
            runtime_env = {"py_modules": [str(PACKAGE_DIR)]} if address else None
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
                         include_dashboard=False, logging_level=logging.WARNING)
            except Exception as e:  # noqa: BLE001 - no cluster there, refused, wrong version
                raise ConfigError(f"cannot join the Ray cluster at {address or 'a new local instance'} "
                                  f"({first_line(e)}): check --ray (auto, or HOST:PORT)") from None
        self.store = store
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:ray"
        self.relay = ray.remote(num_cpus=0)(Relay).remote()
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.capacity = self.gpus or max(1, int(resources.get("CPU", 1)))
        self.devices = ["cuda", "cpu"] if self.gpus else ["cpu"]
        self.flights: dict[int, Flight] = {}
        self._train = ray.remote(max_calls=1)(train_task)  # a fresh process per run: its memory is its own
        self._fit = ray.remote(num_cpus=0)(fit_task)

    @property
    def busy(self) -> int:
        return sum(f.slots for f in self.flights.values())

    def poll(self, claim: bool = True) -> list[int]:
        """One round: record what came back, send heartbeats and cancel requests, end the runs whose
        task has ended, and (with `claim`) send queued runs while the cluster has room. Returns the ids
        of the runs claimed."""
        ray = self.ray
        refs = [f.ref for f in self.flights.values()]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        self._drain()
        for f in list(self.flights.values()):
            if f.ref in ready:
                self._land(f)
            elif not f.ended and self.store.heartbeat(f.run_id, os.getpid()) and not f.cancel_sent:
                self.relay.cancel.remote(f.run_id)
                f.cancel_sent = True
        claimed = []
        while claim and self.busy < self.capacity:
            c = self.store.claim(self.worker_id, os.getpid(), self.host, self.devices)
            if c is None:
                break
            self._send(c)
            claimed.append(c.run_id)
        return claimed

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Cancel every run in flight and wait (up to `wait_s`) for them to end; a run still going then
        is failed."""
        for f in self.flights.values():
            self.relay.cancel.remote(f.run_id)
        deadline = time.monotonic() + wait_s
        while self.flights and time.monotonic() < deadline:
            self.poll(claim=False)
            time.sleep(POLL_S)
        for f in list(self.flights.values()):
            self.ray.cancel(f.ref, force=True)
            self._end(f, "the Ray driver stopped before the run ended")

    def _send(self, claim: Claim) -> None:
        from peft_tui.engine import checkpoint

        config = replace(claim.config, device=claim.device)  # "cpu" or "cuda" (the GPU Ray gives the task)
        run_dir = self.store.run_dir(claim.run_id)
        files: dict[str, bytes] = {}
        if claim.resume:
            found = checkpoint.find(run_dir)
            if found is not None:
                files = {f"{found.name}/{k}": v for k, v in read_folder(found).items()}
        sink = fan_out(self.store, JsonlSink(self.store.events_path(claim.run_id)))
        use_gpu = claim.device.startswith("cuda")
        args = (claim.run_id, config.to_dict(), claim.resume, files, self.relay)
        if config.nproc > 1:
            ref = self._fit.remote(*args, config.nproc, use_gpu)
        else:
            ref = self._train.options(num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1).remote(*args)
        self.flights[claim.run_id] = Flight(claim.run_id, ref, sink, config.nproc, time.monotonic())

    def _drain(self) -> None:
        """Record what the tasks sent: events into the run's sinks, files into its folder."""
        for run_id, kind, payload in self.ray.get(self.relay.take.remote()):
            f = self.flights.get(run_id)
            if f is None or f.ended:
                continue
            if kind == "started":  # the start-up this run paid: Ray's scheduling, a worker process, imports
                f.startup_s = time.monotonic() - f.sent_at
                self.store.heartbeat(run_id, os.getpid(), startup_s=f.startup_s)
                continue
            if kind == "files":
                write_folder(self.store.run_dir(run_id), payload)
                continue
            event = event_from_dict(payload)
            if event is None:
                continue
            if isinstance(event, RunFinished) and f.startup_s is not None:
                event = RunFinished(run_id, with_extra(event.result, worker_startup_s=round(f.startup_s, 3)))
            f.sink(event)
            f.ended = isinstance(event, TERMINAL)

    def _land(self, f: Flight) -> None:
        """The run's task has ended: one last drain, then a run with no end recorded fails with the task's
        error."""
        try:
            self.ray.get(f.ref)
            error = "its Ray task ended without recording a result"
        except Exception as e:  # noqa: BLE001 - a task error, a dead worker or node, a cancelled task
            error = f"its Ray task failed: {first_line(e)}"
        self._drain()
        self._end(f, error)

    def _end(self, f: Flight, error: str) -> None:
        if not f.ended:
            try:
                f.sink(RunFailed(f.run_id, error))
            except StoreError:  # the store could not record it either; the run's row is reaped later
                pass
        f.sink.close()
        del self.flights[f.run_id]


def run_queue(store: Store, address: str | None = "auto", *, run_ids: list[int] | None = None,
              exit_when_idle: bool = False, idle_s: float = 0.0, stop: threading.Event | None = None) -> int:
    """Serve the store's queue through Ray until `stop` is set (then cancel the runs in flight). With
    `exit_when_idle`: until the queue has nothing for the cluster for `idle_s` seconds. With `run_ids`:
    until every one of those runs has ended (queued runs ahead of them, oldest first, are claimed and
    trained too, as any worker would). Returns 0."""
    stop = stop or threading.Event()
    driver = Driver(store, address)
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            if run_ids is None:
                driver.poll()
                if driver.flights or store.claimable(driver.devices):
                    idle_since = time.monotonic()
                elif exit_when_idle and time.monotonic() - idle_since >= idle_s:
                    break
            else:
                waiting = [i for i in run_ids if store.get(i)["status"] == "queued"]
                driver.poll(claim=bool(waiting))
                if not waiting and not driver.flights:
                    break
                if waiting and not driver.flights and not set(waiting) & set(store.claimable(driver.devices)):
                    raise ConfigError(f"run {waiting[0]} asks for a device the Ray cluster does not offer "
                                      f"(it has {driver.gpus} GPUs): queue it with --device auto")
            stop.wait(POLL_S)
    finally:
        driver.stop()
    return 0


class RayPool:
    """A Ray cluster in place of the local worker pool (launch/local.py), with the same start / wake /
    release / stop: a driver thread sends the store's queued runs to the cluster as tasks, and their
    events come back into this store. `run_ids` (filled in before `start`, as a command queues them):
    serve those runs, then end; None (the dashboard): serve the whole queue until stopped."""

    def __init__(self, store: Store, address: str, run_ids: list[int] | None = None):
        require_ray()  # one line saying how to install it
        self.store, self.address, self.run_ids = store, address, run_ids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RayPool:
        self._thread = threading.Thread(target=self._drive, name="peft-tui-ray", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Nothing to do: the driver polls the queue."""

    def _drive(self) -> None:
        address = None if self.address == "auto" else self.address  # auto: a cluster, else a local Ray
        try:
            run_queue(self.store, address, run_ids=None if self.run_ids is None else list(self.run_ids),
                      stop=self._stop)
        except Exception as e:  # noqa: BLE001 - the runs must not wait forever: fail those still queued
            ids = self.run_ids if self.run_ids is not None else [r["id"] for r in self.store.list(status="queued")]
            self.store.fail_queued(ids, f"Ray: {first_line(e)}")

    def stop(self, cancel: bool = True, timeout: float = 150.0) -> None:
        """Stop the driver: it cancels the runs in flight on the cluster and waits for their ends."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def release(self, timeout: float = 150.0) -> None:
        self.stop(timeout=timeout)


def submit(store: Store, run_ids: list[int], address: str | None = "auto") -> None:
    """Train the queued runs `run_ids` through Ray and return when they have all ended (their events are
    in the store and their events.jsonl as they come: follow them with `client.watch`)."""
    run_queue(store, address, run_ids=run_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peft_tui.engine.launch.ray",
                                     description="Train the runs queued in a store on a Ray cluster.")
    parser.add_argument("--store", required=True, help="the run store folder")
    parser.add_argument("--address", default="auto", help="auto, HOST:PORT or ray://HOST:PORT")
    parser.add_argument("--exit-when-idle", action="store_true", help="stop when no queued run is left")
    parser.add_argument("--idle-s", type=float, default=0.0, help="with --exit-when-idle: wait this long first")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return run_queue(Store(args.store), args.address, exit_when_idle=args.exit_when_idle, idle_s=args.idle_s,
                         stop=stop)
    except OneLineError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
