"""Memory and time of a step, from the shape and the calibration (see the package docstring for the model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from peft_tui.config import RunConfig
from peft_tui.engine.estimate.calibrate import ATTENTION_HEAD_DIMS, Calibration
from peft_tui.engine.estimate.shape import Shape

MB = 1024.0 * 1024.0


# the L-BFGS fits of the LP-FT probe: PROBE_FOLDS-fold cross-validation over its 13 weight decays, then the
# chosen one on all rows: 1.4 s on MiniLM features of 1,024 AG News rows (1 thread), and about 1 s more the
# first time a process runs them
PROBE_FIT_S = 2.5


RETENTION_CPU = 1.35  # peak RSS / live bytes of the training step (glibc keeps freed blocks), measured


# the same with the base model frozen (LoRA, adapters, BitFit, ...): measured on MiniLM, batch 32, width 128,
# 1 thread (benchmarks/estimate_accuracy.py): LoRA 1.84, adapters 1.71, BitFit 1.65, full fine-tuning 1.27;
# smaller frozen-model steps free and re-allocate many mid-size blocks that the allocator keeps
RETENTION_CPU_FROZEN = 1.65


BYTES_PER_TOKEN_ID = 80  # a token id in a Python list (pointer + int object), and the tokenizer's transient copy


BYTES_PER_TEXT_TOKEN = 6  # the text itself


BYTES_PER_VOCAB_ENTRY = 500  # a loaded fast tokenizer




# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def activation_bytes(s: Shape, b: int, w: int, device: str, precision: str) -> tuple[float, float]:
    """(bytes autograd keeps for a batch of b rows of width w, the largest backward temporary)."""
    w = w + s.prompt_tokens
    wk = w + s.prefix_tokens  # keys and values
    h, i, a = s.hidden, s.intermediate, s.heads
    cuda = device.startswith("cuda")
    lin = linear_bytes(precision, device)
    # dropout: a bool mask on CUDA, a float noise tensor under torch's CPU dropout. On a CPU the trainer runs
    # engine/dropout.py instead, which keeps a bool mask and fewer attention tensors, but the process's peak
    # RSS did not follow (a MiniLM LoRA run on AG News, 2,000 rows: 2,383 MB with it, 2,366-2,510 MB without):
    # the allocator's high-water mark, not autograd's saved bytes, sets it, so the peak model keeps these terms
    mask = 1 if cuda else 4
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


# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a block above it is a mapping of its own,
# returned to the system when freed, so it is never part of what the allocator keeps (RETENTION_CPU)
MMAP_MAX = 32 * 2**20


def mapped_bytes(s: Shape, b: int, w: int, device: str, precision: str) -> tuple[float, float]:
    """On a CPU, the activations held in tensors above MMAP_MAX (long texts: attention scores and the
    feed-forward's inner activations of a batch of 512-token rows): (their bytes in `activation_bytes`' terms,
    incl. its backward temporary, to take out of what RETENTION_CPU scales; their live bytes, counted once).
    Live: autograd's saved tensors with engine/dropout.py's attention in the real dtype: the softmax output
    (fp32), a bool mask, and the dropped probabilities as the next product takes them (bf16 under autocast).
    Measured on MiniLM, one step of 32 rows of 512 tokens: full fine-tuning 8,796 MB in fp32 and 6,468 MB in
    bf16 (LoRA 9,137 / 6,338), where the step's terms scaled by the retention gave 13-16 GB; the IMDB runs
    (512 tokens) peaked at 6.8-8.7 GB where they were estimated at 14-17 GB. (0, 0) on CUDA and for short texts."""
    if device.startswith("cuda"):
        return 0.0, 0.0
    live_lin = 2 if precision in ("bf16", "fp16") else 4
    wp = w + s.prompt_tokens
    scores = b * s.heads * wp * (wp + s.prefix_tokens) * 4
    plain = s.attention_dropout > 0
    attention_layers = sum(k == "all" for k in s.keep)
    upper_layers = sum(k in ("all", "upper") for k in s.keep)
    heap = live = 0.0
    if plain and scores > MMAP_MAX:
        heap += 3 * scores * attention_layers
        live += (1 + 0.25 + live_lin / 4) * scores * attention_layers
        if upper_layers:  # the backward temporary (activation_bytes' second value)
            heap += 2 * scores
            live += 2 * scores
    inner = b * wp * s.intermediate
    if inner * live_lin > MMAP_MAX:
        heap += s.act_kept * inner * 4 * upper_layers
        live += s.act_kept * inner * live_lin * upper_layers
        if upper_layers and not plain:
            heap += 2 * inner * 4
            live += 2 * inner * live_lin
    return heap, live


def linear_bytes(precision: str, device: str) -> int:
    """Bytes per element of a linear layer's output as the peak sees it. Under CUDA autocast, 2. On a CPU, 4
    in bf16 too: there the process's peak did not follow autograd's halved bytes. MiniLM on AG News (2,000
    rows, 1 epoch, AMX Xeon, 2026-12-03): full 2,415 MB in bf16 against 2,365 in fp32, LoRA 2,395 against
    2,491, IA3 2,458 against 2,293; counted at 2 bytes, the bf16 estimates were 13-19% low, where fp32's
    were within -9% to +4%."""
    return 2 if precision in ("bf16", "fp16") and device.startswith("cuda") else 4


def eval_bytes(s: Shape, eval_bs: int, w: int, precision: str, device: str) -> float:
    """The live tensors of one layer's forward pass in evaluation: nothing is kept, and attention runs
    fused (no dropout; except with a prefix, measured), so hidden states and feed-forward activations dominate."""
    lin = linear_bytes(precision, device)
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
    mapped_terms, mapped_live = mapped_bytes(s, b, w, device, precision)
    evaluation = eval_bytes(s, max(64, b * 2), w, precision, device)
    # the training step's peak: kept activations + the largest temporary + grads (grads are set to None
    # after each step, so evaluation has none); on CPU the allocator keeps freed blocks of steps of other
    # widths around, which RETENTION_CPU accounts for
    frozen = s.trainable < 0.5 * s.total
    retention = 1.0 if device.startswith("cuda") else RETENTION_CPU_FROZEN if frozen else RETENTION_CPU
    heap = act + temp - mapped_terms  # what the allocator may keep around; mapped blocks count once
    act_peak = max(0.0, max(retention * (heap + grads) + mapped_live, retention * evaluation) - grads)
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
    """`head_init=probe`: the trainer encodes at most PROBE_TRAIN_ROWS training rows once before the first step
    (probe.fit_head; shortest first, in probe.length_sorted_batches), counted as their share of the training
    rows' pass. Then the L-BFGS fits of the cross-validation and the final fit (PROBE_FIT_S). `head_init=auto`
    counts when it resolves to the probe for this run's number of steps. (Features another run of the store
    has cached make it shorter; the estimate does not count on that.)"""
    from peft_tui.engine import probe
    from peft_tui.engine.methods import get_method

    method = get_method(config.method)
    steps = -(-len(lengths) // config.batch_size) * config.epochs
    if probe.resolve_head_init(config.head_init, steps) != "probe" or method.is_baseline or method.run is not None:
        return 0.0
    cut = [min(n, config.max_length) for n in lengths]
    rows, tokens = probe.encode_limits(device)
    every = sum(forward_seconds(s, len(b), cut[b[-1]], cal, device, precision)
                for b in probe.length_sorted_batches(cut, rows, tokens))
    n = max(1, len(lengths))
    return every * min(1.0, probe.PROBE_TRAIN_ROWS / n) + PROBE_FIT_S  # a sample across lengths: its share
