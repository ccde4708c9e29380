"""Data: the seeded synthetic sentiment set; CSV / JSONL / Parquet files; HF datasets (a folder written
by `save_to_disk`, or `hf:name[:config][:split]` from the hub), validated.

Everything returns a `DataSplits` with integer labels 0..K-1 and the label names in order. With
`text_pair_col` set, each Split also carries the second sentence of each pair (`pairs`), which the
trainer tokenises as a pair (paraphrase / NLI-style tasks).

`summarize(data, tokenizer, max_length)` is the pre-training summary (rows per class, token length
percentiles, how much max_length truncates) printed by the CLI and shown by the dashboard.
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
    pairs: list[str] | None = None  # second sentence of each pair (text_pair_col), else None

    def pick(self, idx: list[int]) -> Split:
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                     [self.pairs[i] for i in idx] if self.pairs is not None else None)

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
        raise ConfigError(f"{what} {path_str!r} is a folder but not a datasets save_to_disk folder: pass a .csv, .jsonl or .parquet file")
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


def _columns(df, cfg: DataConfig, path: str) -> tuple[list[str], list, list[str] | None]:
    """(texts, raw labels, second sentences or None) from a table, checked."""
    pair_col = getattr(cfg, "text_pair_col", None)
    wanted = [(cfg.text_col, "text_col"), (cfg.label_col, "label_col")]
    if pair_col:
        wanted.append((pair_col, "text_pair_col"))
    for col, flag in wanted:
        if col not in df.columns:
            cols = ", ".join(map(str, df.columns[:10]))
            raise ConfigError(f"column {col!r} not found in {path} (columns: {cols}): set data.{flag}=<column>")
    texts = df[cfg.text_col]
    labels = df[cfg.label_col]
    if texts.isna().any():
        bad = int(texts.isna().sum())
        raise ConfigError(f"{bad} row(s) in {path} have an empty {cfg.text_col!r}: drop or fill them")
    pairs = None
    if pair_col:
        if df[pair_col].isna().any():
            bad = int(df[pair_col].isna().sum())
            raise ConfigError(f"{bad} row(s) in {path} have an empty {pair_col!r}: drop or fill them")
        pairs = [str(t) for t in df[pair_col].tolist()]
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
    return [str(t) for t in texts.tolist()], values, pairs


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
    df, class_names, builtin = _read_source(cfg.source, "data", cfg.label_col)
    texts, raw, pairs = _columns(df, cfg, cfg.source)
    notes: list[str] = []
    if cfg.limit and cfg.limit < len(texts):
        # stratify on the raw labels
        classes = sorted(set(raw), key=str)
        keep = stratified_sample(_encode(raw, classes), cfg.limit, seed)
        texts, raw = [texts[i] for i in keep], [raw[i] for i in keep]
        pairs = [pairs[i] for i in keep] if pairs is not None else None
        notes.append(f"limited to a stratified sample of {len(texts)} rows")
    names = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise ConfigError(
            f"{cfg.source} has a single class ({names[0]!r}) in {cfg.label_col!r}: a classifier needs at least 2"
        )
    labels = _encode(raw, names)

    extra: dict[str, Split] = {}
    sources = {"val": cfg.val_source, "test": cfg.test_source}
    for which in ("val", "test"):
        src = sources[which]
        if src:
            xdf, _, _ = _read_source(src, f"{which} data", cfg.label_col)
        elif which in builtin:  # a DatasetDict's own validation / test split
            src, xdf = f"{cfg.source} [{builtin[which][0]}]", builtin[which][1]
        else:
            continue
        xt, xr, xp = _columns(xdf, cfg, src)
        unseen = sorted({v for v in xr if v not in set(names)}, key=str)
        if unseen and not sources[which]:  # e.g. GLUE test splits are unlabelled (-1): split from train
            notes.append(f"{src} has labels not seen in training ({', '.join(map(str, unseen[:3]))}): not used")
            continue
        if unseen:
            raise ConfigError(
                f"{which} file {src} has classes not in training: {', '.join(map(str, unseen[:5]))}; "
                "make both files use the same label set"
            )
        extra[which] = Split(xt, _encode(xr, names), xp)
    fractions = [0.0 if "val" in extra else cfg.val_fraction, 0.0 if "test" in extra else cfg.test_fraction]
    tr, va, te = stratified_split(labels, fractions, seed)
    full = Split(texts, labels, pairs)
    train = full.pick(tr)
    val = extra.get("val") or full.pick(va)
    test = extra.get("test") or full.pick(te)
    if len(val) == 0:
        val = test if len(test) else train
        notes.append("no validation rows: evaluating on " + ("test" if len(test) else "train"))
    if len(test) == 0:
        test = val
        notes.append("no test rows: test metrics are validation metrics")
    label_names = [str(n) for n in names]
    if class_names and all(isinstance(n, int) and 0 <= n < len(class_names) for n in names):
        label_names = [class_names[n] for n in names]  # a ClassLabel feature names its classes
    return DataSplits(train, val, test, label_names, cfg.source, notes)


# ---------------------------------------------------------------------------------------------
# HF datasets: a save_to_disk folder, or hf:name[:config][:split] from the hub
# ---------------------------------------------------------------------------------------------
HF_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "unsupervised")


def is_hf_folder(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def parse_hf_spec(source: str) -> tuple[str, str | None, str | None]:
    """`hf:name[:config][:split]` -> (name, config, split). `hf:imdb:train` reads as a split when the
    second part is a usual split name (or a slice such as `train[:10%]`); `hf:glue:sst2` as a config."""
    head, bracket = source[3:], ""
    if "[" in head:  # a split slice may hold colons: train[:10%]
        head, bracket = head[: head.index("[")], head[head.index("[") :]
    parts = head.split(":")
    parts[-1] += bracket
    if not parts[0] or len(parts) > 3:
        raise ConfigError(f"{source!r} is not hf:name[:config][:split]: write e.g. hf:glue:sst2:train or hf:imdb")
    name, config, split = parts[0], None, None
    if len(parts) == 2:
        if parts[1].split("[")[0] in HF_SPLIT_NAMES:
            split = parts[1]
        else:
            config = parts[1] or None
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    return name, config, split


def _load_hf(source: str):
    try:
        import datasets
    except ModuleNotFoundError:
        raise ConfigError("HF datasets need the `datasets` package: pip install datasets") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:  # the hub client's "Retrying in 8s" lines: the one-line error below says it instead
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    if source.startswith("hf:"):
        name, config, split = parse_hf_spec(source)
        try:
            return datasets.load_dataset(name, config, split=split)
        except Exception as e:  # noqa: BLE001 - offline, unknown id, bad config/split: one line
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"dataset {source!r} could not be loaded from the hub ({type(e).__name__}: {first}); offline? "
                "save it with save_to_disk where the hub is reachable and pass the folder"
            ) from None
    try:
        return datasets.load_from_disk(str(Path(source).expanduser()))
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"dataset folder {source!r} could not be read ({first}): pass a save_to_disk folder") from None


def _class_names(ds, label_col: str) -> list[str] | None:
    feature = getattr(ds, "features", {}).get(label_col) if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _read_source(src: str, what: str, label_col: str = "label"):
    """(DataFrame, ClassLabel names or None, {"val"/"test": (split name, DataFrame)} from a DatasetDict)."""
    path = Path(src).expanduser()
    if not src.startswith("hf:") and not is_hf_folder(path):
        return _read_table(src, what), None, {}
    ds = _load_hf(src)
    builtin: dict = {}
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
        splits = list(ds.keys())
        main = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if main is None:
            raise ConfigError(
                f"{what} {src!r} has splits {', '.join(splits)} and none is 'train': "
                "pass one with hf:name:config:split, or save that split alone"
            )
        for which, candidates in (("val", ("validation", "valid", "dev")), ("test", ("test",))):
            for c in candidates:
                if c in ds and c != main:
                    builtin[which] = (c, ds[c].to_pandas())
                    break
        ds = ds[main]
    names = _class_names(ds, label_col)
    if len(ds) == 0:
        raise ConfigError(f"{what} {src!r} has no rows: pick another split")
    return ds.to_pandas(), names, builtin


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Resolve a DataConfig into train/val/test. Raises ConfigError with a one-line message."""
    if cfg.source == "synthetic":
        # the synthetic set is fixed by its own seed (data seed 0 + size), not the run seed, so every
        # method in a comparison and every repeat of a run sees the same examples
        texts, labels = synthetic(cfg.size, seed=1234, label_noise=cfg.label_noise)
        tr, va, te = stratified_split(labels, [cfg.val_fraction, cfg.test_fraction], seed=1234)
        full = Split(texts, labels)
        return DataSplits(full.pick(tr), full.pick(va), full.pick(te), ["negative", "positive"],
                          f"synthetic(size={cfg.size})")
    return load_file_splits(cfg, seed)


# ---------------------------------------------------------------------------------------------
# The summary shown before training
# ---------------------------------------------------------------------------------------------
def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (0 for an empty list)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return int(sorted_values[k])


def token_lengths(tokenizer, texts: list[str], pairs: list[str] | None = None) -> list[int]:
    """Untruncated token counts (special tokens included), as the model would see them."""
    out: list[int] = []
    for i in range(0, len(texts), 1024):
        chunk = texts[i : i + 1024]
        if pairs is None:
            enc = tokenizer(chunk, truncation=False)
        else:
            enc = tokenizer(chunk, pairs[i : i + 1024], truncation=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def summarize(data: DataSplits, tokenizer=None, max_length: int | None = None) -> dict:
    """Rows per class and split; with a tokenizer, token length percentiles (p50/p90/p99/max) and
    the share of examples that `max_length` truncates, over all splits together. A plain dict
    (JSON-ready) for the CLI and the dashboard."""
    def counts(s: Split) -> dict[str, int]:
        out = {n: 0 for n in data.label_names}
        for y in s.labels:
            out[data.label_names[y]] += 1
        return out

    splits = {"train": data.train, "val": data.val, "test": data.test}
    doc: dict = {
        "source": data.source,
        "labels": list(data.label_names),
        "pairs": data.train.pairs is not None,
        "sizes": {k: len(v) for k, v in splits.items()},
        "per_class": {k: counts(v) for k, v in splits.items()},
        "notes": list(data.notes),
    }
    if tokenizer is not None:
        seen: set[int] = set()
        lengths: list[int] = []
        for s in splits.values():  # a split reused for another (no test rows) counts once
            if id(s) in seen:
                continue
            seen.add(id(s))
            lengths.extend(token_lengths(tokenizer, s.texts, s.pairs))
        lengths.sort()
        doc["tokens"] = {
            "p50": _percentile(lengths, 50),
            "p90": _percentile(lengths, 90),
            "p99": _percentile(lengths, 99),
            "max": lengths[-1] if lengths else 0,
            "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        }
        if max_length:
            over = sum(1 for n in lengths if n > max_length)
            doc["max_length"] = max_length
            doc["truncated"] = over
            doc["truncated_pct"] = round(100.0 * over / max(1, len(lengths)), 2)
    return doc


def format_summary(doc: dict) -> str:
    """The summary as a few plain lines (the CLI prints it; no rich markup)."""
    sizes = doc["sizes"]
    lines = [f"data: {doc['source']}  train {sizes['train']} / val {sizes['val']} / test {sizes['test']}"
             + ("  (sentence pairs)" if doc.get("pairs") else "")]
    width = max([5] + [len(n) for n in doc["labels"]])
    lines.append(f"  {'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for name in doc["labels"]:
        c = [doc["per_class"][k].get(name, 0) for k in ("train", "val", "test")]
        lines.append(f"  {name:<{width}}  {c[0]:>6} {c[1]:>6} {c[2]:>6}")
    if "tokens" in doc:
        t = doc["tokens"]
        line = f"  tokens: p50 {t['p50']}  p90 {t['p90']}  p99 {t['p99']}  max {t['max']}"
        if "max_length" in doc:
            line += f"; max_length {doc['max_length']} truncates {doc['truncated_pct']:.1f}% ({doc['truncated']} examples)"
        lines.append(line)
    for note in doc.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
