"""Hub ids without a reachable hub: a fast one-line error when the model or dataset is not cached, and a
model in the local hub cache still trains (the real hub code path, on a cache folder made here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.engine import hub, models
from peft_tui.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    for var in hub.PROXY_VARS + ("HF_HUB_OFFLINE",):
        monkeypatch.delenv(var, raising=False)
    hub.reachable.cache_clear()
    yield
    hub.reachable.cache_clear()


def test_the_probe_tells_reachable_from_not(no_hub, monkeypatch):
    assert not hub.reachable() and hub.hub_kwargs() == {"local_files_only": True}
    assert "127.0.0.1 cannot be reached" in hub.unreachable_note()
    with socket.socket() as server:  # something listening: reachable
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.reachable.cache_clear()
        assert hub.reachable() and hub.hub_kwargs() == {}
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own offline switch wins
        hub.reachable.cache_clear()
        assert not hub.reachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # behind a proxy the probe cannot tell
    hub.reachable.cache_clear()
    assert hub.reachable()


@settings(max_examples=25, deadline=None)
@given(org=st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
       name=st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_an_uncached_hub_id_fails_in_one_line_without_waiting(org, name):
    hub.reachable.cache_clear()
    old = os.environ.get("HF_ENDPOINT")
    os.environ["HF_ENDPOINT"] = CLOSED
    try:
        model = f"{org}/{name}"
        for call in (lambda: models.check_model_files(model), lambda: models.load_tokenizer(model)):
            with pytest.raises(ConfigError) as err:
                call()
            text = str(err.value)
            assert "\n" not in text and repr(model) in text and "cannot be reached from here" in text
            assert "not in the local cache" in text
    finally:
        os.environ.pop("HF_ENDPOINT") if old is None else os.environ.__setitem__("HF_ENDPOINT", old)
        hub.reachable.cache_clear()


@pytest.mark.slow
def test_a_model_in_the_hub_cache_trains_with_the_hub_unreachable(tmp_path):
    """The hub client's own cache layout (models--org--name/snapshots/<rev>, refs/main), filled with the tiny
    model; the run resolves the id through it and trains, with no network."""
    from transformers import BertForSequenceClassification

    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-bert" / "snapshots" / "0123456789abcdef"
    model = BertForSequenceClassification(models._tiny_config(2))
    model.save_pretrained(snap, safe_serialization=True)
    models.load_tokenizer("tiny").save_pretrained(snap)
    (cache / "models--acme--tiny-bert" / "refs").mkdir()
    (cache / "models--acme--tiny-bert" / "refs" / "main").write_text("0123456789abcdef")
    # a spy in every process of the command: the hub client's request-with-retries is never called (before
    # the fix, transformers' look-up of a peft adapter config asked the hub and waited out ~25 s of retries)
    asked, plant = tmp_path / "asked", tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(
        "import pathlib\nimport huggingface_hub.utils._http as h\nbase = h._http_backoff_base\n"
        "def spy(*a, **k):\n"
        f"    pathlib.Path({str(asked)!r}).write_text(repr(k.get('url')) + ''.join(__import__('traceback').format_stack()))\n"
        "    return base(*a, **k)\n"
        "h._http_backoff_base = spy\n")
    env = {**os.environ, "HF_ENDPOINT": CLOSED, "HF_HUB_CACHE": str(cache), "PEFT_TUI_STORE": str(tmp_path / "s"),
           "PYTHONPATH": os.pathsep.join([str(plant), str(ROOT)])}
    for var in hub.PROXY_VARS + ("HF_HUB_OFFLINE",):
        env.pop(var, None)
    res = subprocess.run([sys.executable, "-m", "peft_tui.cli", "run", "--model", "acme/tiny-bert", "--method", "lora",
                          "--epochs", "1", "--batch-size", "16", "--set", "data.size=60", "--set", "max_length=64",
                          "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["status"] == "done" and doc["config"]["model"] == "acme/tiny-bert"
    assert 0.0 <= doc["result"]["accuracy"] <= 1.0 and doc["result"]["trainable_params"] > 0
    assert not asked.exists(), f"the hub was asked: {asked.read_text()}"
