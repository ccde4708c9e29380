"""Scale: many runs and long runs in the dashboard.

Part 1, many runs: N tiny runs (random 2-layer BERT, 120 rows, 1 epoch) queued at once in the
dashboard (`create_app(...).run_test()`, Textual's headless driver, 120x36). While they run, a key
press that changes the screen (1 / 2: switch tab) is sent every 0.5 s and timed from the press until
the tab has switched and the screen has refreshed after it (`call_after_refresh`). Process RSS is sampled each time a run
ends. Prints key latency (median / p95 / max) and RSS after runs 10, N/2 and N, with the slope over
the second half (MB per run): flat means no per-run leak.

Part 2, one long run: a store holding a run with 100k logged steps (train_loss, lr, samples/s, memory:
~500k metric rows; the first 2,000 steps written through the real store sink to time it, the rest
bulk-inserted in the same format). Times the store queries the dashboard makes (changed runs, the
chart-series fetch, an incremental fetch of the newest points, the run list) and then opens the
dashboard on it as if another process were training that run: time until its loss series is loaded
and charted, the chart replot (downsampled to the chart width) and a key press latency.

Usage: python benchmarks/scale.py [--runs 100] [--steps 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sqlite3
import statistics
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


async def key_latency(app, pilot, key: str) -> float:
    """Seconds from a key press (1 or 2: switch tab) reaching the app until the screen has refreshed
    after handling it. The key goes straight to the driver, as a terminal's would: `pilot.press` also
    waits until the whole process is idle, which never happens while a run trains in it."""
    from textual import events
    from textual.widgets import TabbedContent

    tabs = app.main.query_one("#tabs", TabbedContent)
    want = {"1": "tab-runs", "2": "tab-results", "3": "tab-log"}[key]
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    ev = events.Key(key, key)
    ev.set_sender(app)
    app._driver.send_message(ev)
    while tabs.active != want:
        await asyncio.sleep(0.002)
        if time.perf_counter() - t0 > 30:
            raise SystemExit(f"scale: key {key!r} was not handled within 30 s")
    fut = loop.create_future()
    app.call_after_refresh(lambda: fut.done() or fut.set_result(time.perf_counter()))
    return await asyncio.wait_for(fut, 30) - t0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def many_runs(n: int) -> None:
    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.ui.app import create_app

    store_dir = tempfile.mkdtemp(prefix="bench-scale-")
    cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=120), epochs=1, batch_size=16,
                    device="cpu", precision="fp32")
    app = create_app(store=store_dir, template=cfg, devices=["cpu"])
    lat: list[float] = []
    rss: list[tuple[int, float]] = []

    async def go() -> float:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            rss.append((0, rss_mb()))
            t0 = time.perf_counter()
            app.submit([dataclasses.replace(cfg, name=f"tiny-{i:03d}") for i in range(n)])
            seen_done = 0
            k = 0
            while True:
                await asyncio.sleep(0.5)
                lat.append(await key_latency(app, pilot, "2" if k % 2 == 0 else "1"))
                k += 1
                done = sum(1 for r in app.state.runs.values() if r.get("status") in ("done", "failed", "cancelled"))
                if done > seen_done:
                    import gc

                    gc.collect()
                    rss.append((done, rss_mb()))
                    seen_done = done
                if done >= n:
                    break
                if time.perf_counter() - t0 > 3600:
                    raise SystemExit("scale: runs did not finish within an hour")
            wall = time.perf_counter() - t0
            statuses = [r.get("status") for r in app.state.runs.values()]
            if statuses.count("done") != n:
                raise SystemExit(f"scale: not every run finished: {statuses}")
            return wall

    wall = asyncio.run(go())
    print(f"{n} tiny runs through the dashboard in {wall:.1f} s ({wall / n:.2f} s per run)")
    print(f"  key press -> screen update while running: median {1000 * statistics.median(lat):.0f} ms, "
          f"p95 {1000 * pct(lat, 0.95):.0f} ms, max {1000 * max(lat):.0f} ms over {len(lat)} presses")

    def at(i: int) -> float:
        return min(rss, key=lambda p: abs(p[0] - i))[1]

    half = [(d, m) for d, m in rss if d >= n // 2]
    if len(half) >= 2:
        (d0, m0), (d1, m1) = half[0], half[-1]
        slope = (m1 - m0) / max(1, d1 - d0)
    else:
        slope = float("nan")
    print(f"  RSS: idle {rss[0][1]:.0f} MB, after run 10 {at(10):.0f} MB, run {n // 2} {at(n // 2):.0f} MB, "
          f"run {n} {at(n):.0f} MB; second-half slope {slope:+.2f} MB/run "
          f"({'flat' if slope < 0.5 else 'GROWING'})")


def long_run(steps: int) -> None:
    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.events import MemorySampled, RunStarted, StepLogged
    from peft_tui.engine.store import Store
    from peft_tui.ui.app import create_app
    from peft_tui.ui.polling import SERIES_NAMES

    store_dir = tempfile.mkdtemp(prefix="bench-long-")
    store = Store(store_dir)
    cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=120), epochs=1, device="cpu")
    rid = store.create_run(cfg)
    store(RunStarted(rid, "long", "lora", steps, 1, 1000, 10000, "cpu", "fp32", 120, 2))
    through_sink = min(2000, steps)
    t0 = time.perf_counter()
    for s in range(1, through_sink + 1):
        store(StepLogged(rid, s, s / steps, 1.0 / s, 1e-3, 100.0, s * 0.1))
        store(MemorySampled(rid, s, s * 0.1, "cpu", 500.0, 600.0, 0.0, 0.0))
    dt = time.perf_counter() - t0
    print(f"store sink: {2 * through_sink / dt:,.0f} events/s ({1000 * dt / through_sink:.2f} ms per step "
          f"logged = StepLogged + MemorySampled; the engine logs at most 10 steps/s)")
    now = time.time()
    rows = []
    for s in range(through_sink + 1, steps + 1):
        t = now - (steps - s) * 0.01
        rows += [(rid, s, s / steps, "train_loss", 1.0 / s, t), (rid, s, s / steps, "lr", 1e-3, t),
                 (rid, s, s / steps, "samples_per_s", 100.0, t), (rid, s, 0.0, "mem_used_mb", 500.0, t),
                 (rid, s, 0.0, "mem_peak_mb", 600.0, t)]
    db = sqlite3.connect(store.db_path, timeout=30)
    db.executemany("INSERT INTO metrics (run_id, step, epoch, name, value, t) VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.execute("UPDATE runs SET step=?, heartbeat=? WHERE id=?", (steps, time.time(), rid))
    db.commit()
    db.close()
    n_rows = store._conn().execute("SELECT count(*) FROM metrics").fetchone()[0]
    print(f"a run with {steps:,} logged steps: {n_rows:,} metric rows")

    def timed(label: str, fn, repeat: int = 5) -> None:
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t)
        print(f"  {label:58} {1000 * min(ts):9.2f} ms  ({len(out):,} rows)")

    ro = sqlite3.connect(f"file:{store.db_path}?mode=ro", uri=True)
    q = "SELECT step, value, t FROM metrics WHERE run_id=? AND name=? AND step>? ORDER BY step, rowid"
    timed("changed_since (the 1 s poll)", lambda: store.changed_since(time.time() - 5))
    timed("list() (all runs)", lambda: store.list())
    timed("poll: one series in full (train_loss, first sight)", lambda: ro.execute(q, (rid, "train_loss", -1)).fetchall())
    timed(f"poll: all {len(SERIES_NAMES)} chart series in full", lambda: [
        p for name in SERIES_NAMES for p in ro.execute(q, (rid, name, -1)).fetchall()])
    timed("poll: newest 10 steps of train_loss (steady state)",
          lambda: ro.execute(q, (rid, "train_loss", steps - 10)).fetchall())
    timed("store.series(train_loss)", lambda: store.series(rid, "train_loss"))
    ro.close()

    # the dashboard on this store, the run shown as trained by another live process (this one's pid)
    app = create_app(store=store_dir, template=cfg, devices=["cpu"])

    async def go() -> None:
        t0 = time.perf_counter()
        async with app.run_test(size=(120, 36)) as pilot:
            while rid not in app.state.loss or not len(app.state.loss[rid]):
                await asyncio.sleep(0.05)
                if time.perf_counter() - t0 > 120:
                    raise SystemExit("scale: the long run's series never reached the dashboard")
            t_loaded = time.perf_counter() - t0
            await pilot.pause(0.5)
            chart = app.main.query_one("#chart-loss")
            costs = []
            for _ in range(5):
                t = time.perf_counter()
                chart.replot(app.state)
                await pilot.pause()
                costs.append(time.perf_counter() - t)
            lat = [await key_latency(app, pilot, k) for k in ("2", "1") * 5]
            s = app.state.loss[rid]
            print(f"  dashboard: series loaded and charted {t_loaded:.2f} s after start; kept {len(s):,} of "
                  f"{steps:,} points (bounded history)")
            print(f"  loss chart replot + paint (downsampled to the chart width): median "
                  f"{1000 * statistics.median(costs):.0f} ms; chart.cost_s {1000 * chart.cost_s:.0f} ms")
            print(f"  key press -> screen update with this run loaded: median {1000 * statistics.median(lat):.0f} ms, "
                  f"max {1000 * max(lat):.0f} ms")

    asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--skip-runs", action="store_true")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    long_run(a.steps)
    if not a.skip_runs:
        many_runs(a.runs)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
