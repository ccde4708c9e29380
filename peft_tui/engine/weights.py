"""Saving and loading weights: safetensors only, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors.torch import load_file, save_file


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
    """Load a safetensors file of (some of) the model's parameters; every key must exist in the model."""
    state = load_file(str(path))
    missing_in_model = set(state) - set(dict(model.named_parameters())) - set(dict(model.named_buffers()))
    if missing_in_model:
        raise ValueError(f"{path.name} has weights the model lacks: {sorted(missing_in_model)[:3]}")
    model.load_state_dict(state, strict=False)


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
