"""Sweeps and the report: the Pareto front and the recommendations (pure functions), the plotext
chart as text, `peft-tui sweep` on the tiny model, and `peft-tui report`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from peft_tui.config import ConfigError, RunConfig
from peft_tui.report import recommend as rec
from peft_tui.report.charts import accuracy_vs_params
from peft_tui.report.markdown import build_report
from peft_tui.report.pareto import dominates, pareto_front

runner = CliRunner()


def row(id, acc, params, time=10.0, mem=100.0, name=None, kind="process RSS"):
    return {"id": id, "name": name or f"r{id}", "method": "lora", "accuracy": acc, "trainable_params": params,
            "train_time_s": time, "peak_memory_mb": mem, "memory_kind": kind,
            "efficiency": 100 * acc / (params / 1e6)}


def test_pareto_front():
    rows = [row(1, 0.80, 1_000), row(2, 0.85, 10_000), row(3, 0.84, 20_000), row(4, 0.90, 1_000_000),
            row(5, 0.85, 10_000), row(6, 0.70, 5_000)]
    assert [r["id"] for r in pareto_front(rows)] == [1, 2, 5, 4]  # 3 and 6 are dominated; 2 and 5 tie
    assert dominates(rows[1], rows[2]) and not dominates(rows[1], rows[4])
    assert pareto_front([]) == [] and pareto_front([{"id": 1, "accuracy": None, "trainable_params": 3}]) == []
    assert [r["id"] for r in pareto_front([row(1, 0.5, 10)])] == [1]


def test_recommendations_name_their_runs():
    rows = [row(1, 0.900, 22_000_000, time=100, mem=900, name="full"),
            row(2, 0.895, 300_000, time=40, mem=500, name="lora"),
            row(3, 0.893, 600_000, time=30, mem=600, name="adapters"),
            row(4, 0.700, 2_000, time=5, mem=300, name="head"),
            row(5, 0.860, 50_000, time=20, mem=400, name="lora-r1")]
    by = {r.key: r for r in rec.recommend(rows)}
    assert by["best_accuracy"].run_ids[0] == 1 and "90.0%" in by["best_accuracy"].text
    # head (run 4) is 20 points down: out of the efficiency window; lora-r1 is the most efficient within it
    assert by["best_per_parameter"].run_ids == (5, 1)
    assert by["fastest_within"].run_ids == (3, 1)  # 89.3% is within 1 point; 86% is not
    assert by["least_memory_within"].run_ids == (2, 1)
    text = rec.to_markdown(list(by.values()))
    assert "Rests on run(s) 3, 1" in text and "adapters (run 3" in text


def test_recommendations_edge_cases():
    assert rec.recommend([]) == []
    one = rec.recommend([row(7, 0.5, 100)])
    assert [r.run_ids for r in one] == [(7,), (7,), (7,), (7,)]
    tie = rec.best_accuracy([row(1, 0.9, 10), row(2, 0.9, 20), row(3, 0.8, 5)])
    assert tie.run_ids == (1, 2, 3)
    # memory measured differently (GPU vs process RSS) is not compared
    mixed = rec.least_memory_within([row(1, 0.9, 10, mem=800, kind="GPU"), row(2, 0.9, 10, mem=10)])
    assert mixed.run_ids == (1,)


def test_chart_is_text_with_a_log_axis():
    rows = [row(1, 0.80, 1_000, name="lora-r1"), row(2, 0.85, 20_000, name="lora-r8"),
            row(3, 0.9, 22_000_000, name="full")]
    text = accuracy_vs_params(rows, color=False, width=70, height=15)
    assert "\x1b[" not in text and "lora-r8" in text and "Pareto front" in text
    assert "1k" in text and "10M" in text
    assert accuracy_vs_params([], color=False) == ""


def test_grid_expansion():
    from peft_tui.engine.sweep import grid_configs, parse_grid

    base = RunConfig(method="lora", model="tiny")
    cfgs = grid_configs(base, ["r=1,2,4", "lr=1e-3,2e-3"])
    assert len(cfgs) == 6 and {c.params["r"] for c in cfgs} == {1, 2, 4} and {c.lr for c in cfgs} == {1e-3, 2e-3}
    assert cfgs[0].name == "lora-r1-lr1e-3"
    assert parse_grid(["target_modules=query,value;query,key,value"])[0][1] == ["query,value", "query,key,value"]
    for bad in (["r"], ["r="], ["r=1", "r=2"], []):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError):
        grid_configs(base, ["r=0,1"])  # a bad value fails before anything runs


@pytest.mark.slow
def test_sweep_and_report_commands(tmp_path):
    from peft_tui.cli import app

    store = tmp_path / "s"
    tiny = ["--model", "tiny", "--set", "data.size=100", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
    res = runner.invoke(app, ["sweep", "--method", "lora", "--grid", "r=1,4", *tiny, "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.stdout and "lora-r1" in res.stdout and "lora-r4" in res.stdout
    res = runner.invoke(app, ["sweep", "--grid", "r=2", *tiny, "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["name"] for r in doc["runs"]] == ["lora-r2"] and doc["pareto_front"] == [3]

    out = tmp_path / "report.md"
    res = runner.invoke(app, ["report", "--out", str(out), "--store", str(store)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.startswith("# peft-tui report") and "| run | name |" in text and "```text" in text
    assert "**Best accuracy**" in text and "**Fastest within 1 point of the best**" in text
    assert "Rests on run(s)" in text and "Pareto front" in text


def test_report_groups_by_data_and_skips_unfinished():
    base = {"status": "done", "model": "tiny", "method": "lora"}
    runs = [
        {**base, "id": 1, "name": "a", "data": "x.csv", "config": {"data": {"source": "x.csv"}},
         "result": {"accuracy": 0.9, "trainable_params": 100, "data": "x.csv", "device": "cpu"}},
        {**base, "id": 2, "name": "b", "data": "y.csv", "config": {"data": {"source": "y.csv"}},
         "result": {"accuracy": 0.8, "trainable_params": 100, "data": "y.csv", "device": "cpu"}},
        {**base, "id": 3, "name": "c", "data": "y.csv", "status": "failed", "config": {}, "result": None},
    ]
    text = build_report(runs)
    assert "## x.csv" in text and "## y.csv" in text and "2 finished run(s)" in text
    assert "No finished runs" in build_report([])


def test_report_to_a_path_that_cannot_be_written_is_one_line(tmp_path):
    from peft_tui.cli import app

    res = runner.invoke(app, ["report", "--out", str(tmp_path / "no" / "such" / "r.md"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: cannot write") and "--out" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
