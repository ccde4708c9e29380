"""bf16 autocast against fp32 on the same run (CPU here; CUDA when present).

Prints train time, samples/s and test accuracy per precision, and the speed ratio, plus what
`--precision auto` resolves to on this machine.
Usage: python benchmarks/precision.py [--methods lora,full] [--size 2400] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import threading


def main() -> None:
    import torch

    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute, resolve_device, resolve_precision

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--size", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args()
    device = resolve_device("auto")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"--precision auto -> {resolve_precision('auto', device)}")
    store = Store(tempfile.mkdtemp(prefix="bench-prec-"))
    for m in a.methods.split(","):
        res = {}
        for prec in ("fp32", "bf16"):
            cfg = RunConfig(method=m, data=DataConfig(size=a.size), epochs=a.epochs, precision=prec,
                            max_length=a.max_length)
            rid = store.create_run(cfg)
            r = execute(store, rid, cfg, store, threading.Event())
            if r is None:
                raise SystemExit(store.get(rid)["error"])
            res[prec] = r
            print(f"{m:9} {prec:5} train {r['train_time_s']:7.1f} s  {r['samples_per_s']:7.1f} samples/s  "
                  f"acc {100 * r['accuracy']:6.2f}%")
        speed = res["fp32"]["train_time_s"] / res["bf16"]["train_time_s"]
        gap = 100 * (res["bf16"]["accuracy"] - res["fp32"]["accuracy"])
        print(f"{m:9} bf16 speed-up {speed:.2f}x, accuracy difference {gap:+.2f} points")


if __name__ == "__main__":
    main()
