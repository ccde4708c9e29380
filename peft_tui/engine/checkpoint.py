"""Epoch-end checkpoints, written atomically, and what `resume` needs to continue a stopped run.

    <run folder>/checkpoint/
        weights.safetensors   the trainable parameters (safetensors: no pickle)
        best.safetensors      early stopping's best weights, when patience is on
        state.pt              optimizer, LR scheduler, grad scaler and RNG states: tensors and plain
                              Python values only, read back with torch.load(weights_only=True)
        meta.json             step, epoch, counters; written last, so its presence marks a complete folder

A checkpoint is built in `checkpoint.tmp-<pid>/` and renamed into place; the previous one is moved to
`checkpoint.old/` first and removed after, so a kill at any moment leaves one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from peft_tui.config import ConfigError, RunConfig

NAME = "checkpoint"
RESUMABLE = ("interrupted", "failed", "diverged", "cancelled")


def save(run_dir: Path, model, optimizer, scheduler, scaler, rng: random.Random, meta: dict[str, Any],
         best_state: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from peft_tui.engine.weights import trainable_state

    final = run_dir / NAME
    tmp = run_dir / f"{NAME}.tmp-{os.getpid()}"
    old = run_dir / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "weights.safetensors"))
    if best_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": rng.getstate(),
    }
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find(run_dir: Path) -> Path | None:
    """The complete checkpoint of a run folder (a kill between two renames leaves `checkpoint.old`)."""
    for name in (NAME, f"{NAME}.old"):
        path = run_dir / name
        if (path / "meta.json").exists():
            return path
    return None


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"checkpoint {path} is unreadable ({e}): the run cannot be resumed; retry it") from None


def load(path: Path, model, optimizer, scheduler, scaler, rng: random.Random) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, scaler and RNG states. Returns meta plus `best_state`."""
    import torch
    from safetensors.torch import load_file

    from peft_tui.engine.weights import load_into

    meta = read_meta(path)
    try:
        load_into(model, path / "weights.safetensors")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        best = path / "best.safetensors"
        meta["best_state"] = load_file(str(best)) if best.exists() else None
    except Exception as e:  # noqa: BLE001 - truncated or corrupted files
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"checkpoint {path} is damaged ({first}): the run cannot be resumed; retry it") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.setstate(_as_tuple(state["python_rng"]))
    return meta


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def discard(run_dir: Path) -> None:
    """A finished run needs no checkpoint: its final weights are saved by the method."""
    for p in run_dir.glob(f"{NAME}*"):
        shutil.rmtree(p, ignore_errors=True)


def prepare_resume(store, run_id: int) -> RunConfig:
    """Check a run can be resumed, queue it again in the store (dropping metrics logged after the
    checkpoint), and return its config. Raises ConfigError with a one-line reason."""
    row = store.get(run_id)
    if row["status"] not in RESUMABLE:
        why = {"done": "it finished", "running": "it is running", "queued": "it is queued"}.get(row["status"])
        raise ConfigError(
            f"run {run_id} cannot be resumed: {why or row['status']} "
            "(only interrupted, failed, diverged or cancelled runs)"
        )
    if row["method"] == "tfidf":
        raise ConfigError("the TF-IDF baseline row cannot be resumed: rerun the comparison")
    path = find(store.run_dir(run_id))
    if path is None:
        raise ConfigError(
            f"run {run_id} has no checkpoint (it stopped before its first epoch ended): "
            "start it again instead (retry in the dashboard, or `peft-tui run`)"
        )
    meta = read_meta(path)
    config = RunConfig.from_dict(row["config"])
    config.validate()
    store.reopen(run_id, int(meta["step"]))
    return config
