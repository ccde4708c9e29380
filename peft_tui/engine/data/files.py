"""Files and HF datasets into checked DataSplits: CSV / TSV / JSONL / Parquet tables, `save_to_disk`
folders and `hf:` specs; columns, label types and separate val / test sources validated, one line each.

Input is bounded before it is read (see limits.py): a file must be a regular file under its size limit,
a text file is scanned in constant memory for over-long lines, UTF-16 and binary content, and only the
columns a run uses are kept. Rows whose text is empty or only whitespace are dropped with a note; texts
longer than MAX_TEXT_CHARS are cut; lists, structs and infinite numbers are refused, never stringified.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from peft_tui.config import DataConfig
from peft_tui.engine.data.hf import is_hf_source, read_hf
from peft_tui.engine.data.splits import (
    DataSplits,
    Split,
    check_reuse,
    check_split,
    stratified_sample,
    stratified_split,
)
from peft_tui.errors import ConfigError, first_line
from peft_tui.limits import (
    MAX_JSON_BYTES,
    MAX_LABEL_CHARS,
    MAX_LINE_BYTES,
    MAX_TABLE_BYTES,
    MAX_TEXT_CHARS,
    MiB,
    size_text,
)
from peft_tui.safe import safe_text

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson")
TABLE_SUFFIXES = (*TEXT_SUFFIXES, ".json", ".parquet", ".pq")
CONTAINERS = (list, tuple, dict, set, bytes, bytearray)  # never a text or a label (numpy arrays: see _is_container)


def shown(path_str: str) -> str:
    """A user's path for a message: quoted with control characters escaped, long ones shortened."""
    text = repr(str(path_str))
    return text if len(text) <= 120 else text[:80] + "…" + text[-30:]


def subject(what: str, path_str: str) -> str:
    """How a message names a file: "data file 'x.csv'", or for an option such as "--file", "--file 'x.txt'"."""
    return f"{what} {shown(path_str)}" if what.startswith("-") else f"{what} file {shown(path_str)}"


# ------------------------------------------------------------------------------------------------
# bounded reading
# ------------------------------------------------------------------------------------------------
def check_file(path_str: str, what: str, limit: int = MAX_TABLE_BYTES,
               needs: str = "it needs a header row and examples") -> Path:
    """The path of a regular, non-empty file of at most `limit` bytes; ConfigError otherwise (`needs` says
    what an empty one lacks). Never opens it (a FIFO would block), so a folder, a pipe or a device is
    refused by what it is."""
    path = Path(path_str).expanduser()
    name, subj = shown(path_str), subject(what, path_str)
    try:
        st = path.stat()
    except FileNotFoundError:
        hint = " (or use --data synthetic)" if what == "data" else ""
        raise ConfigError(f"{subj} does not exist: check the path{hint}") from None
    except (OSError, ValueError) as e:  # a path too long, a loop of links, a folder we may not enter; a NUL byte
        why = getattr(e, "strerror", None) or first_line(e)
        raise ConfigError(f"{what} path {name} cannot be used ({why}): check the path") from None
    if stat.S_ISDIR(st.st_mode):
        kind = "" if what.startswith("-") else " but not a datasets save_to_disk folder"
        raise ConfigError(f"{what} {name} is a folder{kind}: pass a .csv, .jsonl or .parquet file"
                          + (" (or a .txt file, one text per line)" if what.startswith("-") else ""))
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {name} is not a regular file (a pipe, socket or device): "
                          "save the data to a file and pass that")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{subj} cannot be read (permission denied): fix its permissions")
    if st.st_size == 0:
        raise ConfigError(f"{subj} is empty: {needs}")
    if st.st_size > limit:
        raise ConfigError(f"{subj} is {size_text(st.st_size)}, above the {size_text(limit)} limit: "
                          "split it or keep a sample of its rows")
    return path


def scan_text(path: Path, subj: str, line_bounded: bool = True) -> None:
    """Refuse UTF-16 / binary content and (when `line_bounded`) any line longer than MAX_LINE_BYTES,
    reading the file in chunks no larger than that limit, so memory stays flat whatever the file holds."""
    chunk_size = min(MAX_LINE_BYTES, MiB)
    with open(path, "rb") as fh:
        head = fh.read(chunk_size)
        problem = encoding_problem(head)
        if problem == "utf-16":
            raise ConfigError(f"{subj} is UTF-16 text: re-save it as UTF-8 "
                              "(e.g. iconv -f UTF-16 -t UTF-8 in.csv > out.csv)")
        if problem == "binary":
            raise ConfigError(f"{subj} looks binary (it holds NUL bytes), not text: pass a text file "
                              "(re-save it as UTF-8) or a .parquet table")
        if not line_bounded:
            return
        offset, last_newline, lines = 0, -1, 0  # absolute offset of the last newline seen
        chunk = head
        while chunk:
            first = chunk.find(b"\n")
            end = offset + (first if first >= 0 else len(chunk))
            if end - last_newline - 1 > MAX_LINE_BYTES:
                raise ConfigError(f"{subj} has a line longer than {size_text(MAX_LINE_BYTES)} "
                                  f"(line {lines + 1}): one row per line, texts under "
                                  f"{size_text(MAX_LINE_BYTES)}; is it the right file?")
            if first >= 0:  # lines inside one chunk are shorter than the chunk, so within the limit
                lines += chunk.count(b"\n")
                last_newline = offset + chunk.rfind(b"\n")
            offset += len(chunk)
            chunk = fh.read(chunk_size)


def encoding_problem(head: bytes) -> str | None:
    """"utf-16" for UTF-16 / UTF-32 text (a byte-order mark; or, without one, mostly-ASCII UTF-16: zero
    bytes in at least 30% (and two) of the odd or of the even positions and hardly any in the others), "binary" for
    other content with zero bytes, None for anything a UTF-8 reader may try."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return "utf-16"
    if b"\x00" not in head:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    for zeros, others, positions in ((odd, even, len(head) // 2), (even, odd, (len(head) + 1) // 2)):
        if zeros >= max(2, 0.3 * positions) and others <= 0.1 * zeros:
            return "utf-16"
    return "binary"


def read_lines(path_str: str, what: str = "input") -> list[str]:
    """The non-empty lines of a UTF-8 text file (one text per line, e.g. for `predict --file`), bounded
    like the tables and cut to MAX_TEXT_CHARS. ConfigError when the file holds no text."""
    path = check_file(path_str, what, needs="it has no texts; write one text per line")
    subj = subject(what, path_str)
    scan_text(path, subj)
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of the first text
            texts = [line.strip()[:MAX_TEXT_CHARS] for line in fh if line.strip()]
    except UnicodeDecodeError:
        raise ConfigError(f"{subj} is not UTF-8 text: re-save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{subj} cannot be read ({e.strerror or first_line(e)}): check the file") from None
    if not texts:
        raise ConfigError(f"{subj} has no texts (every line is empty): write one text per line")
    return texts


def read_table(path_str: str, what: str, columns: list[str] | None = None):
    """A DataFrame from a CSV / TSV / JSONL / JSON / Parquet file; `what` names it in errors ("data",
    "val data", "input"). With `columns`, only those columns are kept while reading (missing ones are
    reported by the caller, from the columns the file has)."""

    suffix = Path(path_str).suffix.lower()
    path = check_file(path_str, what, MAX_JSON_BYTES if suffix == ".json" else MAX_TABLE_BYTES)
    subj = subject(what, path_str)
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"{subj} has an unknown type: use .csv, .tsv, .jsonl or .parquet")
    wanted = set(columns) if columns else None
    try:
        if suffix in (".parquet", ".pq"):
            df = _read_parquet(path, subj, columns)
        else:
            scan_text(path, subj, line_bounded=suffix != ".json")
            if suffix in (".jsonl", ".ndjson", ".json"):
                df = _read_json(path, suffix == ".json", wanted)
            else:
                df = _read_csv(path, subj, suffix, wanted)
    except ConfigError:
        raise
    except PermissionError:
        raise ConfigError(f"{subj} cannot be read (permission denied): fix its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{subj} is not UTF-8 text: re-save it as UTF-8") from None
    except Exception as e:  # noqa: BLE001 - pandas parser errors, pyarrow errors, bad JSON
        raise ConfigError(f"{subj} could not be parsed ({safe_text(first_line(e, 160))}): check its format") from None
    if len(df) == 0 and (not wanted or wanted <= set(df.columns)):  # else the caller names the missing column
        raise ConfigError(f"{subj} has a header but no rows: add examples")
    return df


def _read_csv(path: Path, subj: str, suffix: str, wanted: set[str] | None):
    """A CSV / TSV file, keeping the wanted columns. A row with more fields than the header (an unquoted
    comma in a text) is refused: never read with the first column taken for an index or a field dropped
    (which reading only the wanted columns would do silently)."""
    import warnings

    import pandas as pd

    sep = "\t" if suffix == ".tsv" else ","
    fix = f"quote texts that hold a {'tab' if sep == chr(9) else 'comma'}, or check the delimiter"
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            # keep_default_na=False: a text such as "None" or "NA" stays a text; only empty cells are missing
            df = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""], index_col=False)
        except pd.errors.ParserWarning:  # the first row is longer than the header
            raise ConfigError(f"{subj} has more fields in its first row than in its header: {fix}") from None
        except pd.errors.ParserError as e:
            extra = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
            if not extra:
                raise
            want, line, saw = extra.groups()
            raise ConfigError(f"{subj} has {saw} fields at line {line}, its header {want}: {fix}") from None
    seen = [str(c) for c in df.columns]
    if wanted:
        df = df[[c for c in df.columns if c in wanted]]
    df.attrs["all_columns"] = seen
    return df


def _read_json(path: Path, whole: bool, wanted: set[str] | None):
    """JSON Lines in chunks of 10,000 rows, keeping only the wanted columns; a .json file whole."""
    import pandas as pd

    if whole:
        df = pd.read_json(path, encoding="utf-8-sig")
        seen = list(df.columns)
        df = df[[c for c in seen if c in wanted]] if wanted else df
        df.attrs["all_columns"] = seen
        return df
    parts, seen = [], []
    with pd.read_json(path, lines=True, chunksize=10_000, encoding="utf-8-sig") as reader:  # -sig: a BOM is no row
        for chunk in reader:
            seen.extend(c for c in chunk.columns if c not in seen)
            parts.append(chunk[[c for c in chunk.columns if c in wanted]] if wanted else chunk)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    df.attrs["all_columns"] = seen
    return df


def _read_parquet(path: Path, subj: str, columns: list[str] | None):
    """The wanted columns, read in batches of 1,024 rows and refused as soon as they add up to more than
    MAX_TABLE_BYTES (Parquet compresses well: a small file may hold far more)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        names = pf.schema_arrow.names
        keep = [c for c in names if c in set(columns)] if columns else None
        batches, size = [], 0
        for batch in pf.iter_batches(batch_size=1024, columns=keep):
            size += batch.nbytes
            if size > MAX_TABLE_BYTES:
                raise ConfigError(f"{subj} holds more than {size_text(MAX_TABLE_BYTES)} uncompressed, "
                                  "above the limit: split it or keep a sample of its rows")
            batches.append(batch)
        schema = pf.schema_arrow if keep is None else pa.schema([pf.schema_arrow.field(c) for c in keep])
    df = pa.Table.from_batches(batches, schema=schema).to_pandas()
    df.attrs["all_columns"] = names
    return df


# ------------------------------------------------------------------------------------------------
# columns into texts and labels
# ------------------------------------------------------------------------------------------------
def _is_container(v: Any) -> bool:
    return isinstance(v, CONTAINERS) or hasattr(v, "__array__") and getattr(v, "ndim", 0) > 0


def _is_missing(v: Any) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    import pandas as pd

    return v is pd.NA or v is pd.NaT


def text_values(values: list, col: str, source: str) -> tuple[list[str | None], int]:
    """The texts of a column: None where empty or only whitespace, cut to MAX_TEXT_CHARS; and how many
    were cut. A list, struct or bytes value is refused (one line), never turned into a string."""
    out: list[str | None] = []
    cut = 0
    for i, v in enumerate(values):
        if _is_container(v):
            raise ConfigError(f"column {col!r} of {shown(source)} holds lists or objects, not texts (row {i + 1} "
                              f"is a {type(v).__name__}): each {col!r} must be one string")
        if _is_missing(v) or not str(v).strip():
            out.append(None)
            continue
        text = str(v)
        if len(text) > MAX_TEXT_CHARS:
            text, cut = text[:MAX_TEXT_CHARS], cut + 1
        out.append(text)
    return out, cut


def label_values(values: list, rows: list[int], col: str, source: str) -> list:
    """Class labels, all ints or all strings; missing, infinite, fractional, mixed, over-long and
    list / struct labels are refused with one line. `rows`: each value's 0-based row in the file."""
    name = shown(source)
    missing = [r for v, r in zip(values, rows) if not _is_container(v) and _is_missing(v)]
    if missing:
        raise ConfigError(f"{len(missing)} label(s) in {name} are missing (first at row {missing[0] + 1}): "
                          "fill or drop them")
    for v, r in zip(values, rows):
        if _is_container(v):
            raise ConfigError(f"label at row {r + 1} of {name} is a {type(v).__name__}: "
                              f"each {col!r} must be one number or string")
        if isinstance(v, float) and math.isinf(v):
            raise ConfigError(f"label {v} at row {r + 1} of {name} is not a class: labels must be integers or strings")
        if isinstance(v, str) and len(v) > MAX_LABEL_CHARS:
            raise ConfigError(f"label at row {r + 1} of {name} is {len(v)} characters long: class labels are names "
                              f"of at most {MAX_LABEL_CHARS}; is {col!r} the label column?")
    for v, r in zip(values, rows):  # CSV gives strings: "nan" is a missing number, "inf" no class
        if isinstance(v, str) and _is_number(v) and not math.isfinite(float(v)):
            raise ConfigError(f"label {v.strip()!r} at row {r + 1} of {name} is not a class (a missing or "
                              "infinite number): fill or drop it; labels must be integers or strings")
    kinds = {"num" if isinstance(v, (int, float)) and not isinstance(v, bool) else "str" for v in values}
    if kinds == {"str"}:  # CSV readers give strings when a column mixes "1" and "x"
        numeric = [_is_number(v) for v in values]
        if any(numeric) and not all(numeric):
            kinds = {"num", "str"}
    if len(kinds) > 1:
        raise ConfigError(f"labels in {name} mix numbers and strings: use one type for {col!r}")
    if kinds == {"num"}:
        if any(not isinstance(v, int) and float(v) != int(v) for v in values):
            raise ConfigError(f"labels in {name} are fractional numbers: class labels must be integers or strings")
        return [int(v) for v in values]
    return [str(v) for v in values]


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _columns(df, cfg: DataConfig, source: str) -> tuple[list[str], list, list[str] | None, list[str]]:
    """(texts, raw labels, second sentences or None, notes) from a table, checked. Rows whose text (or
    second sentence) is empty or only whitespace are dropped, and a note says how many."""
    pair_col = cfg.text_pair_col
    wanted = [(cfg.text_col, "text_col"), (cfg.label_col, "label_col")]
    if pair_col:
        wanted.append((pair_col, "text_pair_col"))
    for col, flag in wanted:
        if col not in df.columns:
            cols = ", ".join(map(str, df.attrs.get("all_columns", list(df.columns))[:10]))
            raise ConfigError(f"column {col!r} not found in {shown(source)} (columns: {cols}): "
                              f"set data.{flag}=<column>")
    texts, cut = text_values(df[cfg.text_col].tolist(), cfg.text_col, source)
    pairs, cut_pairs = text_values(df[pair_col].tolist(), pair_col, source) if pair_col else (None, 0)
    keep = [i for i, t in enumerate(texts) if t is not None and (pairs is None or pairs[i] is not None)]
    which = f"{cfg.text_col!r}" + (f" or {pair_col!r}" if pair_col else "")
    if not keep:
        raise ConfigError(f"all {len(texts)} rows of {shown(source)} have an empty {which} (or only whitespace): "
                          "check data.text_col")
    notes = []
    if len(keep) < len(texts):
        notes.append(f"dropped {len(texts) - len(keep)} of {len(texts)} rows of {source} whose {which} is empty "
                     "or only whitespace")
    if cut + cut_pairs:
        notes.append(f"cut {cut + cut_pairs} texts of {source} to {MAX_TEXT_CHARS:,} characters "
                     "(max_length truncates them anyway)")
    raw = df[cfg.label_col].tolist()
    labels = label_values([raw[i] for i in keep], keep, cfg.label_col, source)
    kept_pairs = [pairs[i] for i in keep] if pairs is not None else None
    return [texts[i] for i in keep], labels, kept_pairs, notes  # type: ignore[misc,return-value]


def _encode(values: list, names: list) -> list[int]:
    index = {v: i for i, v in enumerate(names)}
    return [index[v] for v in values]


def load_file_splits(cfg: DataConfig, seed: int) -> DataSplits:
    seed = seed if cfg.split_seed is None else cfg.split_seed  # a study's runs share one sample and split
    df, class_names, builtin = _read_source(cfg.source, "data", cfg)
    texts, raw, pairs, notes = _columns(df, cfg, cfg.source)
    if cfg.limit and cfg.limit < len(texts):
        # stratify on the raw labels
        classes = sorted(set(raw), key=str)
        if cfg.limit < len(classes):
            raise ConfigError(f"data.limit={cfg.limit} is smaller than the {len(classes)} classes in "
                              f"{shown(cfg.source)}: use data.limit={len(classes)} or more (a few rows per class)")
        keep = stratified_sample(_encode(raw, classes), cfg.limit, seed)
        texts, raw = [texts[i] for i in keep], [raw[i] for i in keep]
        pairs = [pairs[i] for i in keep] if pairs is not None else None
        notes.append(f"limited to a stratified sample of {len(texts)} rows")
    names = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise ConfigError(
            f"{shown(cfg.source)} has a single class ({names[0]!r}) in {cfg.label_col!r}: a classifier needs at least 2"
        )
    labels = _encode(raw, names)

    extra: dict[str, Split] = {}
    sources = {"val": cfg.val_source, "test": cfg.test_source}
    for which in ("val", "test"):
        src = sources[which]
        if src:
            xdf, _, _ = _read_source(src, f"{which} data", cfg)
        elif which in builtin:  # a DatasetDict's own validation / test split
            src, xdf = f"{cfg.source} [{builtin[which][0]}]", builtin[which][1]
        else:
            continue
        xt, xr, xp, xnotes = _columns(xdf, cfg, src)
        notes.extend(xnotes)
        unseen = sorted({v for v in xr if v not in set(names)}, key=str)
        if unseen and not sources[which]:  # e.g. GLUE test splits are unlabelled (-1): split from train
            notes.append(f"{src} has labels not seen in training ({', '.join(map(str, unseen[:3]))}): not used")
            continue
        if unseen:
            raise ConfigError(
                f"{which} file {shown(src)} has classes not in training: {', '.join(map(str, unseen[:5]))}; "
                "make both files use the same label set"
            )
        extra[which] = Split(xt, _encode(xr, names), xp)
    _check_distinct_sources(cfg)
    fractions = [0.0 if "val" in extra else cfg.val_fraction, 0.0 if "test" in extra else cfg.test_fraction]
    tr, va, te = stratified_split(labels, fractions, seed)
    full = Split(texts, labels, pairs)
    train = full.pick(tr)
    splits = {"val": extra.get("val") or full.pick(va), "test": extra.get("test") or full.pick(te)}
    for which, fraction in zip(("val", "test"), fractions):  # never evaluated on other rows instead
        check_split(which, splits[which], labels, fraction, which in extra)
        note = check_reuse(which, splits[which], full) if which in extra else None
        notes.extend([note] if note else [])
    if len(splits["val"]) == 0:
        notes.append("no validation split (val_fraction=0): the validation figures of this run are not measured")
    val, test = splits["val"], splits["test"]
    label_names = [str(n) for n in names]
    if class_names and all(isinstance(n, int) and 0 <= n < len(class_names) for n in names):
        label_names = [class_names[n] for n in names]  # a ClassLabel feature names its classes
    return DataSplits(train, val, test, label_names, cfg.source, notes)


def _check_distinct_sources(cfg: DataConfig) -> None:
    """--data, the validation and the test source name three different files (one file given twice would
    evaluate on training rows, or test on validation rows)."""
    def same(a: str | None, b: str | None) -> bool:
        if not a or not b:
            return False
        try:
            return a == b or os.path.samefile(Path(a).expanduser(), Path(b).expanduser())
        except OSError:
            return False

    for which, src, other, other_name in (("val", cfg.val_source, cfg.source, "--data"),
                                          ("test", cfg.test_source, cfg.source, "--data"),
                                          ("test", cfg.test_source, cfg.val_source, "the validation file")):
        if same(src, other):
            name = {"val": "validation", "test": "test"}[which]
            raise ConfigError(f"the {name} file {shown(str(src))} is {other_name}: its metrics would be measured on "
                              "the same rows; pass a separate file (or leave it out to split one off)")


def _read_source(src: str, what: str, cfg: DataConfig):
    """(DataFrame, ClassLabel names or None, {"val"/"test": (split name, DataFrame)}) from a file or HF
    source, holding only the columns `cfg` uses."""
    columns = [c for c in (cfg.text_col, cfg.label_col, cfg.text_pair_col) if c]
    if is_hf_source(src):
        return read_hf(src, what, cfg.label_col, columns)
    return read_table(src, what, columns), None, {}
