"""Decoder-only classifiers (Llama-, Qwen2-, GPT-2-style `...ForSequenceClassification`): tiny random
configs saved here, with a byte-level BPE tokenizer trained here (no download) that has no pad token,
so the pad = EOS handling is what runs. LoRA, adapters and full fine-tuning go through
`trainer.execute` with `model=<folder>`."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig

CORPUS = [
    "the screen is great and the battery is good", "terrible keyboard and awful speaker",
    "although the fan is noisy I love it", "the camera was disappointing", "excellent build quality",
] * 20


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    assert fast.pad_token is None  # like GPT-2 and Llama: the loader must supply one
    return fast


def _save(kind: str, tok, folder):
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    common = dict(vocab_size=len(tok), num_labels=2, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if kind == "llama":
        model = LlamaForSequenceClassification(LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=256, **common))
    elif kind == "qwen2":
        model = Qwen2ForSequenceClassification(Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, **common))
    else:
        model = GPT2ForSequenceClassification(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=256, **common))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def decoder_folder(request, bpe_tokenizer, tmp_path_factory):
    return request.param, _save(request.param, bpe_tokenizer, tmp_path_factory.mktemp(request.param))


def test_pad_is_eos_and_set_on_the_model(decoder_folder):
    from peft_tui.engine.models import load_model, load_tokenizer

    kind, folder = decoder_folder
    tok = load_tokenizer(str(folder))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    model = load_model(str(folder), num_labels=3, seed=0)
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.model_type == kind and model.score.out_features == 3


def test_padding_does_not_change_logits(decoder_folder):
    """The classifier reads the last real token: right padding must not move it."""
    import torch

    from peft_tui.engine.batching import collate, tokenize
    from peft_tui.engine.models import load_model, load_tokenizer

    _, folder = decoder_folder
    tok = load_tokenizer(str(folder))
    model = load_model(str(folder), num_labels=2, seed=0).eval()
    ids = tokenize(tok, ["the screen is great", "terrible keyboard and awful speaker, really"], 64)
    x, m, _ = collate(ids, [0, 1], [0, 1], tok.pad_token_id, "cpu")
    with torch.no_grad():
        batched = model(input_ids=x, attention_mask=m).logits
        alone = model(input_ids=torch.tensor([ids[0]])).logits
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_targets_and_placement_match_modules(decoder_folder):
    from peft_tui.engine.methods.adapters import target_names
    from peft_tui.engine.methods.lora import default_targets
    from peft_tui.engine.models import load_model

    kind, folder = decoder_folder
    model = load_model(str(folder), num_labels=2, seed=0)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(default_targets(kind)) <= names
    assert len(target_names(model, "houlsby")) == 4 and len(target_names(model, "pfeiffer")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("method,params", [("lora", {"r": 4}), ("adapters", {"size": 8}), ("full", {})])
def test_methods_train_on_decoder(decoder_folder, method, params, store):
    import torch

    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import load_model
    from peft_tui.engine.trainer import execute

    kind, folder = decoder_folder
    cfg = tiny_config(method=method, model=str(folder), params=params, max_length=48, lr=2e-3,
                      data=DataConfig(size=64))
    rid = store.create_run(cfg)
    events = []
    result = execute(store, rid, cfg, lambda e: (events.append(e), store(e)))
    assert result is not None, [getattr(e, "error", "") for e in events]
    assert 0.0 <= result.accuracy <= 1.0 and result.steps > 0
    if method != "full":
        assert result.trainable_params < result.total_params / 2
    # the saved weights rebuild the trained model, which differs from the untrained one
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        fresh = load_model(str(folder), num_labels=2, seed=cfg.seed).eval()(input_ids=x).logits
        base = load_model(str(folder), num_labels=2, seed=cfg.seed)
        model = get_method(method).load(base, store.run_dir(rid), get_method(method).resolve(params)).eval()
        trained = model(input_ids=x).logits
    assert torch.isfinite(trained).all() and not torch.allclose(trained, fresh)
