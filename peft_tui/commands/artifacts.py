"""Using what a run trained: `predict` (label new texts) and `export` (write the model to a folder)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json
from peft_tui.commands.options import JsonOpt, StoreOpt
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError
from peft_tui.safe import safe_text

FinishedRunArg = Annotated[int, typer.Argument(help="a finished run (see `peft-tui runs`)")]
PAIR_SEP = "|||"  # a sentence pair on one line: "first ||| second"


@handles_errors
def predict(
    run_id: FinishedRunArg,
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="texts to classify (pairs: 'first ||| second')")] = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", "-f", help="a .txt (one per line), .csv or .jsonl file")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = "cpu",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label and class probabilities for texts, from a stored run's trained model.

    Example: peft-tui predict 3 "the battery is great" "the screen broke"   or   peft-tui predict 3 --file new.csv"""
    from peft_tui.engine.artifacts import load_run
    from peft_tui.engine.artifacts import predict as run_predict
    from peft_tui.engine.device import resolve_device

    if not texts and not file:
        raise ConfigError("nothing to classify: pass texts after the run id, or --file F")
    if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", device):
        raise ConfigError(f"unknown device {safe_text(device, 40)!r}: use auto, cpu, cuda or cuda:N")
    given = [t for t in texts or [] if t.strip()]
    if texts and len(given) < len(texts):
        from peft_tui.console import warn

        warn(f"{len(texts) - len(given)} empty text(s) left out")
    if file:
        input_file(file)  # before the model loads: a missing file, a folder or a FIFO is one line at once
    st = open_store(store)
    run = load_run(st, run_id, resolve_device(device))
    items, pairs = split_pairs(given, run.config)
    if file:
        more, more_pairs = texts_from_file(file, run.config)
        items += more
        pairs = (pairs or []) + more_pairs if more_pairs is not None else pairs
    if not items:
        raise ConfigError("nothing to classify: every text given is empty")
    preds = run_predict(run, items, pairs)
    docs = [{"text": t, **({"pair": pairs[i]} if pairs else {}), "label": p.label, "probabilities": p.probabilities}
            for i, (t, p) in enumerate(zip(items, preds))]
    if as_json:
        print_json({"run": run_id, "labels": run.label_names, "predictions": docs})
        return
    from rich.table import Table

    from peft_tui.console import literal, out

    table = Table(title=literal(f"run {run_id} ({run.config.method}) predictions"))
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    for name in run.label_names:
        table.add_column(literal(f"p({name})"), justify="right")
    for d in docs:
        text = d["text"] + (f" {PAIR_SEP} {d['pair']}" if "pair" in d else "")
        table.add_row(literal(text), literal(d["label"]), *(f"{d['probabilities'][n]:.3f}" for n in run.label_names))
    out.print(table)


@handles_errors
def export(
    run_id: FinishedRunArg,
    out_dir: Annotated[str, typer.Option("--out", "-o", help="a new (or empty) folder to write")],
    merge: Annotated[bool, typer.Option(
        "--merge", help="merge LoRA / IA3 into the base weights: a plain transformers model")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a run's model to a folder: merged (LoRA --merge), plain (full, head, bitfit), or its
    trained weights + README with loading instructions (adapters, prefix, prompt, unmerged LoRA).

    Example: peft-tui export 3 --out lora-merged --merge"""
    from peft_tui.engine.artifacts import export_run

    st = open_store(store)
    res = export_run(st, run_id, export_folder(out_dir, st.root), merge)
    if as_json:
        print_json({"run": run_id, "kind": res.kind, "folder": str(res.folder), "message": res.message,
                    "files": res.files})
        return
    typer.echo(safe_text(res.message))
    files = ", ".join(res.files[:8]) + (" ..." if len(res.files) > 8 else "")
    typer.echo(safe_text(f"written to {res.folder}: {files}"))


def export_folder(out_dir: str, store_root: Path) -> Path:
    """Where `export --out` may write, checked before anything is written: a new or empty folder outside
    the run store (a folder inside a run's own folder would be copied into itself), never a link."""
    out = Path(out_dir).expanduser()
    shown = safe_text(out_dir, 120)
    try:
        if out.is_symlink():
            raise ConfigError(f"--out {shown} is a symbolic link: pass a new folder (the export never follows links)")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {shown} is a file: pass a new folder")
        target, root = out.resolve(), store_root.resolve()
    except OSError as e:
        raise ConfigError(f"--out {shown} cannot be used ({e.strerror or type(e).__name__}): pass another folder") from None
    if target == root or root in target.parents:
        raise ConfigError(f"--out {shown} is inside the run store {safe_text(store_root, 120)}: "
                          "pass a folder outside it")
    return out


# ---------------------------------------------------------------- predict's inputs
MAX_TEXT_FILE_MB = 64  # a .txt file of texts to classify: more is refused before it is read


def input_file(path: str) -> Path:
    """`predict --file`: an existing regular file (not a folder, FIFO or device), or one line saying why not."""
    import stat

    shown = safe_text(path, 120)
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"--file {shown} does not exist: pass a .txt (one text per line), .csv or .jsonl file") from None
    except OSError as e:
        raise ConfigError(f"--file {shown} cannot be read ({e.strerror or type(e).__name__}): check the path") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--file {shown} is a folder: pass a .txt (one text per line), .csv or .jsonl file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--file {shown} is not a regular file (a FIFO or a device): save the texts to a file")
    return p


def texts_from_file(path: str, cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    """Texts (and second sentences, for a pair run) from a .txt file (one per line; blank lines are
    skipped) or a table file with the run's text column(s)."""
    from peft_tui.engine.data import read_table

    p = input_file(path)
    if p.suffix.lower() in (".txt", ""):
        lines = [ln for ln in read_utf8(p, path).splitlines() if ln.strip()]
        if not lines:
            raise ConfigError(f"--file {safe_text(path, 120)} has no texts: write one text per line")
        return split_pairs(lines, cfg)
    df = read_table(path, "input")
    shown = safe_text(path, 120)
    columns = [c for c in (cfg.data.text_col, cfg.data.text_pair_col) if c]
    for c in columns:
        if c not in df.columns:
            raise ConfigError(f"column {safe_text(c, 40)!r} (the run's text column) not found in {shown}: "
                              "add it or rename the column")
        if any(isinstance(v, (list, tuple, dict)) for v in df[c].tolist()):
            raise ConfigError(f"column {safe_text(c, 40)!r} in {shown} holds lists or objects, not texts: "
                              "write one text per row")
    rows = [tuple("" if v is None or v != v else str(v) for v in values)  # v != v: a missing cell (NaN)
            for values in zip(*(df[c].tolist() for c in columns))]
    kept = [r for r in rows if all(v.strip() for v in r)]
    if not kept:
        raise ConfigError(f"--file {shown} has no texts: its column {safe_text(columns[0], 40)!r} is empty")
    if len(kept) < len(rows):
        from peft_tui.console import warn

        warn(f"{len(rows) - len(kept)} row(s) of {shown} with an empty text left out")
    firsts = [r[0] for r in kept]
    return firsts, ([r[1] for r in kept] if len(columns) > 1 else None)


def read_utf8(p: Path, path: str) -> str:
    """A text file's contents, or one line saying why it cannot be read as UTF-8 text."""
    shown = safe_text(path, 120)
    size = p.stat().st_size
    if size > MAX_TEXT_FILE_MB * 1024 * 1024:
        raise ConfigError(f"--file {shown} is {size / 1024 / 1024:.0f} MB: split it into files of at most "
                          f"{MAX_TEXT_FILE_MB} MB")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"--file {shown} cannot be read ({e.strerror or type(e).__name__}): check the path") from None
    if looks_utf16(data[:4096]):
        raise ConfigError(f"--file {shown} is UTF-16 text: re-save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise ConfigError(f"--file {shown} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): "
                          "re-save it as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"--file {shown} looks binary (it holds NUL bytes): pass a text file")
    return text


def looks_utf16(head: bytes) -> bool:
    """A UTF-16 byte-order mark, or the NUL in every other byte that UTF-16 gives mostly-ASCII text."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    even, odd = head[0::2], head[1::2]
    return len(head) >= 4 and any(a.count(0) >= 0.9 * len(a) and b.count(0) == 0 for a, b in ((odd, even), (even, odd)))


def split_pairs(texts: list[str], cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    """For a run on sentence pairs, 'first ||| second' -> (firsts, seconds); otherwise (texts, None)."""
    if not cfg.data.text_pair_col:
        return texts, None
    bad = [t for t in texts if PAIR_SEP not in t]
    if bad:
        raise ConfigError(f"this run classifies sentence pairs: write each as 'first {PAIR_SEP} second' "
                          f"({safe_text(bad[0], 40)!r})")
    firsts, seconds = zip(*(t.split(PAIR_SEP, 1) for t in texts))
    return [a.strip() for a in firsts], [b.strip() for b in seconds]
