"""The `head` linear probe: the L-BFGS fit converges to the regularised optimum, the encoder runs once
per text, and a probe run reports, saves and reloads a head that reproduces its own test accuracy."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.config import DataConfig
from peft_tui.engine import probe
from peft_tui.engine.methods import get_method


def test_fit_matches_sklearn_logistic_regression():
    """mean CE + wd * ||W||^2 is sklearn's multinomial objective with C = 1 / (2 * wd * n)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=gen, dtype=torch.float64).float()
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(300, generator=gen) > 0).long() + (x[:, 2] > 1).long()
    wd = 1e-2
    w, _, iterations = probe.fit_linear(x, y, 3, wd, with_bias=True)
    ref = LogisticRegression(C=1 / (2 * wd * len(x)), tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    # softmax weights are defined up to a shift shared by all classes: compare centred weights
    ours = w.numpy() - w.numpy().mean(0)
    theirs = ref.coef_ - ref.coef_.mean(0)
    assert np.allclose(ours, theirs, atol=2e-3), (ours, theirs)
    assert 0 < iterations <= probe.MAX_ITER


def test_fit_without_bias_and_warm_start():
    import torch

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    w, b, _ = probe.fit_linear(x, y, 2, 1e-3, with_bias=False)
    assert b is None and ((x @ w.T).argmax(-1) == y).all()
    _, _, again = probe.fit_linear(x, y, 2, 1e-3, with_bias=False, init=(w, None))
    assert again <= 2  # already at the optimum


def test_encoder_runs_once_per_text(tiny_tokenizer):
    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.models import load_model

    model = load_model("tiny", 2, 0, pooling="mean")
    calls = []
    model.bert.register_forward_hook(lambda mod, args, out: calls.append(out.last_hidden_state.shape[0]))
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(50)]
    ids = tokenize(tiny_tokenizer, texts, 32)
    feats = probe.encode(model, probe.final_linear(model), ids, 0, 16, "cpu", _null, threading.Event())
    assert feats.shape == (50, 64) and sum(calls) == 50 and len(calls) == 4
    # the cached vector is what the classifier reads: the model's logits come back from it
    import torch

    with torch.no_grad():
        direct = model(**tiny_tokenizer(texts[:1], return_tensors="pt")).logits
        assert torch.allclose(model.classifier(feats[:1]), direct, atol=1e-5)


def _null():
    import contextlib

    return contextlib.nullcontext()


def run_probe(tmp_path, **kw):
    from peft_tui.engine.data import load_splits

    cfg = tiny_config(method="head", pooling="mean", **kw)
    events = []
    result = probe.run(cfg, 7, events.append, threading.Event(), tmp_path, load_splits(cfg.data, cfg.seed),
                       method=get_method("head"))
    return cfg, result, events


def test_probe_run_reports_saves_and_reloads(tmp_path):
    import torch

    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.evaluation import evaluate
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import load_model, load_tokenizer

    cfg, result, events = run_probe(tmp_path, data=DataConfig(size=200))
    names = [type(e).__name__ for e in events]
    assert names[0] == "RunStarted" and events[0].total_steps == len(probe.WEIGHT_DECAYS)
    vals = [e for e in events if type(e).__name__ == "EvalLogged" and e.split == "val"]
    assert len(vals) == len(probe.WEIGHT_DECAYS) and names.count("StepLogged") == len(probe.WEIGHT_DECAYS)
    assert "MemorySampled" in names
    test_event = [e for e in events if type(e).__name__ == "EvalLogged" and e.split == "test"][-1]
    assert result.method == "head" and result.pooling == "mean" and result.seed == cfg.seed
    assert result.steps == len(probe.WEIGHT_DECAYS) and result.accuracy == test_event.accuracy
    assert result.val_accuracy == max(e.accuracy for e in vals)
    assert result.extra["probe_weight_decay"] in probe.WEIGHT_DECAYS
    assert result.trainable_params == 64 * 2 + 2  # the linear classifier only
    # the saved head, put on a fresh model, scores exactly what the run reported
    data = load_splits(cfg.data, cfg.seed)
    tok = load_tokenizer("tiny")
    model = get_method("head").load(load_model("tiny", 2, cfg.seed, pooling="mean"), tmp_path, {})
    ids = tokenize(tok, data.test.texts, cfg.max_length)
    r = evaluate(model, ids, data.test.labels, 2, 64, tok.pad_token_id, "cpu", _null)
    assert r.accuracy == pytest.approx(result.accuracy) and r.f1 == pytest.approx(result.f1)
    # the run's logits come from features encoded in its own batches (other widths than these 64-row ones), so
    # the loss agrees to float rounding, which differs by CPU (AVX2 / AVX-512 / AMX kernels): seen 2.5e-4 apart
    assert r.loss == pytest.approx(result.test_loss, rel=2e-3)
    assert torch.isfinite(model.classifier.weight).all()


def test_probe_without_validation_split_uses_the_default(tmp_path):
    _, result, events = run_probe(tmp_path, data=DataConfig(size=120, val_fraction=0.0))
    assert result.steps == 1 and result.extra["probe_weight_decay"] == probe.DEFAULT_WEIGHT_DECAY
    assert any("no validation split" in getattr(e, "text", "") for e in events)


def test_probe_cancels(tmp_path):
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.result import Cancelled

    cfg = tiny_config(method="head")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        probe.run(cfg, 1, lambda e: None, cancel, tmp_path, load_splits(cfg.data, cfg.seed), method=get_method("head"))
    assert not (tmp_path / "head.safetensors").exists()


def test_head_method_runs_the_probe(monkeypatch):
    from peft_tui.engine.methods import get_method

    seen = []
    monkeypatch.setattr(probe, "run", lambda *args, **kw: seen.append((args, kw)) or "result")
    head = get_method("head")
    assert head.run("cfg", 3, "sink", "cancel", "out", "data", "cache") == "result"
    assert seen == [(("cfg", 3, "sink", "cancel", "out", "data"), {"method": head, "cache_dir": "cache"})]


def test_execute_runs_head_as_the_probe(store):
    from peft_tui.engine.trainer import execute

    cfg = tiny_config(method="head", data=DataConfig(size=120))
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, store)
    row = store.get(rid)
    assert result is not None and row["status"] == "done", row["error"]
    assert row["result"]["extra"]["probe_weight_decay"] in probe.WEIGHT_DECAYS
    assert row["result"]["steps"] == len(probe.WEIGHT_DECAYS) and row["result"]["pooling"] == "cls"
    assert (store.run_dir(rid) / "head.safetensors").exists()


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 600), max_size=300), batch=st.integers(1, 300),
       tokens=st.one_of(st.none(), st.integers(1, 20000)))
def test_length_sorted_batches_cover_every_row_once_within_the_budget(lengths, batch, tokens):
    batches = probe.length_sorted_batches(lengths, batch, tokens)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first
    for b in batches:
        assert 1 <= len(b) <= batch
        if tokens is not None and len(b) > 1:
            assert len(b) * max(1, lengths[b[-1]]) <= tokens


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 400), min_size=1, max_size=8), folds=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_lpft_folds_split_every_class_evenly(counts, folds, seed):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    random.Random(seed).shuffle(labels)
    parts = probe.fold_rows(labels, folds)
    assert parts == probe.fold_rows(labels, folds)  # the same folds every time
    assert sorted(i for p in parts for i in p) == list(range(len(labels)))  # a partition of the rows
    assert len(parts) == max(1, min(folds, len(labels)))
    for c in set(labels):  # each class spread over the folds: at most one row more in one than in another
        per_fold = [sum(1 for i in p if labels[i] == c) for p in parts]
        assert max(per_fold) - min(per_fold) <= 1


def test_lpft_cross_validation_chooses_the_penalty_that_generalises():
    """Ten informative features and many noise ones on few rows: held out, a strong penalty beats a weak one;
    the fit returned is on all rows, with the held-out scores of the weight decay chosen."""
    import torch

    gen = torch.Generator().manual_seed(0)
    n, d = 60, 200
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen)
    x[:, :10] += (2 * y[:, None] - 1) * 0.6
    labels = y.tolist()
    grid = (3.0, 1e-5)
    fit, iterations = probe.cross_validate(x, labels, 2, grid, True, threading.Event(), folds=3)
    held_acc = {}
    for wd in grid:
        correct = 0
        for part in probe.fold_rows(labels, 3):
            inside = sorted(set(range(n)) - set(part))
            w, b, _ = probe.fit_linear(x[inside], y[inside], 2, wd, True)
            correct += int(((x[part] @ w.T + b).argmax(-1) == y[part]).sum())
        held_acc[wd] = correct / n
    best = max(grid, key=lambda wd: (held_acc[wd], wd))
    assert held_acc[3.0] > held_acc[1e-5], held_acc  # the data really asks for the penalty
    assert fit.weight_decay == best and fit.val_accuracy == pytest.approx(held_acc[best], abs=1 / n)
    w_all, _, _ = probe.fit_linear(x, y, 2, best, True)
    assert torch.allclose(fit.w, w_all, atol=1e-3) and iterations > 0


def test_lpft_cross_validation_with_one_row_fits_the_default():
    import torch

    fit, _ = probe.cross_validate(torch.ones(1, 4), [1], 2, probe.WEIGHT_DECAYS, True, threading.Event(), folds=2)
    assert fit.weight_decay == probe.DEFAULT_WEIGHT_DECAY and fit.w.shape == (2, 4)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 3000), min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_lpft_fits_its_start_on_a_sample_that_keeps_every_class(counts, seed):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    random.Random(seed).shuffle(labels)
    rows = probe.probe_rows(labels)
    assert rows == sorted(set(rows)) and all(0 <= i < len(labels) for i in rows)
    assert rows == probe.probe_rows(labels)  # the same rows every time: runs share their cached features
    if len(labels) <= probe.PROBE_TRAIN_ROWS:
        assert rows == list(range(len(labels)))
        return
    picked = Counter(labels[i] for i in rows)
    for c, n in enumerate(counts):  # every class kept: at least PROBE_MIN_PER_CLASS rows or all it has
        assert picked[c] >= min(n, probe.PROBE_MIN_PER_CLASS)
        if n:  # and about its share of the sample
            assert abs(picked[c] - n * probe.PROBE_TRAIN_ROWS / len(labels)) <= probe.PROBE_MIN_PER_CLASS + 1
    assert len(rows) <= probe.PROBE_TRAIN_ROWS + len(counts) * (probe.PROBE_MIN_PER_CLASS + 1)


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "cuda:3"])
def test_encode_limits_are_per_device_type(device):
    rows, tokens = probe.encode_limits(device)
    assert (rows, tokens) == probe.ENCODE_LIMITS["cuda" if device.startswith("cuda") else "cpu"]
    assert 1 <= rows and rows * 16 <= tokens  # a batch of the row limit holds texts of at least 16 tokens
