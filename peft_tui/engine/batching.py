"""From texts to tensors: tokenise once (through the store's cache), group similar lengths into batches,
and pad each batch only as wide as it needs (dynamic padding)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits

PAD_MULTIPLE_CUDA = 8  # on GPU, batch widths are rounded up to a multiple of 8 (see collate)


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


def collate(ids: list[list[int]], labels: list[int], batch: list[int], pad_id: int, device: str):
    """(input_ids, attention_mask, labels) tensors on `device` for the examples `batch`, right-padded."""
    import torch

    width = max(len(ids[i]) for i in batch)
    if device.startswith("cuda") and PAD_MULTIPLE_CUDA > 1:
        # tensor-core friendly shapes, and 8x fewer distinct shapes for the GPU libraries to plan for;
        # on CPU every padded token is paid for in full, so batches stay exactly as wide as needed
        width = -(-width // PAD_MULTIPLE_CUDA) * PAD_MULTIPLE_CUDA
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
