"""One run across several processes: data-parallel training with torch.distributed, started by torchrun.

    rc = launch(store_root, run_id, nproc, device)    # a claimed run; returns torchrun's exit code

`launch` runs, and waits for,

    python -m torch.distributed.run --nproc-per-node N --standalone \\
        -m peft_tui.engine.launch.ddp --store S --run-id R --device D

Every rank runs the same `trainer.execute` with a `Dist` (its rank, the world size): gloo on CPU, NCCL on
GPU (rank r on cuda:LOCAL_RANK). How the work is shared is `dist.Dist`'s: each length-grouped batch
of `batch_size` examples is dealt across the ranks, so the global batch, the steps and the learning-rate
schedule are the 1-process run's. Rank 0 alone writes (events to the store and events.jsonl,
checkpoints, weights), sends the heartbeat and polls the store's cancel flag; the other ranks get a null
sink. SIGTERM or SIGINT to `launch`'s caller reaches every rank and cancels the run at the next step.

A rank on which the run failed exits 1, so that torchrun stops the others at once (a cancelled or
diverged run is decided by all ranks together, and they all exit 0). When the run's row is still
`running` after torchrun ended, `launch` fails it with the reason torchrun gave. torchrun's own output
is kept in the run folder, in torchrun.log. If `launch`'s process dies, torchrun and the ranks die with it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.events import Event, JsonlSink, RunFailed, Sink, fan_out
from peft_tui.engine.launch.process import STOP_SIGNALS, ProcessFigures, keep_alive, parent_death_signal
from peft_tui.engine.store import Store, death_reason

LOG_NAME = "torchrun.log"
POOL_GPUS_ENV = "PEFT_TUI_POOL_GPUS"  # set by LocalPool for its workers: every GPU the pool trains on
PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])  # the folder holding peft_tui/


# ------------------------------------------------------------------------------------------------
# the launcher
# ------------------------------------------------------------------------------------------------
def launch(store_root: str | Path, run_id: int, nproc: int, device: str) -> int:
    """Train the claimed run `run_id` on `nproc` processes of this machine and wait for the end.
    `device`: "cpu" (gloo) or "cuda"/"cuda:N" (NCCL; rank r on the r-th visible GPU). Returns torchrun's
    exit code; the run's row has ended with its status either way."""
    store = Store(store_root)
    log_path = store.run_dir(run_id) / LOG_NAME
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
               "-m", "peft_tui.engine.launch.ddp", "--store", str(store.root), "--run-id", str(run_id),
               "--device", device, "--launched-at", repr(time.time())]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    gpus = gpus_for_run(nproc, env) if device.startswith("cuda") else None
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    die = parent_death_signal()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                close_fds=True, preexec_fn=die)
    with _forward_signals(proc):
        rc = proc.wait()
    if rc != 0 and store.get(run_id)["status"] == "running":
        store.fail_run(run_id, _failure_reason(log_path, rc, nproc))
    return rc


def gpus_for_run(nproc: int, env: dict[str, str]) -> str | None:
    """CUDA_VISIBLE_DEVICES for the ranks of a run over `nproc` GPUs whose worker is pinned to fewer (a
    LocalPool worker sees its own GPU only): the worker's GPU first, then the pool's others in order, so
    rank r trains on the r-th. The others may be training another worker's run at the same time (they
    share the GPU's memory). None: nothing to widen (enough GPUs visible, or no pool list); a run asking
    for more GPUs than the pool has gets all of them, and its ranks say it needs --gpus N or fewer."""
    own = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    pool = [v.strip() for v in env.get(POOL_GPUS_ENV, "").split(",") if v.strip()]
    if not pool or (own and len(own) >= nproc):
        return None
    order = own + [g for g in pool if g not in own]
    return ",".join(order[:nproc])


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen) -> Iterator[None]:
    """While waiting (in the main thread), a stop signal goes on to torchrun, which passes it to every
    rank (the run is cancelled at the next step, then torchrun exits), and to a handler the caller had
    set (a worker notes that it is to stop). Python's own Ctrl-C handler is not called: `launch` waits
    for the cancelled run to end instead of raising KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)
        handler = previous[signum]
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, frame)

    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _failure_reason(log_path: Path, rc: int, nproc: int) -> str:
    """Why torchrun failed without the run recording it, from its log: a rank's own one-line error, else
    the first exception a rank raised, else how the rank torchrun names as the root cause ended (a
    negative exit code: killed by that signal)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    own = re.findall(r"^rank \d+: .+$", text, re.MULTILINE)
    if own:
        return own[0]
    raised = [m for m in re.findall(r"^[\w.]*(?:Error|Exception): .+$", text, re.MULTILINE)
              if "ChildFailedError" not in m]
    if raised:
        return f"one of its {nproc} processes failed: {raised[0]}"
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", text, re.DOTALL)
    if root and int(root.group(1)) < 0:
        return f"one of its {nproc} processes was {death_reason(int(root.group(1)))}"
    return f"torchrun exited with code {rc} before the run ended (see {log_path})"


# ------------------------------------------------------------------------------------------------
# one rank
# ------------------------------------------------------------------------------------------------
class RankSink:
    """The sink of one rank: rank 0 forwards to the run's sinks, the others drop every event (a null
    sink). Both remember the error when the run failed on this rank (`failure`)."""

    def __init__(self, sink: Sink | None = None):
        self.sink = sink
        self.failure: str | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFailed) and event.status == "failed":
            self.failure = event.error
        if self.sink is not None:
            self.sink(event)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def train_rank(store, run_id: int, config: RunConfig, resume: bool, dist, sink: Sink | None,
               cancel: threading.Event, cache_dir: Path | None = None) -> str | None:
    """This rank's part of a data-parallel run (torchrun here, Ray Train in ray.py). `sink`: the run's
    sinks, used on rank 0 only. Returns the error when the run failed (None: done, cancelled, diverged)."""
    from peft_tui.engine.trainer import execute

    rank_sink = RankSink(sink if dist.is_main else None)
    execute(store, run_id, config, rank_sink, cancel, resume, cache_dir=cache_dir, dist=dist)
    return rank_sink.failure


def rank_main(argv: list[str] | None = None) -> int:
    """The entry point of each rank under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""
    parser = argparse.ArgumentParser(prog="python -m peft_tui.engine.launch.ddp",
                                     description="One rank of a data-parallel run (started by torchrun).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--launched-at", type=float, required=True, help="when launch() began (unix time)")
    args = parser.parse_args(argv)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    die = parent_death_signal()
    if die is not None:
        die()  # torchrun killed: this rank goes too
    cancel = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: cancel.set())

    import torch
    import torch.distributed as td

    from peft_tui.engine.dist import Dist

    store = Store(args.store)
    row = store.get(args.run_id)
    config = RunConfig.from_dict(row["config"])
    device = "cpu"
    if args.device.startswith("cuda"):
        if torch.cuda.device_count() < world:
            return _fail(rank, store, args.run_id,
                         f"this run asks for {world} GPUs and this machine shows {torch.cuda.device_count()}: "
                         f"use --gpus {max(1, torch.cuda.device_count())}")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    sink: Sink | None = None
    done = threading.Event()
    if rank == 0:
        startup_s = time.time() - args.launched_at  # torchrun, the imports, the process group
        if store.heartbeat(args.run_id, os.getpid(), startup_s=startup_s):
            cancel.set()
        threading.Thread(target=keep_alive, args=(store, args.run_id, cancel, done), daemon=True).start()
        # the result gets the start-up; its peak memory is the largest rank's, gathered by the trainer
        sink = ProcessFigures(fan_out(store, JsonlSink(store.events_path(args.run_id))), startup_s, cpu=False)
    try:
        failure = train_rank(store, args.run_id, dataclasses.replace(config, device=device), bool(row["resume"]),
                             Dist(rank, world), sink, cancel, store.cache_dir)
    finally:
        done.set()
        if sink is not None:
            sink.close()
        td.destroy_process_group()
    if failure is None:
        return 0
    if rank != 0:
        sys.stderr.write(f"rank {rank}: {failure}\n")
    return 1


def _fail(rank: int, store: Store, run_id: int, reason: str) -> int:
    """A problem found before training: rank 0 records it; every rank exits 1."""
    if rank == 0:
        store.fail_run(run_id, reason)
    return 1


if __name__ == "__main__":
    sys.exit(rank_main())
