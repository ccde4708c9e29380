"""`pooling` and `head_init` reach every front end: the CLI flags, `methods`, the new-run form, and the
results table's `pool` column (the pooling the run really used, `auto` resolved)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import HEAD_INITS, POOLINGS, DataConfig, RunConfig
from peft_tui.engine.store import Store
from peft_tui.report.table import formatted, rows_from_runs

runner = CliRunner()
TINY = ["--model", "tiny", "--set", "data.size=60", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


@pytest.mark.slow
def test_flags_set_the_run_and_the_result_says_what_pooling_was_used(tmp_path):
    store = tmp_path / "s"
    res = runner.invoke(app, ["run", "--method", "lora", *TINY, "--pooling", "max", "--head-init", "random",
                              "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["config"]["pooling"] == "max" and doc["config"]["head_init"] == "random"
    assert doc["result"]["pooling"] == "max"
    assert "head_init_s" not in doc["result"]["extra"]  # a random head is not fitted
    res = runner.invoke(app, ["run", "--method", "bitfit", *TINY, "--store", str(store), "--json"])
    doc = json.loads(res.stdout)
    # auto on the tiny BERT: its own pooler over [CLS]; the default head start, auto, is the probe fit on a
    # run this short (3 steps)
    assert doc["config"]["pooling"] == "auto" and doc["result"]["pooling"] == "cls"
    assert doc["config"]["head_init"] == "auto" and doc["result"]["extra"]["head_init_s"] > 0
    headers, body = formatted(rows_from_runs(Store(store).list()))
    pool = headers.index("pool")
    assert [row[pool] for row in body] == ["max", "cls"]


@settings(max_examples=40, deadline=None)
@given(flag=st.sampled_from(["--pooling", "--head-init"]),
       value=st.text(min_size=1, max_size=12).filter(lambda v: v not in POOLINGS + HEAD_INITS and not v.startswith("-")))
def test_an_unknown_choice_is_one_line_naming_the_choices(flag, value):
    res = runner.invoke(app, ["run", *TINY, flag, value, "--store", "/nonexistent/never-made"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    choices = POOLINGS if flag == "--pooling" else HEAD_INITS
    assert all(c in lines[0] for c in choices)


def test_methods_lists_pooling_and_head_start():
    docs = {d["name"]: d for d in json.loads(runner.invoke(app, ["methods", "--json"]).stdout)}
    assert docs["tfidf"]["pooling"] is None and docs["tfidf"]["head_init"] is None  # no transformer
    assert docs["head"]["pooling"] == "auto" and docs["head"]["head_init"] == "it is the probe"
    trained = [d for n, d in docs.items() if n not in ("tfidf", "head")]
    assert len(trained) >= 8 and all(d["pooling"] == "auto" and d["head_init"] == "auto" for d in trained)
    res = runner.invoke(app, ["methods"], env={"COLUMNS": "220"})
    assert res.exit_code == 0 and "head start" in res.output and "|".join(POOLINGS) in res.output


@pytest.mark.slow
@pytest.mark.parametrize("pooling,head_init", [("mean", "random"), ("last", "probe"), ("auto", "probe")])
def test_the_form_builds_the_run_with_the_chosen_pooling_and_head_start(tmp_path, pooling, head_init):
    pytest.importorskip("textual")
    from textual.widgets import Select

    from peft_tui.ui.app import create_app
    from peft_tui.ui.screens.new_run import NewRunScreen

    template = RunConfig(model="tiny", data=DataConfig(size=60), epochs=1, pooling="cls")
    lab = create_app(store=tmp_path / "s", template=template, devices=["cpu"], poll_s=0.3)

    async def drive() -> RunConfig | None:
        async with lab.run_test(size=(160, 48)) as pilot:
            await pilot.press("n")
            await pilot.pause()
            form = lab.screen
            assert isinstance(form, NewRunScreen)
            assert form.query_one("#in-pooling", Select).value == "cls"  # the template's
            assert form.query_one("#in-head_init", Select).value == "auto"
            form.query_one("#in-pooling", Select).value = pooling
            form.query_one("#in-head_init", Select).value = head_init
            await pilot.pause()
            return form.build()

    cfg = asyncio.run(drive())
    assert cfg is not None and (cfg.pooling, cfg.head_init) == (pooling, head_init)
