"""From texts to tensors: tokenise once (through the store's cache), group similar lengths into batches,
and pad each batch only as wide as it needs (dynamic padding). On CUDA a batch's width is rounded up to
one of a few sizes (`cuda_width`), so the GPU libraries meet few shapes; on the CPU it stays exact."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits

PAD_MULTIPLE_CUDA = 8  # on GPU, every batch width is a multiple of 8 (tensor cores; see cuda_width)
BUCKETS_ENV = "PEFT_TUI_CUDA_BUCKETS"  # "0": CUDA widths are multiples of 8 only, as before (for measuring)


def cuda_width(width: int, longest: int) -> int:
    """The padded width of a CUDA batch whose longest row has `width` tokens, in a split whose longest row
    has `longest` (truncation keeps it within max_length): the first of 16, 24, 32, 48, 64, 96, 128, 192,
    256, ... (powers of two and 1.5 times them, all multiples of 8: at most a third of a row is padding)
    that holds `width`, capped at `longest` rounded up to a multiple of 8 (the widest a batch was padded
    to before buckets, so never past the model's positions). Each new shape costs the GPU libraries a
    first-time plan (worst in bf16); this keeps them to about 2*log2(max_length) + 1.
    With PEFT_TUI_CUDA_BUCKETS=0: the next multiple of 8, as before (to measure what buckets buy)."""
    def up8(n: int) -> int:
        return -(-n // PAD_MULTIPLE_CUDA) * PAD_MULTIPLE_CUDA

    if os.environ.get(BUCKETS_ENV) == "0":
        return up8(width)
    size = 16
    while size < width:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3  # 16, 24, 32, 48, 64, 96, ...
    return max(up8(width), min(size, up8(longest)))


def tokenize(tokenizer, texts: list[str], max_length: int, pairs: list[str] | None = None) -> list[list[int]]:
    """Token ids, truncated to max_length; with `pairs`, each text and its pair as one sequence pair."""
    out: list[list[int]] = []
    for i in range(0, len(texts), 1024):
        second = pairs[i : i + 1024] if pairs is not None else None
        enc = tokenizer(texts[i : i + 1024], second, truncation=True, max_length=max_length)
        out.extend(enc["input_ids"])
    return out


def tokenize_splits(tokenizer, data: DataSplits, max_length: int,
                    cache_dir: Path | None) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Token ids of the train, val and test splits, read from / written to `cache_dir` when given."""
    from peft_tui.engine.data.tokcache import cached_tokenize, tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer) if cache_dir is not None else None
    train, val, test = (cached_tokenize(cache_dir, fp, tokenize, tokenizer, s.texts, max_length, s.pairs)
                        for s in (data.train, data.val, data.test))
    return train, val, test


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within windows of 50 batches, cut into batches, shuffle the batches.
    Batches hold similar lengths (less padding) while the order stays random."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = batch_size * 50
    batches: list[list[int]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i])
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world_size: int) -> tuple[list[int], float]:
    """Rank `rank`'s share of a global batch in a data-parallel run, and the weight of its mean loss.

    A rank takes every `world_size`-th example from position `rank` (neighbours in a length-grouped
    batch have similar lengths, so the shares pad alike). The weight n_rank * world_size / n_batch makes
    the ranks' average gradient (DDP's) the mean over the whole batch, as in a 1-process run, also when
    the shares differ in size. A rank left without an example (a batch smaller than the world) takes the
    first one with weight 0: every rank must take part in every step."""
    if world_size == 1:
        return batch, 1.0
    mine = batch[rank::world_size]
    if not mine:
        return batch[:1], 0.0
    return mine, len(mine) * world_size / len(batch)


_last_split: tuple[list, int, int] | None = None  # (ids, len(ids), its longest row): what collate last padded


def _longest(ids: list[list[int]]) -> int:
    """The longest row of `ids`, remembered for the split collate was last given (a run pads batch after
    batch of one split: reading every row once per batch would cost a pass over the split per step)."""
    global _last_split
    seen = _last_split
    if seen is None or seen[0] is not ids or seen[1] != len(ids):
        seen = _last_split = (ids, len(ids), max(map(len, ids)))
    return seen[2]


def collate(ids: list[list[int]], labels: list[int], batch: list[int], pad_id: int, device: str):
    """(input_ids, attention_mask, labels) tensors on `device` for the examples `batch`, right-padded."""
    import torch

    width = max(len(ids[i]) for i in batch)
    if device.startswith("cuda"):
        # a few tensor-core friendly shapes for the GPU libraries to plan for (cuda_width); on CPU every
        # padded token is paid for in full, so batches stay exactly as wide as needed
        width = cuda_width(width, _longest(ids))
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = ids[i]
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    y = torch.tensor([labels[i] for i in batch], dtype=torch.long)
    return input_ids.to(device), mask.to(device), y.to(device)


def pad_id_of(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
