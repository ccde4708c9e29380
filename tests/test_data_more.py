"""Data, second part: HF datasets (save_to_disk folders, hf: specs offline), sentence pairs, the
pre-training summary and the `peft-tui data` command. Small data made here, tiny model only."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.config import ConfigError, DataConfig
from peft_tui.engine.data import format_summary, load_splits, parse_hf_spec, summarize

datasets = pytest.importorskip("datasets")


def _hf_dict(tmp_path, n=60):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feats = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos", "neutral"])})
    words = ["bad awful", "good great", "meh fine"]

    def make(k, off):
        rows = [{"sentence": f"{words[i % 3]} example {off + i}", "label": i % 3} for i in range(k)]
        return Dataset.from_list(rows, features=feats)

    dd = DatasetDict({"train": make(n, 0), "validation": make(12, 1000), "test": make(15, 2000)})
    folder = tmp_path / "hfds"
    dd.save_to_disk(str(folder))
    return folder


def test_load_from_disk_dataset_dict_uses_its_splits_and_class_names(tmp_path):
    folder = _hf_dict(tmp_path)
    data = load_splits(DataConfig(source=str(folder), text_col="sentence"), seed=0)
    assert data.label_names == ["neg", "pos", "neutral"]  # ClassLabel names, in the dataset's order
    assert len(data.train) == 60 and len(data.val) == 12 and len(data.test) == 15
    assert data.test.texts[0].endswith("2000") and data.test.labels[:3] == [0, 1, 2]


def test_load_from_disk_single_dataset_is_split_and_limited(tmp_path):
    from datasets import Dataset

    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(100)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    data = load_splits(DataConfig(source=str(tmp_path / "one"), limit=40), seed=0)
    assert data.label_names == ["a", "b"]
    assert len(data.train) + len(data.val) + len(data.test) == 40
    assert any("stratified sample" in n for n in data.notes)


def test_hf_spec_parsing():
    assert parse_hf_spec("hf:imdb") == ("imdb", None, None)
    assert parse_hf_spec("hf:glue:sst2") == ("glue", "sst2", None)
    assert parse_hf_spec("hf:glue:sst2:validation") == ("glue", "sst2", "validation")
    assert parse_hf_spec("hf:imdb:train") == ("imdb", None, "train")
    assert parse_hf_spec("hf:imdb::train[:10%]") == ("imdb", None, "train[:10%]")
    with pytest.raises(ConfigError):
        parse_hf_spec("hf:")


def test_hub_dataset_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as e:
        load_splits(DataConfig(source="hf:someone/not-here"), seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "hf:someone/not-here" in msg and "save_to_disk" in msg


def _pairs_csv(tmp_path, n=90):
    import pandas as pd

    rows = []
    for i in range(n):
        same = i % 2
        a = f"the cat sat on mat {i}"
        rows.append({"s1": a, "s2": a if same else f"stock prices fell {i}", "label": "same" if same else "diff"})
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_sentence_pairs_are_carried_and_tokenised_as_pairs(tmp_path, tiny_tokenizer):
    from peft_tui.engine.batching import tokenize

    path = _pairs_csv(tmp_path)
    data = load_splits(DataConfig(source=str(path), text_col="s1", text_pair_col="s2"), seed=0)
    for split in (data.train, data.val, data.test):
        assert split.pairs is not None and len(split.pairs) == len(split.texts)
    ids = tokenize(tiny_tokenizer, data.train.texts[:2], 64, data.train.pairs[:2])
    sep = tiny_tokenizer.sep_token_id
    assert all(seq.count(sep) == 2 for seq in ids)  # [CLS] a [SEP] b [SEP]
    with pytest.raises(ConfigError, match="text_pair_col"):
        load_splits(DataConfig(source=str(path), text_col="s1", text_pair_col="nope"), seed=0)


def test_pairs_train_end_to_end(tmp_path, store):
    from peft_tui.engine.trainer import execute

    path = _pairs_csv(tmp_path)
    cfg = tiny_config(method="lora", data=DataConfig(source=str(path), text_col="s1", text_pair_col="s2"))
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, store)
    assert result is not None and result.sizes["train"] > 0


def test_summary_counts_percentiles_and_truncation(tiny_tokenizer):
    from peft_tui.engine.data import DataSplits, Split

    texts = [" ".join(["word"] * n) for n in range(1, 101)]  # 1..100 words -> 3..102 tokens
    labels = [i % 2 for i in range(100)]
    data = DataSplits(Split(texts, labels), Split(texts[:0], []), Split(texts[:0], []), ["a", "b"], "mem")
    doc = summarize(data, tiny_tokenizer, max_length=52)
    assert doc["per_class"]["train"] == {"a": 50, "b": 50}
    assert doc["tokens"]["p50"] == 52 and doc["tokens"]["max"] == 102 and doc["tokens"]["p90"] == 92
    assert doc["truncated"] == 50 and doc["truncated_pct"] == 50.0
    text = format_summary(doc)
    assert "p99" in text and "truncates 50.0%" in text
    json.dumps(doc)


def test_data_command_prints_summary(tmp_path):
    from peft_tui.cli import app

    path = _pairs_csv(tmp_path)
    res = CliRunner().invoke(app, ["data", "--data", str(path), "--text-col", "s1", "--text-pair-col", "s2",
                                   "--model", "tiny", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["pairs"] is True and set(doc["labels"]) == {"diff", "same"} and "truncated_pct" in doc
    res = CliRunner().invoke(app, ["data", "--data", str(path), "--text-col", "s1", "--model", "tiny"])
    assert res.exit_code == 0 and "p90" in res.stdout and "same" in res.stdout
