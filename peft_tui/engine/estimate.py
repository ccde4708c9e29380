"""Will it fit, and how long will it take: a run's peak memory and time, estimated before it starts.

    model_config, lengths = inputs_for(config)                  # the model's config, the rows' token lengths
    cal = calibration(store_root / "calibration.json", device)  # measured once per machine, then read
    est = estimate(config, model_config, lengths, device, cal, free_mb=available)
    est.peak_mb, est.parts, est.total_s, est.fits(available), est.suggestions, est.to_dict()
    eta(est, steps_done, elapsed_s, total_steps)                # the run's own rate from step 20 on
    grade(est, result)                                          # the estimate against what the run measured

No training happens here, and importing this module imports no torch. The classifier is built on the
meta device (no memory, no weights read) and wrapped by the method's own `apply`, so parameter counts
are exact, and what trains (and from which layer on) is read from the wrapped model.

Memory, from its parts (MB, adding up to `peak_mb`):
- weights: every parameter in fp32 (the engine loads fp32 and autocasts), plus under bf16/fp16 the
  compute-dtype copy of each matrix that autocast keeps for the backward pass. No separate fp32 master
  copy: the stored weights already are fp32.
- grads: fp32, trainable parameters only. optimizer: AdamW's two fp32 states per trainable parameter.
- activations: what autograd keeps for the backward pass of the widest batch (the batch size x the
  longest row after truncation, padded to a multiple of 8 on CUDA), per layer from the hidden size,
  feed-forward size and heads: attention scores (CPU with attention dropout: softmax output, dropout
  noise, dropped probabilities; fused attention keeps none), q/k/v, norm inputs, dropout noise, the
  feed-forward activation; plus the input of every module whose weights train, and of every learned
  scale (what the method keeps). Prefix tokens lengthen keys and values, prompt tokens the sequence;
  layers below the first trainable module keep nothing. Checked against the tensors autograd saves
  (tests/test_estimate.py). The backward pass's largest temporary comes on top, evaluation's peak is
  compared, and on CPU the allocator's retention of freed blocks (RETENTION_CPU, measured).
- overhead: CPU, the peak RSS of a fresh process after importing torch, transformers and peft and a few
  micro training steps (+ pandas for file data), the tokenizer and the data held as Python lists;
  CUDA, the context. Measured once by `calibration`.

Time: matrix-product FLOPs (forward 2 per weight per token, and 4*w*w'*h per row and layer for attention;
backward 2 more for input gradients where gradients flow, 2 more for the weight gradients of trainable
matrices) over the measured matrix-product rate, plus the element-wise work per element (softmax,
dropout, norms, activation: measured forward and backward), a fixed cost per leaf module (Python,
dispatch, autograd: measured on a micro BERT's training step) and the fused AdamW step per trainable
parameter. Steps are the trainer's own length-grouped batches for the run's seed, so padding counts
exactly. benchmarks/estimate_accuracy.py grades all of this against real runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from peft_tui.config import ConfigError, RunConfig

MB = 1024.0 * 1024.0
ETA_SWITCH_STEPS = 20  # after this many steps the ETA uses the run's own rate
MEMORY_RANGE = (0.85, 1.15)  # low/high around the peak, from benchmarks/estimate_accuracy.py
TIME_RANGE = (0.7, 1.4)  # slower is likelier than faster: other work on the machine only slows a run
MEASURED_RANGE = (0.9, 1.1)  # ETA range once the run's own rate is known
CALIBRATION_VERSION = 4  # 4: bf16 against fp32 (precision.measure)
# the L-BFGS fits of the LP-FT probe over its 13 weight decays: 0.2-0.5 s on MiniLM features (1,680-2,000
# rows, 1 thread), and about 2 s more the first time a process runs them
PROBE_FIT_S = 1.5
RETENTION_CPU = 1.35  # peak RSS / live bytes of the training step (glibc keeps freed blocks), measured
# the same with the base model frozen (LoRA, adapters, BitFit, ...): measured on MiniLM, batch 32, width 128,
# 1 thread (benchmarks/estimate_accuracy.py): LoRA 1.84, adapters 1.71, BitFit 1.65, full fine-tuning 1.27;
# smaller frozen-model steps free and re-allocate many mid-size blocks that the allocator keeps
RETENTION_CPU_FROZEN = 1.65
BYTES_PER_TOKEN_ID = 80  # a token id in a Python list (pointer + int object), and the tokenizer's transient copy
BYTES_PER_TEXT_TOKEN = 6  # the text itself
BYTES_PER_VOCAB_ENTRY = 500  # a loaded fast tokenizer

# Sibling projections that read the same input tensor: autograd keeps it once.
SHARED_INPUT = ({"query", "key", "value"}, {"q_proj", "k_proj", "v_proj"}, {"q_lin", "k_lin", "v_lin"},
                {"gate_proj", "up_proj"})
ATTENTION_INPUTS = re.compile(r"\.(query|key|value|q_proj|k_proj|v_proj|q_lin|k_lin|v_lin|c_attn|qkv_proj|Wqkv)\b")
ATTENTION_HEAD_DIMS = (32, 128)  # head sizes the attention products are timed at (interpolated between)
LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    method: str
    device: str  # "cpu" or "cuda:N"
    precision: str  # resolved: fp32 / bf16 / fp16
    batch_size: int
    width: int  # tokens per row in the widest batch (after truncation and padding)
    peak_mb: float
    peak_low_mb: float
    peak_high_mb: float
    parts: dict[str, float]  # MB: weights, grads, optimizer, activations, overhead (they add up to peak_mb)
    step_s: float  # mean seconds per optimizer step
    epoch_s: float
    epoch_low_s: float
    epoch_high_s: float
    total_s: float  # training steps of all epochs and the LP-FT probe fit (evaluation and loading not included)
    total_low_s: float
    total_high_s: float
    steps: int  # optimizer steps of the whole run
    trainable_params: int
    total_params: int
    suggestions: list[str] = field(default_factory=list)  # one-liners, filled when it does not fit
    calibration: str = ""  # the machine calibration it used (`Calibration.key`); "nominal": none measured yet
    probe_s: float = 0.0  # head_init=probe: the forward pass over train and validation rows before step 1
    precision_reason: str = ""  # precision=auto: why `precision` was chosen (precision.pick)

    def fits(self, free_mb: float) -> bool:
        return self.peak_mb <= free_mb

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Eta:
    remaining_s: float
    low_s: float
    high_s: float
    source: str  # "estimate" (before ETA_SWITCH_STEPS) or "measured"


# ------------------------------------------------------------------------------------------------
# calibration: measured once per machine and device, cached as JSON
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    key: str  # what was measured: device name, torch version, thread count
    matmul_flops: dict[str, float]  # compute dtype -> FLOP/s of a large matrix product; "attention_d<head
    #                                  size>": attention's batched products (fp32)
    elementwise_s: dict[str, float]  # op -> seconds per element, forward + backward ("<op>_fwd": forward only)
    module_s: float  # a step's fixed cost (Python, dispatch, autograd, optimizer) per leaf module
    adamw_s_per_param: float  # fused AdamW step + gradient clipping, per trainable parameter
    overhead_mb: float  # CPU: RSS of a process after the imports and a micro training step; CUDA: the context
    reader_mb: float  # CPU: the extra RSS of the file readers (pandas)
    precision: dict[str, float] = field(default_factory=dict)  # precision.measure: bf16 vs fp32 step, loss gap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_key(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device).index or 0)
    else:
        name = f"cpu x{os.cpu_count()} threads={torch.get_num_threads()}"
    return f"{name} | torch {torch.__version__} | v{CALIBRATION_VERSION}"


def read_calibration(path: str | Path, device: str = "cpu") -> Calibration | None:
    """The cached calibration for `device` in `path`, or None (no file, or measured on another machine,
    torch or version of this module). Reads a small JSON file: no measuring."""
    path = Path(path)
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return None  # unreadable: measured again by `calibration`
    entry = cached.get(machine_key(device)) if isinstance(cached, dict) else None
    try:
        return Calibration(**entry) if isinstance(entry, dict) else None
    except TypeError:  # written by another version
        return None


def calibration(path: str | Path, device: str = "cpu") -> Calibration:
    """The machine's calibration for `device`, read from `path` (a JSON file next to the store), or
    measured now (a few seconds, plus a fresh process's import of torch, transformers and peft) and
    written there for next time. One file holds one entry per device."""
    cal = read_calibration(path, device)
    if cal is not None:
        return cal
    path = Path(path)
    cal = measure(device, machine_key(device))
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    cached[cal.key] = cal.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return cal


def _timed(fn, sync, seconds: float, clock=time.perf_counter) -> float:
    """Seconds per call of `fn`: the fastest of five short bursts (after a warm-up call), so that other
    work on a shared machine inflates it as little as possible."""
    fn()
    sync()
    best = math.inf
    for _ in range(5):
        n, t0 = 0, clock()
        while n < 2 or clock() - t0 < seconds / 5:
            fn()
            n += 1
        sync()
        best = min(best, (clock() - t0) / n)
    return best


def measure(device: str, key: str = "", overhead: bool = True, clock=time.perf_counter) -> Calibration:
    """A few seconds of matrix products, the element-wise ops of a transformer layer, module calls and
    an AdamW step on `device`; and (with `overhead`) the fixed memory of a fresh training process there.
    `clock`: wall time; `time.process_time` measures CPU seconds instead (benchmarks on a shared CPU)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    big = dev.type == "cuda"
    n, k = (8192, 2048) if big else (2048, 512)

    flops: dict[str, float] = {}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dev.type == "cuda":
        dtypes["fp16"] = torch.float16
    for name, dt in dtypes.items():
        a = torch.randn(n, k, device=dev, dtype=dt)
        b = torch.randn(k, k, device=dev, dtype=dt)
        flops[name] = 2 * n * k * k / _timed(lambda: a @ b, sync, 0.4, clock)  # noqa: B023 - called at once by _timed
    for d in ATTENTION_HEAD_DIMS:  # attention's batched products with a small inner size run slower
        w = 512 if big else 256
        q = torch.randn(16, w, d, device=dev)
        kt = torch.randn(16, d, w, device=dev)
        flops[f"attention_d{d}"] = 2 * 16 * w * w * d / _timed(lambda: torch.bmm(q, kt), sync, 0.2, clock)  # noqa: B023 - called at once by _timed

    elements = 1 << (24 if big else 21)
    x = torch.randn(elements // 256, 256, device=dev, requires_grad=True)
    g = torch.randn_like(x)
    ops = {
        "softmax": lambda t: F.softmax(t, dim=-1),
        "dropout": lambda t: F.dropout(t, 0.1, training=True),
        "layernorm": lambda t: F.layer_norm(t, (256,)),
        "gelu": F.gelu,
        "add": lambda t: t + 1.0,
    }
    per_el: dict[str, float] = {}
    for name, op in ops.items():
        fwd = _timed(lambda: op(x.detach()), sync, 0.15, clock)  # noqa: B023 - called at once by _timed
        both = _timed(lambda: op(x).backward(g), sync, 0.2, clock)  # noqa: B023 - called at once by _timed
        per_el[name + "_fwd"] = fwd / elements
        per_el[name] = both / elements

    module_s = _module_seconds(dev, sync, clock)

    params = [nn.Parameter(torch.randn(1 << 21, device=dev))]
    params[0].grad = torch.randn_like(params[0])
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def adam_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    adamw = _timed(adam_step, sync, 0.3, clock) / params[0].numel()
    runtime, reader = _overhead_mb(device) if overhead else (0.0, 0.0)
    from peft_tui.engine import precision as precision_mod

    return Calibration(key, flops, per_el, module_s, adamw, runtime, reader, precision_mod.measure(device, clock=clock))


def _module_seconds(dev, sync, clock=time.perf_counter) -> float:
    """The fixed cost of a training step per module call (Python, dispatch, autograd, optimizer
    bookkeeping): a full step of a micro BERT (2 layers, hidden 16, 8 tokens) over its leaf modules."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification

    micro = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,  # type: ignore[call-arg]
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=16, num_labels=2)).to(dev)
    micro.train()
    opt = torch.optim.AdamW(micro.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 64, (2, 8), device=dev)
    mask = torch.ones_like(x)
    y = torch.zeros(2, dtype=torch.long, device=dev)

    def step():
        F.cross_entropy(micro(input_ids=x, attention_mask=mask).logits, y).backward()
        torch.nn.utils.clip_grad_norm_(micro.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, sync, 0.5, clock) / leaf_modules(micro)


def leaf_modules(model) -> int:
    return sum(1 for m in model.modules() if not list(m.children()))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec; `ru_maxrss` would
    carry the parent's peak into a child process (the kernel keeps it across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


OVERHEAD_PROBE = r"""
import sys
import psutil, torch, transformers, peft
from peft_tui.engine.estimate import _module_seconds, peak_rss_mb
device = sys.argv[1]
sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
_module_seconds(torch.device(device), sync)  # a few real training steps: allocator, kernels, autograd
if device.startswith("cuda"):
    import pynvml
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0)
    pid = psutil.Process().pid
    mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid]
    print(mine[0] / 2**20 - torch.cuda.memory_allocated(device) / 2**20, 0.0)
else:
    before = peak_rss_mb()
    import pandas  # the file readers' import: a run on a CSV/JSONL/Parquet file pays it
    print(before, peak_rss_mb() - before)
"""


def _overhead_mb(device: str) -> tuple[float, float]:
    """(memory a fresh training process holds before any model: CPU, its peak RSS after importing torch,
    transformers and peft and a few micro training steps; CUDA, the context as NVML reports it; the extra
    RSS of the file readers' pandas import). (512, 0) where the probe cannot tell."""
    try:
        out = subprocess.run([sys.executable, "-c", OVERHEAD_PROBE, device], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        runtime, reader = out.stdout.strip().splitlines()[-1].split()
        return float(runtime), float(reader)
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 512.0, 0.0


# ------------------------------------------------------------------------------------------------
# inputs: the model's config and the training rows' token lengths
# ------------------------------------------------------------------------------------------------
def model_config(name: str, num_labels: int, trust_remote_code: bool = False):
    """The transformers config of model `name` ("tiny", "minilm", a folder, a hub id) with `num_labels`;
    no weights are read."""
    from transformers import AutoConfig, BertConfig

    from peft_tui.engine import models

    if name == "tiny":
        vocab = models.load_tokenizer("tiny").vocab_size
        return BertConfig(vocab_size=vocab, num_labels=num_labels, **models.TINY)  # type: ignore[call-arg]
    from peft_tui.engine.hub import hub_kwargs

    src = str(models.minilm_path()) if name == "minilm" else str(Path(name).expanduser())
    hub = {} if name == "minilm" or Path(src).exists() else hub_kwargs()
    try:
        return AutoConfig.from_pretrained(src, num_labels=num_labels, trust_remote_code=trust_remote_code, **hub)
    except Exception as e:  # noqa: BLE001 - missing folder, hub offline, bad JSON
        from peft_tui.errors import first_line

        raise ConfigError(f"model {name!r}: its config could not be read ({first_line(e)[:160]})") from None


def inputs_for(config: RunConfig, data=None):
    """(model config, token lengths of the training rows, untruncated) for `estimate`. `data`: the
    config's DataSplits when already loaded (`trainer.preflight` returns them), else loaded here."""
    from peft_tui.engine.data import load_splits, token_lengths
    from peft_tui.engine.models import load_tokenizer

    data = data if data is not None else load_splits(config.data, config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    lengths = token_lengths(tokenizer, data.train.texts, data.train.pairs)
    return model_config(config.model, data.num_labels, config.trust_remote_code), lengths


# ------------------------------------------------------------------------------------------------
# the model's shape, from a skeleton on the meta device
# ------------------------------------------------------------------------------------------------
@dataclass
class Shape:
    """What the estimate needs to know about the wrapped model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    attention_dropout: float
    hidden_dropout: float
    trainable: int
    total: int
    matrix_params: int  # weights of the linear layers: 2 FLOPs per weight per token forward
    trainable_matrix_params: int
    keep: list[str]  # per layer: "all", "upper" (from the attention output on) or "none"
    embeddings_keep: bool
    trainable_inputs: int  # per token, summed over layers: inputs kept by modules whose weights train
    modules: int  # leaf modules: the fixed cost of a step scales with them
    prefix_tokens: int  # extra key/value positions per layer (prefix tuning)
    prompt_tokens: int  # extra positions of the whole sequence (prompt tuning)
    act_kept: int  # feed-forward tensors of width `intermediate` kept per layer (gated MLP: 3)


def _dims(mc) -> tuple[int, int, int, int]:
    layers = getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layers", None) or mc.n_layer
    hidden = mc.hidden_size
    heads = getattr(mc, "num_attention_heads", None) or getattr(mc, "n_heads", None) or mc.n_head
    inter = (getattr(mc, "intermediate_size", None) or getattr(mc, "hidden_dim", None)
             or getattr(mc, "n_inner", None) or 4 * hidden)
    return int(layers), int(hidden), int(inter), int(heads)


def _dropouts(mc) -> tuple[float, float]:
    attn = next((getattr(mc, k) for k in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
                 if isinstance(getattr(mc, k, None), (int, float))), 0.0)
    hid = next((getattr(mc, k) for k in ("hidden_dropout_prob", "dropout", "resid_pdrop")
                if isinstance(getattr(mc, k, None), (int, float))), 0.0)
    return float(attn), float(hid)


def model_shape(config: RunConfig, mc) -> Shape:
    """Build the classifier on the meta device, pool it as `models.load_model` does (a BERT pooler
    replaced by mean pooling trains nothing), wrap it with the method's own `apply`, and read the exact
    parameter counts and where gradients start."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from peft_tui.engine import pooling
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.methods.peft_common import pools_last_token
    from peft_tui.engine.models import _model_folder
    from peft_tui.engine.weights import count_parameters, head_module_names

    method = get_method(config.method)
    params = method.resolve(config.params)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft's deprecated-API notices: not the user's business
        model = AutoModelForSequenceClassification.from_config(mc, trust_remote_code=config.trust_remote_code)
        folder = None if config.model == "tiny" else _model_folder(config.model)
        model = pooling.install(model, pooling.resolve(config.pooling, folder, model))  # as load_model does
        heads = tuple(head_module_names(model))
        base = model
        model = method.apply(model, params)
    trainable, total = count_parameters(model)
    layers, hidden, inter, n_heads = _dims(mc)
    attn_drop, hid_drop = _dropouts(mc)

    def in_head(name: str) -> bool:
        return any(f".{h}." in f".{name}" for h in heads)

    first, first_has_attention, body_wide = None, False, False
    for name, p in model.named_parameters():
        if not p.requires_grad or in_head(name):
            continue
        m = LAYER_INDEX.search("." + name)
        if m is None:  # embeddings, a prefix or prompt encoder: gradients reach every layer
            body_wide = True
            continue
        i = int(m.group(1))
        if first is None or i < first:
            first, first_has_attention = i, False
        if i == first and ATTENTION_INPUTS.search("." + name):
            first_has_attention = True
    if body_wide:
        keep = ["all"] * layers
    elif first is None:
        keep = ["none"] * layers
    else:
        keep = ["none"] * first + ["all" if first_has_attention else "upper"] + ["all"] * (layers - first - 1)

    matrix = trainable_matrix = inputs = 0
    shared_seen: set[tuple[str, frozenset]] = set()
    for name, mod in model.named_modules():
        in_layer = LAYER_INDEX.search(f".{name}.") is not None  # per-token work; the head sees one row
        if in_layer and (isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"):
            w = mod.weight
            matrix += w.numel()
            if w.requires_grad:  # its weight gradient needs its input
                trainable_matrix += w.numel()
                parent, _, child = name.rpartition(".")
                group = next((frozenset(g) for g in SHARED_INPUT if child in g), None)
                if group is None or (parent, group) not in shared_seen:
                    inputs += w.shape[1] if isinstance(mod, torch.nn.Linear) else w.shape[0]
                if group is not None:
                    shared_seen.add((parent, group))
        drops = getattr(mod, "lora_dropout", None)
        if in_layer and drops is not None:  # peft LoRA: each adapted module's own dropout keeps its noise
            inputs += sum(mod.in_features for d in drops.values() if isinstance(d, torch.nn.Dropout) and d.p > 0)
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        vector = p.ndim == 1 or 1 in p.shape
        if p.requires_grad and vector and not name.endswith("bias") and not isinstance(owner, torch.nn.LayerNorm) \
                and LAYER_INDEX.search("." + name):
            inputs += p.numel()  # a learned scale (IA3, DoRA's magnitude, an RMSNorm) keeps the tensor it scales
    if pools_last_token(base) and any(p.requires_grad for n, p in model.named_parameters() if in_head(n)):
        inputs += hidden  # a decoder's `score` head reads every position before one is picked
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    if any(n.endswith(("gate_proj", "w1")) for n, _ in names):
        act_kept = 3  # act(gate) * up: the gate, the activation and the up projection
    elif any(c == "NewGELUActivation" for _, c in names):
        act_kept = 4  # GPT-2's tanh GELU, written out in Python: four intermediates
    else:
        act_kept = 1
    peft_cfg = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    virtual = int(getattr(peft_cfg, "num_virtual_tokens", 0) or 0)
    kind = str(getattr(peft_cfg, "peft_type", ""))
    prefix = virtual if "PREFIX" in kind else 0
    prompt = virtual if virtual and not prefix else 0
    embeddings_keep = body_wide and any(p.requires_grad for n, p in model.named_parameters() if "embeddings" in n) \
        or bool(prompt)
    return Shape(layers, hidden, inter, n_heads, attn_drop, hid_drop, trainable, total, matrix, trainable_matrix,
                 keep, embeddings_keep, inputs, leaf_modules(model), prefix, prompt, act_kept)


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def activation_bytes(s: Shape, b: int, w: int, device: str, precision: str) -> tuple[float, float]:
    """(bytes autograd keeps for a batch of b rows of width w, the largest backward temporary)."""
    w = w + s.prompt_tokens
    wk = w + s.prefix_tokens  # keys and values
    h, i, a = s.hidden, s.intermediate, s.heads
    cuda = device.startswith("cuda")
    lin = 2 if precision in ("bf16", "fp16") else 4  # linear outputs under autocast
    mask = 1 if cuda else 4  # dropout: a bool mask on CUDA, a float noise tensor on CPU
    n_drop = 1 if s.hidden_dropout > 0 else 0
    scores = b * a * w * wk * 4  # one attention-score tensor (softmax runs in fp32)
    # CPU has no fused attention kernel with dropout: the plain path keeps the softmax output, the dropout
    # noise and the dropped probabilities. Fused attention (CUDA; CPU without dropout) keeps its output
    # and log-sum-exp only.
    plain = not cuda and s.attention_dropout > 0
    attention = 3 * scores if plain else b * w * h * lin + b * a * w * 4
    attention += (b * w * h + 2 * b * wk * h) * lin  # q, k, v for the two products
    upper = 2 * n_drop * b * w * h * mask + 2 * b * w * h * 4 + s.act_kept * b * w * i * lin  # dropout, norms, act
    per_layer = {"all": attention + upper, "upper": upper, "none": 0.0}
    total = sum(per_layer[k] for k in s.keep)
    total += s.trainable_inputs * b * w * lin
    if s.embeddings_keep:
        total += b * w * h * (4 + mask)
    if all(k == "none" for k in s.keep):
        return total, 0.0
    return total, 2 * scores if plain else 2 * b * w * i * lin


def eval_bytes(s: Shape, eval_bs: int, w: int, precision: str) -> float:
    """The live tensors of one layer's forward pass in evaluation: nothing is kept, and attention runs
    fused (no dropout; except with a prefix, measured), so hidden states and feed-forward activations dominate."""
    lin = 2 if precision in ("bf16", "fp16") else 4
    w = w + s.prompt_tokens
    scores = 2 * eval_bs * s.heads * w * (w + s.prefix_tokens) * 4 if s.prefix_tokens else 0  # no fused path
    return scores + eval_bs * w * (4 * s.hidden + 2 * s.intermediate) * lin


def memory_parts(s: Shape, b: int, w: int, device: str, precision: str, fixed_mb: float) -> dict[str, float]:
    """The peak's parts in MB for the widest batch (b rows of width w); `fixed_mb`: the process's own."""
    half = precision in ("bf16", "fp16")
    weights = s.total * 4 + (s.matrix_params * 2 if half else 0)
    grads = s.trainable * 4
    optimizer = s.trainable * 8
    act, temp = activation_bytes(s, b, w, device, precision)
    evaluation = eval_bytes(s, max(64, b * 2), w, precision)
    # the training step's peak: kept activations + the largest temporary + grads (grads are set to None
    # after each step, so evaluation has none); on CPU the allocator keeps freed blocks of steps of other
    # widths around, which RETENTION_CPU accounts for
    frozen = s.trainable < 0.5 * s.total
    retention = 1.0 if device.startswith("cuda") else RETENTION_CPU_FROZEN if frozen else RETENTION_CPU
    act_peak = max(0.0, retention * max(act + temp + grads, evaluation) - grads)
    return {"weights": weights / MB, "grads": grads / MB, "optimizer": optimizer / MB,
            "activations": act_peak / MB, "overhead": fixed_mb}


def fixed_mb(config: RunConfig, mc, lengths: Sequence[int], cal: Calibration) -> float:
    """The process's own memory: runtime (calibrated), the file reader, the tokenizer and the data held
    as Python lists (token ids of every split, and the texts)."""
    d = config.data
    rows: float = len(lengths)
    if d.source != "synthetic" and not (d.val_source or d.test_source):
        rows = rows / max(0.1, 1 - d.val_fraction - d.test_fraction)  # val and test are cut from the same file
    elif d.source == "synthetic":
        rows = d.size
    mean_raw = sum(lengths) / len(lengths)
    mean_cut = sum(min(n, config.max_length) for n in lengths) / len(lengths)
    data = rows * (mean_cut * BYTES_PER_TOKEN_ID + mean_raw * BYTES_PER_TEXT_TOKEN + 200)
    tokenizer = getattr(mc, "vocab_size", 30000) * BYTES_PER_VOCAB_ENTRY
    reader = cal.reader_mb if d.source != "synthetic" else 0.0
    return cal.overhead_mb + reader + (data + tokenizer) / MB


# ------------------------------------------------------------------------------------------------
# time
# ------------------------------------------------------------------------------------------------
def attention_rate(cal: Calibration, head_dim: int) -> float:
    """fp32 FLOP/s of attention's batched products at this head size (log-interpolated, clamped)."""
    lo, hi = ATTENTION_HEAD_DIMS
    x = min(1.0, max(0.0, math.log(head_dim / lo) / math.log(hi / lo)))
    return cal.matmul_flops[f"attention_d{lo}"] ** (1 - x) * cal.matmul_flops[f"attention_d{hi}"] ** x


def step_seconds(s: Shape, b: int, w: int, cal: Calibration, device: str, precision: str) -> float:
    """Seconds of one optimizer step on a batch of b rows of width w."""
    w = w + s.prompt_tokens
    wk = w + s.prefix_tokens
    h, i, a = s.hidden, s.intermediate, s.heads
    tokens = b * w
    back = sum(1.0 if k == "all" else 0.5 if k == "upper" else 0.0 for k in s.keep) / max(1, s.layers)
    rate = cal.matmul_flops.get(precision, cal.matmul_flops["fp32"])
    t = (2 * tokens * s.matrix_params * (1 + back) + 2 * tokens * s.trainable_matrix_params) / rate
    attention_layers = s.layers + 2 * sum(1 for k in s.keep if k == "all")  # forward + twice as much backward
    t += 4 * b * w * wk * h * attention_layers / (attention_rate(cal, h // a) * rate / cal.matmul_flops["fp32"])

    e = cal.elementwise_s
    scores = b * a * w * wk
    attention = {"add": 6 * tokens * h}  # heads split, q and k scaled, heads merged
    if not device.startswith("cuda") and s.attention_dropout > 0:  # the plain path (see activation_bytes)
        attention = {"softmax": scores, "add": scores + 6 * tokens * h, "dropout": scores}
    upper = {"layernorm": 2 * tokens * h, "add": 2 * tokens * h, "gelu": tokens * i}  # norms, residuals, act
    if s.hidden_dropout > 0:
        upper["dropout"] = 2 * tokens * h
    forward = sum(n * e[op + "_fwd"] for part in (attention, upper) for op, n in part.items())
    backward_attention = sum(n * (e[op] - e[op + "_fwd"]) for op, n in attention.items())
    backward_upper = sum(n * (e[op] - e[op + "_fwd"]) for op, n in upper.items())
    for k in s.keep:
        t += forward + (backward_upper if k != "none" else 0.0) + (backward_attention if k == "all" else 0.0)
    return t + s.modules * cal.module_s + s.trainable * cal.adamw_s_per_param


def forward_seconds(s: Shape, b: int, w: int, cal: Calibration, device: str, precision: str) -> float:
    """Seconds of one forward pass without gradients (the features of the LP-FT probe fit): in evaluation
    mode, so no dropout, and attention takes the fused path."""
    frozen = replace(s, keep=["none"] * len(s.keep), trainable_matrix_params=0, trainable=0,
                     attention_dropout=0.0, hidden_dropout=0.0)
    return step_seconds(frozen, b, w, cal, device, precision)


def probe_fit_seconds(config: RunConfig, s: Shape, lengths: Sequence[int], cal: Calibration, device: str,
                      precision: str) -> float:
    """`head_init=probe`: the trainer encodes the training rows and the validation rows once before the first
    step (probe.fit_head; shortest first, in probe.length_sorted_batches); the validation rows are counted
    as the split's share of the training rows. Then the L-BFGS fits over the weight-decay grid (PROBE_FIT_S).
    `head_init=auto` counts when it resolves to the probe for this run's number of steps. (Features another
    run of the store has cached make it shorter; the estimate does not count on that.)"""
    from peft_tui.engine import probe
    from peft_tui.engine.methods import get_method

    method = get_method(config.method)
    steps = -(-len(lengths) // config.batch_size) * config.epochs
    if probe.resolve_head_init(config.head_init, steps) != "probe" or method.is_baseline or method.run is not None:
        return 0.0
    cut = [min(n, config.max_length) for n in lengths]
    train = sum(forward_seconds(s, len(b), cut[b[-1]], cal, device, precision)
                for b in probe.length_sorted_batches(cut, probe.ENCODE_BATCH, probe.ENCODE_TOKENS))
    d = config.data
    val_share = d.val_fraction / max(1e-9, 1.0 - d.val_fraction - d.test_fraction)
    val_share = min(val_share, probe.PROBE_VAL_ROWS / max(1, len(lengths)))  # at most PROBE_VAL_ROWS are encoded
    return train * (1.0 + val_share) + PROBE_FIT_S


# ------------------------------------------------------------------------------------------------
# the estimate
# ------------------------------------------------------------------------------------------------
def batch_widths(lengths: Sequence[int], batch_size: int, max_length: int, seed: int, cuda: bool) -> list[tuple[int, int]]:
    """(rows, width) of each batch of the first epoch, as the trainer cuts them for this seed."""
    from peft_tui.engine.batching import PAD_MULTIPLE_CUDA, length_grouped_batches

    cut = [min(n, max_length) for n in lengths]
    out = []
    for batch in length_grouped_batches(cut, batch_size, random.Random(seed)):
        w = max(cut[i] for i in batch)
        if cuda:
            w = -(-w // PAD_MULTIPLE_CUDA) * PAD_MULTIPLE_CUDA
        out.append((len(batch), w))
    return out


def _percentile(values: list[int], q: float) -> int:
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1))]


def estimate(config: RunConfig, model_config, lengths: Sequence[int], device: str,
             calibration: Calibration | None = None, free_mb: float | None = None) -> Estimate:
    """Peak memory and time of `config` on `device` ("cpu", "cuda:N"), before it runs.

    `model_config`: the transformers config (see `model_config()`); `lengths`: untruncated token counts
    of the training rows, in order (see `inputs_for()`); `calibration`: this machine's (see
    `calibration()`), None for the nominal figures of a small CPU (NOMINAL_CPU). With `free_mb`,
    `suggestions` is filled when the run would not fit. Times are for a machine as idle as it was when
    calibrated: other work slows a run by what no estimate can know; `eta` corrects after 20 steps."""
    from peft_tui.engine.device import resolve_device, resolve_precision

    if not lengths:
        raise ConfigError("no training rows to estimate from: check the data source")
    cal = calibration or NOMINAL_CPU
    device = resolve_device(device)
    precision = resolve_precision(config.precision, device)
    precision_reason = ""
    if config.precision == "auto":  # the machine's measured choice where calibrated (precision.pick)
        from peft_tui.engine.precision import pick

        choice, precision_reason = pick(cal.precision)
        precision = choice or precision
    s = model_shape(config, model_config)
    cuda = device.startswith("cuda")
    batches = batch_widths(lengths, config.batch_size, config.max_length, config.seed, cuda)
    widest = max(w for _, w in batches)
    fixed = cal.overhead_mb if cuda else fixed_mb(config, model_config, lengths, cal)  # data stays in host RAM
    parts = memory_parts(s, config.batch_size, widest, device, precision, fixed)
    peak = sum(parts.values())
    cut = [min(n, config.max_length) for n in lengths]
    p90 = _percentile(cut, 90)
    low_parts = memory_parts(s, config.batch_size, p90, device, precision, fixed)
    epoch = sum(step_seconds(s, b, w, cal, device, precision) for b, w in batches)
    steps = len(batches) * config.epochs
    probe = probe_fit_seconds(config, s, lengths, cal, device, precision)
    total = epoch * config.epochs + probe
    est = Estimate(
        method=config.method, device=device, precision=precision, batch_size=config.batch_size, width=widest,
        peak_mb=peak, peak_low_mb=min(peak, sum(low_parts.values())) * MEMORY_RANGE[0],
        peak_high_mb=peak * MEMORY_RANGE[1], parts=parts,
        step_s=epoch / len(batches), epoch_s=epoch, epoch_low_s=epoch * TIME_RANGE[0],
        epoch_high_s=epoch * TIME_RANGE[1], total_s=total,
        total_low_s=total * TIME_RANGE[0], total_high_s=total * TIME_RANGE[1],
        steps=steps, trainable_params=s.trainable, total_params=s.total, calibration=cal.key, probe_s=probe,
        precision_reason=precision_reason,
    )
    if free_mb is not None and not est.fits(free_mb):
        est.suggestions = suggest(config, model_config, lengths, device, cal, free_mb, est)
    return est


def suggest(config: RunConfig, model_config, lengths: Sequence[int], device: str, cal: Calibration,
            free_mb: float, current: Estimate) -> list[str]:
    """One-liners for what would fit in `free_mb`: a smaller batch, bf16, LoRA, a shorter max_length."""
    import dataclasses

    out = []
    b = config.batch_size // 2
    while b >= 1:
        e = estimate(dataclasses.replace(config, batch_size=b), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"batch size {b} would need about {e.peak_mb:,.0f} MB: --batch-size {b}")
            break
        b //= 2
    if current.precision == "fp32" and (device.startswith("cuda") or _bf16_ok()):
        e = estimate(dataclasses.replace(config, precision="bf16"), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"bf16 would need about {e.peak_mb:,.0f} MB: --precision bf16")
    if config.method == "full":
        e = estimate(dataclasses.replace(config, method="lora", params={}), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"lora would need about {e.peak_mb:,.0f} MB: --method lora")
    n = min(config.max_length, current.width) // 2
    while n >= 8:
        e = estimate(dataclasses.replace(config, max_length=n), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"max_length {n} would need about {e.peak_mb:,.0f} MB: --set max_length={n}")
            break
        n //= 2
    if not out:
        out.append(f"nothing tried fits in {free_mb:,.0f} MB: use a smaller model or a machine with more memory")
    return out


def _bf16_ok() -> bool:
    from peft_tui.engine.device import cpu_has_amx

    return cpu_has_amx()


# Nominal figures when no calibration is at hand: one thread of a 2-core AVX-512 server CPU (measured
# here in CPU seconds by `measure("cpu", clock=time.process_time)`).
NOMINAL_CPU = Calibration(
    key="nominal",
    matmul_flops={"fp32": 8e10, "bf16": 2e11, "attention_d32": 4.2e10, "attention_d128": 7e10},
    elementwise_s={"softmax": 1.7e-9, "softmax_fwd": 6e-10, "dropout": 8e-9, "dropout_fwd": 6.8e-9,
                   "layernorm": 2e-9, "layernorm_fwd": 7e-10, "gelu": 3e-9, "gelu_fwd": 8e-10,
                   "add": 1e-9, "add_fwd": 4e-10},
    module_s=1.5e-4, adamw_s_per_param=1.3e-9, overhead_mb=400.0, reader_mb=60.0,
)


# ------------------------------------------------------------------------------------------------
# before queueing: will each run fit (`peft-tui plan`, the fit check of `run`/`compare`/`sweep`, the dashboard)
# ------------------------------------------------------------------------------------------------
def free_memory_mb(device: str) -> float:
    """Memory a run may use now: available RAM on CPU, free memory of the GPU on CUDA."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device).index or 0)
        return free / MB
    import psutil

    return psutil.virtual_memory().available / MB


def plan(configs: Sequence[RunConfig], calibration_path: str | Path, calibrate: bool = True,
         data=None, inputs: dict | None = None) -> list[dict[str, Any] | None]:
    """Per config: {"method", "device", "free_mb", "fits", "estimate": Estimate.to_dict()}, or None for a
    baseline (nothing to estimate). Model config and token lengths are read once per model, data and seed.
    `calibrate`: measure the machine (seconds) when `calibration_path` has no calibration for the device
    yet; else use the nominal figures (the estimate's `calibration` then says "nominal"). `data`: the
    DataSplits of `configs[0]`, already loaded. `inputs`: a dict the caller keeps to reuse the model
    configs and token lengths across calls (the dashboard estimates as the form changes)."""
    from peft_tui.engine.device import resolve_device
    from peft_tui.engine.methods import get_method

    rows: list[dict[str, Any] | None] = []
    inputs = {} if inputs is None else inputs
    for cfg in configs:
        if get_method(cfg.method).is_baseline:
            rows.append(None)
            continue
        device = resolve_device(cfg.device)
        split_seed = None if cfg.data.source == "synthetic" else cfg.seed  # the synthetic split is fixed
        key = (cfg.model, cfg.data, split_seed, cfg.trust_remote_code)
        if key not in inputs:  # the same model and data for every method and seed: read them once
            same = data is not None and (cfg.data, cfg.seed) == (configs[0].data, configs[0].seed)
            inputs[key] = inputs_for(cfg, data if same else None)
        model_cfg, lengths = inputs[key]
        cal = calibration(calibration_path, device) if calibrate else read_calibration(calibration_path, device)
        available = free_memory_mb(device)
        est = estimate(cfg, model_cfg, lengths, device, cal, free_mb=available)
        rows.append({"method": cfg.method, "device": device, "free_mb": available, "fits": est.fits(available),
                     "estimate": est.to_dict()})
    return rows


def refusal(config: RunConfig, row: dict[str, Any]) -> str:
    """The one line that refuses a run that will not fit (`row`: one of `plan`'s), with the first way
    to make it fit."""
    e = row["estimate"]
    tips = e.get("suggestions") or []
    return (f"{config.display_name} will not fit: it needs about {e['peak_mb']:,.0f} MB and {row['device']} has "
            f"{row['free_mb']:,.0f} MB free" + (f"; {tips[0]}" if tips else "") + " (or --force to run it anyway)")


# ------------------------------------------------------------------------------------------------
# during and after the run
# ------------------------------------------------------------------------------------------------
def eta(est: Estimate, steps_done: int, elapsed_s: float, total_steps: int) -> Eta:
    """Time left. Before ETA_SWITCH_STEPS steps: the estimate's time per step (and its range), plus the
    LP-FT probe fit while no step is done; from then on: the run's own mean rate so far, with the
    estimated probe fit taken out of `elapsed_s` (it ran once, before step 1: not a step's cost)."""
    left = max(0, total_steps - steps_done)
    if steps_done >= ETA_SWITCH_STEPS and elapsed_s > 0:
        rate = (elapsed_s - min(est.probe_s, 0.5 * elapsed_s)) / steps_done
        return Eta(left * rate, left * rate * MEASURED_RANGE[0], left * rate * MEASURED_RANGE[1], "measured")
    t = left * est.step_s + (est.probe_s if steps_done == 0 else 0.0)
    return Eta(t, t * TIME_RANGE[0], t * TIME_RANGE[1], "estimate")


def grade(est: Estimate, measured: Any) -> dict[str, Any]:
    """The estimate against a finished run (a RunResult or its dict): each figure, the measured one,
    the error in % of the measured one and whether the measurement fell inside the estimated range.
    On CUDA the run measures the allocator's peak, which excludes the context: compared without it."""
    get = measured.get if hasattr(measured, "get") else (lambda k, d=None: getattr(measured, k, d))
    out: dict[str, Any] = {}
    peak = get("peak_memory_mb")
    if peak:
        skip = est.parts["overhead"] if str(get("memory_kind", "")).startswith("CUDA") else 0.0
        e, lo, hi = est.peak_mb - skip, est.peak_low_mb - skip, est.peak_high_mb - skip
        out.update(peak_mb=e, measured_peak_mb=peak, peak_error_pct=100.0 * (e - peak) / peak,
                   peak_in_range=lo <= peak <= hi)
    t = get("train_time_s")
    if t:
        out.update(time_s=est.total_s, measured_time_s=t, time_error_pct=100.0 * (est.total_s - t) / t,
                   time_in_range=est.total_low_s <= t <= est.total_high_s)
    return out
