"""Artefacts of a finished run: predict (same predictions as the run's own test evaluation) and
export (LoRA merged loads in stock transformers with the same logits; plain models; methods that
cannot merge say so and export what loads). Tiny model only."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.config import ConfigError, DataConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One store with a finished lora, adapters and full run on the tiny model."""
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute

    st = Store(tmp_path_factory.mktemp("artifacts") / "store")
    ids = {}
    for method, params in (("lora", {"r": 4}), ("adapters", {"size": 8}), ("full", {})):
        cfg = tiny_config(method=method, params=params, data=DataConfig(size=160), lr=2e-3 if method != "full" else 1e-4)
        rid = st.create_run(cfg)
        assert execute(st, rid, cfg, st) is not None, st.get(rid)["error"]
        ids[method] = rid
    return st, ids


@pytest.mark.parametrize("method", ["lora", "adapters", "full"])
def test_predictions_reproduce_the_stored_test_accuracy(trained, method):
    from peft_tui.engine.artifacts import load_run, predict
    from peft_tui.engine.data import load_splits

    st, ids = trained
    run = load_run(st, ids[method])
    data = load_splits(run.config.data, run.config.seed)
    preds = predict(run, data.test.texts, data.test.pairs)
    acc = sum(p.index == y for p, y in zip(preds, data.test.labels)) / len(preds)
    assert acc == pytest.approx(st.get(ids[method])["result"]["accuracy"], abs=1e-12)
    p = preds[0]
    assert set(p.probabilities) == set(run.label_names) and sum(p.probabilities.values()) == pytest.approx(1.0)


def test_predict_command_json_and_file(trained, tmp_path):
    from peft_tui.cli import app

    st, ids = trained
    f = tmp_path / "in.txt"
    f.write_text("the screen is great\nthe battery is awful\n")
    res = runner.invoke(app, ["predict", str(ids["lora"]), "a lovely keyboard", "--file", str(f),
                              "--store", str(st.root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [d["text"] for d in doc["predictions"]] == ["a lovely keyboard", "the screen is great", "the battery is awful"]
    assert all(d["label"] in ("negative", "positive") for d in doc["predictions"])
    res = runner.invoke(app, ["predict", str(ids["lora"]), "nice", "--store", str(st.root)])
    assert res.exit_code == 0 and "p(positive)" in res.stdout
    res = runner.invoke(app, ["predict", str(ids["lora"]), "--store", str(st.root)])
    assert res.exit_code == 2 and "nothing to classify" in res.output


def _logits(model, tok, texts):
    import torch

    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


TEXTS = ["the screen is great", "although the fan is noisy, I love it", "terrible keyboard"]


def test_lora_merge_loads_in_stock_transformers_with_the_same_logits(trained, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_tui.cli import app
    from peft_tui.engine.artifacts import load_run

    st, ids = trained
    out = tmp_path / "merged"
    res = runner.invoke(app, ["export", str(ids["lora"]), "--out", str(out), "--merge", "--store", str(st.root),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"] == "merged"
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert model.config.id2label == {0: "negative", 1: "positive"}
    run = load_run(st, ids["lora"])
    assert torch.allclose(_logits(model, tok, TEXTS), _logits(run.model, run.tokenizer, TEXTS), atol=1e-5)
    assert (out / "README.md").exists()


def test_full_exports_a_plain_model(trained, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_tui.engine.artifacts import export_run, load_run

    st, ids = trained
    res = export_run(st, ids["full"], tmp_path / "full", merge=True)
    assert res.kind == "model"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    run = load_run(st, ids["full"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert torch.allclose(_logits(model, tok, TEXTS), _logits(run.model, run.tokenizer, TEXTS), atol=1e-5)


def test_adapters_cannot_merge_and_export_what_loads(trained, tmp_path):
    import torch

    from peft_tui.cli import app
    from peft_tui.engine.artifacts import load_export, load_run

    st, ids = trained
    out = tmp_path / "adapters"
    res = runner.invoke(app, ["export", str(ids["adapters"]), "--out", str(out), "--merge", "--store", str(st.root)])
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0]
    assert "cannot be merged" in first
    assert (out / "adapters" / "adapters.safetensors").exists() and (out / "README.md").exists()
    assert "load_export" in (out / "README.md").read_text()
    exported, run = load_export(out), load_run(st, ids["adapters"])
    assert torch.allclose(_logits(exported.model, exported.tokenizer, TEXTS), _logits(run.model, run.tokenizer, TEXTS))


def test_lora_without_merge_exports_a_peft_adapter(trained, tmp_path):
    import torch
    from peft import PeftModel

    from peft_tui.engine.artifacts import export_run, load_run
    from peft_tui.engine.models import load_model

    st, ids = trained
    res = export_run(st, ids["lora"], tmp_path / "adapter")
    assert res.kind == "adapter" and (tmp_path / "adapter" / "adapter" / "adapter_config.json").exists()
    run = load_run(st, ids["lora"])
    model = PeftModel.from_pretrained(load_model("tiny", 2, run.config.seed), tmp_path / "adapter" / "adapter").eval()
    assert torch.allclose(_logits(model, run.tokenizer, TEXTS), _logits(run.model, run.tokenizer, TEXTS), atol=1e-6)


def test_export_refuses_unfinished_runs_and_non_empty_folders(trained, tmp_path):
    from peft_tui.engine.artifacts import export_run

    st, ids = trained
    queued = st.create_run(tiny_config(method="lora"))
    with pytest.raises(ConfigError, match="not done"):
        export_run(st, queued, tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_run(st, ids["lora"], tmp_path / "busy")
