"""The cost of the process model: the same compare trained in the caller's process (as `peft-tui compare`
did before runs became processes) and through the store's queue by a worker process that forks one
process per run. Each side is one fresh Python process, timed from its start to its end (imports
included), the two sides alternating. Also prints the start-up each run paid (from the store's
`startup_s`: the first run of a worker pays the worker's imports, later runs a fork) and each run's
peak memory as recorded by each side.

Usage: python benchmarks/process_model.py [--model tiny] [--methods full,lora,adapters] [--size 400]
                                          [--epochs 2] [--repeat 3]
       python benchmarks/process_model.py --model minilm --size 600 --epochs 1 --repeat 1   (peaks on MiniLM)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMON = r"""
import json, sys, threading
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.store import Store
model, methods, size, epochs, store_dir = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
configs = [RunConfig(method=m, model=model, data=DataConfig(size=size), epochs=epochs, device="cpu", precision="fp32")
           for m in methods]
store = Store(store_dir)
"""

IN_PROCESS = COMMON + r"""
from peft_tui.engine.trainer import execute
ids = [store.create_run(c) for c in configs]
for rid, c in zip(ids, configs):
    execute(store, rid, c, store, threading.Event())
"""

PROCESS_MODEL = COMMON + r"""
from peft_tui.engine.launch.client import watch
from peft_tui.engine.launch.local import LocalPool
with LocalPool(store.root, ["cpu"]) as pool:
    ids = [store.create_run(c) for c in configs]
    pool.wake()
    watch(store, ids, None)
"""


def run_side(code: str, args: argparse.Namespace) -> dict:
    store_dir = tempfile.mkdtemp(prefix="bench-proc-")
    t0 = time.perf_counter()
    argv = [sys.executable, "-c", code, args.model, args.methods, str(args.size), str(args.epochs), store_dir]
    out = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    sys.path.insert(0, str(ROOT))
    from peft_tui.engine.store import Store

    rows = Store(store_dir, readonly=True).list()
    bad = [f"{r['method']}: {r['status']} {r['error']}" for r in rows if r["status"] != "done"]
    if bad:
        raise SystemExit("; ".join(bad))
    return {"wall": wall, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--methods", default="full,lora,adapters")
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {a.model}, {a.methods}, "
          f"{a.size} synthetic rows, {a.epochs} epoch(s), fp32 CPU")
    walls: dict[str, list[float]] = {"in-process": [], "process model": []}
    last: dict[str, list[dict]] = {}
    for i in range(a.repeat):
        for side, code in (("in-process", IN_PROCESS), ("process model", PROCESS_MODEL)):
            r = run_side(code, a)
            walls[side].append(r["wall"])
            last[side] = r["rows"]
            print(f"  round {i + 1} {side:13}: {r['wall']:6.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nmedian wall: in-process {med['in-process']:.1f} s, process model {med['process model']:.1f} s "
          f"({100 * (med['process model'] / med['in-process'] - 1):+.1f}%)")
    print(f"\n{'method':9} {'start-up s':>10} {'peak MB (process model)':>24} {'peak MB (in-process)':>21}")
    for proc_row, in_row in zip(last["process model"], last["in-process"]):
        print(f"{proc_row['method']:9} {proc_row['startup_s']:10.3f} {proc_row['result']['peak_memory_mb']:24.0f} "
              f"{in_row['result']['peak_memory_mb']:21.0f}")
    print(json.dumps({"walls": walls, "startup_s": [r["startup_s"] for r in last["process model"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
