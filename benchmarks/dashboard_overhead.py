"""Dashboard overhead: the same run headless (`execute`, the store as the only sink) and through the
dashboard (`create_app(...).run_test()`: the real app, its scheduler thread, 0.1 s event drain, 1 s store
poll, table/chart refreshes, rendered by Textual's headless driver), back to back,
alternating sides, each side in a fresh process that runs twice and reports the second run (so neither
pays first-run costs, and torch's OpenMP pool is only ever used by the thread that trains: mixing a
main-thread warm-up with worker-thread training made training 1.3-2.8x slower on this 2-core CPU). Compares the engine's own `train_time_s` (training steps only: model loading,
tokenising and evaluation excluded, so the figure is the cost the UI thread puts on the training
thread) and the run's wall time. Target: dashboard <= 3% slower.

Usage: python benchmarks/dashboard_overhead.py [--method lora] [--model minilm] [--size 2400]
       [--epochs 1] [--pairs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def headless(store, cfg):
    from peft_tui.engine.trainer import execute

    rid = store.create_run(cfg)
    r = execute(store, rid, cfg, store, threading.Event())
    if r is None:
        raise SystemExit(f"headless run failed: {store.get(rid)['error']}")
    return r


def side(name: str, cfg) -> dict:
    """Two runs on one side in this (fresh) process: the first warms up, the second is measured."""
    from peft_tui.engine.result import RunResult
    from peft_tui.engine.store import Store

    store_dir = tempfile.mkdtemp(prefix="bench-dash-")
    if name == "headless":
        store = Store(store_dir)
        headless(store, cfg)
        t0 = time.perf_counter()
        r = headless(store, cfg)
        wall = time.perf_counter() - t0
    else:
        from peft_tui.ui.app import create_app

        app = create_app(store=store_dir, template=cfg, devices=["cpu"])
        done: list[tuple[RunResult, float]] = []

        async def go() -> None:
            async with app.run_test(size=(120, 36)) as pilot:
                await pilot.pause()
                for _ in range(2):  # the same worker thread trains both, as in a real session
                    n = len(done)
                    t_start = time.perf_counter()
                    app.submit([cfg])
                    while len(done) == n:
                        await asyncio.sleep(0.25)
                        rows = [r for r in app.store.list() if r["status"] in ("done", "failed", "cancelled")]
                        if len(rows) > n:
                            row = app.store.get(rows[n]["id"])
                            if row["status"] != "done":
                                raise SystemExit(f"dashboard run failed: {row.get('error')}")
                            done.append((RunResult.from_dict(row["result"]), time.perf_counter() - t_start))
                await pilot.pause(0.3)

        asyncio.run(go())
        r, wall = done[1]
    return {"train": r.train_time_s, "wall": wall, "sps": r.samples_per_s, "acc": r.accuracy}


def main() -> None:
    import json
    import subprocess
    import sys

    from peft_tui.config import DataConfig, RunConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="lora")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--size", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--side", choices=("headless", "dashboard"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    cfg = RunConfig(method=a.method, model=a.model, data=DataConfig(size=a.size), epochs=a.epochs,
                    precision="fp32", device="cpu")
    if a.side:
        print(json.dumps(side(a.side, cfg)))
        return
    print(f"load average {os.getloadavg()[0]:.2f}; {a.method} on {a.model}, {a.size} rows, {a.epochs} epoch(s); "
          f"each side in a fresh process, second of two runs measured", flush=True)
    sides: dict[str, list[dict]] = {"headless": [], "dashboard": []}
    for i in range(a.pairs):
        for name in (("headless", "dashboard") if i % 2 == 0 else ("dashboard", "headless")):
            cmd = [sys.executable, __file__, "--side", name, "--method", a.method, "--model", a.model,
                   "--size", str(a.size), "--epochs", str(a.epochs)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            sides[name].append(r)
            print(f"  {name:9} train {r['train']:7.2f} s  wall {r['wall']:7.2f} s  {r['sps']:7.1f} samples/s  "
                  f"acc {100 * r['acc']:.2f}%", flush=True)
    h = statistics.median(r["train"] for r in sides["headless"])
    d = statistics.median(r["train"] for r in sides["dashboard"])
    over = 100 * (d / h - 1)
    print(f"training time (median): dashboard / headless = {d / h:.3f} ({over:+.1f}%)   target <= +3%: "
          f"{'PASS' if over <= 3.0 else 'MISS'}")
    hw = statistics.median(r["wall"] for r in sides["headless"])
    dw = statistics.median(r["wall"] for r in sides["dashboard"])
    print(f"run wall time (median, submit to done incl. model load): dashboard / headless = {dw / hw:.3f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
