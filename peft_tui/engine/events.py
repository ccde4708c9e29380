"""What the engine tells the world. Sinks (store, dashboard, console, JSONL) receive these.

A sink is any callable taking one event. Events are frozen dataclasses, safe to hand across threads.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Union


@dataclass(frozen=True)
class RunStarted:
    run_id: int
    name: str
    method: str
    total_steps: int
    epochs: int
    trainable_params: int
    total_params: int
    device: str
    precision: str
    train_size: int
    num_labels: int


@dataclass(frozen=True)
class StepLogged:
    """Throttled: `loss` is the mean over the steps since the previous StepLogged."""

    run_id: int
    step: int
    epoch: float
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float


@dataclass(frozen=True)
class EvalLogged:
    run_id: int
    step: int
    epoch: float
    split: str  # "val" or "test"
    loss: float
    accuracy: float
    f1: float


@dataclass(frozen=True)
class MemorySampled:
    run_id: int
    step: int
    elapsed_s: float
    device: str  # "cpu" or "cuda:N"
    used_mb: float  # CPU: process RSS; CUDA: torch memory allocated
    peak_mb: float  # CPU: peak sampled RSS; CUDA: max_memory_allocated
    reserved_mb: float = 0.0  # CUDA only
    device_used_mb: float = 0.0  # CUDA only, from NVML (all processes)


@dataclass(frozen=True)
class RunFinished:
    run_id: int
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFailed:
    run_id: int
    error: str  # one line
    status: str = "failed"  # "failed" or "diverged"


@dataclass(frozen=True)
class RunCancelled:
    run_id: int
    step: int


@dataclass(frozen=True)
class LogMessage:
    run_id: int
    level: str  # "info" | "warning" | "error"
    text: str


Event = Union[RunStarted, StepLogged, EvalLogged, MemorySampled, RunFinished, RunFailed, RunCancelled, LogMessage]
Sink = Callable[[Event], None]


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"event": type(event).__name__, **dataclasses.asdict(event)}


def fan_out(*sinks: Sink | None) -> Sink:
    """One sink that forwards to each of `sinks`; one sink's error never stops the others."""
    live = [s for s in sinks if s is not None]

    def emit(event: Event) -> None:
        for s in live:
            try:
                s(event)
            except Exception:  # noqa: BLE001 - a broken sink must not kill training, but it is reported
                logging.getLogger("peft_tui").warning("sink %r failed on %s", s, type(event).__name__, exc_info=True)

    return emit
