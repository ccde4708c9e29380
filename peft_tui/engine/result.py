"""What a finished run measured: one dataclass instead of hand-built dicts looked up by string keys.

A `RunResult` travels in `RunFinished`, is stored as JSON in the run's row and in `result.json`, and is
read back with `RunResult.from_dict` (unknown keys from newer versions are ignored, missing ones default).
A run that ends without one raises `Cancelled` or `Diverged` (or any error): `trainer.execute` records how.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunResult:
    run_id: int = 0
    name: str = ""
    method: str = ""
    model: str = ""
    data: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    accuracy: float = 0.0  # test split
    f1: float = 0.0  # test split, macro
    test_loss: float | None = None
    val_accuracy: float | None = None
    val_f1: float | None = None
    best_val_accuracy: float | None = None
    trainable_params: int = 0
    total_params: int = 0
    trainable_pct: float | None = None  # None where it has no meaning (a baseline has no base model)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None  # None where not measured for this run alone
    memory_kind: str = ""
    peak_reserved_mb: float | None = None
    steps: int = 0
    epochs_done: float = 0.0
    stopped_early: bool = False
    device: str = ""
    precision: str = ""
    lr: float | None = None
    seed: int | None = None
    pooling: str | None = None
    label_names: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    efficiency: float = 0.0  # accuracy points per million trainable parameters
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # method- or launcher-specific figures

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RunResult:
        if not isinstance(d, dict):
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access for code that reads results generically (tables, CSV export)."""
        return getattr(self, key, default)


def efficiency(accuracy: float, trainable: int) -> float:
    """Accuracy points per million trainable parameters."""
    return 100.0 * accuracy / max(trainable / 1e6, 1e-6)


class Cancelled(Exception):
    """The run's cancel event was set; args[0] is the last step taken."""


class Diverged(Exception):
    """The training loss stopped being a finite number."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}: lower the learning rate or use fp32")
        self.step = step
