"""Data: the synthetic generator and the file loaders, including their error messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from peft_tui.config import ConfigError, DataConfig
from peft_tui.engine.data import load_splits, stratified_split, synthetic


def test_synthetic_is_deterministic_and_balanced():
    a = synthetic(400, seed=7)
    b = synthetic(400, seed=7)
    c = synthetic(400, seed=8)
    assert a == b
    assert a != c
    texts, labels = a
    assert len(texts) == 400 and len(set(texts)) == 400  # unique
    assert labels.count(0) == labels.count(1) == 200


def test_synthetic_has_structure():
    texts, labels = synthetic(2000, seed=1)
    joined = " ".join(texts).lower()
    for marker in (" not ", " hardly ", " but ", "although", " very "):
        assert marker in joined, marker
    # negation flips the adjective: some positives contain a negative adjective
    pos_with_neg_word = [t for t, y in zip(texts, labels) if y == 1 and " not at all terrible" in t.lower()]
    neg_with_pos_word = [t for t, y in zip(texts, labels) if y == 0 and "not exactly" in t.lower()]
    assert pos_with_neg_word or neg_with_pos_word


def test_label_noise_flips_the_asked_fraction():
    _, clean = synthetic(1000, seed=3)
    _, noisy = synthetic(1000, seed=3, label_noise=0.1)
    assert sum(a != b for a, b in zip(clean, noisy)) == 100


def test_synthetic_splits_are_fixed_and_disjoint():
    cfg = DataConfig(size=600)
    s1, s2 = load_splits(cfg, seed=1), load_splits(cfg, seed=99)
    assert s1.train.texts == s2.train.texts  # the synthetic set does not move with the run seed
    assert (len(s1.train), len(s1.val), len(s1.test)) == (420, 90, 90)
    assert not set(s1.train.texts) & set(s1.test.texts)
    assert s1.label_names == ["negative", "positive"]


def test_stratified_split_keeps_class_ratios():
    labels = [0] * 80 + [1] * 20
    train, val = stratified_split(labels, [0.25], seed=0)
    assert sorted(train + val) == list(range(100))
    assert sum(labels[i] for i in val) == 5 and len(val) == 25


def write_csv(tmp_path, rows, name="d.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_csv_with_string_labels_and_three_classes(tmp_path):
    rows = [{"text": f"example {i}", "label": ["cat", "dog", "eel"][i % 3]} for i in range(60)]
    splits = load_splits(DataConfig(source=write_csv(tmp_path, rows)), seed=0)
    assert splits.label_names == ["cat", "dog", "eel"]
    assert splits.num_labels == 3
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60
    assert set(splits.val.labels) == {0, 1, 2}


def test_jsonl_and_parquet_and_custom_columns(tmp_path):
    rows = [{"review": f"r{i}", "stars": i % 2} for i in range(40)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    for path in (jl, pq):
        s = load_splits(DataConfig(source=str(path), text_col="review", label_col="stars"), seed=0)
        assert s.label_names == ["0", "1"] and len(s.train) > 20


def test_separate_validation_file(tmp_path):
    train = write_csv(tmp_path, [{"text": f"t{i}", "label": i % 2} for i in range(40)])
    val = write_csv(tmp_path, [{"text": f"v{i}", "label": i % 2} for i in range(10)], "val.csv")
    s = load_splits(DataConfig(source=train, val_source=val, test_fraction=0.2), seed=0)
    assert s.val.texts == [f"v{i}" for i in range(10)]
    bad = write_csv(tmp_path, [{"text": "v", "label": 5}], "bad.csv")
    with pytest.raises(ConfigError, match="classes not in training: 5"):
        load_splits(DataConfig(source=train, val_source=bad), seed=0)


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("", "is empty"),
        ("text,label\n", "no rows"),
        ("words,label\na,1\nb,0\n", "column 'text' not found"),
        ("text,label\na,1\nb,1\nc,1\n", "single class"),
        ("text,label\na,1\nb,\nc,0\n", "missing"),
        ("text,label\na,1\nb,x\nc,0\n", "mix numbers and strings"),
        ("text,label\na,1.5\nb,0\n", "fractional"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_splits(DataConfig(source=str(path)), seed=0)
    assert "\n" not in str(err.value)


def test_missing_binary_and_unknown_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_splits(DataConfig(source=str(tmp_path / "nope.csv")), seed=0)
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"\x00\x01\x02text")
    with pytest.raises(ConfigError, match="binary"):
        load_splits(DataConfig(source=str(binary)), seed=0)
    other = tmp_path / "x.xlsx"
    other.write_text("a")
    with pytest.raises(ConfigError, match="unknown type"):
        load_splits(DataConfig(source=str(other)), seed=0)
