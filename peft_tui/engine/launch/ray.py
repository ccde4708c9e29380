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
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peft_tui.engine.events import (
    TERMINAL,
    JsonlSink,
    RunFailed,
    RunFinished,
    Sink,
    event_from_dict,
    fan_out,
)
from peft_tui.engine.launch.process import with_extra
from peft_tui.engine.launch.ray_tasks import POLL_S, Relay, fit_task, read_folder, train_task, write_folder
from peft_tui.engine.store import Claim, Store
from peft_tui.errors import ConfigError, OneLineError, StoreError, first_line

INSTALL_HINT = "pip install 'peft-tui[ray]'"
STOP_WAIT_S = 120.0  # a stopped driver waits this long for its cancelled runs to end
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # peft_tui/, shipped to a cluster the driver joins


def require_ray():
    """The `ray` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


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

