"""Saving and loading weights: safetensors only, written atomically; a full disk said in one line.

Every write of a run's files goes through the helpers here (`save_tensors`, `save_state`,
`atomic_write_text` / `write_json`, `save_pretrained`), inside `writing(path)`: a failure for lack of
space becomes `DiskFull(path)` ("disk full at <path>"), and nothing half-written is left (files go to a
temporary name first; a folder that `save_pretrained` created is removed again). Loading reads
safetensors only: a pickle weights file (.bin, .pt, ...) in a run folder is named and refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from peft_tui.errors import ConfigError, disk_full_at, first_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NOT_WEIGHTS = ("state.pt",)  # a checkpoint's optimizer and RNG states: read with torch.load(weights_only=True)
MIN_FREE_BYTES = 1 << 20  # after a failed write, less free space than this means the disk is full


class DiskFull(OSError):
    """A write failed because its file system is full (or over quota, or a file grew past a size limit)."""

    def __init__(self, path: Path | str):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))
        self.path = str(path)

    def __str__(self) -> str:
        return f"disk full at {self.path}"


NO_SPACE_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122",
                  "File too large", "os error 27")  # what libraries that do not raise OSError say (safetensors)


def _out_of_space(exc: BaseException, path: Path) -> bool:
    """Whether a failed write of `path` failed for lack of space: its errno or message says so (a full disk,
    a quota, a file size limit), or (torch.save only says "unexpected pos") a file size limit is set or
    the file system has almost nothing left."""
    import resource

    if disk_full_at(exc) is not None or any(t in str(exc) for t in NO_SPACE_TEXTS):
        return True
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return True
    folder = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < MIN_FREE_BYTES


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around a write of `path` (a file or a folder): a failure for lack of space becomes DiskFull(path)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if _out_of_space(e, path):
            raise DiskFull(path) from e
        raise


def _atomic(path: Path, write) -> None:
    """`write(tmp)` then rename tmp to `path`; the temporary file is removed whatever happens."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written atomically."""
    _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_state(obj: Any, path: Path) -> None:
    """Tensors and plain Python values with torch.save (read back with weights_only=True), atomically."""
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_pretrained(obj: Any, folder: Path) -> None:
    """`obj.save_pretrained(folder)` (a model in safetensors, or a tokenizer); a folder it created is removed
    again when the save fails."""
    created = not folder.exists()
    try:
        with writing(folder):
            if hasattr(obj, "peft_config"):  # no vocabulary is ever resized here, so no embedding layers to
                # save; peft's "auto" would ask the hub for the base model's config.json (retries offline)
                obj.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
            elif hasattr(obj, "named_parameters"):
                obj.save_pretrained(folder, safe_serialization=True)
            else:
                obj.save_pretrained(folder)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """Entries that appear in `folder` during the block are removed again if it raises."""
    before = set(folder.iterdir()) if folder.exists() else set()
    try:
        yield
    except BaseException:
        for entry in set(folder.iterdir()) - before if folder.exists() else ():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


def pickle_files(folder: Path) -> list[str]:
    """Names of pickle-format weight files in a folder (.bin, .pt, ...): never loaded."""
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.suffix.lower() in PICKLE_SUFFIXES and p.name not in NOT_WEIGHTS and p.is_file())
    except OSError:
        return []


def require_safetensors(path: Path) -> None:
    """`path` must be a safetensors weights file in a folder holding no pickle weights file; ConfigError
    (one line) otherwise."""
    pickles = pickle_files(path.parent)
    if pickles:
        raise ConfigError(f"{path.parent}: found a pickle weights file ({pickles[0]}); only safetensors is loaded "
                          "(peft-tui saves only .safetensors files): remove it")
    if not path.is_file():
        raise ConfigError(f"weights file {path} is missing: the run did not finish saving, rerun it")


def trainable_state(model: nn.Module) -> dict:
    """The parameters that train, detached and contiguous, keyed by their module path."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    save_tensors(trainable_state(model), path, metadata)


def load_into(model: nn.Module, path: Path) -> None:
    """Load a safetensors file of (some of) the model's parameters; every key must exist in the model.
    Raises ConfigError (one line) for a missing, corrupted or mismatched file, or a pickle beside it."""
    require_safetensors(path)
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


def final_linear(model):
    """The last nn.Linear of the model's classification head: the layer the probe fits."""
    from torch import nn

    linears = [m for name in head_module_names(model) for m in model.get_submodule(name).modules()
               if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"head found no linear classifier layer on this {model.config.model_type!r} model: use lora")
    return linears[-1]
