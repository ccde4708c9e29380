"""Memory: samples for one run (CUDA: torch allocator + NVML device use; CPU: process RSS via psutil),
releasing what a run held once it ends, and a GPU's free and total memory for packing several runs on
it (`device_memory`, `parse_runs_per_gpu`: the training commands' --runs-per-gpu)."""

from __future__ import annotations

import os
import sys

from peft_tui.errors import ConfigError


def process_peak_mb() -> float:
    """This process's peak RSS since it started (exact, unlike sampling): a run's own figure when the
    process is the run's alone (a worker's run, a data-parallel rank)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform.startswith("linux") else kb / 2**20  # macOS reports bytes


class MemoryMonitor:
    """Tracks current and peak memory for one run on one device."""

    def __init__(self, device: str):
        import psutil

        self.device = device
        self.is_cuda = device.startswith("cuda")
        self._proc = psutil.Process(os.getpid())
        self.peak_mb = 0.0
        self._nvml = None
        if self.is_cuda:
            import torch

            self._index = torch.device(device).index or 0
            # reset_peak_memory_stats does not initialise CUDA itself: in a fresh process whose run has not
            # touched the GPU yet (e.g. --precision fp32) it raised "Invalid device argument" (seen on an H100)
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats(self._index)
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(self._index)
            except Exception:  # no NVML (driver-less container, CPU box): torch figures only
                self._nvml = None

    @property
    def label(self) -> str:
        return "CUDA max allocated" if self.is_cuda else "process RSS (peak sampled)"

    def sample(self) -> dict[str, float]:
        mb = 1024.0 * 1024.0
        if self.is_cuda:
            import torch

            used = torch.cuda.memory_allocated(self._index) / mb
            peak = torch.cuda.max_memory_allocated(self._index) / mb
            reserved = torch.cuda.max_memory_reserved(self._index) / mb
            device_used = 0.0
            if self._nvml is not None:
                try:
                    import pynvml

                    device_used = pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used / mb
                except Exception:
                    device_used = 0.0
            self.peak_mb = max(self.peak_mb, peak)
            return {"used_mb": used, "peak_mb": self.peak_mb, "reserved_mb": reserved, "device_used_mb": device_used}
        used = self._proc.memory_info().rss / mb
        self.peak_mb = max(self.peak_mb, used)
        return {"used_mb": used, "peak_mb": self.peak_mb, "reserved_mb": 0.0, "device_used_mb": 0.0}


def _surely_no_gpu() -> bool:
    """True on a Linux machine with no GPU device node (NVIDIA or ROCm) and torch not yet imported:
    then torch.cuda cannot be available, and asking it would cost the torch import."""
    import sys

    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    nodes = ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
    return not any(os.path.exists(p) for p in nodes)


def device_description(device: str = "auto") -> str:
    """Human words for the device, e.g. 'NVIDIA H100 (80 GB)' or 'CPU (2 cores, 23 GB RAM)'."""
    import psutil

    try:
        if device == "cpu" or _surely_no_gpu():
            raise LookupError  # CPU: no need to import torch (~1 s) just to say so; keeps first paint fast
        import torch

        if device != "cpu" and torch.cuda.is_available():
            idx = 0 if device in ("auto", "cuda") else int(device.split(":")[1])
            props = torch.cuda.get_device_properties(idx)
            return f"{props.name} ({props.total_memory / 1e9:.0f} GB)"
    except Exception:
        pass
    return f"CPU ({os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.0f} GB RAM)"


def release_memory() -> None:
    """Give back what a finished (or failed) run held: Python garbage, and the CUDA allocator's cache."""
    import gc
    import sys

    gc.collect()
    if "torch" in sys.modules:
        import torch

        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except RuntimeError:  # a CUDA context broken by the run's own error: nothing more to give back
            pass


# ------------------------------------------------------------------------------------------------
# several runs on one GPU (--runs-per-gpu): how many, and how much memory the GPU has
# ------------------------------------------------------------------------------------------------
AUTO_RUNS_PER_GPU = 8  # `auto`: as many runs as fit by their estimates, at most this many
MAX_RUNS_PER_GPU = 64  # the largest N `--runs-per-gpu N` takes


def parse_runs_per_gpu(value: object) -> int | str:
    """`--runs-per-gpu`: "auto" (as many runs as fit on a GPU by their estimates, at most
    AUTO_RUNS_PER_GPU) or a whole number N from 1 to MAX_RUNS_PER_GPU (at most N, each only if it fits).
    Raises ConfigError (one line, with how to fix) for anything else."""
    import re

    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    if text.lower() == "auto":
        return "auto"
    if re.fullmatch(r"[0-9]+", text, flags=re.ASCII) and 1 <= int(text) <= MAX_RUNS_PER_GPU:
        return int(text)
    raise ConfigError(f"--runs-per-gpu {text!r} is not auto or a whole number from 1 to {MAX_RUNS_PER_GPU}: "
                      "pass e.g. --runs-per-gpu 4, or --runs-per-gpu auto (as many as fit)")


def device_memory(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the GPU `device` ("cuda:N", numbered as the worker pool numbers this
    machine's GPUs), or None on CPU or when it cannot be read.

    Read through NVML, which creates no CUDA context: a worker reads it before it forks a run, and a
    forked child cannot use a context its parent made. Only a process whose CUDA is already initialised
    asks torch (torch.cuda.mem_get_info). The GPU NVML reads is this process's CUDA_VISIBLE_DEVICES
    entry (a pool's worker sees its one GPU), else index N. Tests replace this function to fake a GPU
    (tests/test_packing.py: monkeypatch `peft_tui.engine.memory.device_memory`); the store's claim
    looks it up here at each call."""
    if not device.startswith("cuda"):
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info(0 if len(visible) == 1 else index)
                return int(free), int(total)
        except Exception:  # noqa: BLE001 - a broken context: try NVML
            pass
    target = visible[0] if len(visible) == 1 else visible[index] if index < len(visible) else str(index)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if target.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(target))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(target)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return int(info.free), int(info.total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (driver-less container, CPU box), a MIG slice: unknown
        return None
