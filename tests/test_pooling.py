"""Pooling: the vector the classifier reads. The pooling function against hand-written reductions,
`auto` from sentence-transformers folders, padding invariance (the mask lines up, with and without
peft's virtual tokens), and every method training and reloading with mean pooling on the tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.config import ConfigError
from peft_tui.engine import pooling


# ------------------------------------------------------------------------------------------------
# the reduction itself
# ------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), prefix=st.integers(0, 3),
       seed=st.integers(0, 10_000))
def test_pool_matches_hand_written_reductions(lengths, prefix, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    hidden = torch.randn(len(lengths), width, 5, generator=gen)
    mask = torch.zeros(len(lengths), prefix + width, dtype=torch.long)  # a prefix (prefix tuning) is all real
    mask[:, :prefix] = 1
    for row, n in enumerate(lengths):
        mask[row, prefix : prefix + n] = 1
    for row, n in enumerate(lengths):
        real = hidden[row, :n]
        assert torch.allclose(pooling.pool(hidden, mask, "mean")[row], real.mean(0), atol=1e-6)
        assert torch.equal(pooling.pool(hidden, mask, "max")[row], real.max(0).values)
        assert torch.equal(pooling.pool(hidden, mask, "last")[row], real[-1])
        assert torch.equal(pooling.pool(hidden, mask, "cls")[row], hidden[row, 0])
    # whatever sits in the padded positions does not change any pooled vector
    noisy = hidden.clone()
    noisy[mask[:, prefix:] == 0] = 1e4
    for mode in ("mean", "max", "last"):
        assert torch.allclose(pooling.pool(noisy, mask, mode), pooling.pool(hidden, mask, mode))


def test_no_mask_means_every_position():
    import torch

    hidden = torch.arange(12.0).reshape(1, 4, 3)
    assert torch.equal(pooling.pool(hidden, None, "mean")[0], torch.tensor([4.5, 5.5, 6.5]))
    assert torch.equal(pooling.pool(hidden, None, "last")[0], torch.tensor([9.0, 10.0, 11.0]))


# ------------------------------------------------------------------------------------------------
# auto: sentence-transformers folders, else the architecture's own
# ------------------------------------------------------------------------------------------------
class Encoder:  # stands in for a model: no `score` head
    pass


class Decoder:
    score = None


def write_st_config(folder, **flags):
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **flags}))


@pytest.mark.parametrize("flag,mode", [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                       ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "last")])
def test_auto_reads_the_sentence_transformers_mode(tmp_path, flag, mode):
    write_st_config(tmp_path, **{flag: True, "pooling_mode_mean_sqrt_len_tokens": False})
    assert pooling.resolve("auto", tmp_path, Encoder()) == mode
    assert pooling.resolve("max", tmp_path, Encoder()) == "max"  # an explicit choice wins


def test_auto_falls_back_to_the_architecture(tmp_path):
    assert pooling.resolve("auto", tmp_path, Encoder()) == "cls"
    assert pooling.resolve("auto", None, Decoder()) == "last"
    # a mode we do not have, or a combination: the architecture's own
    write_st_config(tmp_path, pooling_mode_mean_tokens=True, pooling_mode_mean_sqrt_len_tokens=True)
    assert pooling.resolve("auto", tmp_path, Decoder()) == "last"


def test_embedded_minilm_declares_mean():
    from peft_tui.engine.models import minilm_path

    assert pooling.sentence_transformers_pooling(minilm_path()) == "mean"


def test_broken_pooling_config_is_one_line(tmp_path):
    (tmp_path / "modules.json").write_text("{not json")
    with pytest.raises(ConfigError) as e:
        pooling.resolve("auto", tmp_path, Encoder())
    assert "pooling" in str(e.value) and "\n" not in str(e.value)


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="unknown pooling"):
        pooling.resolve("avg", None, Encoder())


def test_load_model_from_a_sentence_transformers_folder(tmp_path, tiny_tokenizer):
    from peft_tui.engine.models import load_model

    load_model("tiny", 2, 0).save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    write_st_config(tmp_path, pooling_mode_mean_tokens=True)
    model = load_model(str(tmp_path), 2, 0)
    assert pooling.pooling_of(model) == "mean"
    assert type(model.bert.pooler).__name__ == "MaskedPool"
    assert pooling.pooling_of(load_model(str(tmp_path), 2, 0, pooling="cls")) == "cls"


def test_modes_change_what_the_classifier_reads(tiny_tokenizer):
    import torch

    from peft_tui.engine.models import load_model

    enc = tiny_tokenizer(["a short one", "a somewhat longer text than that"], padding=True, return_tensors="pt")
    outs = {}
    for mode in ("cls", "mean", "max", "last"):
        model = load_model("tiny", 2, 0, pooling=mode).eval()
        assert pooling.pooling_of(model) == mode
        with torch.no_grad():
            outs[mode] = model(**enc).logits
    assert type(load_model("tiny", 2, 0).bert.pooler).__name__ == "BertPooler"  # tiny's own: cls via its pooler
    assert len({tuple(v.flatten().tolist()) for v in outs.values()}) == 4
    # the classifier is the same seeded linear layer whatever the pooling
    a, b = load_model("tiny", 2, 0, pooling="mean"), load_model("tiny", 2, 0, pooling="cls")
    assert torch.equal(a.classifier.weight, b.classifier.weight)


# ------------------------------------------------------------------------------------------------
# every method trains with mean pooling, keeps padding invariance, and reloads
# ------------------------------------------------------------------------------------------------
TEXTS = ["the screen is great", "the battery is not good at all", "although the fan is noisy, I love it",
         "terrible keyboard", "excellent build and a great display", "awful speaker, broken hinge"]
LABELS = [1, 0, 1, 0, 1, 0]
METHODS = [("full", {}), ("lora", {"r": 4}), ("dora", {"r": 4}), ("adapters", {"size": 8}), ("ia3", {}),
           ("bitfit", {}), ("prefix", {"num_virtual_tokens": 4}), ("prompt", {"num_virtual_tokens": 4}),
           ("head", {})]


def logits_alone_and_padded(model, tokenizer, texts):
    """Each text's logits on its own, and in one batch padded to the longest text."""
    import torch

    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
        batched = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return alone, batched


@pytest.mark.parametrize("method,params", METHODS)
def test_every_method_trains_with_mean_pooling(method, params, tiny_tokenizer, tmp_path):
    import torch
    import torch.nn.functional as F

    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import load_model

    m = get_method(method)
    p = m.resolve(params)
    model = m.apply(load_model("tiny", 2, 0, pooling="mean"), p)
    assert pooling.pooling_of(model) == "mean"
    enc = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    y = torch.tensor(LABELS)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(**enc).logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses
    model.eval()
    alone, batched = logits_alone_and_padded(model, tiny_tokenizer, TEXTS)
    assert torch.allclose(alone, batched, atol=1e-4)  # the mask the pooling used lines up with the text
    m.save(model, tmp_path, p)
    reloaded = m.load(load_model("tiny", 2, 0, pooling="mean"), tmp_path, p).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**enc).logits, model(**enc).logits, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "max", "cls"])
@pytest.mark.parametrize("method", ["lora", "prompt", "full"])
def test_decoder_classifiers_take_other_poolings(mode, method):
    """Decoders (a `score` head reading the last token) get the pooled vector in every position."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from peft_tui.engine.methods import get_method

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=2, pad_token_id=0))
    pooling.install(model, mode)
    m = get_method(method)
    model = m.apply(model, m.resolve({"r": 4} if method == "lora" else {}))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = (ids != 0).long()
    model.eval()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert torch.allclose(batched[1], alone[0], atol=1e-4)
    model.train()
    loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, torch.tensor([0, 1]))
    loss.backward()
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)


# ------------------------------------------------------------------------------------------------
# through the engine: a run on a mean-pooling folder, reloaded by predict and by an export
# ------------------------------------------------------------------------------------------------
def test_run_predict_and_export_keep_the_folders_pooling(tmp_path, tiny_tokenizer):
    from peft_tui.config import DataConfig
    from peft_tui.engine.artifacts import export_run, load_export, load_run, predict
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.models import load_model
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute

    folder = tmp_path / "st-model"
    load_model("tiny", 2, 0).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    write_st_config(folder, pooling_mode_mean_tokens=True)
    store = Store(tmp_path / "store")
    cfg = tiny_config(method="lora", model=str(folder), params={"r": 4}, lr=2e-3, data=DataConfig(size=120))
    rid = store.create_run(cfg)
    assert execute(store, rid, cfg, store) is not None, store.get(rid)["error"]
    stored_accuracy = store.get(rid)["result"]["accuracy"]
    data = load_splits(cfg.data, cfg.seed)

    def accuracy(run) -> float:
        preds = predict(run, data.test.texts)
        return sum(p.index == y for p, y in zip(preds, data.test.labels)) / len(preds)

    run = load_run(store, rid)
    assert pooling.pooling_of(run.model) == "mean"
    assert accuracy(run) == pytest.approx(stored_accuracy, abs=1e-12)
    exported = load_export(export_run(store, rid, tmp_path / "export").folder)
    assert pooling.pooling_of(exported.model) == "mean"
    assert accuracy(exported) == pytest.approx(stored_accuracy, abs=1e-12)
