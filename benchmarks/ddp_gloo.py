"""One run on 2 gloo processes (torchrun, CPU) against the same run on 1 process: time and final loss.

Both runs take the same global batches (each rank takes half of every batch), so the losses differ only
by dropout (each rank draws the masks of its half) and float rounding. The 1-process run trains in a
process of its own too (`python -m peft_tui.engine.launch.ddp` is not involved), so both times include
the imports and the model load. On a 2-core machine the 2 ranks share the cores the 1-process run has
to itself: expect no speed-up there; the figure that matters is the overhead of the process group.
torchrun gives each rank OMP_NUM_THREADS=1 (cores / ranks); the 1-process run keeps torch's default
(all cores) unless OMP_NUM_THREADS is set: set it to 1 to compare the same threads per process (on a
loaded machine, torch's default threads can be many times slower).

Usage: python benchmarks/ddp_gloo.py [--model tiny|minilm] [--size N] [--epochs E] [--method full]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time

from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.launch import ddp
from peft_tui.engine.store import Store

ONE_PROCESS = """
import sys
from peft_tui.engine.events import JsonlSink, fan_out
from peft_tui.engine.store import Store
from peft_tui.engine.trainer import execute
store = Store(sys.argv[1]); run_id = int(sys.argv[2]); row = store.get(run_id)
from peft_tui.config import RunConfig
execute(store, run_id, RunConfig.from_dict(row["config"]), fan_out(store, JsonlSink(store.events_path(run_id))))
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny")
    p.add_argument("--method", default="full")
    p.add_argument("--size", type=int, default=600)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None)
    a = p.parse_args()
    store = Store(tempfile.mkdtemp(prefix="peft-ddp-"))
    config = RunConfig(method=a.method, model=a.model, data=DataConfig(size=a.size), epochs=a.epochs,
                       batch_size=a.batch_size, lr=a.lr, device="cpu", seed=1)
    rows = {}
    for nproc in (1, 2):
        run_id = store.create_run(dataclasses.replace(config, name=f"nproc{nproc}", nproc=nproc))
        t0 = time.perf_counter()
        if nproc == 1:
            subprocess.run([sys.executable, "-c", ONE_PROCESS, str(store.root), str(run_id)], check=True)
        else:
            store.claim(f"bench:{os.getpid()}:cpu", os.getpid(), socket.gethostname(), ["cpu"])
            ddp.launch(store.root, run_id, nproc, "cpu")
        wall = time.perf_counter() - t0
        rows[nproc] = (store.get(run_id), wall)
    print(f"{a.model} {a.method}, synthetic size {a.size}, {a.epochs} epochs, batch {a.batch_size}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'procs':>5} {'status':>8} {'steps':>5} {'train s':>8} {'wall s':>7} {'test loss':>10} {'acc %':>6} {'startup s':>9}")
    for nproc, (row, wall) in rows.items():
        r = row["result"] or {}
        print(f"{nproc:5d} {row['status']:>8} {r.get('steps', 0):5d} {r.get('train_time_s', 0):8.1f} {wall:7.1f} "
              f"{r.get('test_loss', float('nan')):10.5f} {100 * r.get('accuracy', 0):6.1f} "
              f"{row['startup_s'] or 0:9.1f}")
    (r1, _), (r2, _) = rows[1], rows[2]
    if r1["result"] and r2["result"]:
        print(f"test loss difference: {abs(r1['result']['test_loss'] - r2['result']['test_loss']):.5f}; "
              f"train time ratio 2/1: {r2['result']['train_time_s'] / r1['result']['train_time_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
