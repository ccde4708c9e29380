"""Ray's task side: what runs on the cluster's nodes. A run's task writes the run folder it was sent
(a temporary folder on its node), trains it with `trainer.execute` (or, over several workers, through Ray
Train's TorchTrainer and `train_loop`), and sends every event and, at the end, the folder's files back
through the relay actor. The driver side (ray.py) sends the runs and records what comes back."""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.events import (
    TERMINAL,
    Event,
    RunFinished,
    event_to_dict,
)
from peft_tui.engine.launch.process import with_process_peak
from peft_tui.errors import ConfigError

POLL_S = 0.3  # task: cancel polling (and the driver's relay draining, heartbeats, claims)
NODE_CACHE = Path(tempfile.gettempdir()) / "peft-tui-cache"  # tokenisation cache on each node


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
            from peft_tui.engine.dist import Dist

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

    from peft_tui.engine.dist import Dist

    ctx = ray.train.get_context()
    dist = Dist(ctx.get_world_rank(), ctx.get_world_size())
    failure = run_on_node(cfg["run_id"], cfg["config"], cfg["resume"], cfg["files"], cfg["relay"], dist,
                          str(ray.train.torch.get_device()))
    if failure is not None:
        raise RuntimeError(f"rank {dist.rank}: {failure}")


