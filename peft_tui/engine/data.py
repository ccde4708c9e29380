"""Data: the seeded synthetic sentiment set and CSV / JSONL / Parquet loaders, validated.

Everything returns a `DataSplits` with integer labels 0..K-1 and the label names in order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from peft_tui.config import ConfigError, DataConfig


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    label_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict:
        def counts(s: Split) -> dict[str, int]:
            out = {n: 0 for n in self.label_names}
            for y in s.labels:
                out[self.label_names[y]] += 1
            return out

        return {
            "source": self.source,
            "labels": self.label_names,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train_per_class": counts(self.train),
        }


# ---------------------------------------------------------------------------------------------
# Synthetic sentiment
# ---------------------------------------------------------------------------------------------
ASPECTS = [
    "battery", "screen", "camera", "keyboard", "speaker", "design", "price", "software", "delivery",
    "support team", "build quality", "touchpad", "charger", "packaging", "sound", "interface", "display",
    "hinge", "app", "manual", "fan", "webcam", "microphone", "case", "remote",
]
POSITIVE = [
    "good", "great", "excellent", "superb", "reliable", "pleasant", "impressive", "enjoyable", "solid",
    "fantastic", "wonderful", "decent", "brilliant", "sturdy", "responsive", "lovely", "polished",
]
NEGATIVE = [
    "bad", "terrible", "awful", "poor", "disappointing", "flimsy", "sluggish", "unreliable", "mediocre",
    "annoying", "dreadful", "useless", "clunky", "noisy", "frustrating", "cheap", "broken",
]
INTENSIFIERS = ["very", "really", "extremely", "quite", "remarkably", "truly", "rather", "incredibly", "so"]
NEGATORS = ["not", "hardly", "never", "far from", "not at all", "by no means", "anything but", "not exactly"]
VERBS = ["is", "was", "seems", "feels", "looks", "turned out", "has been"]
OPENERS = ["", "", "", "to be honest, ", "after a week of use, ", "in my experience, ", "frankly, ", "well, "]
TRAILERS = ["", "", "", " overall", " in my opinion", " for the price", " to be fair", " most days", " so far"]


def _clause(rng: random.Random, polarity: int, noise_tail: bool = True) -> str:
    """One clause about an aspect whose sentiment is `polarity` (+1 / -1)."""
    negate = rng.random() < 0.3
    adj_pol = -polarity if negate else polarity
    adj = rng.choice(POSITIVE if adj_pol > 0 else NEGATIVE)
    words = []
    if negate:
        words.append(rng.choice(NEGATORS))
    if rng.random() < 0.45:
        words.append(rng.choice(INTENSIFIERS))
    words.append(adj)
    aspect = rng.choice(ASPECTS)
    verb = rng.choice(VERBS)
    if rng.random() < 0.2:
        text = f"I found the {aspect} {' '.join(words)}"
    else:
        text = f"the {aspect} {verb} {' '.join(words)}"
    if noise_tail:
        text += rng.choice(TRAILERS)
    return text


def _sentence(rng: random.Random, label: int) -> str:
    """A sentence whose overall sentiment is `label` (1 positive, 0 negative)."""
    pol = 1 if label == 1 else -1
    kind = rng.random()
    if kind < 0.45:  # one clause
        body = _clause(rng, pol)
    elif kind < 0.6:  # two agreeing clauses
        body = f"{_clause(rng, pol)} and {_clause(rng, pol)}"
    elif kind < 0.75:  # contrast: the clause after "but"/"yet" decides
        conj = rng.choice(["but", "yet", "however", "though in the end"])
        body = f"{_clause(rng, -pol)}, {conj} {_clause(rng, pol)}"
    elif kind < 0.9:  # concession first: the main clause decides
        conj = rng.choice(["although", "even though", "despite the fact that", "while"])
        body = f"{conj} {_clause(rng, -pol)}, {_clause(rng, pol)}"
    else:  # concession second: the first clause decides
        conj = rng.choice(["although", "even though", "despite the fact that"])
        body = f"{_clause(rng, pol)}, {conj} {_clause(rng, -pol)}"
    return (rng.choice(OPENERS) + body + rng.choice([".", ".", "!"])).capitalize()


def synthetic(size: int, seed: int, label_noise: float = 0.0) -> tuple[list[str], list[int]]:
    """`size` unique sentences, exactly balanced, deterministic for a seed."""
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    attempts = 0
    while len(texts) < size:
        attempts += 1
        if attempts > size * 50:
            raise ConfigError(f"could not make {size} unique synthetic sentences: use a smaller size")
        label = len(texts) % 2
        s = _sentence(rng, label)
        if s in seen:
            continue
        seen.add(s)
        texts.append(s)
        labels.append(label)
    order = list(range(size))
    rng.shuffle(order)
    texts, labels = [texts[i] for i in order], [labels[i] for i in order]
    if label_noise > 0:  # its own generator: the same sentences with and without noise
        for i in random.Random(seed + 1).sample(range(size), int(round(size * label_noise))):
            labels[i] = 1 - labels[i]
    return texts, labels


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------
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
            n = int(math.floor(len(idx) * frac + 0.5)) if frac > 0 else 0
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


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _read_table(path_str: str, what: str):
    import pandas as pd

    path = Path(path_str).expanduser()
    if not path.exists():
        raise ConfigError(f"{what} file {path_str!r} does not exist: check the path (or use --data synthetic)")
    if path.is_dir():
        raise ConfigError(f"{what} {path_str!r} is a folder: pass a .csv, .jsonl or .parquet file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{what} file {path_str!r} is empty: it needs a header row and examples")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            with open(path, "rb") as fh:
                head = fh.read(4096)
            if b"\x00" in head:
                raise ConfigError(f"{what} file {path_str!r} looks binary, not CSV: pass a text CSV file")
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(path, lines=suffix != ".json")
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise ConfigError(f"{what} file {path_str!r} has an unknown type: use .csv, .tsv, .jsonl or .parquet")
    except ConfigError:
        raise
    except PermissionError:
        raise ConfigError(f"{what} file {path_str!r} cannot be read (permission denied): fix its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path_str!r} is not UTF-8 text: re-save it as UTF-8") from None
    except Exception as e:  # pandas parser errors, pyarrow errors, bad JSON
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} file {path_str!r} could not be parsed ({first}): check its format") from None
    if len(df) == 0:
        raise ConfigError(f"{what} file {path_str!r} has a header but no rows: add examples")
    return df


def _columns(df, cfg: DataConfig, path: str) -> tuple[list[str], list]:
    import pandas as pd

    for col, flag in ((cfg.text_col, "text_col"), (cfg.label_col, "label_col")):
        if col not in df.columns:
            cols = ", ".join(map(str, df.columns[:10]))
            raise ConfigError(f"column {col!r} not found in {path} (columns: {cols}): set data.{flag}=<column>")
    texts = df[cfg.text_col]
    labels = df[cfg.label_col]
    if texts.isna().any():
        bad = int(texts.isna().sum())
        raise ConfigError(f"{bad} row(s) in {path} have an empty {cfg.text_col!r}: drop or fill them")
    if labels.isna().any():
        row = int(labels.isna().to_numpy().nonzero()[0][0])
        raise ConfigError(f"{int(labels.isna().sum())} label(s) in {path} are missing (first at row {row + 2}): fill or drop them")
    values = labels.tolist()
    kinds = {"num" if isinstance(v, (int, float)) and not isinstance(v, bool) else "str" for v in values}
    if kinds == {"str"}:  # CSV readers give strings when a column mixes "1" and "x"
        numeric = [_is_number(v) for v in values]
        if any(numeric) and not all(numeric):
            kinds = {"num", "str"}
    if len(kinds) > 1:
        raise ConfigError(f"labels in {path} mix numbers and strings: use one type for {cfg.label_col!r}")
    if kinds == {"num"}:
        if any(float(v) != int(v) for v in values):
            raise ConfigError(f"labels in {path} are fractional numbers: class labels must be integers or strings")
        values = [int(v) for v in values]
    else:
        values = [str(v) for v in values]
    return [str(t) for t in texts.tolist()], values


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _encode(values: list, names: list) -> list[int]:
    index = {v: i for i, v in enumerate(names)}
    return [index[v] for v in values]


def load_file_splits(cfg: DataConfig, seed: int) -> DataSplits:
    df = _read_table(cfg.source, "data")
    texts, raw = _columns(df, cfg, cfg.source)
    notes: list[str] = []
    if cfg.limit and cfg.limit < len(texts):
        # stratify on the raw labels
        classes = sorted(set(raw), key=str)
        keep = stratified_sample(_encode(raw, classes), cfg.limit, seed)
        texts, raw = [texts[i] for i in keep], [raw[i] for i in keep]
        notes.append(f"limited to a stratified sample of {len(texts)} rows")
    names = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise ConfigError(
            f"{cfg.source} has a single class ({names[0]!r}) in {cfg.label_col!r}: a classifier needs at least 2"
        )
    labels = _encode(raw, names)

    extra: dict[str, Split] = {}
    for which, src in (("val", cfg.val_source), ("test", cfg.test_source)):
        if src:
            xdf = _read_table(src, f"{which} data")
            xt, xr = _columns(xdf, cfg, src)
            unseen = sorted({v for v in xr if v not in set(names)}, key=str)
            if unseen:
                raise ConfigError(
                    f"{which} file {src} has classes not in training: {', '.join(map(str, unseen[:5]))}; "
                    "make both files use the same label set"
                )
            extra[which] = Split(xt, _encode(xr, names))
    fractions = [0.0 if "val" in extra else cfg.val_fraction, 0.0 if "test" in extra else cfg.test_fraction]
    tr, va, te = stratified_split(labels, fractions, seed)
    train = Split([texts[i] for i in tr], [labels[i] for i in tr])
    val = extra.get("val") or Split([texts[i] for i in va], [labels[i] for i in va])
    test = extra.get("test") or Split([texts[i] for i in te], [labels[i] for i in te])
    if len(val) == 0:
        val = test if len(test) else train
        notes.append("no validation rows: evaluating on " + ("test" if len(test) else "train"))
    if len(test) == 0:
        test = val
        notes.append("no test rows: test metrics are validation metrics")
    return DataSplits(train, val, test, [str(n) for n in names], cfg.source, notes)


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Resolve a DataConfig into train/val/test. Raises ConfigError with a one-line message."""
    if cfg.source == "synthetic":
        # the synthetic set is fixed by its own seed (data seed 0 + size), not the run seed, so every
        # method in a comparison and every repeat of a run sees the same examples
        texts, labels = synthetic(cfg.size, seed=1234, label_noise=cfg.label_noise)
        tr, va, te = stratified_split(labels, [cfg.val_fraction, cfg.test_fraction], seed=1234)
        pick = lambda idx: Split([texts[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
        return DataSplits(pick(tr), pick(va), pick(te), ["negative", "positive"], f"synthetic(size={cfg.size})")
    return load_file_splits(cfg, seed)
