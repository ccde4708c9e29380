
"""The training loop: events, evaluation schedule, early stopping, cancellation, the scheduler."""

from __future__ import annotations

import math
import threading

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine.batching import length_grouped_batches
from peft_tui.engine.evaluation import macro_f1
from peft_tui.engine.events import EvalLogged, MemorySampled, RunCancelled, RunFinished, RunStarted, StepLogged, fan_out
from peft_tui.engine.methods import validate as validate_run
from peft_tui.engine.scheduler import Scheduler
from peft_tui.engine.trainer import execute


def run(store, cfg, cancel=None, extra=None):
    events = []
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, fan_out(store, events.append, extra), cancel)
    return rid, result, events


@pytest.mark.slow
def test_events_and_result(store):
    cfg = tiny_config(method="lora", epochs=2)
    rid, result, events = run(store, cfg)
    kinds = [type(e) for e in events]
    assert kinds[0] is RunStarted and kinds[-1] is RunFinished
    started = events[0]
    assert started.total_steps == 2 * -(-84 // 16)  # 120 examples: 84 train, 18 val, 18 test
    assert started.trainable_params == result.trainable_params < started.total_params
    steps = [e for e in events if isinstance(e, StepLogged)]
    # a confidently right batch may underflow to exactly 0 in fp32 (seen on a CI run): never negative or NaN
    assert steps[-1].step == started.total_steps and all(math.isfinite(e.loss) and e.loss >= 0 for e in steps)
    assert [e.step for e in steps] == sorted(e.step for e in steps)
    assert any(isinstance(e, MemorySampled) and e.used_mb > 50 for e in events)
    evals = [e for e in events if isinstance(e, EvalLogged)]
    assert [(e.split, e.epoch) for e in evals] == [("val", 1.0), ("val", 2.0), ("test", 2.0)]
    assert result.accuracy == evals[-1].accuracy
    assert result.sizes == {"train": 84, "val": 18, "test": 18}
    assert store.get(rid)["status"] == "done"


@pytest.mark.slow
def test_eval_every_and_early_stopping(store):
    # a learning rate too small to change anything: validation accuracy never improves
    cfg = tiny_config(method="bitfit", epochs=5, eval_every=2, patience=2, lr=1e-12)
    _, result, events = run(store, cfg)
    val_steps = [e.step for e in events if isinstance(e, EvalLogged) and e.split == "val"]
    assert val_steps[:3] == [2, 4, 6]
    assert result.stopped_early is True
    assert len(val_steps) == 3  # first sets the best, two without improvement stop it
    assert result.steps == 6 < 5 * 6


@pytest.mark.slow
def test_cancel_takes_effect_within_one_step(store):
    cancel = threading.Event()
    seen = []

    def cancel_on_first_step(e):
        if isinstance(e, StepLogged):
            seen.append(e.step)
            cancel.set()

    cfg = tiny_config(method="full", epochs=3, data=DataConfig(size=400))
    rid, result, events = run(store, cfg, cancel, cancel_on_first_step)
    assert result is None
    cancelled = [e for e in events if isinstance(e, RunCancelled)]
    assert cancelled and cancelled[0].step == seen[0]  # no further step ran after the request
    assert store.get(rid)["status"] == "cancelled"


def test_length_grouped_batches_cover_everything_once():
    import random

    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    batches = length_grouped_batches(lengths, 32, random.Random(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    # grouped: far less padding than random batches
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert pad < 0.25 * sum(lengths)


def test_macro_f1():
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1], 2) == 1.0
    assert abs(macro_f1([0, 0, 1, 1], [0, 1, 1, 1], 2) - (2 / 3 + 0.8) / 2) < 1e-9


@pytest.mark.slow
def test_scheduler_runs_fifo_and_cancels_queued(store):
    finished = []
    sched = Scheduler(store, lambda e: finished.append(e.run_id) if isinstance(e, RunFinished) else None, ["cpu"])
    try:
        a = sched.submit(tiny_config(method="head", data=DataConfig(size=400), epochs=2))
        b = sched.submit(tiny_config(method="lora"))
        c = sched.submit(tiny_config(method="adapters"))
        assert sched.cancel(b) is True
        assert sched.wait_idle(timeout=120)
    finally:
        sched.shutdown()
    assert finished == [a, c]
    assert [store.get(i)["status"] for i in (a, b, c)] == ["done", "cancelled", "done"]
    sched2 = Scheduler(store, None, ["cpu"])
    try:
        retry_id = sched2.retry(b)
        assert sched2.wait_idle(timeout=120)
    finally:
        sched2.shutdown()
    retry = store.get(retry_id)
    assert retry_id not in (a, b, c) and retry["status"] == "done" and retry["method"] == "lora"


@pytest.mark.slow
def test_shutdown_records_cancel_even_when_the_run_outlasts_the_timeout(store):
    """Quitting the dashboard while a run trains in its worker process, with a join timeout far shorter
    than the run, still leaves the run `cancelled` in the store: never `running` for good, nor `failed`."""
    import time as _time

    sched = Scheduler(store, None, ["cpu"])
    rid = sched.submit(tiny_config(method="full", data=DataConfig(size=4000), epochs=3))
    deadline = _time.monotonic() + 120
    while (store.get(rid)["status"] != "running" or not store.get(rid)["step"]) and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert store.get(rid)["status"] == "running", store.get(rid)
    sched.shutdown(cancel_running=True, timeout=0.2)
    while store.get(rid)["status"] == "running" and _time.monotonic() < deadline:
        _time.sleep(0.1)
    row = store.get(rid)
    assert row["status"] == "cancelled", row
    assert 0 < row["step"] < row["total_steps"]


def test_a_broken_sink_is_reported_and_does_not_stop_the_others(caplog):
    got = []

    def broken(e):
        raise RuntimeError("disk full")

    emit = fan_out(broken, got.append)
    with caplog.at_level("WARNING", logger="peft_tui"):
        emit(RunCancelled(7, 3))
    assert got == [RunCancelled(7, 3)]
    assert "RunCancelled" in caplog.text and "disk full" in caplog.text


# ------------------------------------------------------------------------------- execute's inputs
def test_execute_keeps_its_token_cache_in_the_folder_it_is_given(store, tmp_path):
    """`cache_dir=` holds the token cache, and the store's own cache folder is left alone."""
    cfg = tiny_config(method="bitfit", head_init="random")
    cache = tmp_path / "elsewhere"
    rid, result, events = run_with(store, cfg, cache_dir=cache)
    assert result is not None and result.sizes["train"] > 0 and result.steps > 0
    assert len(list(cache.glob("tok-*.safetensors"))) == 3  # train, val, test
    assert not (store.root / "cache").exists()


def run_with(store, cfg, **kw):
    events = []
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, fan_out(store, events.append), **kw)
    return rid, result, events


# ------------------------------------------------------------------------------- the TF-IDF baseline
def tfidf_config(**kw):
    from peft_tui.config import RunConfig

    return RunConfig(method="tfidf", model="tfidf+logreg", name="tfidf", **kw)


def test_tfidf_baseline_runs_through_execute(store):
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.trainer import preflight

    cfg = tfidf_config(data=DataConfig(size=200))
    validate_run(cfg)
    assert get_method("tfidf").is_baseline and not get_method("lora").is_baseline
    assert len(preflight(cfg).train) == 140  # no model or device check for a baseline
    rid, result, events = run_with(store, cfg)
    assert [type(e) for e in events] == [RunStarted, EvalLogged, EvalLogged, RunFinished]
    assert [e.split for e in events if isinstance(e, EvalLogged)] == ["val", "test"]
    assert result.accuracy == events[2].accuracy and 0.5 < result.accuracy <= 1.0
    assert result.trainable_params == events[0].trainable_params > 100  # vocabulary size + 1 for two classes
    assert result.trainable_pct is None and result.peak_memory_mb is None  # nothing true to say: a dash
    row = store.get(rid)
    assert row["status"] == "done" and row["result"]["accuracy"] == result.accuracy
    assert row["result"]["trainable_pct"] is None


def test_tfidf_baseline_without_vocabulary_fails_in_one_line(store, tmp_path):
    import pandas as pd

    path = tmp_path / "letters.csv"
    pd.DataFrame({"text": ["a", "b", "c", "d"] * 10, "label": [0, 1] * 20}).to_csv(path, index=False)
    rid, result, events = run_with(store, tfidf_config(data=DataConfig(source=str(path))))
    assert result is None
    row = store.get(rid)
    assert row["status"] == "failed" and "no words in the training texts" in row["error"]
    assert "\n" not in row["error"]


def test_tfidf_baseline_cannot_be_resumed(store):

    from peft_tui.config import ConfigError
    from peft_tui.engine.checkpoint import prepare_resume

    cfg = tfidf_config(data=DataConfig(size=60))
    rid, result, _ = run_with(store, cfg)
    with pytest.raises(ConfigError, match="cannot be resumed: it finished"):
        prepare_resume(store, rid)
    assert execute(store, rid, cfg, store, resume=True) is None  # resume asked for anyway
    row = store.get(rid)
    assert row["status"] == "failed" and "keeps no checkpoint to resume from" in row["error"]
    with pytest.raises(ConfigError, match="baseline, which keeps no checkpoint"):
        prepare_resume(store, rid)


def test_tfidf_baseline_has_no_model_to_predict_with(store):

    from peft_tui.config import ConfigError
    from peft_tui.engine.artifacts import export_run, load_run

    rid, result, _ = run_with(store, tfidf_config(data=DataConfig(size=60)))
    assert result is not None
    with pytest.raises(ConfigError, match="baseline: it keeps no model"):
        load_run(store, rid)
    with pytest.raises(ConfigError, match="baseline: it keeps no model"):
        export_run(store, rid, store.root / "out")
