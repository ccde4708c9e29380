"""bitfit, ia3, prefix, prompt, dora, lora's use_dora/use_rslora, and the peft-json escape hatch.

Each method on the tiny random BERT (hidden 64, 2 layers, 2 labels): it trains (loss goes down on a
fixed batch), only its own parameters get gradients, its trainable count is the one we compute by
hand, and what it saves reloads into a fresh model with the same logits.

The tiny random BERT's [CLS] output barely depends on the input, so a balanced batch gives a loss
stuck at ln 2 for most methods. The batch is therefore imbalanced (6 of 8 positive): the loss can
fall by shifting the logits, which each method can do through its own parameters alone (checked
with the head frozen) as well as through the head.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from peft_tui.config import ConfigError, DataConfig, RunConfig
from peft_tui.engine.methods import REGISTRY, get_method
from peft_tui.engine.methods import validate as validate_run
from peft_tui.engine.models import load_model, load_tokenizer
from peft_tui.engine.weights import count_parameters

SEED = 7
LORA_JSON = '{"peft_type": "LORA", "r": 2, "target_modules": ["query", "value"]}'

# name, params, hand-computed trainable count on the tiny BERT with 2 labels, and a test for the
# names of the parameters that should train besides the head. Head: 64 * 2 + 2 = 130.
CASES = {
    # biases: embeddings LN 64; per layer q,k,v 3*64 + attn out 64 + attn LN 64 + intermediate 128
    # + out 64 + out LN 64 = 576, twice; pooler 64  ->  1280
    "bitfit": ("bitfit", {}, 1280 + 130, lambda n: n.endswith(".bias")),
    # without the LayerNorm biases: 1280 - 64 - 2 * 2 * 64 = 960
    "bitfit-no-norms": ("bitfit", {"include_norms": False}, 960 + 130,
                        lambda n: n.endswith(".bias") and "LayerNorm" not in n),
    # per layer: key 64 + value 64 + FFN input of output.dense 128
    "ia3": ("ia3", {}, 2 * (64 + 64 + 128) + 130, lambda n: "ia3_l" in n),
    # layers * (key + value) * hidden * 20 virtual tokens
    "prefix": ("prefix", {}, 2 * 2 * 64 * 20 + 130, lambda n: "prompt_encoder" in n),
    "prefix-5": ("prefix", {"num_virtual_tokens": 5}, 2 * 2 * 64 * 5 + 130, lambda n: "prompt_encoder" in n),
    # hidden * 20 virtual tokens
    "prompt": ("prompt", {}, 64 * 20 + 130, lambda n: "prompt_encoder" in n),
    # r=8 on query and value in 2 layers: 4 * (8*64 + 64*8), + DoRA magnitudes 4 * 64
    "dora": ("dora", {}, 4 * 2 * 8 * 64 + 4 * 64 + 130, lambda n: "lora_" in n),
    "lora-rslora": ("lora", {"use_rslora": True}, 4 * 2 * 8 * 64 + 130, lambda n: "lora_" in n),
    # r=2 on query and value in 2 layers: 4 * (2*64 + 64*2)
    "peft-json": ("peft-json", {"config": LORA_JSON}, 4 * 2 * 2 * 64 + 130, lambda n: "lora_" in n),
}
DEFAULT_LR = {"bitfit": 1e-3, "ia3": 3e-3, "prefix": 1e-2, "prompt": 1e-2, "peft-json": 1e-3, "adapters": 2e-3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with other work: one intra-op thread is several times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer("tiny")
    texts = ["good", "a great film", "bad", "fine and nice", "awful plot", "loved it", "superb", "very good indeed"]
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1])
    return enc["input_ids"], enc["attention_mask"], labels


def is_head(name: str) -> bool:
    return "classifier" in name.split(".")


def build(case: str):
    method_name, params, _, _ = CASES[case]
    method = get_method(method_name)
    method.check_params(params)
    return method, params, method.apply(load_model("tiny", 2, SEED), params)


def loss_of(model, batch) -> float:
    x, m, y = batch
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(input_ids=x, attention_mask=m).logits, y).item()
    model.train()
    return loss


def train_steps(model, batch, lr: float, steps: int) -> None:
    x, m, y = batch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        F.cross_entropy(model(input_ids=x, attention_mask=m).logits, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------
def test_registered_with_defaults():
    for name in DEFAULT_LR:
        assert name in REGISTRY
        assert REGISTRY[name].default_lr == DEFAULT_LR[name]
    assert REGISTRY["dora"].default_lr == REGISTRY["lora"].default_lr  # DoRA is LoRA with use_dora on
    assert REGISTRY["lora"].resolve({})["use_dora"] is False
    assert REGISTRY["lora"].resolve({})["use_rslora"] is False
    assert REGISTRY["dora"].resolve({})["use_dora"] is True
    assert REGISTRY["prefix"].resolve({})["num_virtual_tokens"] == 20
    assert REGISTRY["prompt"].resolve({})["num_virtual_tokens"] == 20


def test_registry_import_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys; import peft_tui.engine.methods as m; assert 'prefix' in m.REGISTRY; "
            "print(sorted(k for k in ('torch', 'peft', 'transformers') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("case", list(CASES))
def test_trainable_count(case):
    _, _, expected, _ = CASES[case]
    _, _, model = build(case)
    trainable, total = count_parameters(model)
    assert trainable == expected
    if hasattr(model, "get_nb_trainable_parameters"):  # the peft methods: peft agrees
        assert model.get_nb_trainable_parameters()[0] == expected


@pytest.mark.parametrize("case", list(CASES))
def test_only_its_parameters_get_gradients(case, batch):
    _, _, _, own = CASES[case]
    _, _, model = build(case)
    x, m, y = batch
    F.cross_entropy(model(input_ids=x, attention_mask=m).logits, y).backward()
    trained, frozen = [], []
    for name, p in model.named_parameters():
        should = own(name) or (is_head(name) and "original_module" not in name)
        assert p.requires_grad == should, name
        if should:
            assert p.grad is not None, f"{name} should train but got no gradient"
            trained.append(name)
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
            frozen.append(name)
    own_grads = [p.grad.abs().sum().item() for n, p in model.named_parameters() if own(n) and p.grad is not None]
    assert own_grads and max(own_grads) > 0  # the method's own parameters get a real signal
    assert any(is_head(n) for n in trained)
    assert "bert.embeddings.word_embeddings.weight" in "".join(frozen)


@pytest.mark.parametrize("case", ["bitfit", "ia3", "prefix", "prompt", "dora", "lora-rslora", "peft-json"])
def test_trains_loss_goes_down(case, batch):
    method, _, model = build(case)
    before = loss_of(model, batch)
    train_steps(model, batch, method.default_lr, steps=15)
    after = loss_of(model, batch)
    assert math.isfinite(after)
    assert after < before - 0.02, (before, after)


# Learning rates for the head-frozen check: in a random model the method's parameters reach the logits
# through frozen 0.02-scale weights and LayerNorms, so some need a large step to move the loss.
OWN_LR = {"bitfit": 3e-2, "ia3": 0.3, "prefix": 0.1, "prompt": 3e-2, "dora": 3e-2, "peft-json": 3e-2}


@pytest.mark.parametrize("case", list(OWN_LR))
def test_own_parameters_alone_lower_the_loss(case, batch):
    """Head frozen: the loss still falls, so the method's own parameters do the work."""
    _, _, _, own = CASES[case]
    _, _, model = build(case)
    for name, p in model.named_parameters():
        if is_head(name):
            p.requires_grad = False
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    before = loss_of(model, batch)
    train_steps(model, batch, OWN_LR[case], steps=15)
    after = loss_of(model, batch)
    assert after < before - 0.005, (before, after)


@pytest.mark.parametrize("case", ["bitfit", "bitfit-no-norms", "ia3", "prefix", "prompt", "dora", "lora-rslora",
                                  "peft-json"])
def test_save_load_reproduces_logits(case, batch, tmp_path):
    method, params, model = build(case)
    train_steps(model, batch, 3e-2, steps=3)  # move away from the initial values
    model.eval()
    x, m, _ = batch
    with torch.no_grad():
        trained = model(input_ids=x, attention_mask=m).logits
        fresh = load_model("tiny", 2, SEED)
        untrained = fresh(input_ids=x, attention_mask=m).logits
    params = method.resolve(params)
    method.save(model, tmp_path, params)
    reloaded = method.load(load_model("tiny", 2, SEED), tmp_path, params)
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(input_ids=x, attention_mask=m).logits
    assert not torch.allclose(trained, untrained, atol=1e-4)  # training changed something worth saving
    assert torch.allclose(trained, again, atol=1e-6)


def test_prefix_projection_saves_and_reloads(batch, tmp_path):
    method = get_method("prefix")
    params = method.resolve({"num_virtual_tokens": 4, "projection": True, "projection_size": 16})
    model = method.apply(load_model("tiny", 2, SEED), params)
    # MLP 64 -> 16 -> 2*2*64 over 4 token embeddings of 64, + head
    assert count_parameters(model)[0] == 4 * 64 + (64 * 16 + 16) + (16 * 256 + 256) + 130
    train_steps(model, batch, 1e-2, steps=3)
    model.eval()
    x, m, _ = batch
    with torch.no_grad():
        trained = model(input_ids=x, attention_mask=m).logits
    method.save(model, tmp_path, params)
    reloaded = method.load(load_model("tiny", 2, SEED), tmp_path, params).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x, attention_mask=m).logits, trained, atol=1e-5)


@pytest.mark.parametrize("case", ["prefix", "prompt"])
def test_virtual_tokens_respect_padding(case):
    """The attention mask is extended over the virtual tokens: a padded row gives the logits it gives alone."""
    _, _, model = build(case)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_()  # a prefix/prompt that clearly matters
    model.eval()
    tok = load_tokenizer("tiny")
    pair = tok(["a much longer sentence that forces padding", "short"], padding=True, return_tensors="pt")
    alone = tok(["short"], return_tensors="pt")
    base = load_model("tiny", 2, SEED).eval()
    with torch.no_grad():
        padded = model(input_ids=pair["input_ids"], attention_mask=pair["attention_mask"]).logits[1]
        single = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0]
        plain = base(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0]
    assert torch.allclose(padded, single, atol=1e-5)
    assert not torch.allclose(single, plain, atol=1e-3)  # the virtual tokens change the output


def test_lora_scaling_options():
    def scalings(params):
        model = get_method("lora").apply(load_model("tiny", 2, SEED), params)
        layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
        return layer.scaling["default"], hasattr(layer, "lora_magnitude_vector") and len(layer.lora_magnitude_vector)

    assert scalings({}) == (2.0, 0)  # alpha / r = 16 / 8, no DoRA
    scale, dora = scalings({"use_rslora": True})
    assert scale == pytest.approx(16 / math.sqrt(8))
    assert scalings({"use_dora": True})[1] == 1
    assert get_method("dora").peft_config(load_model("tiny", 2, SEED), {}).use_dora is True


def test_peft_json_other_peft_type(batch, tmp_path):
    """A method we do not list (LoHa) trains, counts and reloads through the hatch."""
    method = get_method("peft-json")
    params = {"config": '{"peft_type": "LOHA", "r": 2, "target_modules": ["query"]}'}
    model = method.apply(load_model("tiny", 2, SEED), params)
    # LoHa r=2 on a 64x64 query, 2 layers: 2 * (4 * 2 * 64)
    assert count_parameters(model)[0] == model.get_nb_trainable_parameters()[0] == 2 * 4 * 2 * 64 + 130
    train_steps(model, batch, 1e-2, steps=3)
    model.eval()
    x, m, _ = batch
    with torch.no_grad():
        trained = model(input_ids=x, attention_mask=m).logits
    method.save(model, tmp_path, params)
    again = method.load(load_model("tiny", 2, SEED), tmp_path, params).eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x, attention_mask=m).logits, trained, atol=1e-6)


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "needs config="),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"r": 4}', 'no "peft_type"'),
        ('{"peft_type": "LORA", "task_type": "CAUSAL_LM"}', "task_type"),
    ],
)
def test_peft_json_bad_config_is_refused_at_validation(config, message):
    cfg = RunConfig(method="peft-json", model="tiny", params={"config": config})
    with pytest.raises(ConfigError, match=message):
        validate_run(cfg)


def test_peft_json_without_config_is_refused():
    with pytest.raises(ConfigError, match="needs config="):
        validate_run(RunConfig(method="peft-json", model="tiny"))
    with pytest.raises(ConfigError, match="needs config="):  # and if validation was skipped
        get_method("peft-json").apply(load_model("tiny", 2, SEED), {})


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"peft_type": "NOPE"}', "unknown peft_type 'NOPE'"),
        ('{"peft_type": "LORA", "rank": 4}', "LoraConfig has no field"),
        ('{"peft_type": "LORA", "target_modules": ["nowhere"]}', "peft-json .* cannot wrap this model"),
    ],
)
def test_peft_json_bad_peft_config_is_a_config_error(config, message):
    get_method("peft-json").check_params({"config": config})  # valid JSON: passes the cheap check
    with pytest.raises(ConfigError, match=message):
        get_method("peft-json").apply(load_model("tiny", 2, SEED), {"config": config})


def test_bad_params_are_refused():
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        validate_run(RunConfig(method="prefix", model="tiny", params={"num_virtual_tokens": 0}))
    with pytest.raises(ConfigError, match="use_dora"):
        validate_run(RunConfig(method="lora", model="tiny", params={"use_dora": "yes"}))
    with pytest.raises(ConfigError, match="feedforward_modules"):
        get_method("ia3").apply(load_model("tiny", 2, SEED), {"target_modules": ["key"],
                                                               "feedforward_modules": ["value"]})


def test_execute_prefix_end_to_end(tmp_path):
    """A prefix-tuning run through the trainer and the store: done, right count, adapter saved."""
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute

    store = Store(tmp_path / "store")
    cfg = RunConfig(method="prefix", model="tiny", data=DataConfig(size=60), params={"num_virtual_tokens": 4},
                    epochs=1, batch_size=16, max_length=32, device="cpu", precision="fp32", seed=SEED)
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, store)
    row = store.get(rid)
    assert row["status"] == "done", row.get("error")
    assert result is not None
    assert result.trainable_params == 2 * 2 * 64 * 4 + 130
    assert result.steps >= 1 and 0.0 <= result.accuracy <= 1.0
    adapter = store.run_dir(rid) / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()


# ------------------------------------------------------------------------------------------------
# other architectures: tiny random configs (vocab 100, hidden 32, 2 layers, 2 labels)
def tiny_arch(arch: str):
    from transformers import (
        AutoModelForSequenceClassification,
        DistilBertConfig,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
        RobertaConfig,
    )

    dec = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, pad_token_id=0)
    config = {
        "roberta": lambda: RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, pad_token_id=1),
        "distilbert": lambda: DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "llama": lambda: LlamaConfig(**dec),
        "qwen2": lambda: Qwen2Config(**dec),
        "gpt2": lambda: GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, pad_token_id=0, bos_token_id=0,
                                   eos_token_id=0),
    }[arch]()
    config.num_labels = 2
    torch.manual_seed(SEED)
    return AutoModelForSequenceClassification.from_config(config)


# heads: roberta/distilbert 32*32+32 + 32*2+2 = 1122; decoders' score 32*2 = 64 (no bias)
@pytest.mark.parametrize("arch, expected", [
    ("roberta", 2 * (32 + 32 + 64) + 1122),      # key, value, FFN input
    ("distilbert", 2 * (32 + 32 + 64) + 1122),   # k_lin, v_lin, lin2 input
    ("llama", 2 * (16 + 16 + 64) + 64),          # k_proj, v_proj (2 kv heads x 8), down_proj input
    ("qwen2", 2 * (16 + 16 + 64) + 64),
    ("gpt2", 2 * (96 + 128) + 64),               # fused c_attn (3 x 32), mlp.c_proj input
])
def test_ia3_default_targets_per_architecture(arch, expected):
    model = get_method("ia3").apply(tiny_arch(arch), {})
    assert count_parameters(model)[0] == model.get_nb_trainable_parameters()[0] == expected


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "llama", "gpt2"])
@pytest.mark.parametrize("method_name", ["prompt", "prefix"])
def test_virtual_tokens_other_architectures(arch, method_name, tmp_path):
    """Right padding (as the trainer pads) gives a row the logits it gets alone, and the adapter reloads."""
    method = get_method(method_name)
    params = method.resolve({"num_virtual_tokens": 3})
    if method_name == "prefix" and arch == "distilbert":
        with pytest.raises(ConfigError, match="key/value cache"):
            method.apply(tiny_arch(arch), params)
        return
    model = method.apply(tiny_arch(arch), params)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_()
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :2], attention_mask=mask[1:, :2]).logits[0]
    assert torch.allclose(padded[1], alone, atol=1e-5)
    method.save(model, tmp_path, params)
    again = method.load(tiny_arch(arch), tmp_path, params).eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, attention_mask=mask).logits, padded, atol=1e-6)


def test_bitfit_refuses_a_model_without_biases():
    with pytest.raises(ConfigError, match="no bias terms"):
        get_method("bitfit").apply(tiny_arch("llama"), {})
    qwen = get_method("bitfit").apply(tiny_arch("qwen2"), {})  # q/k/v biases: 2 * (32 + 16 + 16), + score
    assert count_parameters(qwen)[0] == 2 * (32 + 16 + 16) + 64
