"""Hostile input and faults, third pass (issue 18): each class's inputs generated, each answer one line.

1. stored configs are untrusted: no command runs a model's own code without the user's --trust-remote-code
2. a split never silently becomes empty or another split's rows
3. runs that would never end: max_time (refused on estimate, stopped at wall time); a dead command's workers
4. a model config's size is checked by arithmetic before anything is built
6. predict --file streams, with a row limit
7. invisible format characters are shown, never obeyed
8b. a run folder replaced by a link fails with the reason
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import DataConfig, RunConfig, parse_duration
from peft_tui.errors import ConfigError
from tests.conftest import tiny_config, trained_store, wait_for

runner = CliRunner()
SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FLAG = "--trust-remote-code"


def one_line_error(res) -> str:
    """The command failed as bad input: exit 2, one line on stderr, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def refused(fn, *args, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def set_row(store, run_id: int, **values) -> None:
    with sqlite3.connect(store.db_path) as db:
        for key, value in values.items():
            db.execute(f"UPDATE runs SET {key}=? WHERE id=?", (value, run_id))


# ================================================================================================
# class 1: remote code from a stored run
# ================================================================================================
def marker_model(folder: Path, marker: Path) -> Path:
    """A small BERT folder whose config.json has an auto_map: its Python modules write `marker` when
    imported. Loaded without trust_remote_code it is a plain BERT (model_type bert) and nothing runs."""
    from transformers import BertConfig, BertForSequenceClassification

    from peft_tui.engine.models import load_tokenizer

    tok = load_tokenizer("tiny")
    tok.save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    plant = f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    (folder / "evil_config.py").write_text(
        plant + "from transformers import BertConfig\n\n\nclass EvilConfig(BertConfig):\n    pass\n")
    (folder / "evil_model.py").write_text(
        plant + "from transformers import BertForSequenceClassification\n\nfrom .evil_config import EvilConfig\n\n\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_config.EvilConfig",
                       "AutoModelForSequenceClassification": "evil_model.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A store with one finished run trained (without the flag) on the marker model: (store, id, marker)."""
    from peft_tui.engine import trainer
    from peft_tui.engine.store import Store

    root = tmp_path_factory.mktemp("planted")
    marker = root / "MARKER"
    folder = marker_model(root / "evil-bert", marker)
    st_ = Store(root / "store")
    cfg = tiny_config(method="head", model=str(folder), data=DataConfig(size=60))  # head: the quickest to train
    rid = st_.create_run(cfg)
    trainer.execute(st_, rid, cfg, st_)
    assert st_.get(rid)["status"] == "done", st_.get(rid)["error"]
    assert not marker.exists()  # training on an auto_map folder without the flag is safe
    return st_, rid, marker


def tamper(st_, rid: int, where: str, status: str = "done") -> None:
    """Write trust_remote_code: true into the run's stored config (its row, its folder's config.json, or both)."""
    row = st_.get(rid)
    cfg = {**row["config"], "trust_remote_code": True}
    if where in ("row", "both"):
        set_row(st_, rid, config=json.dumps(cfg), status=status)
    else:
        set_row(st_, rid, status=status)
    if where in ("folder", "both"):
        (st_.run_dir(rid) / "config.json").write_text(json.dumps(cfg))


def untamper(st_, rid: int) -> None:
    row = st_.get(rid)
    set_row(st_, rid, config=json.dumps({**row["config"], "trust_remote_code": False}), status="done")


def command_loads(st_, rid: int, which: str, out: Path):
    """Run one of the commands that load (or queue) a stored run, without the flag."""
    from peft_tui.engine import artifacts
    from peft_tui.engine.scheduler import Scheduler

    store = ["--store", str(st_.root)]
    if which == "predict":
        return runner.invoke(app, ["predict", str(rid), "a text", *store])
    if which == "predict-json-file":
        (out.parent / "in.txt").write_text("one\ntwo\n")
        return runner.invoke(app, ["predict", str(rid), "--file", str(out.parent / "in.txt"), "--json", *store])
    if which == "export":
        return runner.invoke(app, ["export", str(rid), "--out", str(out), *store])
    if which == "export-merge":
        return runner.invoke(app, ["export", str(rid), "--out", str(out), "--merge", *store])
    if which == "resume-cli":
        return runner.invoke(app, ["resume", str(rid), *store])
    if which == "load_run":
        return artifacts.load_run(st_, rid)
    if which == "retry":
        return st_.retry(rid)
    if which == "resume":
        return st_.request_resume(rid)
    sched = Scheduler.__new__(Scheduler)  # the dashboard's controls: the scheduler's store calls, no pool
    sched.store, sched.trust_remote_code = st_, False
    return sched.retry(rid) if which == "dashboard-retry" else sched.resume(rid)


LOADERS = ["predict", "predict-json-file", "export", "export-merge", "resume-cli", "load_run", "retry", "resume",
           "dashboard-retry", "dashboard-resume"]


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED)
@given(which=st.sampled_from(LOADERS), where=st.sampled_from(["row", "both"]))
def test_a_stored_config_never_turns_remote_code_on(planted, tmp_path_factory, which, where):
    """Every command that loads or queues a stored run refuses a stored trust_remote_code in one line that
    names the flag; the model folder's code never runs (its marker file never appears)."""
    st_, rid, marker = planted
    status = "failed" if "resume" in which else "done"  # resume takes a stopped run
    tamper(st_, rid, where, status)
    out = tmp_path_factory.mktemp("out") / "export"
    try:
        if which in ("load_run", "retry", "resume", "dashboard-retry", "dashboard-resume"):
            msg = refused(command_loads, st_, rid, which, out)
        else:
            msg = one_line_error(command_loads(st_, rid, which, out))
    finally:
        untamper(st_, rid)
    assert FLAG in msg and f"run {rid}" in msg, msg
    assert not marker.exists()
    assert not out.exists()  # export refused before writing anything
    assert len(st_.list()) == 1  # retry queued nothing


def test_a_tampered_folder_config_alone_is_not_read(planted, tmp_path):
    """The folder's config.json is not where the config comes from: predict uses the row and stays safe."""
    st_, rid, marker = planted
    tamper(st_, rid, "folder")
    try:
        res = runner.invoke(app, ["predict", str(rid), "hello", "--json", "--store", str(st_.root)])
    finally:
        untamper(st_, rid)
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["predictions"]) == 1 and not marker.exists()


def test_an_export_json_cannot_turn_remote_code_on(planted, tmp_path):
    from peft_tui.engine.artifacts import EXPORT_FILE, load_export

    st_, rid, marker = planted
    row = st_.get(rid)
    (tmp_path / "exp").mkdir()
    meta = {"run_id": rid, "label_names": row["result"]["label_names"],
            "config": {**row["config"], "trust_remote_code": True}}
    (tmp_path / "exp" / EXPORT_FILE).write_text(json.dumps(meta))
    assert FLAG in refused(load_export, tmp_path / "exp")
    assert not marker.exists()


def test_a_worker_refuses_a_queued_run_that_asks_for_remote_code(planted, tmp_path_factory):
    """A row written into the queue with trust_remote_code (the store is shared data): a worker whose
    command was not given the flag fails it with the reason before anything loads."""
    from peft_tui.engine.launch.worker import Worker
    from peft_tui.engine.store import Store

    st_, _, marker = planted
    st2 = Store(tmp_path_factory.mktemp("queue") / "store")
    cfg = RunConfig.from_dict({**tiny_config(model=st_.get(1)["config"]["model"]).to_dict(), "trust_remote_code": True})
    rid = st2.create_run(cfg)
    worker = Worker(st2, "cpu", trust_remote_code=False)
    claim = st2.claim(worker.id, os.getpid(), worker.host, ["cpu"])
    assert claim is not None and claim.run_id == rid
    worker._train(claim, time.time())
    row = st2.get(rid)
    assert row["status"] == "failed" and FLAG in row["error"], row["error"]
    assert not marker.exists()


def test_the_flag_is_what_allows_it(tmp_path):
    """The control: with --trust-remote-code given, the same kind of folder's code does run (so the marker
    tests above would see it)."""
    from peft_tui.engine import models
    from peft_tui.engine.store import Store

    marker = tmp_path / "MARKER2"
    folder = marker_model(tmp_path / "evil-bert-2", marker)
    st_ = Store(tmp_path / "store")
    cfg = tiny_config(method="lora", model=str(folder))
    rid = st_.create_run(RunConfig.from_dict({**cfg.to_dict(), "trust_remote_code": True}))
    set_row(st_, rid, status="failed")
    assert FLAG in refused(st_.retry, rid)
    assert st_.retry(rid, trust_remote_code=True) == rid + 1
    assert RunConfig.from_stored(st_.get(rid)["config"], True).trust_remote_code is True
    models.load_model(str(folder), 2, 0, trust_remote_code=True)
    assert marker.exists()


# ================================================================================================
# class 2: splits that would silently mean something else
# ================================================================================================
def write_csv(path: Path, counts: list[int]) -> list[str]:
    texts = [f"row {i} of class {k}" for k, n in enumerate(counts) for i in range(n)]
    labels = [f"c{k}" for k, n in enumerate(counts) for _ in range(n)]
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)))
    return texts


@settings(max_examples=120, deadline=None, suppress_health_check=SHARED)
@given(counts=st.one_of(st.lists(st.integers(1, 3), min_size=2, max_size=400),
                        st.lists(st.integers(1, 40), min_size=2, max_size=12),
                        st.integers(2, 3000).map(lambda k: [1] * k)),
       val_fraction=st.sampled_from([0.0, 0.05, 0.15, 0.3]), test_fraction=st.sampled_from([0.0, 0.05, 0.15, 0.3]),
       seed=st.integers(0, 3))
def test_a_split_is_never_empty_or_reused(tmp_path_factory, counts, val_fraction, test_fraction, seed):
    """Many classes of few rows (10,000 x 1 is the example), any fractions: either refused in one line
    saying what fixes it, or validation and test are non-empty (validation may be switched off with
    val_fraction=0) and hold no training row."""
    from peft_tui.engine.data import load_splits

    path = tmp_path_factory.mktemp("split") / "d.csv"
    write_csv(path, counts)
    cfg = DataConfig(source=str(path), val_fraction=val_fraction, test_fraction=test_fraction)
    try:
        data = load_splits(cfg, seed)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        assert ("--val-data" in msg and "fewer classes" in msg and "more rows" in msg) or \
               ("data.test_source" in msg), msg
        return
    assert len(data.test) > 0
    assert len(data.val) > 0 or val_fraction == 0
    train = set(data.train.texts)
    assert not train & set(data.val.texts) and not train & set(data.test.texts)
    assert not set(data.val.texts) & set(data.test.texts)
    assert data.val is not data.test and data.val is not data.train and data.test is not data.train


def test_ten_thousand_classes_of_one_row_are_refused_on_the_command_line(tmp_path):
    path = tmp_path / "many.csv"
    write_csv(path, [1] * 10_000)
    msg = one_line_error(runner.invoke(app, ["data", "--data", str(path), "--model", "tiny"]))
    assert "validation split is empty" in msg and "--val-data" in msg and "more rows per class" in msg


@settings(max_examples=30, deadline=None, suppress_health_check=SHARED)
@given(spelling=st.sampled_from(["same", "dot", "link", "copy"]), which=st.sampled_from(["val", "test", "both"]))
def test_a_val_or_test_file_that_is_the_training_data_is_refused(tmp_path_factory, spelling, which):
    from peft_tui.engine.data import load_splits

    d = tmp_path_factory.mktemp("same")
    path = d / "train.csv"
    write_csv(path, [20, 20])
    other = {"same": str(path), "dot": str(d / "." / "train.csv"), "link": str(d / "link.csv"),
             "copy": str(d / "copy.csv")}[spelling]
    if spelling == "link":
        os.symlink(path, other)
    if spelling == "copy":
        Path(other).write_bytes(path.read_bytes())
    kw = {"val_source": other} if which == "val" else {"test_source": other} if which == "test" else \
        {"val_source": other, "test_source": other}
    msg = refused(load_splits, DataConfig(source=str(path), **kw), 0)
    assert "training" in msg or "same rows" in msg, msg


def test_a_val_file_that_shares_some_rows_is_noted(tmp_path):
    from peft_tui.engine.data import load_splits

    write_csv(tmp_path / "train.csv", [20, 20])
    rows = (tmp_path / "train.csv").read_text().splitlines()
    (tmp_path / "val.csv").write_text("\n".join([rows[0], rows[1], "a new text,c0", "another new one,c1"]) + "\n")
    data = load_splits(DataConfig(source=str(tmp_path / "train.csv"), val_source=str(tmp_path / "val.csv")), 0)
    assert any("1 of 3 validation rows also appear in --data" in n for n in data.notes), data.notes


@settings(max_examples=20, deadline=None)
@given(size=st.integers(20, 200), val_fraction=st.sampled_from([0.0, 0.15]))
def test_synthetic_data_with_no_test_split_is_refused(size, val_fraction):
    from peft_tui.engine.data import load_splits

    assert "data.test_source" in refused(load_splits, DataConfig(size=size, val_fraction=val_fraction,
                                                                  test_fraction=0.0), 0)


# ================================================================================================
# class 3: runs that would never end
# ================================================================================================
UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@settings(max_examples=300, deadline=None)
@given(number=st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False).map(lambda f: round(f, 3))),
       unit=st.sampled_from(sorted(UNITS)))
def test_durations_parse_or_are_refused_in_one_line(number, unit):
    text = f"{number}{unit}"
    seconds = float(number) * UNITS[unit]
    if seconds > 366 * 86400:
        assert "too long" in refused(parse_duration, text)
        return
    assert parse_duration(text) == pytest.approx(seconds)
    assert RunConfig().with_overrides([f"max_time={text}"]).max_time == pytest.approx(seconds)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=12).filter(lambda t: not re.fullmatch(r"\s*[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?\s*"
                                                                     r"(s|m|min|h|d)?\s*", t.lower())))
def test_garbage_durations_are_refused(text):
    assert "not a duration" in refused(parse_duration, text)


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=366 * 86400 + 1),
                       st.just(float("nan")), st.just(float("inf"))))
def test_a_max_time_out_of_range_is_refused(value):
    assert "max_time" in refused(RunConfig(max_time=value).validate)


@pytest.fixture(scope="module")
def plan_inputs():
    return {}


@settings(max_examples=25, deadline=None, suppress_health_check=SHARED)
@given(epochs=st.one_of(st.integers(1, 3), st.integers(10**6, 10**12)),
       max_time=st.one_of(st.just(0.0), st.floats(1, 366 * 86400)))
def test_the_fit_check_refuses_on_time(tmp_path_factory, plan_inputs, epochs, max_time):
    """An estimated time above max_time (default 24 h) is refused, in one line naming --max-time and --force."""
    from peft_tui.engine.estimate import DEFAULT_MAX_TIME_S, plan, refusal

    cfg = tiny_config(method="lora", epochs=epochs, max_time=max_time)
    (row,) = plan([cfg], tmp_path_factory.getbasetemp() / "cal.json", calibrate=False, inputs=plan_inputs)
    total, limit = row["estimate"]["total_s"], max_time or DEFAULT_MAX_TIME_S
    assert row["fits_time"] == (total <= limit) and row["time_limit_s"] == limit
    assert row["fits"] == (row["fits_time"] and row["fits_memory"])
    if not row["fits_time"] and row["fits_memory"]:
        msg = refusal(cfg, row)
        assert "\n" not in msg and "max_time=" in msg and "--force" in msg and "would take about" in msg


@pytest.mark.slow
def test_a_run_stops_cleanly_at_max_time(tmp_path):
    from peft_tui.engine import trainer
    from peft_tui.engine.events import JsonlSink, fan_out
    from peft_tui.engine.store import Store

    st_ = Store(tmp_path / "store")
    cfg = tiny_config(method="lora", epochs=10**6, max_time=3.0, head_init="random")
    rid = st_.create_run(cfg)
    t0 = time.monotonic()
    sink = fan_out(st_, JsonlSink(st_.events_path(rid)))
    result = trainer.execute(st_, rid, cfg, sink)
    sink.close()
    assert time.monotonic() - t0 < 60
    row = st_.get(rid)
    assert row["status"] == "done" and result is not None
    assert "max_time (3 s) reached" in result.extra["stopped"]
    assert 0 < result.steps < 10**6 * 8 and result.wall_time_s >= 3.0
    events = st_.events_path(rid).read_text()
    assert "stopped: max_time" in events


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its new parent) is not training
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_command_leaves_no_worker_training(tmp_path, sig, worker_processes):
    """`peft-tui run` (not detached) killed, even by SIGKILL: its worker cancels the run and leaves."""
    from peft_tui.engine.store import Store

    root = tmp_path / "store"
    cli = subprocess.Popen([sys.executable, "-m", "peft_tui.cli", "run", "--model", "tiny", "--method", "lora",
                            "--epochs", "100000", "--device", "cpu", "--store", str(root), "--set", "data.size=60",
                            "--set", "batch_size=8", "--set", "head_init=random"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker_pid = None
    try:
        st_ = wait_for(lambda: (root / "runs.db").exists() and Store(root), 60, "the store")
        row = wait_for(lambda: next((r for r in st_.list() if r["status"] == "running" and r["pid"]), None), 120,
                       "a run training")
        worker_pid = int(row["worker"].split(":")[1])
        os.kill(cli.pid, sig)
        cli.wait(30)
        wait_for(lambda: st_.get(row["id"])["status"] in ("cancelled", "failed", "done"), 60, "the run to end")
        assert st_.get(row["id"])["status"] == "cancelled"
        wait_for(lambda: not alive(worker_pid) and not alive(row["pid"]), 30, "the worker and run processes to end")
    finally:
        if cli.poll() is None:
            cli.kill()
        if worker_pid and alive(worker_pid):  # the test failed: leave nothing training behind
            os.kill(worker_pid, signal.SIGTERM)


# ================================================================================================
# class 4: model configs that allocate before they are checked
# ================================================================================================
@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    from peft_tui.engine.models import load_tokenizer

    folder = tmp_path_factory.mktemp("shape") / "base"
    tok = load_tokenizer("tiny")
    tok.save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return folder


def huge_value(draw_int):
    return st.one_of(draw_int, draw_int.map(float), draw_int.map(lambda n: f"{n:e}").map(float))


HUGE = st.one_of(
    st.fixed_dictionaries({"num_hidden_layers": huge_value(st.integers(1025, 10**15))}),
    st.fixed_dictionaries({"hidden_size": huge_value(st.integers(10**6, 10**300))}),
    st.fixed_dictionaries({"intermediate_size": huge_value(st.integers(10**9, 10**300))}),
    st.fixed_dictionaries({"vocab_size": huge_value(st.integers(10**11, 10**300))}),
    st.fixed_dictionaries({"max_position_embeddings": huge_value(st.integers(10**11, 10**300))}),
)
NOT_WHOLE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not (f == f and abs(f) != float("inf")
                                                                          and f == int(f) and f >= 0)),
    st.integers(max_value=-1))
BAD = st.tuples(st.sampled_from(["num_hidden_layers", "hidden_size", "vocab_size"]), NOT_WHOLE).map(lambda kv: dict([kv]))


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED)
@given(change=st.one_of(HUGE, BAD), entry=st.sampled_from(["check", "load", "estimate", "tokenizer", "cli-data"]))
def test_a_config_that_cannot_fit_is_refused_by_arithmetic_within_seconds(small_folder, tmp_path_factory,
                                                                         change, entry):
    from peft_tui.engine import estimate, models

    folder = tmp_path_factory.mktemp("huge") / "m"
    folder.mkdir()
    for f in small_folder.iterdir():
        os.link(f, folder / f.name)
    cfg = json.loads((small_folder / "config.json").read_text())
    cfg.update(change)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(cfg))  # 1e400 is written as Infinity, read back as inf
    t0 = time.monotonic()
    if entry == "cli-data":
        msg = one_line_error(runner.invoke(app, ["data", "--model", str(folder)]))
    else:
        fn = {"check": lambda: models.check_model_files(str(folder), 64),
              "load": lambda: models.load_model(str(folder), 2, 0),
              "estimate": lambda: estimate.model_config(str(folder), 2),
              "tokenizer": lambda: models.load_tokenizer(str(folder))}[entry]
        msg = refused(fn)
    assert time.monotonic() - t0 < 5
    assert "config.json" in msg and str(folder) in msg, msg


@settings(max_examples=300, deadline=None)
@given(dims=st.fixed_dictionaries({}, optional={
    "num_hidden_layers": st.integers(0, 2000), "hidden_size": st.integers(0, 10**7),
    "intermediate_size": st.integers(0, 10**8), "vocab_size": st.integers(0, 10**7),
    "max_position_embeddings": st.integers(0, 10**6)}), memory=st.integers(1, 2**45))
def test_the_size_check_is_exact_arithmetic(dims, memory):
    from peft_tui.engine.models import BYTES_PER_PARAM, MAX_LAYERS, check_config_size, config_dims, config_params

    params = config_params(config_dims(dims, "m"))
    h, i = dims.get("hidden_size", 0), dims.get("intermediate_size") or 4 * dims.get("hidden_size", 0)
    assert params == (dims.get("vocab_size", 0) + dims.get("max_position_embeddings", 0)) * h + \
        dims.get("num_hidden_layers", 0) * (4 * h * h + 2 * h * i)
    if dims.get("num_hidden_layers", 0) > MAX_LAYERS or params * BYTES_PER_PARAM > memory:
        refused(check_config_size, dims, "m", memory)
    else:
        assert check_config_size(dims, "m", memory) == params


def test_real_models_pass_the_size_check():
    from peft_tui.engine import estimate, models

    mc = estimate.model_config("minilm", 2)
    assert 20e6 < models.check_config_size(mc.to_dict(), "minilm") < 25e6


# ================================================================================================
# class 6: predict --file streams
# ================================================================================================
@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    return trained_store(tmp_path_factory.mktemp("head") / "store", "head")


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), max_codepoint=0x2FFF),
               min_size=1, max_size=30).filter(lambda t: t.strip() and "|||" not in t)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=SHARED)
@given(texts=st.lists(TEXT, min_size=1, max_size=30), n_extra=st.integers(0, 30), as_json=st.booleans())
def test_predict_file_streams_every_row_in_order(head_run, tmp_path_factory, texts, n_extra, as_json):
    check_streamed(head_run, tmp_path_factory, texts, n_extra, as_json)


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=SHARED)
@given(texts=st.lists(TEXT, min_size=1, max_size=30), n_extra=st.integers(1100, 2500), as_json=st.booleans())
def test_predict_file_streams_several_chunks_in_order(head_run, tmp_path_factory, texts, n_extra, as_json):
    check_streamed(head_run, tmp_path_factory, texts, n_extra, as_json)


def check_streamed(head_run, tmp_path_factory, texts: list[str], n_extra: int, as_json: bool) -> None:
    st_, rid = head_run
    texts = [t.strip() for t in texts] + [f"filler text {i}" for i in range(n_extra)]
    path = tmp_path_factory.mktemp("pred") / "in.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["predict", str(rid), "--file", str(path), "--store", str(st_.root),
                              *(["--json"] if as_json else [])])
    assert res.exit_code == 0, res.output
    assert re.search(r"predicted [\d,]+ texts in [\d.]+ s \([\d,]+ rows/s\)", res.stderr), res.stderr
    if as_json:
        doc = json.loads(res.stdout)
        assert [d["text"] for d in doc["predictions"]] == texts
        assert all(abs(sum(d["probabilities"].values()) - 1) < 1e-4 for d in doc["predictions"])
    else:
        lines = res.stdout.rstrip("\n").split("\n")
        assert lines[0].split("\t")[0] == "label" and len(lines) == len(texts) + 1
        assert all(ln.split("\t")[0] in ("negative", "positive") for ln in lines[1:])


def loads(*args, **kw):
    raise ConfigError("MODEL LOADED")


@settings(max_examples=10, deadline=None, suppress_health_check=SHARED)
@given(limit=st.integers(1, 50), rows=st.integers(1, 100))
def test_predict_refuses_above_the_row_limit_before_loading(head_run, tmp_path_factory, monkeypatch, limit, rows):
    from peft_tui import limits
    from peft_tui.engine import artifacts

    st_, rid = head_run
    path = tmp_path_factory.mktemp("lim") / "in.txt"
    path.write_text("".join(f"text {i}\n" for i in range(rows)))
    with monkeypatch.context() as m:
        m.setattr(limits, "MAX_PREDICT_ROWS", limit)
        m.setattr(artifacts, "load_run", loads)
        msg = one_line_error(runner.invoke(app, ["predict", str(rid), "--file", str(path), "--store", str(st_.root)]))
    if rows > limit:
        assert f"above the {limit:,}" in msg and "split the file" in msg
    else:
        assert "MODEL LOADED" in msg  # reached the model: nothing refused


def test_predict_writes_each_chunk_as_it_comes(head_run, monkeypatch, capsys):
    """The first chunk's results are out before the second chunk is classified."""
    from peft_tui.commands import artifacts as cmd
    from peft_tui.engine import artifacts

    st_, rid = head_run
    run = artifacts.load_run(st_, rid)
    real, calls = artifacts.predict, []

    def second_chunk_fails(r, texts, pairs=None):
        calls.append(len(texts))
        if len(calls) == 2:
            assert capsys.readouterr().out.count("\n") == cmd.PREDICT_CHUNK + 1  # header + chunk 1, already out
            raise KeyboardInterrupt
        return real(r, texts, pairs)

    monkeypatch.setattr(artifacts, "predict", second_chunk_fails)
    with pytest.raises(KeyboardInterrupt):
        cmd.stream_predictions(run, [f"text {i}" for i in range(3 * cmd.PREDICT_CHUNK)], None, as_json=False)
    assert calls == [cmd.PREDICT_CHUNK, cmd.PREDICT_CHUNK]


def test_the_documented_row_limit_is_the_one_enforced():
    from peft_tui.limits import MAX_PREDICT_ROWS

    res = runner.invoke(app, ["predict", "--help"])
    assert f"{MAX_PREDICT_ROWS:,}" in " ".join(res.stdout.split())


# ================================================================================================
# class 7: invisible and reordering characters
# ================================================================================================
CF = st.sampled_from([chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C,
                                       0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD, 0xE0041, 0x180E)])
ANY = st.characters(blacklist_categories=("Cs",))


def no_hidden(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.one_of(CF, st.text(ANY, max_size=5)), max_size=12), limit=st.one_of(st.none(),
                                                                                           st.integers(1, 40)))
@example(parts=["\x9d", "\u202a", "\x9c"], limit=None)  # a format character inside an 8-bit OSC, removed whole
def test_safe_text_shows_every_format_character(parts, limit):
    from peft_tui.safe import safe_text

    text = "".join(parts)
    shown = safe_text(text, limit)
    assert no_hidden(shown) and safe_text(shown) == shown
    if limit is None:  # every format character is shown, except inside an escape sequence removed whole
        from peft_tui.safe import _ESCAPES  # (e.g. an 8-bit OSC '\x9d<U+202A>\x9c': nothing of it is printed)

        for c in set(_ESCAPES.sub("", text)):
            if unicodedata.category(c) == "Cf":
                assert f"<U+{ord(c):04X}>" in shown


@settings(max_examples=15, deadline=None, suppress_health_check=SHARED)
@given(name=st.lists(st.one_of(CF, st.sampled_from(["abc", "שלום", "x", "1"])), min_size=1, max_size=6).map("".join),
       command=st.sampled_from([["show", "{id}"], ["runs"], ["report"], ["predict", "{id}", "fine"]]))
def test_labels_and_names_with_bidi_controls_are_shown_literally(head_run, name, command):
    st_, rid = head_run
    row = st_.get(rid)
    result = {**row["result"], "label_names": [name, "positive"]}
    set_row(st_, rid, name=name, result=json.dumps(result))
    try:
        res = runner.invoke(app, [c.format(id=rid) for c in command] + ["--store", str(st_.root)])
    finally:
        set_row(st_, rid, name=row["name"], result=json.dumps(row["result"]))
    assert res.exit_code == 0, res.output
    assert no_hidden(res.stdout.replace("\n", "")), ascii(res.stdout)


# ================================================================================================
# class 8b: a run folder replaced by a link
# ================================================================================================
@settings(max_examples=20, deadline=None, suppress_health_check=SHARED)
@given(target=st.sampled_from(["outside", "other-run", "dangling", "file"]))
def test_a_replaced_run_folder_is_named(tmp_path_factory, target):
    from peft_tui.engine.launch.worker import check_run_folder
    from peft_tui.engine.store import Store

    root = tmp_path_factory.mktemp("link")
    st_ = Store(root / "store")
    other, rid = st_.create_run(tiny_config()), st_.create_run(tiny_config())
    folder = root / "store" / "runs" / st_.get(rid)["folder"]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    if target == "file":
        folder.write_text("not a folder")
    else:
        dest = {"outside": root, "other-run": st_.run_dir(other), "dangling": root / "nowhere"}[target]
        folder.symlink_to(dest)
    msg = refused(check_run_folder, st_, rid)
    assert ("symbolic link" in msg) == (target != "file") and "retry the run" in msg


@pytest.mark.slow
def test_a_worker_says_why_a_linked_run_folder_failed(tmp_path):
    from peft_tui.engine.store import Store

    st_ = Store(tmp_path / "store")
    rid = st_.create_run(tiny_config())
    folder = tmp_path / "store" / "runs" / st_.get(rid)["folder"]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "peft_tui.engine.launch.worker", "--store", str(st_.root),
                           "--exit-when-idle"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = st_.get(rid)
    assert row["status"] == "failed" and "symbolic link" in row["error"], row["error"]
    assert "without recording a result" not in row["error"]
    assert not any(p.name.startswith("events") for p in tmp_path.iterdir())  # nothing written through the link


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["prefix", "prompt"]), virtual=st.integers(1, 600), over=st.integers(1, 2000))
@example(method="prefix", virtual=20, over=20)  # IMDB at max_length 512 with the default prefix: a torch error before
def test_virtual_tokens_past_the_position_limit_are_one_line_before_queueing(tmp_path, method, virtual, over):
    """max_length + num_virtual_tokens above the model's positions (512 for tiny, as for BERTs) is refused
    in one line that says which max_length fits, with exit code 2, and nothing is queued; at the limit it runs."""
    from peft_tui.engine.store import Store

    limit = 512
    max_length = min(limit, max(8, limit - virtual + over))  # RunConfig takes 8..; the model's limit caps it
    store = tmp_path / f"s-{method}-{virtual}-{over}"
    res = runner.invoke(app, ["run", "--method", method, "--model", "tiny", "--set", f"data.size={40}",
                              "--set", f"num_virtual_tokens={virtual}", "--max-length", str(max_length),
                              "--epochs", "1", "--device", "cpu", "--store", str(store)])
    assert max_length + virtual > limit
    assert res.exit_code == 2, res.output
    [line] = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "Traceback" not in res.output and line.startswith("error: ")
    if limit - virtual >= 8:
        assert f"plus {virtual} virtual tokens" in line and f"--set max_length={limit - virtual} " in line
    else:
        assert f"leave fewer than 8 of the {limit} positions" in line and f"num_virtual_tokens={limit - 8} or" in line
    assert not store.exists() or Store(store).list() == []


def test_prefix_at_the_position_limit_trains(tmp_path):
    res = runner.invoke(app, ["run", "--method", "prefix", "--model", "tiny", "--set", "data.size=40",
                              "--set", "num_virtual_tokens=20", "--max-length", "492", "--epochs", "1",
                              "--set", "data.label_noise=0", "--device", "cpu", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output


@given(max_length=st.integers(8, 40000), virtual=st.integers(0, 5000), limit=st.integers(16, 4096))
def test_the_position_check_suggests_only_values_that_fit(max_length, virtual, limit):
    """Whatever the lengths (max_length above the model's limit included), the one line names a max_length or a
    number of virtual tokens that is positive and fits, never a negative one."""
    import re as _re

    from peft_tui.engine.models import check_positions

    try:
        check_positions(max_length, virtual, limit, "model 'm'")
    except ConfigError as e:
        text = str(e)
        assert "\n" not in text and max_length + virtual > limit
        for key, value in _re.findall(r"(max_length|num_virtual_tokens)=(-?\d+) or", text) + \
                _re.findall(r"--set (max_length)=(-?\d+)", text):
            n = int(value)
            assert n >= 1
            assert (n + virtual if key == "max_length" else n + 8) <= limit
    else:
        assert max_length + virtual <= limit
