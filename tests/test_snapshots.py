"""Snapshot tests of the screens a user sees first (pytest-textual-snapshot): the main screen, the
Results tab, a run's details and the new-run form, at 80x24 and 160x48.

Each starts the real app (`create_app`) on a store filled through the store's own API with runs that
never trained: two finished, one running, a TF-IDF baseline, a failed and a queued run, with their
curves. The clock is frozen, so elapsed times and ETAs come out the same on every machine.

After an intended change to a screen: `pytest tests/test_snapshots.py --snapshot-update`, then look at
the SVGs in tests/__snapshots__/test_snapshots/ before committing them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import pytest

pytest.importorskip("pytest_textual_snapshot")

from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.events import EvalLogged, MemorySampled, RunFailed, RunFinished, RunStarted, StepLogged
from peft_tui.engine.result import RunResult, efficiency
from peft_tui.engine.store import Store
from peft_tui.ui.app import create_app

T0 = 1_750_000_000.0  # the frozen clock starts here
SIZES = [(80, 24), (160, 48)]
EPOCHS, STEPS_PER_EPOCH = 3, 50
TOTAL_PARAMS = 22_713_218  # MiniLM-L6 with a two-class head


class Clock:
    """Stands in for time.time: moves only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _curve(step: int, final_loss: float) -> float:
    """A falling training loss with a little deterministic noise."""
    return final_loss + (0.69 - final_loss) * math.exp(-step / 30) + 0.02 * math.sin(step)


def _train(store: Store, clock: Clock, rid: int, name: str, method: str, trainable: int, accs: list[float],
           final_loss: float, mem_mb: float, upto: int) -> None:
    """Log a run's events up to step `upto`: losses every 5 steps, memory, validation at epoch ends."""
    total = EPOCHS * STEPS_PER_EPOCH
    store(RunStarted(rid, name, method, total, EPOCHS, trainable, TOTAL_PARAMS, "cpu", "fp32", 1680, 2))
    for step in range(5, upto + 1, 5):
        clock.now += 2.0
        elapsed = clock.now - T0
        store(StepLogged(rid, step, step / STEPS_PER_EPOCH, _curve(step, final_loss), 1e-4, 48.0, elapsed))
        store(MemorySampled(rid, step, elapsed, "cpu", mem_mb + 40 * math.sin(step / 20), mem_mb + 40))
        if step % STEPS_PER_EPOCH == 0:
            epoch = step // STEPS_PER_EPOCH
            acc = accs[epoch - 1]
            store(EvalLogged(rid, step, float(epoch), "val", 0.7 * (1 - acc), acc, acc - 0.004))


def _result(rid: int, name: str, method: str, acc: float, trainable: int, time_s: float, mem_mb: float | None,
            pct: float | None, **fields) -> dict:
    fields = {"model": "minilm", "steps": EPOCHS * STEPS_PER_EPOCH, "epochs_done": EPOCHS, **fields}
    return RunResult(run_id=rid, name=name, method=method, data="synthetic", accuracy=acc, f1=acc - 0.003,
                     val_accuracy=acc, trainable_params=trainable, total_params=TOTAL_PARAMS, trainable_pct=pct,
                     train_time_s=time_s, samples_per_s=1680 * EPOCHS / time_s, peak_memory_mb=mem_mb,
                     memory_kind="process RSS", device="cpu", precision="fp32",
                     efficiency=efficiency(acc, trainable), **fields).to_dict()


def fill_store(root, clock: Clock) -> Store:
    """A store as a comparison leaves it part way: written through the store API, nothing trained."""
    store = Store(root)
    template = RunConfig(model="minilm", data=DataConfig(), epochs=EPOCHS)

    def create(method: str, **kw) -> int:
        clock.now += 1.0
        return store.create_run(dataclasses.replace(template, method=method, **kw))

    full = create("full")
    _train(store, clock, full, "full", "full", TOTAL_PARAMS, [0.91, 0.98, 0.995], 0.02, 1450.0, 150)
    store(RunFinished(full, _result(full, "full", "full", 0.994, TOTAL_PARAMS, 310.0, 1490.0, 100.0)))

    lora = create("lora")
    trainable = 74_498
    _train(store, clock, lora, "lora", "lora", trainable, [0.82, 0.95, 0.985], 0.05, 690.0, 150)
    store(RunFinished(lora, _result(lora, "lora", "lora", 0.986, trainable, 180.0, 730.0,
                                    100 * trainable / TOTAL_PARAMS)))

    # the baseline as older versions stored it: "100%" trainable and the whole process's RSS
    base = store.create_run(RunConfig(method="tfidf", model="tfidf+logreg", data=template.data, name="tfidf"))
    store(RunStarted(base, "tfidf", "tfidf", 0, 1, 9_802, 9_802, "cpu", "fp32", 1680, 2))
    store(RunFinished(base, _result(base, "tfidf", "tfidf", 0.897, 9_802, 1.4, 2210.0, 100.0,
                                    model="tfidf+logreg", steps=0, epochs_done=0)))

    failed = create("bitfit", model="no-such-model", name="bitfit-typo")
    store(RunFailed(failed, "model 'no-such-model' could not be fetched: use minilm, tiny, a local folder or a hub id"))

    running = create("adapters")
    _train(store, clock, running, "adapters", "adapters", 298_370, [0.88, 0.97, 0.99], 0.04, 760.0, 90)

    create("lora", params={"r": 16}, name="lora-r16")
    clock.now += 5.0
    return store


@pytest.fixture
def dashboard(tmp_path, monkeypatch):
    """A factory of apps over a freshly filled store, with a frozen clock and a fixed device line."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    monkeypatch.setattr("peft_tui.engine.memory.device_description", lambda device: "CPU (test machine)")
    monkeypatch.setattr("peft_tui.ui.screens.new_run.ESTIMATE_DELAY_S", 3600.0)  # the form's estimate: machine-dependent
    monkeypatch.chdir(tmp_path)  # the store's path shows as "peft-runs"
    fill_store(tmp_path / "peft-runs", clock)

    def make():
        template = RunConfig(model="minilm", data=DataConfig(), epochs=EPOCHS)
        return create_app(store=tmp_path / "peft-runs", template=template, devices=["cpu"], poll_s=0.1)

    return make


async def loaded(pilot) -> None:
    """Wait until the first poll has filled the tables and the curves, then draw everything."""
    app = pilot.app
    deadline = time.monotonic() + 120  # a bound for a broken poll, not a pause
    while time.monotonic() < deadline:
        if len(app.state.runs) == 6 and len(app.state.loss) == 3 and app.device_text == "CPU (test machine)":
            break
        await pilot.pause(0.05)
    assert len(app.state.runs) == 6 and len(app.state.loss) == 3, "the store never reached the dashboard"
    app.main.refresh_all()
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(dashboard, snap_compare, size):
    assert snap_compare(dashboard(), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_results_tab(dashboard, snap_compare, size):
    async def results(pilot) -> None:
        await loaded(pilot)
        await pilot.press("2")
        await pilot.pause(0.1)

    assert snap_compare(dashboard(), terminal_size=size, run_before=results)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_details_screen(dashboard, snap_compare, size):
    async def details(pilot) -> None:
        await loaded(pilot)
        pilot.app.main.query_one("#queue").move_cursor(row=2)  # the TF-IDF baseline
        await pilot.press("enter")
        await pilot.pause(0.1)

    assert snap_compare(dashboard(), terminal_size=size, run_before=details)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_form(dashboard, snap_compare, size):
    async def form(pilot) -> None:
        await loaded(pilot)
        await pilot.press("n")
        await pilot.pause(0.1)

    assert snap_compare(dashboard(), terminal_size=size, run_before=form)


def test_filled_store_is_what_the_snapshots_show(tmp_path, monkeypatch):
    """The snapshots are only as good as their data: check the store holds the runs they claim."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    store = fill_store(tmp_path / "peft-runs", clock)
    rows = {r["name"]: r for r in store.list()}
    assert {n: r["status"] for n, r in rows.items()} == {
        "full": "done", "lora": "done", "tfidf": "done", "bitfit-typo": "failed", "adapters": "running",
        "lora-r16": "queued"}
    assert rows["adapters"]["step"] == 90 and rows["adapters"]["total_steps"] == 150
    assert rows["adapters"]["pid"] == os.getpid()  # alive: the dashboard must not mark it interrupted
    losses = [v for _, v in store.series(rows["full"]["id"], "train_loss")]
    assert len(losses) == 30 and losses[-1] < 0.1 and losses[0] > 0.5
    assert [v for _, v in store.series(rows["lora"]["id"], "val_accuracy")] == [0.82, 0.95, 0.985]


def test_pareto_points_visible_at_80x24(dashboard):
    """On the smallest terminal every method's marker is on the plot (the legend is a line of its own)."""
    import asyncio
    import re

    from peft_tui.ui.widgets.charts import MARKERS

    async def check() -> None:
        app = dashboard()
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("2")
            await pilot.pause(0.2)
            chart = app.main.query_one("#pareto")
            plot = re.sub(r"\x1b\[[0-9;]*m", "", chart.plt.build())
            inside = "\n".join(line.split("┤", 1)[-1] for line in plot.splitlines() if "┤" in line or "│" in line)
            for marker in MARKERS[1:4]:  # full, lora, tfidf: three methods, sorted by name
                assert marker in inside, f"marker {marker!r} hidden at 80x24:\n{plot}"
            legend = str(app.main.query_one("#pareto-legend").render())
            assert "full" in legend and "tfidf" in legend and "Pareto front: #3 tfidf, #2 lora, #1 full" in legend

    asyncio.run(check())
