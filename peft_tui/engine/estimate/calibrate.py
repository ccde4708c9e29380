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


def _read_entry(path: str | Path, device: str) -> Any:
    """The entry for `device` (this machine, torch and module version) in the JSON file `path`, or None
    (no file, unreadable, or no such entry)."""
    path = Path(path)
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return None  # unreadable: measured again
    if not isinstance(cached, dict):
        return None
    key: str | None = None  # None: machine_key names the entry
    if device == "cpu" and "torch" not in sys.modules:
        key = _cpu_key_without_torch(cached)
    return cached.get(machine_key(device) if key is None else key)


def _write_entry(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Set `key` in the JSON file `path` (created with its folder), atomically (a temporary file renamed)."""
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_calibration(path: str | Path, device: str = "cpu") -> Calibration | None:
    """The cached calibration for `device` in `path`, or None (no file, or measured on another machine,
    torch or version of this module). Reads a small JSON file: no measuring."""
    entry = _read_entry(path, device)
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
    cal = measure(device, machine_key(device))
    _write_entry(Path(path), cal.key, cal.to_dict())
    if cal.precision and not device.startswith("cuda") and machine_precision(device) is None:
        try:  # the machine's precision choice, for every store here (see measure_precision_once)
            _write_entry(machine_precision_path(), cal.key, {"precision": cal.precision})
        except OSError:
            pass  # no user cache folder: this store's calibration still holds it
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
from peft_tui.engine.estimate.calibrate import _module_seconds, peak_rss_mb
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


# ------------------------------------------------------------------------------------------------
# `--precision auto` on a CPU: bf16 against fp32 measured once per machine, for every store on it
# ------------------------------------------------------------------------------------------------
MACHINE_CACHE_ENV = "PEFT_TUI_CACHE_DIR"  # the per-user folder of machine-wide figures (tests point it elsewhere)


def machine_precision_path() -> Path:
    """`precision.json` in $PEFT_TUI_CACHE_DIR, else $XDG_CACHE_HOME/peft-tui, else ~/.cache/peft-tui: one
    entry per machine key (CPU count, threads, torch and this module's version), holding precision.measure's
    figures. Per user and machine, not per store: a new store (a new project folder) does not measure again."""
    folder = os.environ.get(MACHINE_CACHE_ENV)
    if not folder:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peft-tui")
    return Path(folder) / "precision.json"


def machine_precision(device: str) -> dict[str, float] | None:
    """precision.measure's figures for `device` on this machine, from machine_precision_path(); None when
    not measured yet (or the file is unreadable, or from another torch or version)."""
    entry = _read_entry(machine_precision_path(), device)
    figures = entry.get("precision") if isinstance(entry, dict) else None
    if not isinstance(figures, dict) or not {"fp32_s", "bf16_s"} <= figures.keys():
        return None  # not what precision.measure writes: measured again
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in figures.values()):
        return None
    if not all(math.isfinite(figures[k]) and figures[k] > 0 for k in ("fp32_s", "bf16_s")):
        return None  # a step time that is not a positive number
    return figures


def measure_precision_once(calibration_path: str | Path, device: str) -> str | None:
    """Before a CPU run with `precision=auto`: when neither the store's calibration nor the machine file
    holds bf16-against-fp32 figures, measure them now (precision.measure: ~3 s, once per machine) and write
    them to the machine file, one process at a time (a lock beside it: a second worker waits, then reads).
    Returns a line for the run's log when it measured (or could not keep the figures), else None.
    CUDA keeps its rule (device.resolve_precision): nothing is measured there."""
    if device.startswith("cuda") or measured_choice(calibration_path, device)[0] is not None:
        return None
    from peft_tui.engine.precision import measure as measure_precision
    from peft_tui.engine.precision import pick

    path = machine_precision_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            _lock(lock)
            if machine_precision(device) is not None:  # another process measured it while we waited
                return None
            t0 = time.perf_counter()
            figures = measure_precision(device)
            _write_entry(path, machine_key(device), {"precision": figures})
    except OSError as e:
        return (f"precision auto: bf16 against fp32 not measured ({type(e).__name__}: {e.strerror or e} at "
                f"{path.parent}); the CPU-type rule applies. Set {MACHINE_CACHE_ENV} to a writable folder")
    except Exception as e:  # noqa: BLE001 - the measurement failing must not fail the run it precedes
        return (f"precision auto: bf16 against fp32 could not be measured ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); the CPU-type rule applies")
    choice, reason = pick(figures)
    return (f"precision auto -> {choice or 'the CPU-type rule'}: {reason} (measured once for this machine in "
            f"{time.perf_counter() - t0:.1f}s, kept in {path})")


def _lock(fh) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock (two first runs may both measure)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def measured_choice(calibration_path: str | Path, device: str) -> tuple[str | None, str]:
    """`pick` for `device` from the store's calibration (`plan`), else from the machine's precision file (the
    first CPU run with `precision=auto` there measured it). Read only: never measures."""
    cal = read_calibration(calibration_path, device)
    from peft_tui.engine.precision import pick

    figures = cal.precision if cal is not None and cal.precision else None
    if figures is None and not device.startswith("cuda"):
        figures = machine_precision(device)
    return pick(figures)


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
