"""Bottleneck adapters against the maths: identity at init, parameter count, gradient flow."""

from __future__ import annotations

import pytest
import torch

from peft_tui.engine.methods import get_method
from peft_tui.engine.models import load_model
from peft_tui.engine.weights import count_parameters, head_module_names


def logits(model, batch):
    ids, mask, _ = batch
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_identity_at_init(batch, variant):
    base = load_model("tiny", 2, seed=0)
    wrapped = get_method("adapters").apply(load_model("tiny", 2, seed=0), {"variant": variant, "size": 8})
    torch.testing.assert_close(logits(wrapped, batch), logits(base, batch), rtol=0, atol=0)


@pytest.mark.parametrize("variant,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("size", [4, 16])
def test_parameter_count_matches_formula(variant, per_layer, size):
    model = load_model("tiny", 3, seed=0)
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    head = sum(p.numel() for n in head_module_names(model) for p in model.get_submodule(n).parameters())
    model = get_method("adapters").apply(model, {"variant": variant, "size": size})
    trainable, total = count_parameters(model)
    expected = layers * per_layer * (2 * hidden * size + size + hidden) + head
    assert trainable == expected
    assert head == hidden * 3 + 3  # BERT head: one Linear(hidden, num_labels)


def test_reduction_factor_sets_size():
    model = get_method("adapters").apply(load_model("tiny", 2, seed=0), {"reduction_factor": 8})
    downs = [m for n, m in model.named_modules() if n.endswith("adapter.down")]
    assert len(downs) == 2 * model.config.num_hidden_layers
    assert all(d.out_features == 64 // 8 for d in downs)


def test_only_adapters_and_head_get_gradients(batch):
    model = get_method("adapters").apply(load_model("tiny", 2, seed=0), {"size": 8})
    model.train()
    ids, mask, y = batch
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)
    loss.backward()
    for name, p in model.named_parameters():
        is_ours = ".adapter." in name or name.startswith("classifier.")
        assert p.requires_grad == is_ours, name
        if is_ours:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # the up-projection starts at zero, yet gets a gradient; down gets none until up moves
    up = model.bert.encoder.layer[0].output.dense.adapter.up.weight
    assert up.grad.abs().sum() > 0


def test_save_and_load_reproduce_logits(tmp_path, batch):
    method = get_method("adapters")
    params = {"variant": "houlsby", "size": 8}
    model = method.apply(load_model("tiny", 2, seed=0), params)
    with torch.no_grad():  # move away from identity so the test means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    method.save(model, tmp_path, params)
    assert (tmp_path / "adapters" / "adapters.safetensors").exists()
    reloaded = method.load(load_model("tiny", 2, seed=0), tmp_path, params)
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch))


def test_corrupted_or_mismatched_weights_give_one_line_errors(tmp_path):
    from peft_tui.config import ConfigError

    method = get_method("adapters")
    model = method.apply(load_model("tiny", 2, seed=0), {"size": 8})
    method.save(model, tmp_path, {"size": 8})
    path = tmp_path / "adapters" / "adapters.safetensors"
    # a different bottleneck size: the shapes do not fit
    with pytest.raises(ConfigError, match="does not fit the model"):
        method.load(load_model("tiny", 2, seed=0), tmp_path, {"size": 4})
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ConfigError, match="is corrupted") as err:
        method.load(load_model("tiny", 2, seed=0), tmp_path, {"size": 8})
    assert "\n" not in str(err.value)
