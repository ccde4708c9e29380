"""Files and HF datasets into checked DataSplits: CSV / TSV / JSONL / Parquet tables, `save_to_disk`
folders and `hf:` specs; columns, label types and separate val / test sources validated, one line each."""

from __future__ import annotations

from pathlib import Path

from peft_tui.config import DataConfig
from peft_tui.engine.data.hf import is_hf_source, read_hf
from peft_tui.engine.data.splits import DataSplits, Split, stratified_sample, stratified_split
from peft_tui.errors import ConfigError, first_line


def read_table(path_str: str, what: str):
    """A DataFrame from a CSV / TSV / JSONL / JSON / Parquet file; `what` names it in errors ("data",
    "val data", "input")."""
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
    except Exception as e:  # noqa: BLE001 - pandas parser errors, pyarrow errors, bad JSON
        raise ConfigError(f"{what} file {path_str!r} could not be parsed ({first_line(e)}): check its format") from None
    if len(df) == 0:
        raise ConfigError(f"{what} file {path_str!r} has a header but no rows: add examples")
    return df


def _columns(df, cfg: DataConfig, path: str) -> tuple[list[str], list, list[str] | None]:
    """(texts, raw labels, second sentences or None) from a table, checked."""
    pair_col = cfg.text_pair_col
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


def _read_source(src: str, what: str, label_col: str = "label"):
    """(DataFrame, ClassLabel names or None, {"val"/"test": (split name, DataFrame)}) from a file or HF source."""
    if is_hf_source(src):
        return read_hf(src, what, label_col)
    return read_table(src, what), None, {}
