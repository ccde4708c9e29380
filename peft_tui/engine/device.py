"""Where a run computes and in which precision: `auto` resolved to a real device and dtype, checked
with one-line errors, and the autocast context the loop and evaluation use."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

from peft_tui.errors import ConfigError

# a machine without any of these has no GPU a run could use: `auto` is the CPU without importing torch
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def has_gpu_node() -> bool:
    import os

    return any(os.path.exists(p) for p in GPU_NODES)


def resolve_device(device: str) -> str:
    """`auto` -> cuda:0 when a GPU is usable, else cpu; `cuda` / `cuda:N` checked against this machine.
    torch is imported only where a GPU may be involved (a command checking a CPU run stays light)."""
    if device == "auto":
        if not has_gpu_node():
            return "cpu"
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA GPU: use --device cpu")
        idx = int(device.split(":")[1]) if ":" in device else 0
        n = torch.cuda.device_count()
        if idx >= n:
            raise ConfigError(f"device {device!r} does not exist: this machine has {n} GPU(s), cuda:0..cuda:{n - 1}")
        return f"cuda:{idx}"
    if device == "mps":
        raise ConfigError("device 'mps' is not supported yet: use cpu")
    return "cpu"


def device_type(device: str) -> str:
    """"cuda" for cuda:N, else the device itself ("cpu")."""
    return "cuda" if device.startswith("cuda") else device


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str) -> str:
    """`auto`: bf16 (or fp16 without bf16) on CUDA; on CPU bf16 only with AMX, else fp32.
    Measured (benchmarks/precision.py, MiniLM full fine-tune): on a 16-core AMX Xeon bf16 autocast was
    1.07x faster on ~18-token texts and 1.26x on ~124-token texts; on a 2-core AVX512-BF16 Xeon without
    AMX it was slower than fp32 (README, Performance), so CPUs without AMX keep fp32."""
    if not device.startswith("cuda"):  # the CPU: no torch needed to decide
        if precision == "auto":
            return "bf16" if cpu_has_amx() else "fp32"
        if precision == "fp16":
            raise ConfigError("precision fp16 needs a CUDA GPU: use bf16 or fp32 on CPU")
        return precision
    import torch

    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16: use fp16 or fp32")
    return precision


def autocast_for(precision: str, device: str) -> Callable[[], AbstractContextManager]:
    """A factory of autocast contexts for a resolved precision: mixed precision for bf16 / fp16, none for fp32."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type(device), dtype=dtype)
