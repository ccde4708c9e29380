"""Saving and loading weights: safetensors only, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from peft_tui.errors import ConfigError, first_line


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def trainable_state(model: nn.Module) -> dict:
    """The parameters that train, detached and contiguous, keyed by their module path."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(trainable_state(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_into(model: nn.Module, path: Path) -> None:
    """Load a safetensors file of (some of) the model's parameters; every key must exist in the model.
    Raises ConfigError (one line) for a missing, corrupted or mismatched file."""
    if not path.exists():
        raise ConfigError(f"weights file {path} is missing: the run did not finish saving, rerun it")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or garbage files
        raise ConfigError(f"weights file {path} is corrupted ({first_line(e, 160)}): "
                          "rerun the run to save it again") from None
    missing_in_model = set(state) - set(dict(model.named_parameters())) - set(dict(model.named_buffers()))
    if missing_in_model:
        raise ConfigError(f"{path.name} has weights the model lacks ({sorted(missing_in_model)[0]}): "
                          "load it on the same model and method it was trained with")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{path.name} does not fit the model ({str(e).splitlines()[-1].strip()[:120]})") from None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules of a ...ForSequenceClassification that are not the encoder/decoder body."""
    prefix = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def freeze_all_but(model: nn.Module, names: list[str]) -> None:
    for p in model.parameters():
        p.requires_grad = False
    for name in names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad = True
