"""Epoch-end checkpoints, written atomically, and what `resume` needs to continue a stopped run.

    <run folder>/checkpoint/
        weights.safetensors   the trainable parameters (safetensors: no pickle)
        best.safetensors      early stopping's best weights, when patience is on
        state.pt              optimizer, LR scheduler, grad scaler and RNG states: tensors and plain
                              Python values only, read back with torch.load(weights_only=True)
        meta.json             step, epoch, counters; written last, so its presence marks a complete folder

A checkpoint is built in `checkpoint.tmp-<pid>/` and renamed into place; the previous one is moved to
`checkpoint.old/` first and removed after, so a kill at any moment leaves one complete checkpoint. A
save that fails (a full disk: `weights.DiskFull`) removes its temporary folder and keeps the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError, first_line

NAME = "checkpoint"
RESUMABLE = ("interrupted", "failed", "diverged", "cancelled")


@dataclass
class TrainState:
    """The loop's counters: what a checkpoint saves (in meta.json, and best.safetensors) and restores."""

    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    samples: int = 0
    tokens: int = 0  # real (unpadded) tokens seen
    train_time: float = 0.0  # seconds spent training, evaluation excluded
    best_acc: float = -1.0  # best validation accuracy so far
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    best_state: dict | None = None  # with early stopping: the trainable weights at the best evaluation

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "best_state"}


def save(run_dir: Path, model, optimizer, scheduler, scaler, rng: random.Random, state: TrainState) -> Path:
    from peft_tui.engine.weights import DiskFull

    final = run_dir / NAME
    tmp = run_dir / f"{NAME}.tmp-{os.getpid()}"
    old = run_dir / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, model, optimizer, scheduler, scaler, rng, state)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DiskFull):  # name the checkpoint, not the temporary folder just removed
            raise DiskFull(final) from e
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write(folder: Path, model, optimizer, scheduler, scaler, rng: random.Random, state: TrainState) -> None:
    import torch

    from peft_tui.engine.weights import atomic_write_text, save_state, save_tensors, trainable_state, writing

    with writing(folder):
        folder.mkdir(parents=True)
    save_tensors(trainable_state(model), folder / "weights.safetensors")
    if state.best_state:
        save_tensors({k: v.detach().contiguous().cpu() for k, v in state.best_state.items()},
                     folder / "best.safetensors")
    states = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": rng.getstate(),
    }
    save_state(states, folder / "state.pt")
    atomic_write_text(folder / "meta.json", json.dumps(state.meta(), indent=2, sort_keys=True))


def find(run_dir: Path) -> Path | None:
    """The complete checkpoint of a run folder (a kill between two renames leaves `checkpoint.old`)."""
    for name in (NAME, f"{NAME}.old"):
        path = run_dir / name
        if (path / "meta.json").exists():
            return path
    return None


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, checked: an object with a `step`, whose counters are numbers (the whole ones
    >= 0). ConfigError (one line) for a damaged file."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        if "step" not in meta:
            raise ValueError("no step")
        for f in dataclasses.fields(TrainState):
            if f.name not in meta or f.name == "best_state":
                continue
            v, whole = meta[f.name], f.type == "int"
            if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)) or (whole and v < 0):
                raise ValueError(f"{f.name}={str(v)[:40]} is not a valid count")
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"checkpoint {path} is damaged ({first_line(e, 160)}): the run cannot be resumed; "
                          "retry it") from None
    return meta


def load(path: Path, model, optimizer, scheduler, scaler, rng: random.Random) -> TrainState:
    """Restore weights, optimizer, scheduler, scaler and RNG states; return the loop's counters."""
    import torch
    from safetensors.torch import load_file

    from peft_tui.engine.weights import load_into

    meta = read_meta(path)
    try:
        load_into(model, path / "weights.safetensors")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        best = path / "best.safetensors"
        best_state = load_file(str(best)) if best.exists() else None
        counters = TrainState(**{f.name: meta[f.name] for f in dataclasses.fields(TrainState) if f.name in meta})
    except Exception as e:  # noqa: BLE001 - truncated or corrupted files
        raise ConfigError(f"checkpoint {path} is damaged ({first_line(e, 160)}): "
                          "the run cannot be resumed; retry it") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.setstate(_as_tuple(state["python_rng"]))
    return dataclasses.replace(counters, best_state=best_state)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def discard(run_dir: Path) -> None:
    """A finished run needs no checkpoint: its final weights are saved by the method."""
    for p in run_dir.glob(f"{NAME}*"):
        shutil.rmtree(p, ignore_errors=True)


def resume_point(store, run_id: int) -> tuple[RunConfig, int]:
    """The config of a stopped run and the step of the checkpoint it would continue from. Raises
    ConfigError with a one-line reason when it cannot be resumed."""
    from peft_tui.engine.methods import get_method, validate

    row = store.get(run_id)
    if row["status"] not in RESUMABLE:
        why = {"done": "it finished", "running": "it is running", "queued": "it is queued"}.get(row["status"])
        raise ConfigError(
            f"run {run_id} cannot be resumed: {why or row['status']} "
            "(only interrupted, failed, diverged or cancelled runs)"
        )
    if get_method(row["method"]).is_baseline:
        raise ConfigError(f"run {run_id} is the {row['method']} baseline, which keeps no checkpoint: retry it instead")
    path = find(store.run_dir(run_id))
    if path is None:
        raise ConfigError(
            f"run {run_id} has no checkpoint (it stopped before its first epoch ended): "
            "start it again instead (retry in the dashboard, or `peft-tui run`)"
        )
    config = RunConfig.from_dict(row["config"])
    validate(config)
    return config, int(read_meta(path)["step"])


def prepare_resume(store, run_id: int) -> RunConfig:
    """Check a run can be resumed, queue it again in the store (dropping metrics logged after the
    checkpoint), and return its config. Raises ConfigError with a one-line reason."""
    config, step = resume_point(store, run_id)
    store.reopen(run_id, step)
    return config
