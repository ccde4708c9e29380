"""engine/dropout.py: a CPU dropout with torch's distribution at a fraction of its cost, and the attention
path that uses it in a training forward (everything else goes to transformers' own sdpa)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.engine import dropout


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.02, 0.9), shape=st.sampled_from([(7,), (3, 5, 11), (64, 33), (2, 4, 16, 16)]),
       seed=st.integers(0, 2**31))
def test_fast_dropout_drops_a_share_p_and_scales_the_rest(p, shape, seed):
    torch.manual_seed(seed)
    x = torch.rand(4096 * 4) + 0.5  # never zero: a zero in the output is a dropped element
    y = dropout.fast_dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-3  # within 4 standard errors
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    for lane in range(4):  # every 15-bit lane of the random words is as random as the others
        share = (y[lane::4] == 0).float().mean().item()
        assert abs(share - p) < 4 * (p * (1 - p) / (x.numel() / 4)) ** 0.5 + 1e-3
    z = torch.rand(shape)
    assert dropout.fast_dropout(z, p).shape == z.shape


def test_fast_dropout_gradient_is_its_mask_times_the_scale_and_eval_is_the_identity():
    torch.manual_seed(0)
    x = torch.rand(50, 40, requires_grad=True)
    y = dropout.fast_dropout(x, 0.25)
    y.sum().backward()
    keep = (y != 0).float()
    assert torch.allclose(x.grad, keep / 0.75)
    module = dropout.FastDropout(0.25)
    module.eval()
    assert module(x) is x and dropout.fast_dropout(x, 0.25, training=False) is x
    assert isinstance(module, torch.nn.Dropout)


def test_the_same_seed_draws_the_same_masks():
    a = torch.manual_seed(3) and dropout.fast_dropout(torch.ones(1000), 0.1)
    b = torch.manual_seed(3) and dropout.fast_dropout(torch.ones(1000), 0.1)
    assert torch.equal(a, b) and not torch.equal(a, dropout.fast_dropout(torch.ones(1000), 0.1))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_cpu_attention_with_nothing_dropped_equals_sdpa_in_output_and_gradients(mask_kind):
    """A dropout so small that no element is dropped (p * 32768 rounds to 0): the plain path must give sdpa's
    output and gradients, whatever the mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, requires_grad=True) for _ in range(3))
    mask = None
    if mask_kind != "none":
        allowed = torch.ones(2, 1, 6, 6, dtype=torch.bool)
        allowed[0, :, :, 4:] = False  # the first row's last two keys are padding
        mask = allowed if mask_kind == "bool" else torch.zeros(2, 1, 6, 6).masked_fill(~allowed, -1e9)
    module = torch.nn.Module()
    module.is_causal = False
    module.train()
    dropout._install_attention()  # what use_fast_dropout does: keeps transformers' sdpa to hand the rest to
    assert dropout._sdpa is sdpa_attention_forward
    ours, _ = dropout.cpu_attention(module, q, k, v, mask, dropout=1e-6, scaling=0.3)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    expected = torch.autograd.grad(theirs.square().sum(), (q, k, v))
    assert ours.shape == theirs.shape == (2, 6, 4, 8)
    assert torch.allclose(ours, theirs, atol=1e-5)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-4)


def test_a_cpu_training_model_gets_fast_dropout_and_evaluates_exactly_as_before():
    from peft_tui.engine import models
    from peft_tui.engine.methods import get_method

    cfg = tiny_config(method="lora")
    method = get_method("lora")
    model = models.build_model(cfg, method, method.resolve(cfg.params), 2, "cpu")
    before = sum(1 for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0)
    x = torch.randint(5, 90, (3, 12))
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=x).logits
    assert dropout.use_fast_dropout(model, "cuda:0") == 0  # elsewhere nothing changes
    assert dropout.use_fast_dropout(model, "cpu") == before > 0
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, reference)  # evaluation: the identity, as before
    model.train()
    torch.manual_seed(1)
    a = model(input_ids=x).logits
    torch.manual_seed(1)
    b = model(input_ids=x).logits
    assert torch.equal(a, b) and not torch.allclose(a, reference)  # seeded, and dropout really applies
    a.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
