"""The headless CLI end to end on the tiny model: store rows, files, JSON fields, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hyp
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.engine.events import RunFinished, RunStarted, StepLogged, read_events
from peft_tui.engine.store import Store

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny", "--set", "data.size=120", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow
@pytest.mark.usefixtures("worker_processes")
def test_run_json_end_to_end(tmp_path):
    store = tmp_path / "s"
    res = invoke("run", "--method", "adapters", *TINY, "--set", "size=4", "--store", str(store), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "done" and doc["method"] == "adapters"
    r = doc["result"]
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    assert r["params"]["size"] == 4
    assert r["trainable_params"] == 2 * 2 * (2 * 64 * 4 + 4 + 64) + 64 * 2 + 2
    assert r["trainable_pct"] < 10 and r["samples_per_s"] > 0 and r["peak_memory_mb"] > 0
    assert r["memory_kind"] == "peak RSS of the run's own process" and r["device"] == "cpu"
    assert 0 < doc["startup_s"] == pytest.approx(r["extra"]["worker_startup_s"], abs=1e-3)
    folder = store / "runs" / os.path.basename(doc["folder"])
    assert (folder / "config.json").exists() and (folder / "result.json").exists()
    assert (folder / "adapters" / "adapters.safetensors").exists()
    assert json.loads((folder / "result.json").read_text())["accuracy"] == r["accuracy"]
    st = Store(store)
    row = st.get(doc["id"])
    assert row["status"] == "done" and row["result"]["accuracy"] == r["accuracy"]
    losses = st.series(doc["id"], "train_loss")
    assert losses and all(v > 0 for _, v in losses)
    assert st.series(doc["id"], "val_accuracy") and st.series(doc["id"], "test_accuracy")
    events = read_events(folder / "events.jsonl")  # every event, for the dashboard's Log tab
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, StepLogged) for e in events) == len(losses)


@pytest.mark.slow
def test_compare_table_csv_and_json(tmp_path):
    store, csv_path = tmp_path / "s", tmp_path / "cmp.csv"
    res = invoke("compare", "--methods", "full,lora,adapters", *[a for a in TINY],
                 "--store", str(store), "--csv", str(csv_path), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    methods = [row["method"] for row in doc["table"]]
    assert methods == ["full", "lora", "adapters", "tfidf"]
    by = {row["method"]: row for row in doc["table"]}
    assert by["full"]["trainable_pct"] == pytest.approx(100.0)
    assert by["lora"]["trainable_params"] < by["full"]["trainable_params"]
    assert by["tfidf"]["accuracy"] > 0.4
    for row in doc["table"]:
        assert row["efficiency"] == pytest.approx(100 * row["accuracy"] / (row["trainable_params"] / 1e6))
    for m in ("full", "lora", "adapters"):  # each trained run's estimate is graded when the table reads it
        assert isinstance(by[m]["mem_err_pct"], float) and isinstance(by[m]["time_err_pct"], float), by[m]
    assert by["tfidf"]["mem_err_pct"] is None  # the baseline has no estimate
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("id,name,method,pooling,accuracy,f1") and len(lines) == 5
    # the pooling each run really used: the tiny BERT's own ([CLS] through its pooler); none for TF-IDF
    pooling = {r["method"]: r["pooling"] for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert pooling == {"full": "cls", "lora": "cls", "adapters": "cls", "tfidf": ""}
    assert len(Store(store).list(status="done")) == 4
    # the human table too
    res = invoke("compare", "--methods", "lora", *TINY, "--store", str(store), "--no-baseline")
    assert res.exit_code == 0 and "lora" in res.stdout and "eff" in res.stdout


@pytest.mark.slow
def test_runs_show_methods(tmp_path):
    store = str(tmp_path / "s")
    assert invoke("run", "--method", "bitfit", *TINY, "--store", store, "--json").exit_code == 0
    res = invoke("runs", "--store", store, "--json")
    rows = json.loads(res.stdout)
    assert [r["method"] for r in rows] == ["bitfit"]
    shown = json.loads(invoke("show", str(rows[0]["id"]), "--store", store, "--json").stdout)
    assert "bitfit.safetensors" in shown["files"] and shown["metrics"]["train_loss"] >= 1
    methods = json.loads(invoke("methods", "--json").stdout)
    names = [m["name"] for m in methods]
    assert {"full", "lora", "adapters", "head"} <= set(names)
    lora = next(m for m in methods if m["name"] == "lora")
    assert lora["params"]["r"]["default"] == 8 and lora["default_lr"] > 0
    assert "houlsby" in invoke("methods").stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--method", "nope"], "unknown method 'nope'"),
        (["run", "--set", "epochs=0"], "epochs=0 must be at least 1"),
        (["run", "--set", "lr=-1"], "lr=-1.0 is out of range"),
        (["run", "--set", "r=abc"], "r='abc' is not a valid int"),
        (["run", "--method", "full", "--set", "r=4"], "unknown key 'r' for method 'full'"),
        (["run", "--precision", "fp8"], "unknown precision 'fp8'"),
        (["run", "--data", "missing.csv"], "does not exist"),
        (["show", "999"], "run 999 does not exist"),
        (["compare", "--methods", "full,bogus"], "unknown method 'bogus'"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, args, needle):
    res = runner.invoke(app, args + ["--store", str(tmp_path / "s")])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.slow
@pytest.mark.usefixtures("worker_processes")
def test_failed_run_exits_1(tmp_path, monkeypatch):
    """A run that fails inside training (in its worker process) exits 1 and is stored as failed with its
    one-line reason. (max_length above the model's limit is caught before the run: exit 2, see
    test_bad_input.py.) The failure is planted in the worker through a sitecustomize module."""
    (tmp_path / "plant").mkdir()
    (tmp_path / "plant" / "sitecustomize.py").write_text(
        "from peft_tui.engine import trainer\n"
        "def boom(*a, **k):\n    raise RuntimeError('boom inside the loop\\nsecond line')\n"
        "trainer.train = boom\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "plant"))
    store = tmp_path / "s"
    res = invoke("run", "--method", "lora", *TINY, "--store", str(store), "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: boom inside the loop"


def test_help_does_not_import_torch():
    code = "import sys; from peft_tui.cli import app; sys.argv=['peft-tui','--help']\n" \
           "try:\n    app()\nexcept SystemExit:\n    pass\n" \
           "print('TORCH' if 'torch' in sys.modules else 'CLEAN')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("CLEAN"), out.stdout + out.stderr


@pytest.mark.slow
def test_run_detach_leaves_workers_training_in_the_background(tmp_path):
    import time

    store = tmp_path / "s"
    res = invoke("compare", "--methods", "lora", *TINY, "--store", str(store), "--detach", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "queued" and len(doc["ids"]) == 2 and len(doc["workers"]) == 1
    st = Store(store)
    deadline = time.time() + 300
    while time.time() < deadline and any(st.get(i)["status"] in ("queued", "running") for i in doc["ids"]):
        time.sleep(0.5)
    rows = [st.get(i) for i in doc["ids"]]
    assert [r["status"] for r in rows] == ["done", "done"], open(doc["log"]).read()[-2000:]
    assert all(r["worker"].split(":")[1] == str(doc["workers"][0]) for r in rows)  # its worker trained both
    assert rows[0]["result"]["accuracy"] >= 0 and rows[0]["startup_s"] > 0
    assert isinstance(read_events(st.events_path(doc["ids"][0]))[-1], RunFinished)


@pytest.mark.slow
def test_run_from_a_config_file_with_overrides(tmp_path):
    store = tmp_path / "s"
    assert invoke("run", "--method", "adapters", *TINY, "--set", "size=4", "--store", str(store),
                  "--json").exit_code == 0
    shown = invoke("show", "1", "--store", str(store), "--json").stdout
    (tmp_path / "run1.json").write_text(shown)  # a whole `show --json` document is accepted
    res = invoke("run", "--config", str(tmp_path / "run1.json"), "--seed", "7", "--set", "size=6",
                 "--store", str(store), "--json")
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)["config"]
    assert (cfg["method"], cfg["model"], cfg["seed"], cfg["params"]["size"]) == ("adapters", "tiny", 7, 6)
    assert cfg["data"]["size"] == 120  # kept from the file
    toml = tmp_path / "c.toml"
    toml.write_text('method = "bitfit"\nmodel = "tiny"\nepochs = 1\ndevice = "cpu"\n[data]\nsize = 120\n')
    res = invoke("run", "--config", str(toml), "--store", str(store), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["method"] == "bitfit"
    # data only, never code: a Python payload is a parse error, exit 2
    evil = tmp_path / "evil.json"
    evil.write_text("__import__('os').system('touch pwned')")
    res = runner.invoke(app, ["run", "--config", str(evil), "--store", str(store)])
    assert res.exit_code == 2 and "could not be parsed" in res.stderr
    assert not (tmp_path / "pwned").exists()
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "nope.json"), "--store", str(store)])
    assert res.exit_code == 2 and "does not exist" in res.stderr


# ---------------------------------------------------------------- the shared options and their builder
def test_a_method_parameter_in_a_comparison_goes_only_to_methods_that_have_it():
    from peft_tui.commands.queueing import method_sets

    sets = ["size=4", "r=2", "epochs=1", "data.size=100", "nokey=1"]
    assert method_sets("adapters", sets) == ["size=4", "epochs=1", "data.size=100", "nokey=1"]
    assert method_sets("lora", sets) == ["r=2", "epochs=1", "data.size=100", "nokey=1"]
    assert method_sets("full", sets) == ["epochs=1", "data.size=100", "nokey=1"]  # size=4 is not its data size


@pytest.mark.slow
def test_compare_takes_the_run_options_and_a_config_file(tmp_path):
    """--config, --max-length and --set work in compare as in run; `size` sizes the adapters only."""
    store = tmp_path / "s"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('model = "tiny"\nepochs = 1\nbatch_size = 16\ndevice = "cpu"\nseed = 3\n'
                        '[data]\nsize = 120\n')
    res = invoke("compare", "--methods", "bitfit,adapters", "--config", str(cfg_file), "--max-length", "32",
                 "--set", "size=4", "--no-baseline", "--store", str(store), "--json")
    assert res.exit_code == 0, res.output
    configs = {r["method"]: r["config"] for r in json.loads(res.stdout)["runs"]}
    assert set(configs) == {"bitfit", "adapters"}
    for cfg in configs.values():
        assert (cfg["model"], cfg["seed"], cfg["max_length"], cfg["data"]["size"]) == ("tiny", 3, 32, 120)
    assert configs["adapters"]["params"] == {"size": 4} and configs["bitfit"]["params"] == {}


# ---------------------------------------------------------------- text from users and files, shown literally
@pytest.mark.slow
@given(text=hyp.text(alphabet=hyp.characters(codec="utf-8"), max_size=40))
@settings(max_examples=200, deadline=None)
def test_literal_text_is_never_markup_and_has_no_control_characters(text):
    import unicodedata

    from rich.console import Console

    from peft_tui.console import literal

    shown = literal(text)
    assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in shown.plain)
    if all(unicodedata.category(c) not in ("Cc", "Cf") for c in text):  # Cf: shown as <U+XXXX>
        assert shown.plain == text  # nothing taken away: brackets stay brackets
    console = Console(width=80, file=__import__("io").StringIO(), color_system=None)
    console.print(shown)  # never a MarkupError


def test_runs_and_show_print_errors_and_names_literally(tmp_path):
    from conftest import tiny_config

    from peft_tui.engine.events import RunFailed, RunFinished

    st = Store(tmp_path / "s")
    failed = st.create_run(tiny_config())
    st(RunFailed(failed, "bad value [bold]x[/] and [/oops] \x1b[31mred"))
    done = st.create_run(tiny_config(method="head"))
    st(RunFinished(done, {"accuracy": 0.5, "trainable_pct": None, "train_time_s": 1.0}))
    res = invoke("runs", "--store", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    assert "[bold]x[/] and [/oops] red" in res.stdout and "\x1b" not in res.stdout  # markup kept, escape gone
    line = next(ln for ln in res.stdout.splitlines() if "head" in ln)
    assert "50.0" in line and "-" in line  # a result without trainable % shows a dash
    res = invoke("show", str(failed), "--store", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    assert "error: bad value [bold]x[/] and [/oops] red" in res.stdout and "\x1b" not in res.stdout


# ---------------------------------------------------------------- one data load; the baseline is a run
@pytest.mark.slow
@pytest.mark.usefixtures("worker_processes")
def test_run_loads_its_data_once(tmp_path, monkeypatch):
    """The command loads the data once, for preflight and the summary (the worker that trains the run loads
    it in its own process)."""
    from peft_tui.engine import data as engine_data

    calls = []
    real = engine_data.load_splits

    def counting(cfg, seed):
        calls.append(cfg.source)
        return real(cfg, seed)

    monkeypatch.setattr(engine_data, "load_splits", counting)
    res = invoke("run", "--method", "bitfit", *TINY, "--store", str(tmp_path / "s"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "done" and calls == ["synthetic"]


def test_a_failing_baseline_is_a_failed_row_and_one_line(tmp_path):
    """TF-IDF has no vocabulary when every text is one character: the baseline row fails with one line,
    the other runs still finish, exit 1, no traceback, nothing left queued."""
    rows = ["text,label"] + [f"{'ab'[i % 2]},{i % 2}" for i in range(120)]
    (tmp_path / "one.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s"
    res = runner.invoke(app, ["compare", "--methods", "bitfit", "--data", str(tmp_path / "one.csv"),
                              *TINY[2:], "--store", str(store)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    by = {r["method"]: r for r in Store(store).list()}
    assert by["bitfit"]["status"] == "done"
    error = by["tfidf"]["error"]
    assert by["tfidf"]["status"] == "failed" and error and "\n" not in error
    assert f"run {by['tfidf']['id']} (tfidf) failed: {error}" in res.stderr.splitlines()


# ---------------------------------------------------------------- Ctrl-C / SIGTERM in compare and sweep
SLOW = ["--model", "tiny", "--set", "data.size=2000", "--batch-size", "8", "--epochs", "50", "--device", "cpu"]


@pytest.mark.parametrize("command, sig", [
    (["compare", "--methods", "full,lora"], signal.SIGTERM),
    (["sweep", "--method", "lora", "--grid", "r=1,2,4"], signal.SIGINT),
])
@pytest.mark.slow
def test_a_signal_mid_command_cancels_every_run_it_queued(tmp_path, command, sig):
    """The run in progress ends cancelled, the runs still queued are cancelled (not left queued), the
    workers exit, and the command exits 128 + signal with one line."""
    import time

    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "peft_tui.cli", *command, *SLOW, "--store", str(store)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    st = None
    while time.monotonic() < deadline and proc.poll() is None:
        st = st or (Store(store) if (store / "runs.db").exists() else None)
        if st and any(r["status"] == "running" and (r["step"] or 0) > 0 for r in st.list()):
            break
        time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    rows = st.list()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"stopped by {sig.name}: runs cancelled: "
                                            f"{', '.join(str(r['id']) for r in rows)}")
    assert "Traceback" not in err
    assert len(rows) == 3 and [r["status"] for r in rows] == ["cancelled"] * 3
    assert rows[0]["step"] > 0 and rows[1]["worker"] is None  # the first trained, the others never started
    worker_pid = int(rows[0]["worker"].split(":")[1])
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


# ---------------------------------------------------------------- --gpus N is --set nproc=N
@pytest.mark.parametrize("command", [["run", "--method", "lora"], ["compare", "--methods", "lora,bitfit"]])
def test_gpus_sets_the_processes_of_each_run(tmp_path, monkeypatch, command):
    import typer

    from peft_tui.commands import train

    queued = []

    def no_training(st, planned, *a, **k):
        queued.extend(p.config for p in planned)
        raise typer.Exit(0)

    monkeypatch.setattr(train, "train_runs", no_training)
    res = invoke(*command, *TINY, "--gpus", "2", "--store", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    trained = [c for c in queued if c.method != "tfidf"]
    assert [c.nproc for c in trained] == [2] * len(trained) and len(trained) == len(command[-1].split(","))
    res = invoke(*command, *TINY, "--gpus", "0", "--store", str(tmp_path / "s"))
    assert res.exit_code == 2 and "--gpus" in res.output
