"""The splits every run trains and evaluates on, and the stratified sampling that makes them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None  # second sentence of each pair (text_pair_col), else None

    def pick(self, idx: list[int]) -> Split:
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                     [self.pairs[i] for i in idx] if self.pairs is not None else None)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class DataSplits:
    """train / val / test with integer labels 0..K-1, the label names in order, where they came from,
    and notes for the user (e.g. "limited to a stratified sample of 2000 rows")."""

    train: Split
    val: Split
    test: Split
    label_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def stratified_split(labels: list[int], fractions: list[float], seed: int) -> list[list[int]]:
    """Indices for each fraction (the remainder goes to the first part), stratified by label."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions, start=1):
            n = math.floor(len(idx) * frac + 0.5) if frac > 0 else 0
            n = min(n, len(idx) - start - 1)  # always leave one for training
            parts[k].extend(idx[start : start + max(n, 0)])
            start += max(n, 0)
        parts[0].extend(idx[start:])
    for p in parts:
        p.sort()
    return parts


def stratified_sample(labels: list[int], n: int, seed: int) -> list[int]:
    if n >= len(labels):
        return list(range(len(labels)))
    return stratified_split(labels, [n / len(labels)], seed)[1]
