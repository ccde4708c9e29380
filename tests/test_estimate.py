"""The estimator: exact parameter counts, memory parts, monotonicity, the ETA switch, calibration caching,
and the activation formula against what autograd really keeps (tiny model, data made here)."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_tui.config import ConfigError, DataConfig, RunConfig
from peft_tui.engine import estimate as E
from peft_tui.engine.estimate import calibrate

LOHA = '{"peft_type": "LOHA", "r": 4, "target_modules": ["query", "value"]}'
METHODS = [("full", {}), ("lora", {}), ("dora", {}), ("adapters", {}), ("adapters", {"variant": "pfeiffer"}),
           ("head", {}), ("bitfit", {}), ("ia3", {}), ("prefix", {}), ("prompt", {}),
           ("peft-json", {"config": LOHA})]
# Fixed figures instead of a measured calibration: tests stay fast and deterministic.
CAL = E.Calibration(key="test", matmul_flops={"fp32": 5e10, "bf16": 5e10, "attention_d32": 3e10, "attention_d128": 4e10},
                    elementwise_s={k: 1e-9 for op in ("softmax", "dropout", "layernorm", "gelu", "add")
                                   for k in (op, op + "_fwd")},
                    module_s=1e-4, adamw_s_per_param=1e-9, overhead_mb=400.0, reader_mb=60.0)
LENGTHS = [12, 30, 18, 64, 25, 9, 40, 33, 21, 50] * 6


@pytest.fixture(scope="module")
def tiny_mc():
    return E.model_config("tiny", 2)


def cfg(**kw) -> RunConfig:
    base = dict(method="lora", model="tiny", device="cpu", precision="fp32", batch_size=8, max_length=64, epochs=2,
                data=DataConfig(size=120))
    base.update(kw)
    return RunConfig(**base)


def est(mc, lengths=LENGTHS, **kw) -> E.Estimate:
    return E.estimate(cfg(**kw), mc, lengths, "cpu", CAL)


@pytest.mark.parametrize("method,params", METHODS)
def test_parameter_counts_are_exact(tiny_mc, method, params):
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import load_model
    from peft_tui.engine.weights import count_parameters

    m = get_method(method)
    real = m.apply(load_model("tiny", 2, seed=0), m.resolve(params))
    trainable, total = count_parameters(real)
    e = est(tiny_mc, method=method, params=params)
    assert (e.trainable_params, e.total_params) == (trainable, total)


def test_memory_parts_add_up(tiny_mc):
    e = est(tiny_mc, method="full")
    assert set(e.parts) == {"weights", "grads", "optimizer", "activations", "overhead"}
    assert math.isclose(sum(e.parts.values()), e.peak_mb)
    assert all(v >= 0 for v in e.parts.values())
    assert math.isclose(e.parts["grads"], e.trainable_params * 4 / E.MB)
    assert math.isclose(e.parts["optimizer"], e.trainable_params * 8 / E.MB)
    assert math.isclose(e.parts["weights"], e.total_params * 4 / E.MB)
    assert e.peak_low_mb <= e.peak_mb <= e.peak_high_mb
    lora = est(tiny_mc, method="lora")
    assert lora.parts["grads"] < e.parts["grads"] / 50 and lora.parts["optimizer"] < e.parts["optimizer"] / 50


def test_frozen_layers_keep_no_activations(tiny_mc):
    head = est(tiny_mc, method="head")
    assert head.parts["activations"] * E.MB <= E.RETENTION_CPU_FROZEN * E.eval_bytes(
        E.model_shape(cfg(method="head"), tiny_mc), 64, head.width, "fp32", "cpu")  # evaluation is its only peak
    shape = E.model_shape(cfg(method="adapters"), tiny_mc)
    assert shape.keep == ["upper", "all"]  # the first adapter sits after layer 0's attention
    assert E.model_shape(cfg(method="head"), tiny_mc).keep == ["none", "none"]
    assert E.model_shape(cfg(method="prefix"), tiny_mc).prefix_tokens == 20
    assert E.model_shape(cfg(method="prompt"), tiny_mc).prompt_tokens == 20


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=4, max_size=60), b=st.integers(1, 16),
       max_len=st.integers(8, 256), method=st.sampled_from(["full", "lora", "prefix", "bitfit"]))
def test_estimate_grows_with_batch_and_length(tiny_mc, lengths, b, max_len, method):
    small = est(tiny_mc, lengths, method=method, batch_size=b, max_length=max_len)
    wider_batch = est(tiny_mc, lengths, method=method, batch_size=b * 2, max_length=max_len)
    longer = est(tiny_mc, lengths, method=method, batch_size=b, max_length=max_len * 2)
    assert wider_batch.peak_mb >= small.peak_mb
    assert longer.peak_mb >= small.peak_mb
    assert longer.epoch_s >= small.epoch_s
    assert wider_batch.step_s >= small.step_s  # each step does more (the epoch may take less: fewer steps)
    assert small.width == min(max(lengths), max_len)
    assert small.steps == math.ceil(len(lengths) / b) * 2


def test_padding_rounds_up_to_8_on_cuda(tiny_mc):
    batches = E.batch_widths([5, 9, 13, 30], 2, 64, seed=1, cuda=True)
    assert sorted(w for _, w in batches) == [16, 32]
    assert sorted(w for _, w in E.batch_widths([5, 9, 13, 30], 2, 64, seed=1, cuda=False)) == [9, 30]


@contextlib.contextmanager
def torch_attention():
    """transformers' own sdpa in the registry for the block (a CPU training run of this process may have put
    engine/dropout.cpu_attention there): the formula models torch's path (see cost.activation_bytes)."""
    from transformers import AttentionInterface

    from peft_tui.engine import dropout

    if dropout._sdpa is None:
        yield
        return
    AttentionInterface.register("sdpa", dropout._sdpa)
    try:
        yield
    finally:
        AttentionInterface.register("sdpa", dropout.cpu_attention)


@pytest.mark.parametrize("method", ["full", "lora", "dora", "adapters", "bitfit", "prefix", "prompt", "ia3"])
def test_activation_formula_matches_what_autograd_keeps(tiny_mc, method):
    """The tensors autograd saves for backward (unique storages, parameters excluded) on a real forward."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from peft_tui.engine.methods import get_method

    m = get_method(method)
    torch.manual_seed(0)
    model = m.apply(AutoModelForSequenceClassification.from_config(tiny_mc), m.resolve({}))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    b, w = 4, 48
    x = torch.randint(0, 1000, (b, w))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch_attention():
        model(input_ids=x, attention_mask=torch.ones_like(x))
    real = sum(kept.values())
    formula, _ = E.activation_bytes(E.model_shape(cfg(method=method), tiny_mc), b, w, "cpu", "fp32")
    assert abs(formula - real) / real < 0.12, (formula, real)


def _other_configs():
    from transformers import DistilBertConfig, GPT2Config, LlamaConfig

    common = dict(vocab_size=400, num_labels=2, pad_token_id=0)
    return {
        "llama": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=256, **common),
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=256, bos_token_id=1, eos_token_id=1, **common),
        "distilbert": DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128, **common),
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2", "distilbert"])
@pytest.mark.parametrize("method", ["full", "lora", "adapters"])
def test_other_architectures_counts_and_activations(arch, method):
    """Gated feed-forward (Llama), Python-written GELU and Conv1D (GPT-2), other names (DistilBERT)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from peft_tui.engine.methods import get_method
    from peft_tui.engine.weights import count_parameters

    mc = _other_configs()[arch]
    m = get_method(method)
    torch.manual_seed(0)
    model = m.apply(AutoModelForSequenceClassification.from_config(mc), m.resolve({}))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(3, 300, (4, 48))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch_attention():
        model(input_ids=x, attention_mask=torch.ones_like(x))
    shape = E.model_shape(cfg(method=method), mc)
    assert (shape.trainable, shape.total) == count_parameters(model)
    formula, _ = E.activation_bytes(shape, 4, 48, "cpu", "fp32")
    real = sum(kept.values())
    assert abs(formula - real) / real < 0.15, (formula, real)


def test_eta_switches_to_the_measured_rate_after_20_steps(tiny_mc):
    e = est(tiny_mc, head_init="random")
    early = E.eta(e, 19, 100.0, 119)
    assert early.source == "estimate" and math.isclose(early.remaining_s, 100 * e.step_s)
    assert early.low_s < early.remaining_s < early.high_s
    late = E.eta(e, 20, 100.0, 120)  # 5 s a step measured
    assert late.source == "measured" and math.isclose(late.remaining_s, 500.0)
    assert E.eta(e, 120, 600.0, 120).remaining_s == 0.0


def test_calibration_is_measured_once_then_read(tmp_path, monkeypatch):
    calls = []

    def fake_measure(device, key="", overhead=True):
        calls.append(device)
        return E.Calibration(key, {"fp32": 1e11}, {}, 1e-4, 1e-9, 450.0, 60.0)

    monkeypatch.setattr(calibrate, "measure", fake_measure)
    path = tmp_path / "store" / "calibration.json"
    first = E.calibration(path, "cpu")
    stamp = path.stat().st_mtime_ns
    second = E.calibration(path, "cpu")
    assert calls == ["cpu"] and first == second
    assert path.stat().st_mtime_ns == stamp
    assert json.loads(path.read_text())[first.key]["overhead_mb"] == 450.0
    path.write_text("{not json")  # damaged: measured again and rewritten
    E.calibration(path, "cpu")
    assert len(calls) == 2 and json.loads(path.read_text())[first.key]["matmul_flops"] == {"fp32": 1e11}


@pytest.mark.slow
def test_measure_gives_positive_rates():
    cal = E.measure("cpu", overhead=False)
    assert cal.matmul_flops["fp32"] > 1e8 and cal.module_s > 0 and cal.adamw_s_per_param > 0
    assert all(v > 0 and math.isfinite(v) for v in cal.elementwise_s.values())
    assert cal.elementwise_s["softmax"] >= cal.elementwise_s["softmax_fwd"] * 0.5


def test_fits_and_suggestions(tiny_mc):
    full = E.estimate(cfg(method="full", batch_size=32), tiny_mc, LENGTHS, "cpu", CAL, free_mb=1e6)
    assert full.fits(1e6) and full.suggestions == []
    fixed = full.parts["overhead"] + full.parts["weights"]
    tight = fixed + full.parts["grads"] + full.parts["optimizer"] + 0.2 * full.parts["activations"]
    e = E.estimate(cfg(method="full", batch_size=32), tiny_mc, [300] * 64, "cpu", CAL, free_mb=tight)
    assert not e.fits(tight) and e.suggestions
    assert all("\n" not in s and len(s) < 120 for s in e.suggestions)
    assert any(s.startswith(("batch size ", "max_length ", "lora ")) for s in e.suggestions)
    hopeless = E.estimate(cfg(method="full"), tiny_mc, LENGTHS, "cpu", CAL, free_mb=1.0)
    assert hopeless.suggestions == ["nothing tried fits in 1 MB: use a smaller model or a machine with more memory"]


def test_grade_and_round_trip(tiny_mc):
    e = est(tiny_mc)
    g = E.grade(e, {"peak_memory_mb": e.peak_mb / 1.1, "train_time_s": e.total_s * 2, "memory_kind": "process RSS"})
    assert math.isclose(g["peak_error_pct"], 10.0) and g["peak_in_range"]
    assert math.isclose(g["time_error_pct"], -50.0) and not g["time_in_range"]
    cuda = E.grade(e, {"peak_memory_mb": e.peak_mb - e.parts["overhead"], "memory_kind": "CUDA max allocated"})
    assert abs(cuda["peak_error_pct"]) < 1e-9  # the allocator's peak excludes the context
    back = E.Estimate.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back == e


def test_no_rows_is_a_one_line_error(tiny_mc):
    with pytest.raises(ConfigError, match="no training rows"):
        est(tiny_mc, [])


def test_importing_the_estimator_imports_no_torch():
    code = "import sys, peft_tui.engine.estimate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("method,params", METHODS)
def test_the_probe_fit_pass_is_counted_in_the_time(tiny_mc, method, params):
    """head_init=probe encodes the training rows once before step 1: a forward pass without
    gradients, cheaper than a training step, counted in total_s; none for `head` (it is the probe) or random."""
    probe, random_ = est(tiny_mc, method=method, params=params), est(tiny_mc, method=method, params=params,
                                                                      head_init="random")
    assert probe.epoch_s == pytest.approx(random_.epoch_s) and random_.probe_s == 0.0
    assert random_.total_s == pytest.approx(2 * random_.epoch_s)
    if method == "head":
        assert probe.probe_s == 0.0
        return
    # the training rows, each once, without gradients (under a training step's cost), then the L-BFGS fits
    assert 0.0 < probe.probe_s - E.PROBE_FIT_S < probe.epoch_s
    assert probe.total_s == pytest.approx(2 * probe.epoch_s + probe.probe_s)
    assert probe.total_high_s > random_.total_high_s
    s = E.model_shape(cfg(method=method, params=params), tiny_mc)
    for w in (16, 64):
        assert 0.0 < E.forward_seconds(s, 8, w, CAL, "cpu", "fp32") < E.step_seconds(s, 8, w, CAL, "cpu", "fp32")


def test_the_eta_counts_the_probe_fit_once(tiny_mc):
    """Before step 1 the ETA holds the LP-FT probe fit still to come; once the run's own rate takes over,
    the fit is not counted as the cost of its first steps."""
    e = est(tiny_mc)
    assert e.probe_s > 0
    assert E.eta(e, 0, 0.0, 120).remaining_s == pytest.approx(120 * e.step_s + e.probe_s)
    assert E.eta(e, 5, 10.0, 120).remaining_s == pytest.approx(115 * e.step_s)
    late = E.eta(e, 20, e.probe_s + 100.0, 120)  # 5 s a step, after the fit
    assert late.source == "measured" and late.remaining_s == pytest.approx(500.0)
    # a fit that took longer than estimated can at most take half the elapsed time out
    assert E.eta(e, 20, 1.5 * e.probe_s, 120).remaining_s == pytest.approx(100 * 0.75 * e.probe_s / 20)


def test_a_cpu_counts_bf16_activations_at_fp32_width(tiny_mc):
    """On a CPU the process's peak in bf16 was measured at about fp32's (cost.linear_bytes); CUDA halves them."""
    for method in ("full", "lora"):
        s = E.model_shape(cfg(method=method), tiny_mc)
        assert E.activation_bytes(s, 32, 64, "cpu", "bf16") == E.activation_bytes(s, 32, 64, "cpu", "fp32")
        assert E.eval_bytes(s, 64, 64, "bf16", "cpu") == E.eval_bytes(s, 64, 64, "fp32", "cpu")
        half, full = (E.activation_bytes(s, 32, 64, "cuda:0", p)[0] for p in ("bf16", "fp32"))
        assert half < 0.8 * full


def test_long_texts_count_their_mapped_blocks_once(tiny_mc):
    """Tensors above glibc's mmap threshold (attention scores of 512-token rows) are their own mappings, freed
    back to the system: the CPU peak counts their live bytes once, not scaled by the allocator's retention."""
    from peft_tui.engine.estimate import cost

    for method in ("full", "lora"):
        s = E.model_shape(cfg(method=method), tiny_mc)
        assert E.mapped_bytes(s, 32, 64, "cpu", "fp32") == (0.0, 0.0)  # short rows: the heap model alone
        assert E.mapped_bytes(s, 32, 512, "cuda:0", "fp32") == (0.0, 0.0)
        scores = 32 * s.heads * 512 * 512 * 4
        assert scores > cost.MMAP_MAX
        heap, live = E.mapped_bytes(s, 32, 512, "cpu", "fp32")
        assert heap >= 3 * scores * sum(k == "all" for k in s.keep) and 0 < live < heap
        assert E.mapped_bytes(s, 32, 512, "cpu", "bf16")[1] < live  # bf16 probabilities for the product
        act, temp = E.activation_bytes(s, 32, 512, "cpu", "fp32")
        parts = E.memory_parts(s, 32, 512, "cpu", "fp32", 0.0)
        grads = s.trainable * 4
        retention = E.RETENTION_CPU_FROZEN if s.trainable < 0.5 * s.total else E.RETENTION_CPU
        expected = retention * (act + temp - heap + grads) + live - grads
        assert parts["activations"] * E.MB == pytest.approx(max(expected, 0.0))
        assert parts["activations"] * E.MB < retention * (act + temp)
