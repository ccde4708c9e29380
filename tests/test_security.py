"""Security: run names cannot escape the store; no remote code unless asked; checkpoints never unpickle
code; weights only from safetensors. (The source scan for torch.load / trust_remote_code=True is in
test_imports.py.)"""

from __future__ import annotations

import json
import threading

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import ConfigError, RunConfig
from peft_tui.engine import checkpoint, models, trainer
from peft_tui.engine.events import StepLogged, fan_out
from peft_tui.engine.methods import validate as validate_run
from peft_tui.engine.store import Store

BAD_NAMES = ["../x", "../../etc/passwd", "/etc/passwd", "..", ".hidden", "a/b", "a\\b", "x\x00y", "~root", "a b", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_names_that_could_escape_are_rejected(name):
    with pytest.raises(ConfigError, match="is not allowed"):
        validate_run(RunConfig(name=name))


@pytest.mark.parametrize("name", BAD_NAMES + ["ok-name", "x" * 300])
def test_folder_names_are_sanitised_inside_the_store(store, name):
    """Even an unvalidated name (the baseline row is stored without validation) stays inside runs/."""
    rid = store.create_run(RunConfig(name=name or None))
    folder = store.run_dir(rid)
    assert folder.parent == (store.root / "runs").resolve()
    assert folder.name.startswith(f"{rid:04d}-") and "/" not in folder.name and ".." not in folder.name
    assert len(folder.name) <= 53


def test_a_tampered_folder_in_the_database_is_refused(store):
    rid = store.create_run(RunConfig())
    with store._tx() as db:
        db.execute("UPDATE runs SET folder='../../outside' WHERE id=?", (rid,))
    with pytest.raises(ConfigError, match="outside the store"):
        store.run_dir(rid)


# ------------------------------------------------------------------------------- trust_remote_code
@pytest.fixture()
def model_folder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _record(monkeypatch, cls, calls):
    real = cls.from_pretrained.__func__

    def spy(klass, *a, **kw):
        calls.append(kw.get("trust_remote_code"))
        return real(klass, *a, **kw)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))


def test_no_remote_code_unless_the_flag_is_given(monkeypatch, model_folder):
    import transformers

    calls: list = []
    _record(monkeypatch, transformers.AutoModelForSequenceClassification, calls)
    _record(monkeypatch, transformers.AutoConfig, calls)
    models.load_model(str(model_folder), 2, 0)
    models.check_model_files(str(model_folder))
    assert calls and all(c is False for c in calls)
    calls.clear()
    models.load_model(str(model_folder), 2, 0, trust_remote_code=True)
    assert calls and all(c is True for c in calls)


@pytest.mark.slow
def test_cli_flag_is_the_only_way_to_trust_remote_code(monkeypatch, tmp_path):
    """The worker trains from the config the store holds: only the flag puts trust_remote_code in it."""
    base = ["run", "--method", "bitfit", "--model", "tiny", "--set", "data.size=120", "--epochs", "1",
            "--store", str(tmp_path / "s")]
    assert CliRunner().invoke(app, base).exit_code == 0
    assert CliRunner().invoke(app, base + ["--trust-remote-code"]).exit_code == 0
    rows = Store(tmp_path / "s").list()
    assert [r["config"]["trust_remote_code"] for r in rows] == [False, True]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert RunConfig().trust_remote_code is False


# ------------------------------------------------------------------------------- no pickle execution
class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.mark.slow
def test_a_checkpoint_with_pickled_code_is_refused_not_run(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(trainer, "LOG_INTERVAL_S", 0.0)
    st = Store(tmp_path / "s")
    cfg = tiny_config(method="bitfit", epochs=2)
    rid = st.create_run(cfg)
    cancel = threading.Event()

    def stop(event):
        if isinstance(event, StepLogged) and event.step >= 7:
            cancel.set()

    trainer.execute(st, rid, cfg, fan_out(st, stop), cancel)
    ckpt = checkpoint.find(st.run_dir(rid))
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Evil(str(marker))}, ckpt / "state.pt")
    config = checkpoint.prepare_resume(st, rid)
    assert trainer.execute(st, rid, config, st, resume=True) is None
    assert not marker.exists()
    assert "is damaged" in st.get(rid)["error"]


def test_pickle_weights_are_never_loaded(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="only pickle"):
        models.load_model(str(folder), 2, 0)
