"""Pilot tests for the dashboard, on the tiny random BERT and small synthetic data (CPU, ~1 minute)."""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("textual")

from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.events import EvalLogged, MemorySampled, RunFinished, RunStarted, StepLogged
from peft_tui.engine.store import Store
from peft_tui.ui.app import create_app
from peft_tui.ui.screens.main import QuitScreen
from peft_tui.ui.screens.new_run import NewRunScreen
from peft_tui.ui.widgets.tables import QueueTable, ResultsTable

SIZE = (160, 48)
# runs that must still be training when the test acts on them: ~2 minutes on an idle 2-core CPU
# (tests cancel them; the app cancels what is left when it exits)
LONG_EPOCHS = 20


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a small, shared CI box OpenMP barriers make 2-thread steps far slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sync(fn):
    """Run an async pilot test without an async pytest plugin."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def make_app(tmp_path, **template):
    fields = {"model": "tiny", "data": DataConfig(size=200), "epochs": 1, "batch_size": 16, **template}
    return create_app(store=tmp_path / "store", template=RunConfig(**fields), devices=["cpu"], poll_s=0.3)


SLACK = 5  # a deadline only bounds a broken UI: a loaded 2-core machine runs several times slower than a quiet one


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "condition") -> None:
    timeout *= SLACK
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def queue_status(app, run_id: int) -> str:
    table = app.main.query_one("#queue", QueueTable)
    return str(table.get_cell(str(run_id), "status"))


def results(app) -> list[dict[str, str]]:
    table = app.main.query_one("#results", ResultsTable)
    keys = [c.key.value for c in table.ordered_columns]
    return [dict(zip(keys, map(str, table.get_row_at(i)))) for i in range(table.row_count)]


@sync
async def test_compare_preset_fills_results_and_exports(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: app.state.counts()["done"] == 4 and not app.state.active(), 90,
                       "three runs and the baseline to finish")
        await wait_for(pilot, lambda: len(results(app)) == 4, 10, "the results table to show the four runs")
        rows = results(app)
        methods = sorted(r["method"] for r in rows)
        assert methods == ["adapters", "full", "lora", "tfidf"]
        for r in rows:
            acc = float(r["accuracy"])
            assert 0.0 <= acc <= 100.0
            assert float(r["f1"]) >= 0.0
            assert r["trainable_params"] != "-"
        by_method = {r["method"]: r for r in rows}
        # LoRA and adapters train a small fraction of the parameters, full fine-tuning all of them
        assert float(by_method["full"]["trainable_pct"]) == pytest.approx(100.0)
        assert float(by_method["lora"]["trainable_pct"]) < 10.0
        assert float(by_method["adapters"]["trainable_pct"]) < 10.0
        # the baseline trains no share of the model and has no memory of its own to report
        assert by_method["tfidf"]["trainable_pct"] == "-" and by_method["tfidf"]["peak_memory_mb"] == "-"
        # the queue shows status in words (the table redraws at most twice a second: wait for it)
        await wait_for(pilot, lambda: all(queue_status(app, rid) == "✓ done" for rid in app.state.runs), 5,
                       "the table to show every run done")
        # live charts got one loss line per trained run
        assert len([r for r in app.state.plotted if r in app.state.loss]) == 3
        assert all(len(s) >= 1 for s in app.state.loss.values())

        # results sort by a column, then export to the store
        await pilot.press("2", "s")
        await pilot.pause()
        assert app.main.query_one("#results", ResultsTable).sort_key == "f1"
        await pilot.press("e")
        await pilot.pause()
        csv = (tmp_path / "store" / "results.csv").read_text().splitlines()
        md = (tmp_path / "store" / "results.md").read_text()
        assert len(csv) == 5 and csv[0].startswith("id,name,method,pooling,accuracy")
        assert "| lora |" in md.replace("  ", " ")
        assert "results.csv" in str(app.main.query_one("#lastlog").render())


@sync
async def test_cancel_and_retry_a_running_run(tmp_path):
    app = make_app(tmp_path, data=DataConfig(size=3000), epochs=LONG_EPOCHS)
    async with app.run_test(size=SIZE) as pilot:
        # the form opens with the template's values; ctrl+s queues it unchanged
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, NewRunScreen)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any(r["status"] == "running" and (r.get("step") or 0) >= 2
                                          for r in app.state.runs.values()), 60, "a run to be training")
        rid = next(iter(app.state.runs))
        await wait_for(pilot, lambda: "running" in queue_status(app, rid), 5, "the table to show it")

        # quitting with a run active asks: keep training, cancel them, or stay (escape)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main

        step_at_cancel = app.state.runs[rid]["step"]
        t0 = time.monotonic()
        await pilot.press("x")
        await wait_for(pilot, lambda: app.state.runs[rid]["status"] == "cancelled", 20, "the cancel")
        assert time.monotonic() - t0 < 10
        await wait_for(pilot, lambda: queue_status(app, rid) == "■ cancelled", 5, "the table to show it")
        stored = app.store.get(rid)
        assert stored["status"] == "cancelled"
        assert stored["step"] < stored["total_steps"] and stored["step"] >= step_at_cancel

        # retry queues a new run with the same config
        await pilot.press("r")
        await wait_for(pilot, lambda: len(app.state.runs) == 2, 10, "the retried run")
        new = max(app.state.runs)
        assert app.store.get(new)["config"] == stored["config"]
        await wait_for(pilot, lambda: app.state.runs[new]["status"] == "running", 30, "the retry to start")
        # cancelling happens on exit too: the app never leaves a run behind
    assert app.store.get(new)["status"] == "cancelled"


@sync
async def test_form_refuses_bad_values(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        assert isinstance(form, NewRunScreen)
        form.query_one("#in-epochs").value = "0"
        form.query_one("#in-lr").value = "-1"
        form.query_one("#in-batch_size").value = "lots"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form  # still open
        assert "not a valid int" in str(form.query_one("#error-batch_size").render())
        form.query_one("#in-batch_size").value = "16"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form
        assert "epochs=0 must be at least 1" in str(form.query_one("#error-epochs").render())
        form.query_one("#in-epochs").value = "2"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "lr=-1.0 is out of range" in str(form.query_one("#error-lr").render())
        # a method parameter is checked next to its own field
        form.query_one("#in-lr").value = ""
        form.query_one("#pin-r").value = "-4"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "must be positive" in str(form.query_one("#error-p-r").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.main, 10, "the form to close")
    assert app.store.list() == []
    assert app.state.runs == {}


@sync
async def test_run_from_another_process_appears_and_streams(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        other = Store(tmp_path / "store")  # another process's connection to the same store
        cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=200), name="headless-lora")
        rid = other.create_run(cfg)
        other(RunStarted(rid, "headless-lora", "lora", 40, 2, 1000, 100000, "cpu", "fp32", 140, 2))
        for step in range(1, 11):
            other(StepLogged(rid, step, step / 20, 0.7 - step * 0.01, 1e-4, 100.0, step * 0.1))
            other(MemorySampled(rid, step, step * 0.1, "cpu", 500.0 + step, 520.0))
        await wait_for(pilot, lambda: app.state.runs.get(rid, {}).get("step") == 10, 10, "the external run")
        await wait_for(pilot, lambda: "25%" in str(app.main.query_one("#queue", QueueTable).get_cell(str(rid), "progress")),
                       5, "the table to show it")
        assert queue_status(app, rid) == "▶ running"
        table = app.main.query_one("#queue", QueueTable)
        assert str(table.get_cell(str(rid), "name")) == "headless-lora"
        assert "25%" in str(table.get_cell(str(rid), "progress"))
        await wait_for(pilot, lambda: len(app.state.loss.get(rid, [])) == 10, 10, "its loss points")
        assert app.state.loss[rid].ys[-1] == pytest.approx(0.6)
        assert rid in app.state.plotted

        other(EvalLogged(rid, 20, 1.0, "val", 0.5, 0.75, 0.7))
        other(RunFinished(rid, {"accuracy": 0.8, "f1": 0.79, "trainable_params": 1000, "trainable_pct": 1.0,
                                "train_time_s": 2.0, "samples_per_s": 140.0, "peak_memory_mb": 520.0,
                                "efficiency": 80.0}))
        await wait_for(pilot, lambda: app.state.runs[rid]["status"] == "done", 10, "the external finish")
        await wait_for(pilot, lambda: queue_status(app, rid) == "✓ done", 5, "the table to show it")
        assert [r["accuracy"] for r in results(app)] == ["80.0"]
        assert app.state.acc[rid].ys == [75.0]


@sync
async def test_small_terminal_stacks_and_cycles_charts(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.main.has_class("-narrow")
        shown = [c.id for c in app.main.query(".chart") if c.display]
        assert shown == ["chart-loss"]
        await pilot.press("g")
        await pilot.pause()
        assert [c.id for c in app.main.query(".chart") if c.display] == ["chart-acc"]
        assert app.main.query_one("#queue").size.height >= 4
        await pilot.press("3")
        await pilot.pause()
        assert app.main.query_one("#tabs").active == "tab-log"


def test_engine_never_imports_the_ui():
    code = (
        "import sys\n"
        "import peft_tui.config, peft_tui.engine.scheduler, peft_tui.engine.store, peft_tui.engine.trainer\n"
        "import peft_tui.engine.events, peft_tui.engine.methods, peft_tui.report.table\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'textual_plotext')"
        " or m.startswith('peft_tui.ui')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@sync
async def test_failed_run_shows_its_error_and_the_queue_goes_on(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        bad = RunConfig(method="lora", model=str(tmp_path / "no-such-model"), data=DataConfig(size=200), epochs=1)
        good = RunConfig(method="lora", model="tiny", data=DataConfig(size=200), epochs=1, batch_size=16)
        app.submit([bad, good])
        await wait_for(pilot, lambda: len(app.state.runs) == 2 and not app.state.active(), 60, "both runs")
        first, second = sorted(app.state.runs)
        await wait_for(pilot, lambda: queue_status(app, first) == "✗ failed" and queue_status(app, second) == "✓ done",
                       5, "the table to show both")
        note = str(app.main.query_one("#queue", QueueTable).get_cell(str(first), "note"))
        error = app.state.runs[first]["error"]
        assert "could not be" in error and error.startswith(note.rstrip("…"))
        assert app.store.get(first)["error"] == error
        log_text = "\n".join(app.log_history)
        assert f"run {first}" in log_text and "could not be fetched" in log_text
        assert queue_status(app, second) == "✓ done"
        assert [r["method"] for r in results(app)] == ["lora"]
        assert "1 failed" in str(app.main.query_one("#topbar").render())

        # details of the failed run: its error and config, then back with escape
        table = app.main.query_one("#queue", QueueTable)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        from peft_tui.ui.screens.details import DetailsScreen

        assert isinstance(app.screen, DetailsScreen)
        body = str(app.screen.query_one("#details-body").render())
        assert "could not be fetched" in body and '"method": "lora"' in body
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main


@sync
async def test_remove_a_queued_run(tmp_path):
    app = make_app(tmp_path, data=DataConfig(size=3000), epochs=LONG_EPOCHS)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: [r["status"] for _, r in sorted(app.state.runs.items())] == ["running", "queued"],
                       30, "one running, one queued")
        queued = max(app.state.runs)
        assert app.main.query_one("#queue", QueueTable).selected_run() == queued  # cursor follows new rows
        await pilot.press("delete")
        await wait_for(pilot, lambda: queued not in app.state.runs, 10, "the removal")
        await wait_for(pilot, lambda: str(queued) not in app.main.query_one("#queue", QueueTable).rows, 10,
                       "the queue table to drop the row")
        assert [r["id"] for r in app.store.list()] == [min(app.state.runs)]


@sync
async def test_resume_key_continues_a_cancelled_run_from_its_checkpoint(tmp_path):
    """A run cancelled after its first epoch (so it has a checkpoint) resumes with `u` and finishes
    under the same id, its step count continuing from the checkpoint."""
    import threading

    from peft_tui.engine.events import fan_out
    from peft_tui.engine.trainer import execute

    store = Store(tmp_path / "store")
    cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=200), epochs=2, batch_size=16, device="cpu")
    rid = store.create_run(cfg)
    cancel = threading.Event()

    def stop_after_first_epoch(e):
        if isinstance(e, EvalLogged) and e.split == "val" and e.epoch == 1.0:
            cancel.set()

    execute(store, rid, cfg, fan_out(store, stop_after_first_epoch), cancel)
    assert store.get(rid)["status"] == "cancelled"
    steps_before = [s for s, _ in store.series(rid, "train_loss")]

    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: rid in app.state.runs, 20, "the stored run to show")
        table = app.main.query_one("#queue", QueueTable)
        table.focus()
        table.move_cursor(row=table.get_row_index(str(rid)))
        await pilot.press("u")
        await wait_for(pilot, lambda: app.state.runs[rid]["status"] == "done", 60, "the resumed run to finish")
    row = store.get(rid)
    assert row["status"] == "done" and row["result"]["steps"] == 2 * 9  # 140 train examples / 16 = 9 a epoch
    steps_after = [s for s, _ in store.series(rid, "train_loss")]
    assert steps_after[: len([s for s in steps_before if s <= 9])] == [s for s in steps_before if s <= 9]
    assert steps_after == sorted(set(steps_after)) and steps_after[-1] == 18


@sync
async def test_sweep_preset_draws_the_pareto_front(tmp_path):
    """`w` queues a LoRA rank sweep (r = 1..16); when it is done the Results tab lists the five runs
    and its chart draws them with the Pareto front."""
    from peft_tui.ui.widgets.charts import MARKERS, ParetoChart

    app = make_app(tmp_path, data=DataConfig(size=120))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("w")
        await wait_for(pilot, lambda: app.state.counts()["done"] == 5 and not app.state.active(), 120,
                       "the five sweep runs")
        await pilot.press("2")
        await pilot.pause(0.5)
        rows = results(app)
        assert sorted(r["name"] for r in rows) == [f"lora-r{r}" for r in (1, 16, 2, 4, 8)]
        counts = sorted(int(app.store.get(int(r["id"]))["result"]["trainable_params"]) for r in rows)
        assert counts == [2 * 2 * r * (64 + 64) + 130 for r in (1, 2, 4, 8, 16)]  # q,v: A + B per layer, + head
        # every run is a marker on the plot, the front a line under them; the legend sits outside the plot
        legend = str(app.main.query_one("#pareto-legend").render())
        assert "lora" in legend and "Pareto front: #" in legend
        plot = re.sub(r"\x1b\[[0-9;]*m", "", app.main.query_one("#pareto", ParetoChart).plt.build())
        assert MARKERS[1] in plot and "lora" not in plot


@sync
async def test_form_labels_fit_at_80_columns_for_every_method(tmp_path):
    """No label of the new-run form is cut on an 80x24 terminal, whichever method's parameters show."""
    from textual.widgets import Label, Select

    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        methods = [value for _, value in form.query_one("#in-method", Select)._options]
        assert "lora" in methods and "tfidf" not in methods  # the baseline comes with the compare preset
        for method in methods:
            form.query_one("#in-method", Select).value = method
            await wait_for(pilot, lambda m=method: f"{m} " in str(form.query_one("#params-title").render())
                           and all(label.parent.size.width for label in form.query(Label)), 10, f"{method}'s fields")
            # a label's own width follows its text; the field it sits in is what clips it
            labels = [(str(label.render()), label.parent.size.width) for label in form.query(Label)]
            cut = [(text, width) for text, width in labels if len(text) > width]
            assert labels and not cut, f"{method}: labels cut at 80 columns: {cut}"


def test_the_dashboard_goes_through_the_store_api():
    """No SQL and no status writes of its own: reads through Store queries, changes through the
    scheduler and the store's requests."""
    from pathlib import Path

    import peft_tui.ui

    for path in Path(peft_tui.ui.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for banned in ("sqlite3", "set_status", "SELECT ", "UPDATE ", "_conn("):
            assert banned not in text, f"{path.name} uses {banned!r}"


def test_poller_returns_only_what_is_new(tmp_path):
    """The first poll brings every run and the curves of those that ended; later polls only the new
    points of running runs, and nothing of runs whose events reach the app directly."""
    from peft_tui.ui.polling import StorePoller

    store = Store(tmp_path / "store")
    cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=120))
    done, running, streamed = (store.create_run(cfg) for _ in range(3))
    for rid in (done, running, streamed):
        store(RunStarted(rid, "r", "lora", 10, 1, 100, 1000, "cpu", "fp32", 84, 2))
        store(StepLogged(rid, 1, 0.1, 0.7, 1e-4, 10.0, 0.1))
    store(RunFinished(done, {"accuracy": 0.9}))
    poller = StorePoller(store, streamed={streamed})

    rows, points = poller.poll(time.time())
    assert sorted(r["id"] for r in rows) == [done, running, streamed]
    assert {k: [p[:2] for p in v] for k, v in points.items()} == {
        (done, "train_loss"): [(1, 0.7)], (running, "train_loss"): [(1, 0.7)]}

    store(StepLogged(running, 2, 0.2, 0.6, 1e-4, 10.0, 0.2))
    store(StepLogged(streamed, 2, 0.2, 0.6, 1e-4, 10.0, 0.2))
    _, points = poller.poll(time.time())
    assert {k: [p[:2] for p in v] for k, v in points.items()} == {(running, "train_loss"): [(2, 0.6)]}


def test_the_log_of_a_run_trained_elsewhere_reaches_the_log_tab(tmp_path):
    """A run another process trains: the poller reads what it logs from its events.jsonl, from the
    moment the dashboard opened (its earlier history is skipped), and each line once."""
    import os
    import socket

    from peft_tui.engine.events import JsonlSink, LogMessage, RunFailed, fan_out
    from peft_tui.ui.polling import StorePoller

    store = Store(tmp_path / "store")
    cfg = RunConfig(method="lora", model="tiny", data=DataConfig(size=120))
    rid = store.create_run(cfg)
    assert store.claim("w1", os.getpid(), socket.gethostname(), ["cpu"]).run_id == rid  # another worker's
    sink = fan_out(store, JsonlSink(store.events_path(rid)))
    sink(RunStarted(rid, "elsewhere", "lora", 10, 1, 100, 1000, "cpu", "fp32", 84, 2))
    sink(LogMessage(rid, "info", "before the dashboard opened"))
    poller = StorePoller(store, streamed=set())
    poller.poll(time.time())
    assert poller.log_lines == []
    sink(LogMessage(rid, "warning", "loss spiked [bold]x"))
    sink(RunFailed(rid, "out of patience"))
    poller.poll(time.time())
    assert poller.log_lines == [(f"run {rid} warning: loss spiked [bold]x", "warning"),
                                (f"run {rid} lora failed: out of patience", "error")]
    poller.poll(time.time())
    assert poller.log_lines == []


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=40), model=st.text(max_size=40), store=st.text(max_size=40))
def test_names_from_users_and_stores_show_literally(name, model, store):
    """A run name, model, store path or device line with brackets or control characters is shown as
    written in the run table and the top bar (control characters spelled out), never read as markup."""
    import unicodedata

    from peft_tui.console import literal
    from peft_tui.ui.screens.main import topbar_text
    from peft_tui.ui.widgets.tables import QUEUE_COLUMNS, queue_cells

    def shown(text: str) -> str:
        return literal(text).plain

    row = {"id": 1, "name": name, "method": name, "status": "done", "step": 3, "total_steps": 3, "config": {}}
    cells = dict(zip([key for key, _, _ in QUEUE_COLUMNS], queue_cells(row, time.time())))
    assert cells["name"].plain == shown(name) and cells["method"].plain == shown(name)
    counts = {"queued": 1, "running": 0, "done": 2, "failed": 0}
    plain = topbar_text(name, counts, store, model, name).plain
    assert plain.startswith(f" {shown(name)} │ 1 queued")
    assert shown(f"store {store} │ model {model} · data {name}") in plain
    assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in plain)
    if all(unicodedata.category(c) not in ("Cc", "Cf") for c in name):  # Cf: shown as <U+XXXX>
        assert cells["name"].plain == name  # brackets and all: only control characters are spelled out
