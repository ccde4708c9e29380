"""Where the estimates show and how they are graded: the store keeps each run's estimate and its result,
and whoever reads the run grades one against the other (engine.estimate.grade_run); `run`/`compare`
refuse what will not fit (exit 2, `--force` overrides), `show` and the report print the error, and the
dashboard shows estimates in the form, the runs table and the ETA. Tiny model and data made here; one short run trains for real."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from peft_tui.cli import app as cli
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine import estimate as E
from peft_tui.engine.estimate import planning
from peft_tui.engine.events import RunFinished, RunStarted
from peft_tui.engine.result import RunResult
from peft_tui.engine.store import SCHEMA, Store
from peft_tui.errors import ConfigError

TINY = ["--model", "tiny", "--set", "data.size=40", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
runner = CliRunner()


def estimate_dict(peak_mb: float = 500.0, total_s: float = 10.0, steps: int = 100) -> dict:
    """An Estimate as the store keeps it, with round figures."""
    return E.Estimate(method="lora", device="cpu", precision="fp32", batch_size=16, width=32, peak_mb=peak_mb,
                      peak_low_mb=0.85 * peak_mb, peak_high_mb=1.15 * peak_mb,
                      parts={"weights": 1.0, "grads": 0.0, "optimizer": 0.0, "activations": 1.0, "overhead": 400.0},
                      step_s=total_s / steps, epoch_s=total_s, epoch_low_s=0.7 * total_s, epoch_high_s=1.4 * total_s,
                      total_s=total_s, total_low_s=0.7 * total_s, total_high_s=1.4 * total_s, steps=steps,
                      trainable_params=4232, total_params=2_000_000, calibration="nominal").to_dict()


def tiny(**kw) -> RunConfig:
    return RunConfig(**{"model": "tiny", "epochs": 1, "batch_size": 16, "device": "cpu",
                        "data": DataConfig(size=40), **kw})


def finish(store: Store, rid: int, peak_mb: float, train_s: float) -> None:
    store(RunStarted(rid, "r", "lora", 100, 1, 4232, 2_000_000, "cpu", "fp32", 28, 2))
    store(RunFinished(rid, RunResult(run_id=rid, accuracy=0.5, steps=100, peak_memory_mb=peak_mb,
                                     train_time_s=train_s, memory_kind="peak RSS of the run's own process")))


# ---------------------------------------------------------------------------------------- the store
def test_a_reader_grades_a_finished_run_against_the_estimate_it_was_queued_with(tmp_path):
    st = Store(tmp_path / "s")
    rid = st.create_run(tiny(method="lora"), estimate=estimate_dict(peak_mb=500, total_s=10))
    other = st.create_run(tiny(method="lora"))  # queued without one (the dashboard adds it after)
    assert st.get(rid)["estimate"]["peak_mb"] == 500 and st.get(other)["estimate"] is None
    st.set_estimate(other, estimate_dict(peak_mb=300, total_s=30))
    assert E.grade_run(st.get(rid)) is None  # not finished: nothing measured yet
    finish(st, rid, peak_mb=400, train_s=20)
    finish(st, other, peak_mb=300, train_s=30)
    g = E.grade_run(st.get(rid))
    assert g["peak_error_pct"] == pytest.approx(25.0) and g["peak_in_range"] is False
    assert g["time_error_pct"] == pytest.approx(-50.0) and g["time_in_range"] is False
    g = E.grade_run(st.get(other))
    assert g["peak_error_pct"] == pytest.approx(0.0) and g["peak_in_range"] and g["time_error_pct"] == 0.0
    retried = st.retry(rid)  # the same config: the same estimate, graded once it finishes
    assert st.get(retried)["estimate"] == st.get(rid)["estimate"] and E.grade_run(st.get(retried)) is None
    # the store keeps the estimate and the result, never a grade
    db = sqlite3.connect(st.db_path)
    assert db.execute("SELECT count(*) FROM runs WHERE grade IS NOT NULL").fetchone()[0] == 0
    db.close()
    assert "grade" not in st.get(rid)


def test_a_run_without_an_estimate_or_with_an_unreadable_one_is_ungraded(tmp_path):
    st = Store(tmp_path / "s")
    rid = st.create_run(tiny(method="lora"))
    finish(st, rid, peak_mb=400, train_s=20)
    assert st.get(rid)["status"] == "done" and E.grade_run(st.get(rid)) is None
    another_version = st.create_run(tiny(method="lora"), estimate={"peak_mb": "a lot", "future_field": 1})
    finish(st, another_version, peak_mb=400, train_s=20)
    assert E.grade_run(st.get(another_version)) is None


def test_an_older_store_gains_the_estimate_columns_and_still_opens(tmp_path):
    (tmp_path / "s").mkdir()
    db = sqlite3.connect(tmp_path / "s" / "runs.db")
    db.executescript(SCHEMA)  # the first schema: no queue, no estimate columns
    db.execute("INSERT INTO runs (name, method, model, data, status, config, result, created_at, folder) "
               "VALUES ('old', 'lora', 'tiny', 'synthetic', 'done', ?, '{\"accuracy\": 0.5}', 1.0, '0001-old')",
               (tiny().to_json(),))
    db.commit()
    db.close()
    st = Store(tmp_path / "s")
    old = st.get(1)
    assert old["result"] == {"accuracy": 0.5} and old["estimate"] is None and E.grade_run(old) is None
    rid = st.create_run(tiny(), estimate=estimate_dict())
    assert st.get(rid)["estimate"]["total_s"] == 10.0


def test_a_store_whose_runs_were_graded_by_an_older_version_still_shows_their_grades(tmp_path):
    """Versions that graded in the store wrote a `grade` column: the row opens, that column is ignored
    (an unreadable one does not mark the row damaged), and `show` grades the run from its estimate."""
    st = Store(tmp_path / "store")
    rid = st.create_run(tiny(method="lora"), estimate=estimate_dict(peak_mb=500, total_s=10))
    finish(st, rid, peak_mb=400, train_s=20)
    db = sqlite3.connect(st.db_path)
    db.execute("UPDATE runs SET grade=? WHERE id=?", ('{"peak_error_pct": 99.0', rid))  # stale and cut short
    db.commit()
    db.close()
    row = Store(tmp_path / "store").get(rid)
    assert row["damaged"] is None and "grade" not in row
    doc = json.loads(runner.invoke(cli, ["show", str(rid), "--store", str(tmp_path / "store"), "--json"]).stdout)
    assert doc["grade"]["peak_error_pct"] == pytest.approx(25.0) and doc["grade"]["measured_time_s"] == 20.0
    text = runner.invoke(cli, ["show", str(rid), "--store", str(tmp_path / "store")]).stdout
    assert "measured peak 400 MB: estimate off by +25.0% (outside its range)" in text


def test_a_study_summary_grades_its_final_runs(tmp_path):
    from peft_tui.engine import tune as studies

    st = Store(tmp_path / "s")
    spec = studies.new_study(st, [tiny(method="lora")], trials=1, seeds=1, pruner="none")
    rid = st.create_run(tiny(method="lora"), estimate=estimate_dict(peak_mb=500, total_s=10), study=spec.name)
    finish(st, rid, peak_mb=400, train_s=20)
    spec.final = {"lora": {"defaults": {"1": rid}}}
    [final] = studies.summary(st, spec)["methods"]["lora"]["final"]["defaults"]
    assert final["id"] == rid and final["grade"]["peak_error_pct"] == pytest.approx(25.0)
    assert final["grade"]["measured_time_s"] == 20.0


# ---------------------------------------------------------------------------------------- the fit check
def test_run_and_compare_refuse_what_will_not_fit_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "free_memory_mb", lambda device: 50.0)
    store = tmp_path / "store"
    for args in (["run", "--method", "lora"], ["compare", "--methods", "lora,bitfit"]):
        res = runner.invoke(cli, [*args, *TINY, "--store", str(store)])
        assert res.exit_code == 2, res.output
        [line] = res.stderr.strip().splitlines()
        assert "will not fit" in line and "50 MB free" in line and "--force" in line
    assert Store(store).list() == []  # nothing was queued


def test_the_fit_check_estimates_each_run_and_skips_the_baseline(tmp_path, monkeypatch):
    from peft_tui.engine.submit import check, prepare

    configs = [tiny(method="full"), tiny(method="lora"), tiny(method="tfidf", model="tfidf+logreg")]
    st = Store(tmp_path / "s")
    t0 = time.perf_counter()
    planned = check(st, configs, data=prepare(configs))
    assert time.perf_counter() - t0 < 5  # no calibration measured: the nominal figures
    full, lora, base = (p.estimate for p in planned)
    assert base is None and full["calibration"] == lora["calibration"] == "nominal"
    assert lora["trainable_params"] < full["trainable_params"] and lora["peak_mb"] < full["peak_mb"]
    monkeypatch.setattr(planning, "free_memory_mb", lambda device: 50.0)
    with pytest.raises(Exception, match="full will not fit"):
        check(st, configs)
    forced = check(st, configs, force=True)
    assert forced[1].estimate["peak_mb"] == lora["peak_mb"] and not forced[1].fits
    assert "will not fit" in forced[1].warning


def test_only_an_architecture_the_estimate_cannot_read_is_queued_without_an_estimate(tmp_path, monkeypatch, capsys):
    from peft_tui.commands.queueing import fit_check
    from peft_tui.engine.submit import prepare

    configs = [tiny(), tiny(method="full")]

    def unknown_architecture(*args, **kwargs):
        raise E.NotEstimable("the WeirdConfig architecture cannot be estimated ('WeirdConfig' has no 'n_layer')")

    monkeypatch.setattr(E, "plan", unknown_architecture)
    planned = fit_check(Store(tmp_path / "s"), configs, prepare(configs), force=False, ray=None)
    assert [p.estimate for p in planned] == [None, None]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith("warning: no estimate") and "n_layer" in line for line in lines)

    def broken(*args, **kwargs):  # any other failure of the estimate: the run would meet it too
        raise ValueError("invalid literal for int() with base 10: 'x'")

    monkeypatch.setattr(E, "plan", broken)
    with pytest.raises(ConfigError, match="cannot be queued: checking it failed"):
        fit_check(Store(tmp_path / "s"), configs, prepare(configs), force=False, ray=None)


def test_a_forced_run_trains_stores_its_estimate_and_show_prints_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "free_memory_mb", lambda device: 50.0)
    store = tmp_path / "store"
    res = runner.invoke(cli, ["run", "--method", "bitfit", *TINY, "--store", str(store), "--force", "--json"])
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    doc = json.loads(runner.invoke(cli, ["show", str(rid), "--store", str(store), "--json"]).stdout)
    est, grade, result = doc["estimate"], doc["grade"], doc["result"]
    assert est["method"] == "bitfit" and est["trainable_params"] == result["trainable_params"]
    assert grade["measured_peak_mb"] == result["peak_memory_mb"]
    assert grade["peak_error_pct"] == pytest.approx(100 * (est["peak_mb"] - grade["measured_peak_mb"])
                                                    / grade["measured_peak_mb"])
    assert grade["measured_time_s"] == result["train_time_s"]
    text = runner.invoke(cli, ["show", str(rid), "--store", str(store)]).stdout
    assert f"peak {est['peak_mb']:,.0f} MB" in text
    assert f"estimate off by {grade['peak_error_pct']:+.1f}%" in text
    report = runner.invoke(cli, ["report", "--store", str(store)]).stdout
    assert "est mem err %" in report and f"{grade['peak_error_pct']:+.0f}" in report


# ---------------------------------------------------------------------------------------- tables and ETA
def test_results_rows_carry_the_grade_their_reader_computes():
    from peft_tui.report.table import formatted, rows_from_runs

    run = {"id": 1, "name": "a", "method": "lora", "estimate": estimate_dict(peak_mb=562, total_s=13.68),
           "result": {"accuracy": 0.5, "peak_memory_mb": 500.0, "train_time_s": 20.0}}
    unestimated = {**run, "id": 2, "estimate": None}
    headers, body = formatted(rows_from_runs([run, unestimated], E.grade_run))
    cells = dict(zip(headers, body[0]))
    assert cells["est mem err %"] == "+12" and cells["est time err %"] == "-32"
    assert dict(zip(headers, body[1]))["est mem err %"] == "-"
    headers, body = formatted(rows_from_runs([run]))  # a reader that does not grade: the columns stay empty
    assert dict(zip(headers, body[0]))["est mem err %"] == "-"


def test_the_runs_table_shows_the_estimate_and_the_eta_switches_to_the_measured_rate():
    from peft_tui.ui.widgets.tables import QUEUE_COLUMNS, queue_cells

    now = 1000.0
    row = {"id": 1, "status": "queued", "method": "lora", "step": 0, "total_steps": 0,
           "estimate": estimate_dict(peak_mb=512, total_s=125, steps=100)}
    cells = dict(zip([k for k, _, _ in QUEUE_COLUMNS], queue_cells(row, now)))
    assert cells["estimate"] == "512MB 2m05s" and cells["eta"] == "-"
    # running, 10 of 100 steps in 50 s: still the estimate's 1.25 s a step ("~")
    row.update(status="running", step=10, total_steps=100, started_at=now - 50)
    cells = dict(zip([k for k, _, _ in QUEUE_COLUMNS], queue_cells(row, now)))
    assert cells["eta"] == "~1m52s"  # 90 steps x 1.25 s
    # after 20 steps: the run's own rate, 5 s a step
    row.update(step=20, started_at=now - 100)
    cells = dict(zip([k for k, _, _ in QUEUE_COLUMNS], queue_cells(row, now)))
    assert cells["eta"] == "6m40s"  # 80 steps x 5 s
    row.update(estimate=None, step=10)  # no estimate: the rate from the first step on
    cells = dict(zip([k for k, _, _ in QUEUE_COLUMNS], queue_cells(row, now)))
    assert cells["eta"] == "15m00s" and cells["estimate"] == "-"


# ---------------------------------------------------------------------------------------- the new-run form
@pytest.mark.slow
def test_the_form_shows_the_estimate_as_the_choices_change(tmp_path):
    from peft_tui.ui.app import create_app
    from peft_tui.ui.screens.new_run import NewRunScreen

    app = create_app(store=tmp_path / "store", template=tiny(method="lora"), devices=["cpu"], poll_s=0.3)

    def shown() -> str:
        return str(app.screen.query_one("#form-estimate").render())

    async def wait(cond, what: str, pilot) -> None:
        deadline = time.monotonic() + 180  # generous: a loaded machine
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {shown()!r}"
            await pilot.pause(0.1)

    async def go() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("n")
            await pilot.pause()
            form = app.screen
            assert isinstance(form, NewRunScreen)
            await wait(lambda: "estimate: peak" in shown(), "the first estimate", pilot)
            small = shown()
            assert "MB free" in small and "4,226 trainable parameters" in small  # tiny + LoRA r=8, exact
            form.query_one("#in-batch_size").value = "lots"
            await wait(lambda: "once the fields above are valid" in shown(), "the invalid notice", pilot)
            form.query_one("#in-batch_size").value = "16"
            form.query_one("#in-max_length").value = "8"
            form.query_one("#in-method").value = "full"
            await wait(lambda: "estimate: peak" in shown() and "4,226" not in shown(), "the full estimate", pilot)
            assert app.store.list() == []  # estimating queues nothing
            await pilot.press("escape")
            await pilot.pause()
            # a run queued elsewhere (the CLI) with its estimate: the runs table shows it
            rid = app.store.create_run(tiny(method="lora"), estimate=estimate_dict(peak_mb=612, total_s=75))
            await wait(lambda: rid in app.state.runs, "the poll", pilot)
            await wait(lambda: str(app.main.query_one("#queue").get_cell(str(rid), "estimate")) == "612MB 1m15s",
                       "the runs table", pilot)

    asyncio.run(go())


def test_trainable_counts_are_exact_on_minilm_whose_pooler_mean_pooling_replaces():
    """The embedded MiniLM pools by mean (its sentence-transformers config): the BERT pooler is replaced
    and trains nothing. The meta-device count must follow, or every full and BitFit estimate is off."""
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import load_model
    from peft_tui.engine.weights import count_parameters

    mc = E.model_config("minilm", 2)
    for method in ("full", "bitfit"):
        m = get_method(method)
        real = m.apply(load_model("minilm", num_labels=2, seed=0), m.resolve({}))
        shape = E.model_shape(RunConfig(model="minilm", method=method), mc)
        assert (shape.trainable, shape.total) == count_parameters(real)


@pytest.mark.slow
def test_the_overhead_probe_runs_in_a_fresh_process():
    """The calibration's memory overhead comes from a fresh process (OVERHEAD_PROBE). From 2026-12-02 to -03 it
    failed on an import the estimate package no longer exported, and every calibration silently took the
    (512, 0) fallback: run it as `_overhead_mb` does, and check it prints two figures of a real process."""
    import os
    import subprocess
    import sys

    from peft_tui.engine.estimate import calibrate

    out = subprocess.run([sys.executable, "-c", calibrate.OVERHEAD_PROBE, "cpu"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stderr[-2000:]
    runtime, reader = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    assert 150 < runtime < 4000 and 0 <= reader < 1000  # torch + transformers + peft hold a few hundred MB
    assert calibrate._overhead_mb("cpu") != (512.0, 0.0)  # not the fallback
