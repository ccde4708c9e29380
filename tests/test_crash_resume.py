"""Crashes and resume: kill -9 -> `interrupted`; epoch-end checkpoints; `resume` continues with the same
weights, optimizer, scheduler and RNG states (the curve is continuous and matches an uninterrupted run);
the SQLite store survives writers killed mid-transaction and concurrent writers lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.engine import checkpoint, trainer
from peft_tui.engine.events import StepLogged, fan_out
from peft_tui.engine.scheduler import Scheduler
from peft_tui.engine.store import Store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


@pytest.fixture()
def log_every_step(monkeypatch):
    monkeypatch.setattr(trainer, "LOG_INTERVAL_S", 0.0)


def _cancel_at(step: int, cancel: threading.Event):
    def sink(event):
        if isinstance(event, StepLogged) and event.step >= step:
            cancel.set()
    return sink


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tmp_path, log_every_step):
    cfg = tiny_config(method="lora", epochs=3)  # 84 training rows, batch 16: 6 steps an epoch
    a = Store(tmp_path / "a")
    ra = a.create_run(cfg)
    full = trainer.execute(a, ra, cfg, a)
    assert full is not None

    b = Store(tmp_path / "b")
    rb = b.create_run(cfg)
    cancel = threading.Event()
    assert trainer.execute(b, rb, cfg, fan_out(b, _cancel_at(8, cancel)), cancel) is None  # stopped in epoch 2
    assert b.get(rb)["status"] == "cancelled"
    ckpt = checkpoint.find(b.run_dir(rb))
    assert ckpt is not None and json.loads((ckpt / "meta.json").read_text())["step"] == 6
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "state.pt", "weights.safetensors"]
    assert max(s for s, _ in b.series(rb, "train_loss")) >= 8  # logged past the checkpoint before the stop

    config = checkpoint.prepare_resume(b, rb)
    assert [s for s, _ in b.series(rb, "train_loss")] == list(range(1, 7))  # trimmed back to the checkpoint
    resumed = trainer.execute(b, rb, config, b, resume=True)
    assert resumed is not None and b.get(rb)["status"] == "done"
    assert b.series(rb, "train_loss") == a.series(ra, "train_loss")  # same steps, same values
    assert resumed.accuracy == full.accuracy and resumed.test_loss == full.test_loss
    assert resumed.steps == full.steps == 18
    assert checkpoint.find(b.run_dir(rb)) is None  # a finished run keeps its final weights only


def _stopped_run(store, cfg, at_step: int) -> int:
    """A run trained in this process and cancelled at `at_step` (before any worker pool exists: a created
    run is queued, and a live worker would claim it too)."""
    rid = store.create_run(cfg)
    cancel = threading.Event()
    trainer.execute(store, rid, cfg, fan_out(store, _cancel_at(at_step, cancel)), cancel)
    assert store.get(rid)["status"] == "cancelled"
    return rid


@pytest.mark.slow
def test_scheduler_resume_and_refusals(store, log_every_step):
    cfg = tiny_config(method="bitfit", epochs=2)  # 6 steps an epoch
    in_epoch_2 = _stopped_run(store, cfg, 7)
    in_epoch_1 = _stopped_run(store, cfg, 2)  # no checkpoint yet
    sched = Scheduler(store, devices=["cpu"])
    try:
        rid = sched.submit(tiny_config(method="bitfit", epochs=2))
        assert sched.wait_idle(120)
        with pytest.raises(Exception, match="cannot be resumed: it finished"):
            sched.resume(rid)
        assert sched.resume(in_epoch_2) == in_epoch_2
        assert sched.wait_idle(120)
        row = store.get(in_epoch_2)
        assert row["status"] == "done" and row["result"]["steps"] == 12
        steps = [s for s, _ in store.series(in_epoch_2, "train_loss")]
        assert steps[:6] == list(range(1, 7)) and steps[-1] == 12  # continued from the checkpoint at step 6
        assert steps == sorted(set(steps))
        with pytest.raises(Exception, match="has no checkpoint"):
            sched.resume(in_epoch_1)
    finally:
        sched.shutdown()


def test_checkpoint_write_is_atomic(tmp_path):
    """A kill between the two renames leaves `checkpoint.old`, which is still found and complete."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint.old").mkdir(parents=True)
    (run_dir / "checkpoint.old" / "meta.json").write_text('{"step": 6}')
    (run_dir / "checkpoint.tmp-123").mkdir()  # a half-written one: ignored
    assert checkpoint.find(run_dir) == run_dir / "checkpoint.old"


@pytest.mark.slow
def test_damaged_checkpoint_is_one_line(tmp_path, log_every_step):
    st = Store(tmp_path / "s")
    cfg = tiny_config(method="bitfit", epochs=2)
    rid = st.create_run(cfg)
    cancel = threading.Event()
    trainer.execute(st, rid, cfg, fan_out(st, _cancel_at(7, cancel)), cancel)
    ckpt = checkpoint.find(st.run_dir(rid))
    (ckpt / "state.pt").write_bytes(b"garbage")
    config = checkpoint.prepare_resume(st, rid)
    assert trainer.execute(st, rid, config, st, resume=True) is None
    row = st.get(rid)
    assert row["status"] == "failed" and "is damaged" in row["error"] and "\n" not in row["error"]


# ------------------------------------------------------------------------------- kill -9 a real run
@pytest.mark.slow
@pytest.mark.usefixtures("worker_processes")
def test_kill_9_during_a_run_then_resume(tmp_path):
    """SIGKILL the process training the run (the worker's child): the run fails with the reason, the command
    that queued it exits 1 with one line, and `resume` continues from the last checkpoint."""
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "peft_tui.cli", "run", "--method", "lora", "--model", "tiny", "--device", "cpu",
           "--set", "data.size=600", "--epochs", "8", "--batch-size", "16", "--store", str(store), "--json"]
    proc = subprocess.Popen(cmd, env={**ENV, "PEFT_TUI_INPROCESS_POOL": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 180
    row = None
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read().decode()
            if not (store / "runs.db").exists():
                continue
            rows = Store(store).list()
            row = rows[0] if rows else None
            if row and row["status"] == "running" and list((store / "runs").glob("*/checkpoint/meta.json")):
                if row["step"] > 30 and row["pid"]:  # past the first checkpoint (27 steps an epoch)
                    break
        else:
            pytest.fail("the run did not reach its second epoch in time")
        killed_at = row["step"]
        os.kill(row["pid"], signal.SIGKILL)
        out, err = (b.decode() for b in proc.communicate(timeout=60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert json.loads(out)["error"].startswith("killed by SIGKILL"), out  # --json: the run's row
    st = Store(store)
    row = st.get(1)
    assert row["status"] == "failed" and row["error"].startswith("killed by SIGKILL"), row
    print(f"\nkilled at step {killed_at}; checkpoint at step "
          f"{json.loads((checkpoint.find(st.run_dir(1)) / 'meta.json').read_text())['step']}")

    from peft_tui.cli import app

    res = CliRunner().invoke(app, ["resume", "1", "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "done" and doc["result"]["steps"] == 8 * 27
    steps = [s for s, _ in st.series(1, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 8 * 27  # continuous: no repeats, counts on
    assert st.integrity() == "ok"


# ------------------------------------------------------------------------------- the store under kills
WRITER = r"""
import sys
from peft_tui.engine.store import Store
from peft_tui.engine.events import StepLogged
st = Store(sys.argv[1])
rid, n, stop = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
while n < stop:
    st(StepLogged(rid, n, 0.0, float(n), 1e-3, 1.0, 1.0))  # one transaction: run row + 3 metric rows
    print(n, flush=True)
    n += 1
"""


def _writer(store: Path, rid: int, start: int, stop: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(rid), str(start), str(stop)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_store_survives_writers_killed_mid_write(tmp_path):
    store = tmp_path / "s"
    st = Store(store)
    rid = st.create_run(tiny_config())
    rng = random.Random(0)
    committed: set[int] = set()
    start = 0
    for _ in range(8):
        proc = _writer(store, rid, start, 10**9)
        first = proc.stdout.readline()  # started writing
        assert first, proc.stderr.read()
        committed.add(int(first))
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        committed |= {int(x) for x in proc.stdout.read().split()}  # the same buffered reader as readline()
        proc.stdout.close()
        proc.stderr.close()
        start = max(committed) + 2  # the step after the last printed one may or may not be committed
    st = Store(store)
    assert st.integrity() == "ok"
    stored = [s for s, _ in st.series(rid, "train_loss")]
    assert len(stored) == len(set(stored))
    assert committed <= set(stored), f"lost {sorted(committed - set(stored))[:5]}"
    assert len(set(stored) - committed) <= 8  # at most the one in flight at each kill
    for name in ("lr", "samples_per_s"):
        assert len(st.series(rid, name)) == len(stored)  # every transaction whole, never partial
    print(f"\n{len(committed)} committed writes across 8 kills, integrity ok")


def test_two_writers_and_a_reader_lose_nothing(tmp_path):
    store = tmp_path / "s"
    st = Store(store)
    r1 = st.create_run(tiny_config())
    r2 = st.create_run(tiny_config())
    n = 300
    procs = [_writer(store, r1, 0, n), _writer(store, r2, 0, n)]
    reads, errors = 0, []
    reader = Store(store)
    while any(p.poll() is None for p in procs):
        try:
            reader.list()
            reader.series(r1, "train_loss")
            reader.changed_since(0)
            reads += 1
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "locked" not in err and not err.strip(), err
        assert len(out.split()) == n
    assert not errors
    for rid in (r1, r2):
        assert [s for s, _ in reader.series(rid, "train_loss")] == list(range(n))
        assert reader.get(rid)["step"] == n - 1
    assert reader.integrity() == "ok" and reads > 0
