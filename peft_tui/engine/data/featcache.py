"""Probe feature cache: the vectors the final classifier layer reads, computed once per
(base weights, token ids, pooling, precision, device type, encoding batch budget) and kept in
`<store>/cache/feat-<sha256>.safetensors` (one float32 tensor [texts, features]; never pickle).

The LP-FT probe (`head_init=probe`) and the `head` method encode the training and validation texts with
the frozen model before any step. The wrapped model of full, LoRA, DoRA, IA3, adapters and BitFit gives
exactly the base model's features at that point, so a seven-method `compare` needs the encoding once:
the first run writes it, the others read it (see probe.SHARES_BASE_FEATURES).

The key is a fingerprint of the unwrapped model's weights upstream of the final layer (names, shapes,
a strided sample and the sum of every tensor: randomly initialised parts such as a fresh pooler make it
seed-dependent, a re-saved checkpoint changes it), plus the token ids themselves (which carry the data,
the text columns, the tokenizer and max_length). Writes are atomic (temp file + rename); each file carries
the sha256 of its features (tokcache.checksum), so a file damaged anywhere, mismatched or unreadable is
ignored and rewritten, never read as features; a read-only store runs without the cache.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "peft-tui-feat-v1"
SAMPLE = 256  # elements sampled per tensor for the weights fingerprint


def weights_fingerprint(model) -> str:
    """sha256 of the weights upstream of the model's final classifier layer (that layer is what the probe
    fits, so its seeded initialisation does not change the features): each parameter's and buffer's
    name, shape and dtype, SAMPLE evenly strided elements and the float64 sum of all of them."""
    import torch

    from peft_tui.engine.weights import final_linear
    from peft_tui.errors import ConfigError

    try:
        skip = {id(p) for p in final_linear(model).parameters()}
    except ConfigError:  # no linear head: nothing to leave out (and no probe will run)
        skip = set()
    h = hashlib.sha256(FORMAT.encode())
    with torch.no_grad():
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            if id(t) in skip:
                continue
            h.update(f"\0{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() == 0 or flat.is_meta:
                continue
            sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].to("cpu", torch.float64)
            h.update(sample.numpy().tobytes())
            h.update(repr(float(flat.sum(dtype=torch.float64))).encode())
    return h.hexdigest()


def feature_key(fingerprint: str, ids: list[list[int]], context: str) -> str:
    """The cache key of one split's features: the weights fingerprint, `context` (pooling, precision,
    device type, batch budget) and every token id with the sequence lengths."""
    h = hashlib.sha256(f"{FORMAT}\0{fingerprint}\0{context}\0{len(ids)}\0".encode())
    for seq in ids:
        h.update(len(seq).to_bytes(4, "little"))
        h.update(array.array("q", seq).tobytes())
    return h.hexdigest()


def path_for(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"feat-{key[:40]}.safetensors"


def load(path: Path, key: str, n: int) -> torch.Tensor | None:
    """The cached features, or None when the file is missing, damaged or not this key's [n, d] float32."""
    try:
        import torch
        from safetensors import safe_open

        from peft_tui.engine.data.tokcache import checksum

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            x = f.get_tensor("features")
        if meta.get("checksum") != checksum(x.contiguous().numpy().tobytes()):
            return None
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] != n or not torch.isfinite(x).all():
            return None
        return x
    except Exception:  # noqa: BLE001 - a damaged file is a cache miss
        return None


def save(path: Path, key: str, features: torch.Tensor) -> None:
    """Write atomically (a reader never sees half a file; several processes may write the same key: the
    last rename wins with identical content). A read-only or full store just skips the cache."""
    from safetensors.torch import save_file

    from peft_tui.engine.data.tokcache import checksum

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    x = features.contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": x}, str(tmp), metadata={"format": FORMAT, "key": key,
                                                          "checksum": checksum(x.numpy().tobytes())})
        os.replace(tmp, path)
    except Exception:  # noqa: BLE001 - OSError, or safetensors' own error on a full disk
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_features(cache_dir: Path | None, fingerprint: str | None, context: str, ids: list[list[int]],
                    compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(`compute()`, False) read from / written to `cache_dir`, or (the cached tensor, True) on a hit.
    Without a cache folder or a fingerprint it always computes."""
    if cache_dir is None or fingerprint is None or not ids:
        return compute(), False
    key = feature_key(fingerprint, ids, context)
    path = path_for(cache_dir, key)
    if path.exists():
        x = load(path, key, len(ids))
        if x is not None:
            return x, True
    x = compute()
    save(path, key, x)
    return x, False
