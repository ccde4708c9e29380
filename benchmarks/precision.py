"""bf16 autocast against fp32 on the same run (CPU here; CUDA when present), on short and long texts.

For each data set (default: the short synthetic sentences, ~18 tokens, and the IMDB reviews in
../shared/datasets when present, truncated at max_length 128, so ~120 tokens) and each method, the
same run in fp32 then bf16, back to back, after an untimed warm-up of both. Prints train time (steps only), samples/s and test accuracy
per precision, the speed ratio, what the CPU offers (AMX / AVX512-BF16 flags) and what
`--precision auto` resolves to on this machine.

Usage: python benchmarks/precision.py [--methods full,lora] [--data synthetic,FILE] [--size 1200]
       [--epochs 1] [--max-length 128] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "imdb" / "imdb_test500.csv"


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    shown = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f in flags]
    return ", ".join(shown) or "none of amx/avx512"


def main() -> None:
    import torch

    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.device import resolve_device, resolve_precision
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--data", default="synthetic" + (f",{IMDB}" if IMDB.exists() else ""))
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = resolve_device(a.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, CPU flags: {cpu_flags()}; "
          f"--precision auto -> {resolve_precision('auto', device)}; load average {os.getloadavg()[0]:.2f}")
    store = Store(tempfile.mkdtemp(prefix="bench-prec-"))
    for m in a.methods.split(","):  # warm-up, untimed: one-time BLAS/oneDNN/kernel set-up hits neither side
        for prec in ("fp32", "bf16"):
            cfg = RunConfig(method=m, data=DataConfig(size=200), epochs=1, precision=prec, max_length=a.max_length,
                            device=device)
            execute(store, store.create_run(cfg), cfg, store, threading.Event())
    for source in a.data.split(","):
        data = DataConfig(size=a.size) if source == "synthetic" else DataConfig(source=source)
        label = "synthetic" if source == "synthetic" else Path(source).stem
        for m in a.methods.split(","):
            res = {}
            for prec in ("fp32", "bf16"):
                cfg = RunConfig(method=m, data=data, epochs=a.epochs, precision=prec, max_length=a.max_length,
                                device=device)
                rid = store.create_run(cfg)
                r = execute(store, rid, cfg, store, threading.Event())
                if r is None:
                    raise SystemExit(store.get(rid)["error"])
                res[prec] = r
                tok = (r.tokens_per_s or 0.0) / max(r.samples_per_s or 0.0, 1e-9)
                print(f"{label:14} {m:6} {prec:5} train {r.train_time_s:7.1f} s  {r.samples_per_s or 0.0:7.1f} samples/s "
                      f"(~{tok:.0f} tokens/sample)  acc {100 * r.accuracy:6.2f}%", flush=True)
            speed = res["fp32"].train_time_s / res["bf16"].train_time_s
            gap = 100 * (res["bf16"].accuracy - res["fp32"].accuracy)
            print(f"{label:14} {m:6} bf16 speed-up {speed:.2f}x, accuracy difference {gap:+.2f} points "
                  f"(target >= 1.40x, within 0.5 points)", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
