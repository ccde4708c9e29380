"""One run over several processes: torchrun starts the ranks, gloo on CPU, the tiny model. The 2-process
run takes the same global batches as the 1-process run, ends close to it, and is recorded once."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from hypothesis import given
from hypothesis import strategies as st

from peft_tui.config import DataConfig
from peft_tui.engine.batching import shard
from peft_tui.engine.events import JsonlSink, RunFinished, RunStarted, fan_out, read_events
from peft_tui.engine.launch import ddp
from peft_tui.engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300
# the final test loss of the 2-process run against the 1-process run: the gradients are the same but for
# dropout, whose masks each rank draws for its half of a batch (measured: about 1e-3 apart)
LOSS_TOLERANCE = 0.02


def claim(store: Store, config) -> int:
    """Queue a run and claim it as a worker would before handing it to ddp.launch."""
    run_id = store.create_run(config)
    claimed = store.claim(f"{socket.gethostname()}:{os.getpid()}:cpu", os.getpid(), socket.gethostname(), ["cpu"])
    assert claimed is not None and claimed.run_id == run_id
    return run_id


def files_of(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ shards
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True), st.integers(1, 8),
       st.lists(st.floats(0, 10), min_size=40, max_size=40))
def test_shards_split_a_batch_and_weigh_it_like_one_process(batch, world, losses):
    shares = [shard(batch, r, world) for r in range(world)]
    real = [mine for mine, weight in shares if weight > 0]
    assert sorted(i for mine in real for i in mine) == sorted(batch)  # every example once, on one rank
    assert max(len(m) for m, _ in shares) - min(len(m) for m, _ in shares) <= 1
    # DDP averages the ranks' gradients: the weighted shares' losses average to the whole batch's mean
    loss = {i: losses[k] for k, i in enumerate(batch)}
    ddp_mean = sum(w * sum(loss[i] for i in m) / len(m) for m, w in shares) / world
    assert ddp_mean == pytest.approx(sum(loss.values()) / len(batch), rel=1e-9, abs=1e-12)


def test_one_process_takes_the_whole_batch():
    assert shard([5, 3, 9], 0, 1) == ([5, 3, 9], 1.0)


# ------------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_two_gloo_processes_train_like_one_and_record_once(tmp_path):
    from peft_tui.engine.trainer import execute

    store = Store(tmp_path / "s")
    # head_init=random: the loss of a probe-fitted head on the random tiny model is too sensitive to compare
    config = tiny_config(method="full", data=DataConfig(size=150), batch_size=16, epochs=2, seed=3, eval_every=5,
                         lr=3e-3, head_init="random")
    one = store.create_run(dataclasses.replace(config, name="one"))
    execute(store, one, config, fan_out(store, JsonlSink(store.events_path(one))))
    two = claim(store, dataclasses.replace(config, name="two", nproc=2))

    assert ddp.launch(store.root, two, 2, "cpu") == 0

    rows = {i: store.get(i) for i in (one, two)}
    assert [rows[i]["status"] for i in (one, two)] == ["done", "done"], rows[two]["error"]
    r1, r2 = rows[one]["result"], rows[two]["result"]
    assert r2["sizes"] == r1["sizes"] == {"train": 106, "val": 22, "test": 22}
    assert r2["steps"] == r1["steps"] == 2 * 7  # same global batch: 106 train examples, 16 a batch
    assert abs(r2["test_loss"] - r1["test_loss"]) < LOSS_TOLERANCE
    # evaluations at the same steps (every 5, and at epoch ends), each recorded once
    assert [s for s, _ in store.series(two, "val_loss")] == [s for s, _ in store.series(one, "val_loss")] \
        == [5, 7, 10, 14]
    steps = [s for s, _ in store.series(two, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 14  # no step twice
    events = read_events(store.events_path(two))
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    assert sum(isinstance(e, RunFinished) for e in events) == 1
    # weights written once, by rank 0: the same files as the 1-process run, no checkpoint left behind
    assert files_of(store.run_dir(two)) - {ddp.LOG_NAME} == files_of(store.run_dir(one))
    assert rows[two]["startup_s"] is not None and rows[two]["startup_s"] > 0
    # every rank's own peak (its process's RSS), the run's figure the largest of them
    peaks = r2["extra"]["rank_peak_mb"]
    assert len(peaks) == 2 and all(50 < p < 8000 for p in peaks)
    assert r2["peak_memory_mb"] == pytest.approx(max(peaks), abs=0.1)
    assert r2["memory_kind"] == "peak RSS, the largest of 2 ranks" and "rank_peak_mb" not in r1["extra"]


def worker(root) -> subprocess.Popen:
    """A worker process, as the pool starts one: it hands a run with nproc > 1 to ddp.launch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "peft_tui.engine.launch.worker", "--store", str(root),
                             "--exit-when-idle"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_training(store: Store, run_id: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while (store.get(run_id)["step"] or 0) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, store.get(run_id)
        time.sleep(0.2)


def slow(**kw):
    return tiny_config(method="full", data=DataConfig(size=3000), batch_size=8, epochs=5, nproc=2, **kw)


@pytest.mark.slow
def test_cancel_through_the_store_stops_every_rank(tmp_path):
    store = Store(tmp_path / "s")
    run_id = store.create_run(slow())
    proc = worker(store.root)
    wait_training(store, run_id, proc)
    assert store.request_cancel(run_id)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out[-3000:]
    row = store.get(run_id)
    assert row["status"] == "cancelled", row["error"]
    assert 0 < row["step"] < row["total_steps"]


@pytest.mark.slow
def test_sigterm_to_the_worker_cancels_its_torchrun_run_and_stops_it(tmp_path):
    store = Store(tmp_path / "s")
    run_id, next_id = store.create_run(slow(name="first")), store.create_run(slow(name="next"))
    proc = worker(store.root)
    wait_training(store, run_id, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out[-3000:]
    assert store.get(run_id)["status"] == "cancelled", store.get(run_id)["error"]
    assert store.get(next_id)["status"] == "queued"  # the worker stopped instead of going on


@pytest.mark.slow
def test_more_gpus_than_the_machine_has_fails_the_run_in_one_line(tmp_path):
    store = Store(tmp_path / "s")
    run_id = claim(store, tiny_config(method="full", nproc=2))
    assert ddp.launch(store.root, run_id, 2, "cuda") != 0
    row = store.get(run_id)
    assert row["status"] == "failed"
    assert "asks for 2 GPUs" in row["error"] and "\n" not in row["error"]


@given(pool=st.lists(st.sampled_from("01234567"), min_size=1, max_size=8, unique=True),
       own_index=st.integers(0, 7), nproc=st.integers(1, 10))
def test_a_multi_gpu_run_widens_its_workers_view_to_the_pools_gpus(pool, own_index, nproc):
    """A LocalPool worker sees one GPU; a run over N GPUs it claims gets its own GPU first (rank 0 is
    where the worker was), then the pool's next ones, never one twice, never one outside the pool."""
    own = pool[own_index % len(pool)]
    env = {"CUDA_VISIBLE_DEVICES": own, ddp.POOL_GPUS_ENV: ",".join(pool)}
    got = ddp.gpus_for_run(nproc, env)
    if nproc == 1:
        assert got is None  # one GPU is what the worker already sees
        return
    ranks = got.split(",")
    assert ranks[0] == own and len(set(ranks)) == len(ranks) and set(ranks) <= set(pool)
    assert len(ranks) == min(nproc, len(pool))  # more than the pool has: all of them, and the ranks refuse
    assert ranks[1:] == [g for g in pool if g != own][: nproc - 1]
    assert ddp.gpus_for_run(nproc, {"CUDA_VISIBLE_DEVICES": own}) is None  # no pool list: left as it is


def test_the_pool_tells_its_gpu_workers_every_gpu_it_has(tmp_path, monkeypatch):
    from peft_tui.engine.launch import local

    started = []

    class FakePopen:
        def __init__(self, cmd, env, **kw):
            started.append((cmd, env))

    monkeypatch.setattr(local.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # the machine's GPUs 4-6 are this process's cuda:0-2
    monkeypatch.delenv(ddp.POOL_GPUS_ENV, raising=False)
    pool = local.LocalPool(tmp_path / "s", devices=["cuda:0", "cuda:1", "cuda:2"])
    for device in ("cuda:1", "cpu"):
        pool._spawn(device)
    (cmd, env), (_, cpu_env) = started
    assert cmd[cmd.index("--device") + 1] == "cuda:1"
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env[ddp.POOL_GPUS_ENV] == "4,5,6"
    assert ddp.gpus_for_run(2, env) == "5,4" and ddp.gpus_for_run(3, env) == "5,4,6"
    assert ddp.POOL_GPUS_ENV not in cpu_env  # a CPU worker's runs use gloo processes, no GPU list
