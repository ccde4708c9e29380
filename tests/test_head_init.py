"""`head_init=probe` (LP-FT): before the first step the trainer fits the classifier as the `head` probe
would, on the features the method-wrapped model gives; `random` keeps the seeded head; a resumed run
never fits again."""

from __future__ import annotations

import csv
import random
import threading
from pathlib import Path

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine import probe, trainer
from peft_tui.engine.methods import get_method, method_names
from peft_tui.engine.methods import validate as validate_run
from peft_tui.errors import ConfigError

PEFT_JSON = '{"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}'


def easy_data(folder: Path, n: int = 80) -> DataConfig:
    """Two classes with disjoint vocabularies: linearly separable in a random encoder's mean-pooled features."""
    rng = random.Random(0)
    words = (["good", "great", "nice", "fine", "happy"], ["bad", "poor", "sad", "awful", "broken"])
    path = folder / "easy.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([" ".join(rng.choice(words[i % 2]) for _ in range(rng.randint(3, 8))), i % 2])
    return DataConfig(source=str(path), val_fraction=0.25, test_fraction=0.25)


def setup(cfg):
    """(model as the trainer builds it, its train/val ids, data, pad id) for a config."""
    from peft_tui.engine import models
    from peft_tui.engine.batching import pad_id_of, tokenize_splits
    from peft_tui.engine.data import load_splits

    method = get_method(cfg.method)
    data = load_splits(cfg.data, cfg.seed)
    model = trainer.build_model(cfg, method, method.resolve(cfg.params), data.num_labels, "cpu")
    tokenizer = models.load_tokenizer(cfg.model)
    train_ids, val_ids, test_ids = tokenize_splits(tokenizer, data, cfg.max_length, None)
    return model, (train_ids, val_ids, test_ids), data, pad_id_of(tokenizer)


def init(cfg, events=None):
    """The model after `trainer.init_head`, with the ids, data, pad id and the returned figures."""
    model, ids, data, pad = setup(cfg)
    extra = trainer.init_head(model, 0, (events if events is not None else []).append, threading.Event(), ids[0],
                              data, pad, "cpu", "fp32")
    return model, ids, data, pad, extra


def test_probe_init_is_the_cross_validated_probe_on_the_training_texts_alone(tmp_path):
    """`full` with head_init=probe starts from the probe fitted on the training texts' features, its weight
    decay chosen by cross-validation on them: no validation text is encoded, and the head is the one
    `fit_layer` gives those features with PROBE_FOLDS folds."""
    import torch

    data = easy_data(tmp_path)
    cfg = tiny_config(method="full", pooling="mean", data=data, head_init="probe")
    events = []
    model, (train_ids, val_ids, _), splits, pad, extra = init(cfg, events)
    assert len(val_ids) == 20 and extra["head_init_texts_encoded"] == len(train_ids) == 40
    fresh, _, _, _ = setup(cfg)  # the same seeded model before the fit
    layer = probe.final_linear(fresh)
    feats, _ = probe.features(fresh, layer, {"train": train_ids}, pad, "cpu", "fp32", threading.Event())
    expected, _ = probe.fit_layer(layer, feats, {"train": splits.train.labels}, 2, probe.WEIGHT_DECAYS,
                                  threading.Event(), folds=probe.PROBE_FOLDS)
    assert extra["head_init_weight_decay"] == expected.weight_decay
    assert extra["head_init_cv_accuracy"] == pytest.approx(expected.val_accuracy) and expected.val_accuracy >= 0.9
    assert torch.allclose(model.classifier.weight, layer.weight, atol=1e-5)
    assert torch.allclose(model.classifier.bias, layer.bias, atol=1e-5)
    texts = [e.text for e in events if type(e).__name__ == "LogMessage"]
    assert len(texts) == 1 and texts[0].startswith("head_init=probe: classifier fitted as a linear probe on the 40 ")
    assert f"weight decay {extra['head_init_weight_decay']:g}, chosen by 2-fold cross-validation" in texts[0]


def test_fit_layer_writes_the_fit_folded_into_raw_features():
    """The layer maps raw features to the logits the standardised fit gives."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(60, 5, generator=gen)
    y = (x[:, 0] > 3.0).long()
    layer = torch.nn.Linear(5, 2)
    best, _ = probe.fit_layer(layer, {"train": x, "val": x[:20]}, {"train": y.tolist(), "val": y[:20].tolist()}, 2,
                              (1.0, 1e-3), threading.Event())
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    with torch.no_grad():
        assert torch.allclose(layer(x), ((x - mu) / sd) @ best.w.T + best.b, atol=1e-4)
    assert best.weight_decay == 1e-3 and best.val_accuracy == 1.0


def test_accuracy_is_high_before_any_step(tmp_path):
    from peft_tui.engine.evaluation import evaluate

    cfg = tiny_config(method="lora", pooling="mean", data=easy_data(tmp_path), head_init="probe")
    model, (_, _, test_ids), data, pad = setup(cfg)
    before = evaluate(model, test_ids, data.test.labels, 2, 64, pad, "cpu", _null).accuracy
    model, (_, _, test_ids), data, pad, extra = init(cfg)
    after = evaluate(model, test_ids, data.test.labels, 2, 64, pad, "cpu", _null).accuracy
    assert len(test_ids) == 20 and after >= 0.95 and before <= 0.75, (before, after)
    assert extra["head_init_cv_accuracy"] >= 0.95


def _null():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_with_probe_init(name, store):
    """Training methods fit the head first (and say so); `head` and the baseline ignore the field."""
    cfg = tiny_config(method=name, head_init="probe", data=DataConfig(size=60),
                      params={"config": PEFT_JSON} if name == "peft-json" else {})
    events = []
    result = trainer.execute(store, store.create_run(cfg), cfg, events.append)
    assert result is not None, [getattr(e, "error", "") for e in events]
    notes = [e.text for e in events if type(e).__name__ == "LogMessage" and e.text.startswith("head_init=probe")]
    if get_method(name).run is None:
        assert len(notes) == 1 and result.extra["head_init_s"] > 0 and 0 <= result.accuracy <= 1
        assert result.extra["head_init_weight_decay"] in probe.WEIGHT_DECAYS
    else:
        assert notes == [] and "head_init_s" not in result.extra


def test_head_init_is_validated_and_kept_in_the_saved_config():
    from peft_tui.config import RunConfig

    cfg = tiny_config(head_init="probe")
    assert RunConfig.from_dict(cfg.to_dict()).head_init == "probe"
    assert cfg.with_overrides(["head_init=random"]).head_init == "random"
    with pytest.raises(ConfigError, match="unknown head_init 'lp': use one of probe, random, auto"):
        validate_run(tiny_config(head_init="lp"))


@pytest.mark.slow
def test_resume_does_not_fit_again(tmp_path, monkeypatch):
    import torch

    from peft_tui.engine import checkpoint

    cfg = tiny_config(method="lora", epochs=2, head_init="probe", data=DataConfig(size=60))
    cancel = threading.Event()

    def stop_after_first_epoch(event):
        if type(event).__name__ == "EvalLogged" and event.split == "val":
            cancel.set()

    with pytest.raises(trainer.Cancelled):
        trainer.train(cfg, 1, stop_after_first_epoch, cancel, tmp_path)
    ckpt = checkpoint.find(tmp_path)
    assert ckpt is not None

    def no_fit(*args, **kwargs):
        raise AssertionError("a resumed run fitted the head again")

    monkeypatch.setattr(probe, "fit_head", no_fit)
    events = []
    result = trainer.train(cfg, 1, events.append, threading.Event(), tmp_path, resume_from=ckpt)
    assert result.steps == 6 and result.epochs_done == 2.0 and "head_init_s" not in result.extra
    assert not any(type(e).__name__ == "LogMessage" and "head_init" in e.text for e in events)
    assert torch.isfinite(torch.tensor(result.test_loss))


@pytest.mark.slow
def test_random_keeps_the_seeded_head(tmp_path, monkeypatch):
    """head_init=random: at the first step the classifier is the seeded one; probe changes it."""
    import torch

    cfg = tiny_config(method="full", head_init="random", data=DataConfig(size=60))
    fresh = setup(cfg)[0].classifier.weight.detach().clone()
    seen = {}
    build = trainer.build_optimizer

    def keep_model(model, config, total_steps):
        seen["model"] = model
        return build(model, config, total_steps)

    monkeypatch.setattr(trainer, "build_optimizer", keep_model)
    cancel = threading.Event()
    cancel.set()  # stops at the first batch, before any step
    with pytest.raises(trainer.Cancelled):
        trainer.train(cfg, 1, lambda e: None, cancel, tmp_path)
    assert torch.equal(seen["model"].classifier.weight, fresh)
    probed = init(tiny_config(method="full", head_init="probe", data=DataConfig(size=60)))[0]
    assert not torch.allclose(probed.classifier.weight, fresh)


def test_auto_probes_short_runs_only():
    assert [probe.resolve_head_init("auto", n) for n in (1, probe.AUTO_PROBE_MAX_STEPS, probe.AUTO_PROBE_MAX_STEPS + 1)] \
        == ["probe", "probe", "random"]
    assert probe.resolve_head_init("probe", 10**6) == "probe" and probe.resolve_head_init("random", 1) == "random"
    from peft_tui.config import RunConfig

    assert RunConfig().head_init == "auto"


@pytest.mark.parametrize("limit,fitted", [(100, True), (2, False)])
def test_auto_in_a_run(tmp_path, monkeypatch, limit, fitted):
    """60 rows at batch 16: 3 steps. Under the limit the probe is fitted; over it the head stays seeded
    and the log says why."""
    monkeypatch.setattr(probe, "AUTO_PROBE_MAX_STEPS", limit)
    events = []
    result = trainer.train(tiny_config(head_init="auto", data=DataConfig(size=60)), 1, events.append,
                           threading.Event(), tmp_path)
    notes = [e.text for e in events if type(e).__name__ == "LogMessage" and e.text.startswith("head_init=")]
    assert ("head_init_s" in result.extra) is fitted
    assert len(notes) == 1 and notes[0].startswith("head_init=probe" if fitted else "head_init=auto: a seeded head")
