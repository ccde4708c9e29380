"""LoRA through peft: trainable count equals peft's own, and stock PeftModel reloads the adapter."""

from __future__ import annotations

import torch
from peft import PeftModel

from peft_tui.engine.methods import get_method
from peft_tui.engine.models import load_model
from peft_tui.engine.weights import count_parameters


def test_trainable_count_equals_peft(tiny_model):
    model = get_method("lora").apply(tiny_model, {"r": 4})
    trainable, total = count_parameters(model)
    peft_trainable, peft_total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (peft_trainable, peft_total)
    h, layers = 64, 2
    lora = layers * 2 * (4 * h + h * 4)  # query and value: A (r x h) + B (h x r)
    head = h * 2 + 2
    assert trainable == lora + head


def test_saved_adapter_reloads_in_stock_peft(tmp_path, batch):
    method = get_method("lora")
    model = method.apply(load_model("tiny", 2, seed=0), {"r": 4})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    ids, mask, _ = batch
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    method.save(model, tmp_path, {"r": 4})
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    # stock peft, not our loader
    reloaded = PeftModel.from_pretrained(load_model("tiny", 2, seed=0), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, load_model("tiny", 2, seed=0).eval()(input_ids=ids, attention_mask=mask).logits)
