"""Runs through Ray: a local instance (`ray.init(num_cpus=2)`, started once for the module: ~11 s) and the
tiny model. The store stays here; events and weights come back from the Ray tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine.events import RunFinished, RunStarted, read_events
from peft_tui.engine.launch import ray as on_ray
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_run_through_ray_ends_done_with_its_metrics_and_weights_here(tmp_path, local_ray):
    store = Store(tmp_path / "s")
    run_id = store.create_run(tiny_config(method="lora", data=DataConfig(size=60), device="auto"))

    on_ray.submit(store, [run_id], None)

    row = store.get(run_id)
    assert row["status"] == "done", row["error"]
    assert row["worker"].endswith(":ray") and row["device"] == "cpu"
    assert [s for s, _ in store.series(run_id, "val_accuracy")] == [row["result"]["steps"]]
    assert store.series(run_id, "train_loss") and store.series(run_id, "test_accuracy")
    events = read_events(store.events_path(run_id))
    assert sum(isinstance(e, RunStarted) for e in events) == 1 and isinstance(events[-1], RunFinished)
    # the adapter came back into the run's folder, the checkpoint did not (the run finished)
    saved = {p.relative_to(store.run_dir(run_id)).as_posix() for p in store.run_dir(run_id).rglob("*") if p.is_file()}
    assert any(name.endswith(".safetensors") for name in saved), saved
    assert not any(name.startswith("checkpoint") for name in saved), saved
    assert row["result"]["memory_kind"] == "peak RSS of the run's own process"
    assert row["startup_s"] > 0 and row["result"]["extra"]["worker_startup_s"] == pytest.approx(row["startup_s"], abs=1e-3)


@pytest.mark.slow
def test_cancel_reaches_a_run_on_ray(tmp_path, local_ray):
    store = Store(tmp_path / "s")
    run_id = store.create_run(tiny_config(method="full", data=DataConfig(size=3000), batch_size=8, epochs=5))
    driver = threading.Thread(target=on_ray.submit, args=(store, [run_id], None))
    driver.start()
    deadline = time.monotonic() + WAIT_S
    while (store.get(run_id)["step"] or 0) == 0 and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.request_cancel(run_id)
    driver.join(WAIT_S)
    assert not driver.is_alive()
    row = store.get(run_id)
    assert row["status"] == "cancelled", row["error"]
    assert 0 < row["step"] < row["total_steps"]


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'peft-tui\[ray\]'"):
        on_ray.require_ray()
    hide = ("import sys; sys.modules['ray'] = None; from peft_tui.engine.launch.ray import main; "
            f"sys.exit(main(['--store', {str(tmp_path / 's')!r}, '--address', 'auto']))")
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --ray needs Ray, which is not installed: "
                                               "pip install 'peft-tui[ray]'"]


@pytest.mark.slow
def test_a_two_process_run_goes_through_ray_train(tmp_path, local_ray):
    """nproc=2: Ray Train's TorchTrainer with 2 gloo workers (the module's 2 CPUs); rank 0 reports."""
    store = Store(tmp_path / "s")
    run_id = store.create_run(tiny_config(method="lora", data=DataConfig(size=60), nproc=2))

    on_ray.submit(store, [run_id], None)

    row = store.get(run_id)
    assert row["status"] == "done", row["error"]
    assert row["result"]["steps"] == 3  # 42 train examples in global batches of 16, as on one process
    events = read_events(store.events_path(run_id))
    assert sum(isinstance(e, RunStarted) for e in events) == 1 and isinstance(events[-1], RunFinished)
    assert (store.run_dir(run_id) / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_the_dashboard_with_ray_trains_its_runs_on_the_cluster(tmp_path, local_ray):
    """`peft-tui launch --ray auto`: a run queued from the form goes to Ray, and the dashboard shows it done."""
    import asyncio

    from peft_tui.config import RunConfig
    from peft_tui.ui.app import create_app

    template = RunConfig(model="tiny", method="lora", data=DataConfig(size=60), epochs=1, batch_size=16)
    app = create_app(store=tmp_path / "s", template=template, poll_s=0.3, ray="auto")

    async def drive():
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("n")
            await pilot.pause()
            await pilot.press("ctrl+s")
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and not any(r["status"] == "done" for r in app.state.runs.values()):
                await pilot.pause(0.3)

    asyncio.run(drive())
    rows = Store(tmp_path / "s").list()
    assert [r["status"] for r in rows] == ["done"], [r["error"] for r in rows]
    assert rows[0]["worker"].endswith(":ray")


def test_a_ray_driver_that_fails_fails_the_runs_it_held_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(on_ray, "require_ray", lambda: None)

    def broken(*a, **k):
        raise RuntimeError("the cluster went away\nand more")

    monkeypatch.setattr(on_ray, "run_queue", broken)
    store = Store(tmp_path / "s")
    ids = [store.create_run(tiny_config(method="lora")) for _ in range(2)]
    pool = on_ray.RayPool(store, "auto", ids).start()
    pool.release(timeout=30)
    rows = store.list()
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert {r["error"] for r in rows} == {"Ray: RuntimeError: the cluster went away"}
