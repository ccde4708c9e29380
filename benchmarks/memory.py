"""Peak memory of full fine-tuning, LoRA and adapters on the same work (embedded MiniLM, the same
synthetic data, batch size and max length). Each method runs in a fresh process so peaks do not mix.
On CPU: process RSS — the kernel's peak (`ru_maxrss`), the engine's own sampled peak, and the RSS
just before training (imports + data + model loaded) so the training's own share is visible.
On CUDA: `torch.cuda.max_memory_allocated` as the engine records it.

Usage: python benchmarks/memory.py [--methods full,lora,adapters] [--size 1200] [--epochs 1] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, tempfile, threading
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import psutil
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.events import RunStarted
from peft_tui.engine.store import Store
from peft_tui.engine.trainer import execute
method, size, epochs, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = RunConfig(method=method, data=DataConfig(size=size), epochs=epochs, precision="fp32", device=device)
store = Store(tempfile.mkdtemp(prefix="bench-mem-"))
before = {}
def sink(e):
    store(e)
    if isinstance(e, RunStarted):
        before["rss"] = psutil.Process().memory_info().rss / 2**20
rid = store.create_run(cfg)
r = execute(store, rid, cfg, sink, threading.Event())
if r is None:
    raise SystemExit(store.get(rid)["error"])
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "engine_peak_mb": r.peak_memory_mb, "kind": r.memory_kind, "before_mb": before["rss"],
                  "trainable": r.trainable_params, "acc": r.accuracy, "train_s": r.train_time_s,
                  "device": r.device}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="full,lora,adapters")
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; MiniLM, {a.size} synthetic rows, {a.epochs} epoch(s), batch 32, fp32")
    res = {}
    for m in a.methods.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, m, str(a.size), str(a.epochs), a.device],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{m}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        res[m] = json.loads(out.stdout.strip().splitlines()[-1])
    if not res:
        return 1
    kind = next(iter(res.values()))["kind"]
    print(f"{'method':9} {'trainable':>11} {'before train MB':>15} {'peak RSS MB':>11} {'train share MB':>14} "
          f"{'engine peak MB':>14} {'acc %':>6}   ({kind})")
    for m, r in res.items():
        print(f"{m:9} {r['trainable']:11,d} {r['before_mb']:15.0f} {r['maxrss_mb']:11.0f} "
              f"{r['maxrss_mb'] - r['before_mb']:14.0f} {r['engine_peak_mb']:14.0f} {100 * r['acc']:6.2f}")
    if "full" in res:
        for m in res:
            if m != "full":
                share = (res[m]["maxrss_mb"] - res[m]["before_mb"]) / max(1.0, res["full"]["maxrss_mb"] - res["full"]["before_mb"])
                print(f"{m}: peak RSS {res[m]['maxrss_mb'] / res['full']['maxrss_mb']:.2f}x of full; "
                      f"training's own share {share:.2f}x of full's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
