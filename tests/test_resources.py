"""Resources: many runs in one process do not pile up memory; the same config and seed give the same
metrics on CPU."""

from __future__ import annotations

import gc
import os

import psutil
import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine import trainer
from peft_tui.engine.store import Store

RUNS = 25  # each run here is in-process; the workers fork a process per run anyway
WARMUP = 5  # allocator pools, tokenizer and import caches settle in the first runs


@pytest.mark.slow
def test_many_runs_in_one_process_keep_memory_flat(tmp_path):
    st = Store(tmp_path / "s")
    proc = psutil.Process(os.getpid())
    rss = []
    methods = ["lora", "adapters", "full", "head", "bitfit"]
    for i in range(RUNS):
        cfg = tiny_config(method=methods[i % len(methods)], data=DataConfig(size=40), batch_size=32)  # 1 step
        rid = st.create_run(cfg)
        assert trainer.execute(st, rid, cfg, st) is not None, st.get(rid)["error"]
        gc.collect()
        rss.append(proc.memory_info().rss / 2**20)
    growth = rss[-1] - rss[WARMUP - 1]
    print(f"\nRSS after run {WARMUP}: {rss[WARMUP - 1]:.0f} MB, after run {RUNS}: {rss[-1]:.0f} MB, "
          f"growth {growth:+.1f} MB (max {max(rss):.0f} MB)")
    assert growth < 150, f"memory grew {growth:.0f} MB over {RUNS - WARMUP} runs"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_same_config_and_seed_give_identical_metrics(tmp_path, monkeypatch, method):
    monkeypatch.setattr(trainer, "LOG_INTERVAL_S", 0.0)  # log every step: the loss series is the whole run
    st = Store(tmp_path / "s")
    cfg = tiny_config(method=method, epochs=2, seed=7)
    results, series = [], []
    for _ in range(2):
        rid = st.create_run(cfg)
        results.append(trainer.execute(st, rid, cfg, st))
        series.append((st.series(rid, "train_loss"), st.series(rid, "val_accuracy"), st.series(rid, "val_loss")))
    assert results[0] is not None and results[1] is not None
    assert series[0] == series[1] and len(series[0][0]) == results[0].steps
    for key in ("accuracy", "f1", "test_loss", "val_accuracy", "steps", "trainable_params"):
        assert getattr(results[0], key) == getattr(results[1], key), key
    # a different seed gives a different run (the seed is really used)
    rid = st.create_run(tiny_config(method=method, epochs=2, seed=8))
    trainer.execute(st, rid, tiny_config(method=method, epochs=2, seed=8), st)
    assert st.series(rid, "train_loss") != series[0][0]


@pytest.mark.slow
@pytest.mark.usefixtures("worker_processes")
def test_peak_memory_is_per_run_a_small_run_after_a_big_one_reports_less(tmp_path):
    """Each run trains in a process of its own, so its peak is its own: in one long-lived process the
    RSS only grows and the small run would report at least the big one's peak."""
    from peft_tui.engine.scheduler import Scheduler

    st = Store(tmp_path / "s")
    sched = Scheduler(st, None, ["cpu"])
    try:
        big = sched.submit(tiny_config(method="full", data=DataConfig(size=6000), batch_size=1024, max_length=64))
        small = sched.submit(tiny_config(method="head", data=DataConfig(size=40), batch_size=32))
        assert sched.wait_idle(600)
    finally:
        sched.shutdown()
    peaks = {rid: st.get(rid)["result"]["peak_memory_mb"] for rid in (big, small)}
    print(f"\npeak RSS: big run {peaks[big]:.0f} MB, small run after it {peaks[small]:.0f} MB")
    assert peaks[small] < peaks[big] - 100
    assert st.get(small)["result"]["memory_kind"] == "peak RSS of the run's own process"
