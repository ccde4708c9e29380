"""`peft-tui tune`: search spaces, bad --space input, and studies on the tiny model (the trials train in a
thread of the test process unless a test needs worker processes or Ray: those are `slow`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import DataConfig
from peft_tui.engine import tune as studies
from peft_tui.engine.methods import get_method, validate
from peft_tui.engine.methods import space as spaces
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300
TINY = ["--model", "tiny", "--device", "cpu", "--epochs", "1", "--batch-size", "16", "--head-init", "random"]


def bases(*methods: str, **kw):
    kw.setdefault("data", DataConfig(size=60))
    kw.setdefault("head_init", "random")
    return [tiny_config(method=m, **kw) for m in methods]


def run_study(store: Store, configs, **kw):
    """A study run to its end on the in-process pool: (spec, summary)."""
    from peft_tui.engine.submit import make_pool, prepare

    pruner = kw.pop("pruner_object", None)
    splits = prepare(configs)
    spec = studies.new_study(store, configs, train_rows=len(splits.train.labels), **kw)
    pool = make_pool(store)
    pool.start()
    try:
        doc = studies.Tuner(store, spec, pool, data=splits, pruner=pruner, poll_s=0.05).run()
    finally:
        pool.release()
    return spec, doc


# ---------------------------------------------------------------- spaces (no training)
def test_run_and_compare_pay_nothing_for_tune_optuna_loads_only_inside_it():
    code = ("import sys; import peft_tui.cli, peft_tui.commands.train, peft_tui.engine.submit, peft_tui.engine.methods;"
            "from peft_tui.engine.methods import validate; from peft_tui.config import RunConfig;"
            "validate(RunConfig(method='lora')); print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_tunable_method_declares_lr_around_its_default_and_methods_shows_it():
    for name in ("full", "lora", "dora", "adapters", "bitfit", "ia3", "prefix", "prompt"):
        m = get_method(name)
        lr = m.space["lr"]
        assert lr.log and lr.low < m.default_lr < lr.high, name
    assert {"r", "alpha_per_r", "target_modules"} <= set(get_method("lora").space)
    assert {"reduction_factor", "variant"} <= set(get_method("adapters").space)
    assert "num_virtual_tokens" in get_method("prompt").space
    assert get_method("head").space == {} and get_method("tfidf").space == {}
    out = CliRunner().invoke(app, ["methods", "--json"])
    doc = {d["name"]: d for d in json.loads(out.stdout)}
    assert doc["lora"]["space"]["r"] == "2..32 log"
    assert doc["lora"]["space"]["target_modules"] == "attention|all-linear"


def test_a_trial_config_sets_alpha_from_the_rank_and_targets_from_the_choice():
    base = tiny_config(method="lora")
    space = get_method("lora").space
    cfg = spaces.apply(base, {"r": 4, "alpha_per_r": 2.5, "target_modules": "all-linear", "lr": 3e-3}, space)
    assert cfg.params == {"r": 4, "alpha": 10.0, "target_modules": ["all-linear"]} and cfg.lr == 3e-3
    validate(cfg)
    # the defaults as a first trial: r 8, alpha 16 = 2 x r, the architecture's attention targets
    first = spaces.defaults(base, get_method("lora"), space)
    assert first["r"] == 8 and first["alpha_per_r"] == 2.0 and first["target_modules"] == "attention"
    assert first["lr"] == get_method("lora").default_lr and first["epochs"] == 1


def test_overrides_replace_a_range_and_apply_only_to_methods_that_have_the_key():
    configs = bases("full", "lora")
    over = spaces.parse_overrides(["r=4:16", "lr=1e-4:1e-3", "target_modules=all-linear"], configs)
    lora = spaces.space_for(configs[1], over, small_data=False)
    full = spaces.space_for(configs[0], over, small_data=False)
    assert lora["r"] == spaces.Range(4, 16, log=True, integer=True)
    assert lora["target_modules"].options == ("all-linear",) and lora["target_modules"].values == (["all-linear"],)
    assert full["lr"].low == 1e-4 and "r" not in full and "epochs" not in full  # not small data: epochs fixed


KEYS = ["lr", "r", "alpha_per_r", "weight_decay", "epochs", "reduction_factor"]


@st.composite
def bad_space(draw):
    kind = draw(st.sampled_from(["empty", "reversed", "unknown", "type", "nonpositive"]))
    key = draw(st.sampled_from(KEYS))
    if kind == "empty":
        return draw(st.sampled_from([f"{key}=", f"{key}=:", f"{key}=1:", f"{key}=:1", f"{key}=,", f"{key}=1,"]))
    if kind == "reversed":
        lo = draw(st.floats(0.001, 0.5))
        hi = draw(st.floats(0.0, lo - 1e-6) if draw(st.booleans()) else st.just(lo))
        return f"lr={lo!r}:{hi!r}" if key != "epochs" else f"epochs={draw(st.integers(2, 9))}:1"
    if kind == "unknown":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        known = set(get_method("lora").space) | set(get_method("lora").params) | set(spaces.RUN_KEYS) \
            | set(get_method("adapters").params) | set(get_method("adapters").space)
        return f"{name}=1:2" if name not in known else "zzz_unknown=1:2"
    if kind == "type":
        return draw(st.sampled_from(["r=1.5:4", "r=a:b", "epochs=x,y", "lr=fast:slow", "variant=1:2",
                                     "target_modules=1:3", "reduction_factor=big"]))
    return draw(st.sampled_from(["lr=0:1e-3", "lr=-1e-3:1e-3", "r=0:8", "epochs=0:2", "lr=1e-3:1.5"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=bad_space())
def test_a_bad_search_space_is_refused_in_one_line(pair):
    with pytest.raises(ConfigError) as e:
        spaces.parse_overrides([pair], bases("lora", "adapters"))
    message = str(e.value)
    assert "\n" not in message and message.startswith("--space")


@pytest.mark.parametrize("pair", ["lr=1e-3:1e-4", "r=8:8", "nope=1:2", "r=x:4", "lr=:"])
def test_the_command_refuses_a_bad_space_with_exit_2_before_loading_data(tmp_path, pair):
    result = CliRunner().invoke(app, ["tune", "--methods", "lora", "--space", pair, "--store", str(tmp_path / "s"),
                                      *TINY])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --space"), result.stderr
    assert "Traceback" not in result.output


def test_budget_and_study_options_are_checked(tmp_path):
    s = str(tmp_path / "s")
    for args, words in ((["--budget", "soon"], "not a duration"), (["--budget", "1h", "--trials", "3"], "not both"),
                        (["--resume", "nope"], "does not exist"), (["--pruner", "magic"], "unknown pruner"),
                        (["--methods", "head"], "nothing to tune")):
        result = CliRunner().invoke(app, ["tune", "--store", s, *TINY, *args])
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)


# ---------------------------------------------------------------- studies on the tiny model
@pytest.mark.slow
def test_a_study_of_three_trials_by_two_methods_finishes_with_a_final_comparison(tmp_path):
    store = Store(tmp_path / "s")
    spec, doc = run_study(store, bases("full", "lora"), trials=3, seeds=2, pruner="none")
    assert doc["state"] == "done"
    for method in ("full", "lora"):
        m = doc["methods"][method]
        assert [t["trial"] for t in m["trials"]] == [0, 1, 2]
        assert all(t["status"] == "done" for t in m["trials"]) and m["trials_run"] == 3
        first = m["trials"][0]["config"]  # the defaults are trial 0
        assert first["lr"] == get_method(method).default_lr and first["params"].get("r", 8) == 8
        assert len({str(t["config"]) for t in m["trials"]}) == 3  # three different configurations
        assert m["best"]["val_accuracy"] == max(t["val_accuracy"] for t in m["trials"])
        assert [r["config"]["seed"] for r in m["final"]["tuned"]] == [43, 44]  # fresh seeds, never the trials'
        assert all(r["status"] == "done" for r in m["final"]["tuned"] + m["final"]["defaults"])
        if m["best"]["trial"] == 0:  # the defaults won: one set of final runs serves both rows
            assert [r["id"] for r in m["final"]["tuned"]] == [r["id"] for r in m["final"]["defaults"]]
        exported = Path(doc["exported"][method])
        from peft_tui.config import config_from_file

        assert config_from_file(str(exported)).params == Store(tmp_path / "s").get(m["best"]["run_id"])["config"]["params"]
    rows = {r["id"]: r for r in store.list()}
    assert all(r["study"] == spec.name for r in rows.values())
    from peft_tui.report.tune import to_text, verdict

    v = verdict(doc)
    assert [r["name"] for r in v["rows"]] == ["full", "lora"] and all(r["accuracy"] is not None for r in v["rows"])
    text = to_text(doc, chart=False)
    assert "tuned acc %" in text and "Pareto front, accuracy vs trainable parameters" in text


@pytest.mark.slow
def test_a_forced_pruner_prunes_and_the_run_is_recorded_pruned_with_its_step(tmp_path):
    optuna = pytest.importorskip("optuna")
    store = Store(tmp_path / "s")
    configs = bases("full", data=DataConfig(size=400), epochs=3)
    # prunes every trial at its first report below 2.0 (every accuracy), i.e. at its first evaluation
    spec, doc = run_study(store, configs, trials=2, seeds=1, space=["epochs=3"],
                          pruner_object=optuna.pruners.ThresholdPruner(lower=2.0))
    trials = doc["methods"]["full"]["trials"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned, trials
    for t in pruned:
        row = store.get(t["run_id"])
        assert row["status"] == "pruned" and row["error"].startswith(f"pruned at step {row['step']} ")
        assert 0 < row["step"] < row["total_steps"]
    assert doc["methods"]["full"]["pruned"] == len(pruned) and doc["methods"]["full"]["trials_run"] == 2


def _write(path: Path, texts, labels) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return str(path)


@pytest.mark.slow
def test_poisoned_test_labels_do_not_change_which_trial_wins(tmp_path):
    from peft_tui.engine.data.synthetic import synthetic

    texts, labels = synthetic(240, seed=3)
    names = ["neg", "pos"]
    train = _write(tmp_path / "train.csv", texts[:120], [names[v] for v in labels[:120]])
    val = _write(tmp_path / "val.csv", texts[120:180], [names[v] for v in labels[120:180]])
    test = _write(tmp_path / "test.csv", texts[180:], [names[v] for v in labels[180:]])
    poisoned = _write(tmp_path / "poisoned.csv", texts[180:], [names[1 - v] for v in labels[180:]])
    docs = []
    for test_file in (test, poisoned):
        data = DataConfig(source=train, val_source=val, test_source=test_file, val_fraction=0.0, test_fraction=0.0)
        store = Store(tmp_path / Path(test_file).stem)
        docs.append(run_study(store, bases("lora", data=data, epochs=2), trials=3, seeds=1, pruner="none",
                              space=["lr=1e-3:5e-2"])[1])
    clean, dirty = (d["methods"]["lora"] for d in docs)
    assert [t["val_accuracy"] for t in clean["trials"]] == [t["val_accuracy"] for t in dirty["trials"]]
    assert clean["best"]["trial"] == dirty["best"]["trial"] and clean["best"]["values"] == dirty["best"]["values"]
    # the final runs did read the test split: the flipped labels flip their accuracy
    acc_clean = clean["final"]["tuned"][0]["result"]["accuracy"]
    acc_dirty = dirty["final"]["tuned"][0]["result"]["accuracy"]
    assert acc_dirty == pytest.approx(1 - acc_clean)


def _tune_cli(store: Path, *args: str, env: dict | None = None, hold_run: int | None = None,
              mark: Path | None = None) -> subprocess.Popen:
    """`peft-tui tune` in a process of its own. With `hold_run`, that run trains until it is cancelled (its
    epochs are raised where it starts) and `mark` is written as it starts: a test can then interrupt a trial
    that is certainly running, whatever the machine's speed."""
    argv = ["tune", "--store", str(store), *TINY, "--set", "data.size=200", *args]
    if hold_run is None:
        command = [sys.executable, "-m", "peft_tui.cli", *argv]
    else:
        command = [sys.executable, "-c", _HOLD_RUN.format(run=hold_run, mark=str(mark), argv=argv)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


_HOLD_RUN = """
import dataclasses, pathlib, sys
from peft_tui.engine import trainer
train = trainer.train
def held(config, run_id, *args, **kwargs):
    if run_id == {run}:
        config = dataclasses.replace(config, epochs=10**6)
        pathlib.Path({mark!r}).touch()
    return train(config, run_id, *args, **kwargs)
trainer.train = held
sys.argv = ["peft-tui", *{argv!r}]
from peft_tui.cli import main
main()
"""


def _tune_view(tmp_path: Path):
    """The dashboard on a fresh store and its tune view for a 2-trial study of `full` on the tiny model (not
    pushed yet)."""
    from peft_tui.config import RunConfig
    from peft_tui.ui.app import create_app
    from peft_tui.ui.screens.tune import TuneScreen

    template = RunConfig(model="tiny", data=DataConfig(size=60), epochs=1, batch_size=16, head_init="random")
    app = create_app(store=tmp_path / "store", template=template, devices=["cpu"], poll_s=0.3)
    return app, TuneScreen(template, methods=("full",), trials=2, seeds=1)


def _wait(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_resume_after_sigint_repeats_no_finished_trial(tmp_path):
    store_path = tmp_path / "s"
    args = ["--methods", "full", "--trials", "3", "--seeds", "1", "--pruner", "none", "--study", "st",
            "--set", "epochs=2", "--space", "epochs=2"]
    mark = tmp_path / "trial-2-started"
    proc = _tune_cli(store_path, *args, env={"PEFT_TUI_INPROCESS_POOL": "1"}, hold_run=2, mark=mark)
    store = _wait(lambda: (store_path / "runs.db").exists() and Store(store_path), "the store")
    _wait(mark.exists, "the second trial to start (it then trains until interrupted)")
    assert [r["status"] for r in store.list()] == ["done", "running"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, err
    assert "tune --resume st" in err
    before = store.list()
    finished = {r["id"]: r for r in before if r["status"] == "done"}
    cut = [r for r in before if r["status"] == "cancelled"]
    assert finished and cut, [(r["id"], r["status"]) for r in before]

    result = CliRunner().invoke(app, ["tune", "--store", str(store_path), "--resume", "st", "--json"])
    assert result.exit_code == 0, result.stderr
    after = [r for r in store.list() if r["trial"] is not None]
    done = [r for r in after if r["status"] == "done"]
    assert len(done) == 3  # the budget: 3 finished trials, not 3 + the ones before the interrupt
    configs = [str({**r["config"], "name": None}) for r in done]
    assert len(set(configs)) == 3  # no finished trial was run again
    assert all(finished[i]["status"] == "done" for i in finished)
    # the trial cut short was asked again with the same values
    assert str({**cut[0]["config"], "name": None}) in configs


@pytest.mark.slow
def test_detach_runs_the_study_in_the_background_and_returns_at_once(tmp_path):
    store_path = tmp_path / "s"
    res = CliRunner().invoke(app, ["tune", "--store", str(store_path), *TINY, "--set", "data.size=200", "--methods",
                                   "full", "--trials", "2", "--seeds", "1", "--pruner", "none", "--study", "bg",
                                   "--detach", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["study"] == "bg" and doc["status"] == "started" and doc["pid"] > 0
    result, log = Path(doc["result"]), Path(doc["log"])
    assert result.parent == log.parent == store_path / "logs"
    try:  # the background tune writes its JSON when the study ends
        final = _wait(lambda: result.stat().st_size and json.loads(result.read_text()), "the study's final JSON")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(doc["pid"], signal.SIGTERM)  # a failed wait leaves nothing training
    assert final["study"] == "bg" and final["state"] == "done", log.read_text()[-2000:]
    trials = final["methods"]["full"]["trials"]
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials)
    assert "study bg" in log.read_text()  # its progress went to the log
    store = Store(store_path)
    assert {r["status"] for r in store.list()} == {"done"} and len(store.list()) >= 3  # 2 trials + final runs


# planted in each worker process (sitecustomize): a trial's training waits at a barrier until the other
# trial has reached its own training too, so the two can only finish if two workers hold one each at once
_BARRIER = """
import pathlib, time
from peft_tui.engine import trainer
train = trainer.train
def barrier(config, run_id, *args, **kwargs):
    marks = pathlib.Path({marks!r})
    if config.name.rpartition("-t")[2].isdigit():  # the trials (full-t0, full-t1), not the final runs
        (marks / str(run_id)).write_text(str(time.time()))
        deadline = time.monotonic() + 120
        while len(list(marks.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other trial never started training beside this one")
            time.sleep(0.05)
    return train(config, run_id, *args, **kwargs)
trainer.train = barrier
"""


@pytest.mark.slow
def test_two_workers_run_trials_side_by_side(tmp_path, worker_processes, monkeypatch):
    from peft_tui.engine.submit import make_pool, prepare

    marks, plant = tmp_path / "marks", tmp_path / "plant"
    marks.mkdir()
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(_BARRIER.format(marks=str(marks)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plant), str(ROOT)]))
    store = Store(tmp_path / "s")
    configs = bases("full")
    splits = prepare(configs)
    spec = studies.new_study(store, configs, trials=2, seeds=1, pruner="none", parallel=2,
                             train_rows=len(splits.train.labels))
    pool = make_pool(store, workers=2)
    pool.start()
    try:
        doc = studies.Tuner(store, spec, pool, data=splits).run()
    finally:
        pool.release()
    trials = [store.get(t["run_id"]) for t in doc["methods"]["full"]["trials"]]
    assert len(trials) == 2 and all(r["status"] == "done" for r in trials), [r["error"] for r in trials]
    assert trials[0]["worker"] != trials[1]["worker"]  # two worker processes, one trial each
    # each trial got past the barrier only once the other had reached it: they trained at the same time
    assert sorted(int(m.name) for m in marks.iterdir()) == sorted(r["id"] for r in trials)
    assert doc["state"] == "done" and doc["methods"]["full"]["final"]["tuned"][0]["status"] == "done"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_study_runs_on_a_local_ray(tmp_path, local_ray):
    from peft_tui.engine.submit import make_pool, prepare

    store = Store(tmp_path / "s")
    configs = bases("lora", device="auto")
    splits = prepare(configs)
    spec = studies.new_study(store, configs, trials=2, seeds=1, pruner="median", parallel=2,
                             train_rows=len(splits.train.labels))
    pool = make_pool(store, ray="auto")
    pool.start()
    try:
        doc = studies.Tuner(store, spec, pool, data=splits).run()
    finally:
        pool.stop()
    trials = [store.get(t["run_id"]) for t in doc["methods"]["lora"]["trials"]]
    assert len(trials) == 2 and all(r["status"] == "done" and r["worker"].endswith(":ray") for r in trials)
    assert doc["state"] == "done" and doc["methods"]["lora"]["final"]["tuned"][0]["status"] == "done"


@pytest.mark.slow
def test_the_dashboard_tune_view_runs_a_study_and_shows_its_curve_and_final_table(tmp_path):
    import asyncio

    pytest.importorskip("textual")
    from textual.widgets import Static

    from peft_tui.ui.screens.tune import BestSoFarChart

    app, screen = _tune_view(tmp_path)

    async def drive():
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(screen)
            deadline = time.monotonic() + WAIT_S
            def table() -> str:
                return str(screen.query_one("#tune-table", Static).render())

            while time.monotonic() < deadline and not (screen.doc and screen.doc["state"] == "done"
                                                        and "tuned acc %" in table()):
                await pilot.pause(0.3)
            assert screen.doc and screen.doc["state"] == "done", screen.doc
            assert "tuned acc %" in table()
            assert screen.query_one(BestSoFarChart).plt is not None
            trials = screen.doc["methods"]["full"]["trials"]
            assert [t["trial"] for t in trials] == [0, 1] and all(t["status"] == "done" for t in trials)

    asyncio.run(drive())


def test_stopping_the_tune_view_before_its_study_exists_creates_no_study_and_says_so(tmp_path, monkeypatch):
    """Seen in tmux: `x` pressed while the study's data still loaded said `--resume NAME` (no name yet), and the
    study was created after all, empty. Now nothing is created and the view says the study did not start."""
    import asyncio

    pytest.importorskip("textual")
    from textual.widgets import Static

    from peft_tui.engine import submit

    loading, go = threading.Event(), threading.Event()
    real_prepare = submit.prepare

    def slow_prepare(bases):
        loading.set()
        go.wait(30)
        return real_prepare(bases)

    monkeypatch.setattr(submit, "prepare", slow_prepare)
    app, screen = _tune_view(tmp_path)

    async def drive():
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(screen)
            while not loading.is_set():
                await pilot.pause(0.1)
            await pilot.press("x")
            status = screen.query_one("#tune-status", Static)
            assert "stopping before the study starts" in str(status.render())
            go.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "not started" not in str(status.render()):
                await pilot.pause(0.2)
            assert str(status.render()) == "study not started: stopped before its first trial"

    asyncio.run(drive())
    assert studies.list_studies(app.store) == []


# ---------------------------------------------------------------- the `behind` pruner (no training)
curves = st.dictionaries(st.integers(1, 40), st.floats(0, 1), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(curve=curves, others=st.lists(curves, max_size=6), val_rows=st.integers(1, 5000))
def test_behind_prunes_only_a_trial_below_the_best_by_more_than_the_noise(curve, others, val_rows):
    pruned = studies.clearly_behind(curve, others, val_rows)
    step = max(curve)
    seen = [c[max(s for s in c if s <= step)] for c in others if any(s <= step for s in c)]
    if len(curve) < studies.PRUNE_FROM_EVAL or not seen:
        assert not pruned
        return
    best = max(seen)
    gap = best - curve[step]
    assert pruned == (gap > studies.noise(best, val_rows))
    if pruned:  # a trial pruned is behind by more than the noise, and the noise is positive
        assert gap > 0 and studies.noise(best, val_rows) > 0


@settings(max_examples=200, deadline=None)
@given(acc=st.floats(0, 1), rows=st.integers(1, 10_000))
def test_noise_shrinks_with_more_validation_rows(acc, rows):
    assert studies.noise(acc, rows) >= studies.noise(acc, rows * 4) > 0
    assert studies.noise(acc, rows) <= studies.NOISE_Z  # never more than the whole accuracy range twice


@settings(max_examples=300, deadline=None)
@given(train=st.integers(0, 200_000), val=st.integers(0, 50_000), epochs=st.integers(1, 20))
def test_evaluations_per_run_are_bounded_and_cheap(train, val, epochs):
    n = studies.evaluations_per_run(train, val, epochs, pruning=False)
    assert max(1, epochs) <= n <= max(epochs, studies.MAX_EVALS_PER_RUN)
    if n > epochs and val:  # extra evaluations only while they cost at most EVAL_COST_SHARE of the training
        assert n * val / 3 <= studies.EVAL_COST_SHARE * epochs * train + 1e-9
    pruned = studies.evaluations_per_run(train, val, epochs)  # a pruner gets a first cut by a quarter of a run
    assert pruned >= n and pruned <= max(epochs, studies.MAX_EVALS_PER_RUN)
    if train and val:
        assert pruned >= studies.MIN_EVALS_PRUNED
        assert pruned == n or pruned == max(epochs, studies.MIN_EVALS_PRUNED)  # more only up to the minimum


def test_the_behind_pruner_stops_a_flat_trial_through_optuna_and_spares_a_close_one():
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize", pruner=studies._pruner("behind", 10, val_rows=400))
    study.add_trial(create_trial(value=0.9, intermediate_values={10: 0.7, 20: 0.85, 30: 0.9},
                                 state=TrialState.COMPLETE))
    flat = study.ask()
    flat.report(0.3, 10)
    assert not flat.should_prune()  # its first evaluation is never judged
    flat.report(0.3, 20)
    assert flat.should_prune()  # 0.55 behind the best at step 20; the noise on 400 rows is ~0.036
    close = study.ask()
    close.report(0.8, 10)
    close.report(0.83, 20)
    assert not close.should_prune()  # 0.02 behind: within the noise


@settings(max_examples=300, deadline=None)
@given(curve=curves, defaults=curves)
def test_a_trial_is_behind_the_defaults_only_below_their_value_at_its_step(curve, defaults):
    behind = studies.behind_defaults(curve, defaults)
    step = max(curve)
    before = [s for s in defaults if s <= step]
    assert behind == (bool(before) and curve[step] < defaults[max(before)])
    assert not studies.behind_defaults(curve, {}) and not studies.behind_defaults({}, defaults)


def test_the_ahead_pruner_holds_each_trial_to_the_defaults_and_to_the_best_third():
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize", pruner=studies._pruner("ahead", 10, val_rows=400))

    def trial(values, defaults=False):
        t = study.ask()
        if defaults:
            t.set_user_attr("defaults", True)
        for i, v in enumerate(values):
            t.report(v, 10 * (i + 1))
            if t.should_prune():
                study.tell(t, state=TrialState.PRUNED)
                return "pruned", 10 * (i + 1)
        study.tell(t, values[-1])
        return "done", 10 * len(values)

    assert trial([0.5, 0.55, 0.6], defaults=True) == ("done", 30)  # the bar: never stopped, even when low
    assert trial([0.49, 0.9, 0.95]) == ("pruned", 10)  # behind the defaults at its first evaluation
    assert trial([0.7, 0.8, 0.9]) == ("done", 30)  # ahead of them, and the best at each rung
    assert trial([0.6, 0.5, 0.9]) == ("pruned", 10)  # ahead of the defaults, but not the best of three at step 10
    for _ in range(3):  # more trials level with the best: at step 10, six compete and the best two go on
        trial([0.7, 0.8, 0.9])
    assert trial([0.65, 0.8, 0.9]) == ("pruned", 10)
    assert trial([0.7, 0.54, 0.9]) == ("pruned", 20)  # past the first rung, behind the defaults' 0.55


def test_a_study_evaluates_a_trial_several_times_a_run_when_that_is_cheap(tmp_path):
    store = Store(tmp_path / "s")
    configs = bases("lora", data=DataConfig(size=400), epochs=1)
    spec = studies.new_study(store, configs, trials=2, train_rows=2000, val_rows=200, pruner="none")
    per_run = studies.evaluations_per_run(2000, 200, 1, pruning=False)
    assert per_run == 4 and spec.pruner == "none" and spec.val_rows == 200
    steps = -(-2000 // configs[0].batch_size)
    assert spec.base("lora").eval_every == -(-steps // per_run)
    # without a pruner, evaluations that cost too much are left out; the default pruner (halving) still
    # gets its first cut at a quarter of the run (2000 rows against 428 validation rows: AG News's study)
    tiny = studies.new_study(store, configs, trials=2, train_rows=100, val_rows=150, pruner="none")
    assert tiny.base("lora").eval_every == 0
    halving = studies.new_study(store, configs, trials=2, train_rows=2000, val_rows=428)
    assert halving.pruner == "ahead" == studies.DEFAULT_PRUNER
    assert studies.evaluations_per_run(2000, 428, 1, pruning=False) == 2
    assert halving.base("lora").eval_every == -(-steps // 4)
    import inspect

    from peft_tui.commands.tune import tune as tune_command  # the CLI's default is the engine's
    assert inspect.signature(tune_command).parameters["pruner"].default == studies.DEFAULT_PRUNER


def test_a_study_on_a_file_keeps_one_split_for_its_trials_and_every_final_seed(tmp_path):
    from peft_tui.engine.data import load_splits

    texts = [f"review number {i} was {'great fun' if i % 2 else 'dull and slow'}" for i in range(200)]
    path = _write(tmp_path / "d.csv", texts, [i % 2 for i in range(200)])
    store = Store(tmp_path / "s")
    configs = bases("lora", data=DataConfig(source=path, limit=160))
    spec = studies.new_study(store, configs, trials=2, seeds=3, train_rows=110, val_rows=25)
    data = spec.base("lora").data
    assert data.split_seed == configs[0].seed
    first = load_splits(data, configs[0].seed)
    for seed in spec.final_seeds():  # a final run's seed changes its start, not which rows it tests on
        other = load_splits(data, seed)
        assert (other.val.texts, other.test.texts) == (first.val.texts, first.test.texts)
    moved = load_splits(DataConfig(source=path, limit=160), spec.final_seeds()[0])  # without: another split
    assert moved.test.texts != first.test.texts


def test_runs_lists_a_studys_trials_with_their_study_and_filters_by_study_and_pruned(tmp_path):
    store = Store(tmp_path / "s")
    plain = store.create_run(tiny_config(method="lora", name="plain"))
    trial = store.create_run(tiny_config(method="lora", name="lora-t3"), study="st-1", trial=3)
    final = store.create_run(tiny_config(method="lora", name="lora-tuned"), study="st-1")
    assert store.request_cancel(trial) and store.mark_pruned(trial, 5)
    runner = CliRunner()
    out = runner.invoke(app, ["runs", "--store", str(store.root)], terminal_width=200)
    assert out.exit_code == 0, out.output
    lines = {ln.split("│")[1].strip(): ln for ln in out.output.splitlines() if ln.count("│") > 3}
    assert "st-1 #3" in lines[str(trial)] and "pruned" in lines[str(trial)]
    assert "st-1" in lines[str(final)] and "#" not in lines[str(final)].split("│")[5]
    assert "│ -" in lines[str(plain)]
    only = runner.invoke(app, ["runs", "--store", str(store.root), "--study", "st-1", "--json"])
    assert sorted(r["id"] for r in json.loads(only.output)) == [trial, final]
    pruned = runner.invoke(app, ["runs", "--store", str(store.root), "--status", "pruned", "--json"])
    assert pruned.exit_code == 0 and [r["id"] for r in json.loads(pruned.output)] == [trial]


def test_a_budget_goes_to_the_method_that_has_spent_least_of_its_equal_share(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    spec = studies.new_study(store, bases("full", "lora", "adapters"), budget_s=300.0, train_rows=100, val_rows=20)
    assert spec.share_s == 100.0 and spec.trials is None
    tuner = studies.Tuner(store, spec, pool=None)
    spent = {"full": 120.0, "lora": 40.0, "adapters": 90.0}
    monkeypatch.setattr(tuner, "_spent_s", lambda m: spent[m])
    assert tuner._next_method() == "lora"  # full is over its share; lora spent least of what is left
    tuner._counted = {"full": 3, "lora": 5, "adapters": 1}
    assert tuner._next_method() == "adapters"  # fewest trials first among those with budget left
    spent.update(lora=100.0, adapters=100.5)
    assert tuner._next_method() is None  # every share spent: the search ends


@settings(max_examples=300, deadline=None)
@given(vals=st.lists(st.floats(0, 1), min_size=1, max_size=8), rows=st.integers(0, 3000), where=st.integers(0, 7))
def test_the_defaults_are_kept_unless_a_trial_beats_them_beyond_the_noise(vals, rows, where):
    from peft_tui.engine.tune.report import keep_defaults

    d = where % len(vals)  # which trial ran the defaults
    done = [{"trial": i, "val_accuracy": v, "values": {"lr": 1.0 if i == d else 2.0 + i}} for i, v in enumerate(vals)]
    best = max(done, key=lambda t: (t["val_accuracy"], -t["trial"]))
    kept = keep_defaults(best, done, {"lr": 1.0}, rows)
    gap = best["val_accuracy"] - vals[d]
    if best["trial"] == d or rows == 0 or gap > studies.noise(vals[d], rows):
        assert kept is None
    else:
        assert kept[0]["trial"] == d and f"on {rows} rows" in kept[1]


def test_progress_line_says_when_the_defaults_are_kept_over_a_higher_trial():
    from peft_tui.report.tune import progress_line

    best = {"trial": 0, "val_accuracy": 0.862}
    plain = progress_line("full", {"trials_run": 4, "pruned": 1, "best": best}, "6")
    assert plain == "full: 4/6 trials (1 pruned), best val 86.2% (trial 0)"
    kept = progress_line("full", {"trials_run": 4, "pruned": 0, "best": {**best, "kept_defaults": "trial 3 ..."}},
                         "6")
    assert kept == "full: 4/6 trials, defaults kept at val 86.2% (trial 0; a higher trial is within the noise)"


def test_the_tune_chart_shows_a_pruned_trial_that_shares_its_point_with_another_methods_trial():
    """Found looking at the tune view: a pruned trial at the same (trial, accuracy) as another method's finished
    trial, or under another method's line, lost its x. Pruned marks are drawn last."""
    import asyncio
    import re

    from textual.app import App

    from peft_tui.ui.screens.tune import BestSoFarChart

    def trials(*rows):
        return [{"trial": i, "status": status, "val_accuracy": acc} for i, (status, acc) in enumerate(rows)]

    doc = {"methods": {"lora": {"trials": trials(("done", 0.55), ("pruned", 0.5), ("pruned", 0.5))},
                       "adapters": {"trials": trials(("done", 0.5), ("done", 0.5), ("done", 0.5))}}}

    class Host(App):
        def compose(self):
            yield BestSoFarChart()

    async def drive():
        app = Host()
        async with app.run_test(size=(100, 30)) as pilot:
            chart = app.query_one(BestSoFarChart)
            chart.draw(doc)
            await pilot.pause()
            return re.sub(r"\x1b\[[0-9;]*m", "", chart.plt.build())

    plot = [line for line in asyncio.run(drive()).splitlines() if "│" in line or "┤" in line]
    marks = [line.split("│")[-2] if line.count("│") >= 2 else line for line in plot]
    assert sum(m.count("x") for m in marks) == 2  # both pruned LoRA trials, on adapters' 50% line and points
