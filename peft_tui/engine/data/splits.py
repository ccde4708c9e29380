"""The splits every run trains and evaluates on, and the stratified sampling that makes them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from peft_tui.errors import ConfigError


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


# ------------------------------------------------------------------------------------------------
# what a split may never silently become: empty, or another split's rows
# ------------------------------------------------------------------------------------------------
FIXES = {"val": "pass --val-data FILE", "test": "pass a test file with --set data.test_source=FILE"}


def check_split(which: str, split: Split, labels: list[int], fraction: float, explicit: bool) -> None:
    """Refuse (one line, saying what fixes it) a validation or test split that came out empty: evaluating
    on training rows or on the other split instead would store metrics that mean something else.
    `labels`: the rows it was split from; `fraction`: the share asked for; `explicit`: it came from its
    own source (a file, a dataset's own split). A validation split the user switched off (val_fraction=0,
    no file) stays empty: the run then has no validation, and says so."""
    if len(split):
        return
    name = {"val": "validation", "test": "test"}[which]
    if explicit:
        raise ConfigError(f"the {name} data has no usable rows: {FIXES[which]} with labelled rows")
    if fraction <= 0:
        if which == "val":
            return
        raise ConfigError("test_fraction=0 leaves no test rows, so the test metrics would be measured on other "
                          f"rows: keep data.test_fraction above 0, or {FIXES['test']}")
    counts: dict[int, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    need = max(3, math.ceil(0.5 / fraction) + 1)  # rows a class needs before it gives one to this split
    raise ConfigError(
        f"the {name} split is empty: {len(labels):,} rows in {len(counts):,} classes (at most {max(counts.values()):,} "
        f"per class), and a class needs about {need} rows to give one to {name} at {which}_fraction={fraction:g} "
        f"({name} metrics on other rows would mean something else): {FIXES[which]}, use fewer classes, "
        "or more rows per class")


def check_reuse(which: str, split: Split, data: Split) -> str | None:
    """A separate validation / test source that repeats rows of --data (`data`, before its split):
    refused when every row is one (a copy of the training file), else a note with how many are (None
    when none)."""
    if not len(split):
        return None
    no_pairs: list[str | None] = [None] * max(len(data), len(split))
    seen = set(zip(data.texts, data.pairs or no_pairs))
    shared = sum((t, p) in seen for t, p in zip(split.texts, split.pairs or no_pairs))
    name = {"val": "validation", "test": "test"}[which]
    if shared == len(split):
        raise ConfigError(f"every {name} row is also a row of --data, so its metrics would be measured on training "
                          f"rows: {FIXES[which]} holding rows that are not in --data")
    return f"{shared:,} of {len(split):,} {name} rows also appear in --data" if shared else None
