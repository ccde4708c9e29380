"""Failures during a run: NaN loss -> `diverged` at its step; out of memory -> failed with a hint and the
memory released; any exception confined to its run while the queue goes on."""

from __future__ import annotations

import gc
import weakref

import pytest
from conftest import tiny_config

from peft_tui.engine import models, trainer
from peft_tui.engine.scheduler import Scheduler


def inject(monkeypatch, behaviours: list, refs: list | None = None):
    """Patch model loading: the i-th loaded model gets behaviours[i] (None, or (after_n_forwards, fn))
    as a forward hook on its classifier, active only in training mode."""
    real = models.load_model
    calls = {"n": 0}

    def load(*a, **kw):
        model = real(*a, **kw)
        i = calls["n"]
        calls["n"] += 1
        if refs is not None:
            refs.append(weakref.ref(model))
        spec = behaviours[i] if i < len(behaviours) else None
        if spec is not None:
            after, fn = spec
            seen = {"n": 0}

            def hook(module, inputs, output):
                if not module.training:
                    return None
                seen["n"] += 1
                return fn(output) if seen["n"] > after else None

            model.classifier.register_forward_hook(hook)
        return model

    monkeypatch.setattr(models, "load_model", load)


def nan(output):
    return output * float("nan")


def oom(output):
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")


def cuda_oom_runtime(output):
    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore lines of allocator detail")


def boom(output):
    raise ValueError("something unexpected inside the model")


@pytest.fixture(autouse=True)
def log_every_step(monkeypatch):
    monkeypatch.setattr(trainer, "LOG_INTERVAL_S", 0.0)


@pytest.mark.slow
def test_nan_loss_is_diverged_with_its_step(store, monkeypatch):
    inject(monkeypatch, [(2, nan)])  # the third training forward gives NaN logits
    cfg = tiny_config(method="full")
    rid = store.create_run(cfg)
    assert trainer.execute(store, rid, cfg, store) is None
    row = store.get(rid)
    assert row["status"] == "diverged"
    assert row["error"] == "loss became nan at step 3: lower the learning rate or use fp32"
    assert [s for s, _ in store.series(rid, "train_loss")] == [1, 2]  # nothing logged from the bad step


@pytest.mark.slow
def test_huge_learning_rate_diverges_or_finishes_cleanly(store):
    """lr=0.9 on full fine-tuning: whatever happens, the run ends in a final state with a one-line reason."""
    cfg = tiny_config(method="full", lr=0.9, grad_clip=0.0, epochs=2)
    rid = store.create_run(cfg)
    trainer.execute(store, rid, cfg, store)
    row = store.get(rid)
    assert row["status"] in ("done", "diverged")
    if row["status"] == "diverged":
        assert "at step" in row["error"] and "\n" not in row["error"]


@pytest.mark.slow
@pytest.mark.parametrize("fn", [oom, cuda_oom_runtime], ids=["OutOfMemoryError", "RuntimeError-CUDA-oom"])
def test_out_of_memory_fails_with_hint_and_releases_the_model(store, monkeypatch, fn):
    refs: list = []
    inject(monkeypatch, [(1, fn)], refs)
    cfg = tiny_config(method="full")
    rid = store.create_run(cfg)
    assert trainer.execute(store, rid, cfg, store) is None
    row = store.get(rid)
    assert row["status"] == "failed"
    assert row["error"].startswith("out of memory: ")
    assert "try a smaller batch_size, --precision bf16, or lora" in row["error"] and "\n" not in row["error"]
    gc.collect()
    assert refs and all(r() is None for r in refs), "the model of the failed run is still referenced"


def test_queue_goes_on_after_runs_that_fail_inside(store, tmp_path, monkeypatch):
    """Runs that fail inside their run (here: the loop raises) end `failed` with one line each, and the
    runs queued after them train. Problems that can be found before queueing (one class in the data, a
    max_length the model cannot take) are refused at submit, one line, nothing queued."""
    from peft_tui.config import DataConfig
    from peft_tui.engine import trainer
    from peft_tui.errors import ConfigError

    real_train = trainer.train

    def boom_for_some(config, *args, **kwargs):
        if config.name and config.name.startswith("boom"):
            raise RuntimeError("boom inside the loop\nsecond line")
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(trainer, "train", boom_for_some)
    one_class = tmp_path / "one_class.csv"
    one_class.write_text("text,label\n" + "".join(f"text number {i},same\n" for i in range(40)))
    sched = Scheduler(store, devices=["cpu"])
    try:
        with pytest.raises(ConfigError, match="single class"):
            sched.submit(tiny_config(method="full", name="bad-data", data=DataConfig(source=str(one_class))))
        with pytest.raises(ConfigError, match="512-token limit"):
            sched.submit(tiny_config(method="lora", name="too-long", max_length=4096))
        assert store.list() == []
        ids = [sched.submit(tiny_config(method="full", name="boom-1", head_init="random")),
               sched.submit(tiny_config(method="full", name="ok1", head_init="random")),
               sched.submit(tiny_config(method="lora", name="boom-2", head_init="random")),
               sched.submit(tiny_config(method="head", name="ok2"))]
        assert sched.wait_idle(timeout=300)
    finally:
        sched.shutdown()
    rows = [store.get(i) for i in ids]
    assert [r["status"] for r in rows] == ["failed", "done", "failed", "done"]
    assert all(r["error"] == "RuntimeError: boom inside the loop" for r in (rows[0], rows[2]))
    assert rows[1]["result"]["accuracy"] >= 0 and rows[3]["result"]["steps"] > 0
