"""Shared fixtures: the tiny random model and small data made here (never ../shared)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from peft_tui.engine.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture()
def tiny_model():
    from peft_tui.engine.models import load_model

    return load_model("tiny", num_labels=2, seed=0)


@pytest.fixture()
def batch(tiny_tokenizer):
    import torch

    texts = ["the screen is great", "the battery is not good at all", "although the fan is noisy, I love it",
             "terrible keyboard"]
    enc = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([1, 0, 1, 0])


@pytest.fixture()
def store(tmp_path):
    from peft_tui.engine.store import Store

    return Store(tmp_path / "store")


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    """Poll `condition` until it returns a true value (returned), failing after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what}")


def tiny_config(**kw):
    from peft_tui.config import DataConfig, RunConfig

    data = kw.pop("data", DataConfig(size=120))
    base = dict(model="tiny", epochs=1, batch_size=16, device="cpu", data=data)
    base.update(kw)
    return RunConfig(**base)


def trained_store(root, method: str):
    """A store at `root` holding one finished tiny run of `method` on 60 synthetic rows: (store, run id)."""
    from peft_tui.config import DataConfig
    from peft_tui.engine import trainer
    from peft_tui.engine.store import Store

    st = Store(root)
    cfg = tiny_config(method=method, data=DataConfig(size=60))
    rid = st.create_run(cfg)
    trainer.execute(st, rid, cfg, st)
    assert st.get(rid)["status"] == "done", st.get(rid)["error"]
    return st, rid


# The fast tier: the CLI's commands and the dashboard train their runs in a thread of the test process
# (engine/launch/inprocess.py) instead of worker processes; tests marked `slow` start real processes.
os.environ.setdefault("PEFT_TUI_INPROCESS_POOL", "1")
# no test leaves workers warm after its command (PEFT_TUI_KEEP_WARM, engine/launch/local.py): tests of
# keep-warm turn it on for themselves (tests/test_keep_warm.py); set at import, so subprocesses inherit it
os.environ["PEFT_TUI_KEEP_WARM"] = "0"
# the machine-wide figures (`--precision auto`'s bf16 against fp32, engine/estimate/calibrate.py) go to a folder of
# this session's, not the user's ~/.cache: the session's first CPU run with precision auto measures them once
os.environ["PEFT_TUI_CACHE_DIR"] = tempfile.mkdtemp(prefix="peft-tui-test-cache-")


def _pin_auto_precision() -> None:
    """The session's machine file says bf16 is no faster than fp32, so `auto` trains every test run in fp32 on
    any CPU. Measured, the choice followed the machine and its load (an AMX Xeon picks bf16 when quiet and fp32
    when busy) and so did the tests' numbers. Tests of the measurement use a fresh folder (test_precision_auto)."""
    import json

    from peft_tui.engine.estimate.calibrate import machine_key, machine_precision_path

    path = machine_precision_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({machine_key("cpu"): {"precision": {"fp32_s": 1.0, "bf16_s": 1.0, "loss_gap": 0.0}}}))


_pin_auto_precision()


@pytest.fixture()
def worker_processes(monkeypatch):
    """Real worker processes for this test (the slow tier's end-to-end checks)."""
    monkeypatch.setenv("PEFT_TUI_INPROCESS_POOL", "0")
