"""The machine calibration: matrix-product and element-wise rates, the fixed cost per module, the
runtime overhead and the bf16/fp32 step (precision.py), measured once per machine and device and cached
as JSON; `resolved_auto` makes `--precision auto` concrete from it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig

ATTENTION_HEAD_DIMS = (32, 128)  # head sizes the attention products are timed at (interpolated between)
CALIBRATION_VERSION = 4  # 4: bf16 against fp32 (precision.measure)


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


_NO_ENTRY = "\0none"  # a key no calibration file holds


def _cpu_key_without_torch(cached: dict) -> str | None:
    """The CPU entry of `cached` that `machine_key("cpu")` would name, found without importing torch (a
    command estimating a run stays light): this machine's CPU count, torch's installed version and this
    module's version must match. None when two entries do (two thread settings: torch is asked);
    _NO_ENTRY when none does (machine_key could match none either)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        return None
    head, tail = f"cpu x{os.cpu_count()} threads=", f" | torch {torch_version} | v{CALIBRATION_VERSION}"
    keys = [k for k in cached if isinstance(k, str) and k.startswith(head) and k.endswith(tail)]
    return keys[0] if len(keys) == 1 else _NO_ENTRY if not keys else None


def read_calibration(path: str | Path, device: str = "cpu") -> Calibration | None:
    """The cached calibration for `device` in `path`, or None (no file, or measured on another machine,
    torch or version of this module). Reads a small JSON file: no measuring."""
    path = Path(path)
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return None  # unreadable: measured again by `calibration`
    entry = None
    if isinstance(cached, dict):
        key: str | None = None  # None: machine_key names the entry
        if device == "cpu" and "torch" not in sys.modules:
            key = _cpu_key_without_torch(cached)
        entry = cached.get(machine_key(device) if key is None else key)
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


def measured_choice(calibration_path: str | Path, device: str) -> tuple[str | None, str]:
    """`pick` for `device` from the calibration file (read only: never measures)."""
    cal = read_calibration(calibration_path, device)
    from peft_tui.engine.precision import pick

    return pick(cal.precision if cal is not None else None)


def resolved_auto(config: RunConfig, calibration_path: str | Path) -> RunConfig:
    """`config` with `precision=auto` replaced by the measured choice for its device, when the machine's
    calibration has one; else unchanged (device.resolve_precision's rule then applies)."""
    if config.precision != "auto":
        return config
    from peft_tui.engine.device import resolve_device

    try:
        choice, _ = measured_choice(calibration_path, resolve_device(config.device))
    except Exception:  # noqa: BLE001 - a bad device is the run's own error to report; no choice here
        return config
    return replace(config, precision=choice) if choice else config
