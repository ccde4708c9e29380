"""Using what a run trained: `predict` (label new texts) and `export` (write the model to a folder)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json
from peft_tui.commands.options import JsonOpt, StoreOpt, TrustOpt
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError
from peft_tui.safe import safe_text

FinishedRunArg = Annotated[int, typer.Argument(help="a finished run (see `peft-tui runs`)")]
PAIR_SEP = "|||"  # a sentence pair on one line: "first ||| second"
PREDICT_CHUNK = 1024  # texts tokenised, classified and written at a time


@handles_errors
def predict(
    run_id: FinishedRunArg,
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="texts to classify (pairs: 'first ||| second')")] = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", "-f", help="a .txt (one per line), .csv or .jsonl file, at most 1,000,000 rows (MAX_PREDICT_ROWS); "
        "results are written as they come (tab-separated lines, or with --json one document)")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = "cpu",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Label and class probabilities for texts, from a stored run's trained model.

    With --file the texts are classified in chunks and each chunk's results are written at once (a
    progress bar on stderr, then the rows per second); a file of more than MAX_PREDICT_ROWS rows is refused.

    Example: peft-tui predict 3 "the battery is great" "the screen broke"   or   peft-tui predict 3 --file new.csv"""
    from peft_tui.engine.artifacts import load_run, stored_config
    from peft_tui.engine.device import resolve_device
    from peft_tui.limits import MAX_PREDICT_ROWS

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
    config = stored_config(st, run_id, trust_remote_code)  # the run's columns, before its model loads
    items, pairs = split_pairs(given, config)
    if file:
        more, more_pairs = texts_from_file(file, config)
        items += more
        pairs = (pairs or []) + more_pairs if more_pairs is not None else pairs
    if not items:
        raise ConfigError("nothing to classify: every text given is empty")
    if len(items) > MAX_PREDICT_ROWS:
        raise ConfigError(f"{len(items):,} texts to classify, above the {MAX_PREDICT_ROWS:,} one predict takes: "
                          "split the file into parts")
    run = load_run(st, run_id, resolve_device(device), trust_remote_code)
    if as_json or file:
        stream_predictions(run, items, pairs, as_json)
        return
    from rich.table import Table

    from peft_tui.console import literal, out
    from peft_tui.engine.artifacts import predict as run_predict

    preds = run_predict(run, items, pairs)
    table = Table(title=literal(f"run {run_id} ({run.config.method}) predictions"))
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    for name in run.label_names:
        table.add_column(literal(f"p({name})"), justify="right")
    for i, (text, p) in enumerate(zip(items, preds)):
        text += f" {PAIR_SEP} {pairs[i]}" if pairs else ""
        table.add_row(literal(text), literal(p.label), *(f"{p.probabilities[n]:.3f}" for n in run.label_names))
    out.print(table)


def stream_predictions(run, items: list[str], pairs: list[str] | None, as_json: bool) -> None:
    """Classify `items` PREDICT_CHUNK at a time, writing each chunk's results at once: with `as_json` one
    JSON document {"run", "labels", "predictions": [...]} written piece by piece, else a header and one
    tab-separated line per text (label, probabilities, text). Progress on stderr (a terminal: a bar), then
    one line with the rows per second. Memory: the texts and one chunk's results."""
    import json
    import sys
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from peft_tui.commands.common import json_stdout
    from peft_tui.console import err
    from peft_tui.engine.artifacts import predict as run_predict

    stream = json_stdout() if as_json else sys.stdout
    names = run.label_names
    if as_json:
        stream.write(json.dumps({"run": run.run_id, "labels": names})[:-1] + ', "predictions": [\n')
    else:
        stream.write("\t".join(["label", *(safe_text(f"p({n})") for n in names), "text"]) + "\n")
    t0, first = time.perf_counter(), True
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("predict", total=len(items), rate="")
        for b in range(0, len(items), PREDICT_CHUNK):
            chunk, chunk_pairs = items[b : b + PREDICT_CHUNK], pairs[b : b + PREDICT_CHUNK] if pairs else None
            lines = []
            for i, p in enumerate(run_predict(run, chunk, chunk_pairs)):
                if as_json:
                    doc = {"text": chunk[i], **({"pair": chunk_pairs[i]} if chunk_pairs else {}), "label": p.label,
                           "probabilities": p.probabilities}
                    lines.append(("" if first else ",\n") + json.dumps(doc))
                    first = False
                else:
                    text = chunk[i] + (f" {PAIR_SEP} {chunk_pairs[i]}" if chunk_pairs else "")
                    lines.append("\t".join([safe_text(p.label), *(f"{p.probabilities[n]:.4f}" for n in names),
                                            safe_text(text)]) + "\n")
            stream.write("".join(lines))
            stream.flush()
            done = min(b + PREDICT_CHUNK, len(items))
            bar.update(task, completed=done, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} rows/s")
    if as_json:
        stream.write("\n]}\n")
        stream.flush()
    elapsed = time.perf_counter() - t0
    sys.stderr.write(f"predicted {len(items):,} texts in {elapsed:.1f} s ({len(items) / max(elapsed, 1e-9):,.0f} rows/s)\n")


@handles_errors
def export(
    run_id: FinishedRunArg,
    out_dir: Annotated[str, typer.Option("--out", "-o", help="a new (or empty) folder to write")],
    merge: Annotated[bool, typer.Option(
        "--merge", help="merge LoRA / IA3 into the base weights: a plain transformers model")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Write a run's model to a folder: merged (LoRA --merge), plain (full, head, bitfit), or its
    trained weights + README with loading instructions (adapters, prefix, prompt, unmerged LoRA).

    Example: peft-tui export 3 --out lora-merged --merge"""
    from peft_tui.engine.artifacts import export_run

    st = open_store(store)
    res = export_run(st, run_id, export_folder(out_dir, st.root), merge, trust_remote_code)
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
    nearest = next(p for p in (target, *target.parents) if p.exists())  # the folder the export is made in
    if not nearest.is_dir():
        raise ConfigError(f"--out {shown} is inside a file ({safe_text(nearest, 120)}): pass a new folder")
    try:  # a folder made and removed again: permissions, a read-only file system, /proc, ...
        os.rmdir(tempfile.mkdtemp(prefix=".peft-tui-probe-", dir=nearest))
    except OSError as e:
        raise ConfigError(f"--out {shown} cannot be written ({e.strerror or type(e).__name__} in "
                          f"{safe_text(nearest, 120)}): pass another folder") from None
    return out


# ---------------------------------------------------------------- predict's inputs
# read by the engine's bounded readers (engine/data/files.py), the same limits and one-line errors as
# training data; "--file" is how those errors name the file
FILE_OPTION = "--file"
INPUT_SUFFIXES = (".txt", "")  # one text per line; any other suffix is a table (.csv, .tsv, .jsonl, ...)


def input_file(path: str) -> Path:
    """`predict --file`, checked before the model loads: an existing, non-empty regular file under the size
    limit (not a folder, FIFO or device) of a type predict reads; else one line saying why not."""
    from peft_tui.engine.data.files import TABLE_SUFFIXES, check_file, subject

    if Path(path).suffix.lower() not in (*INPUT_SUFFIXES, *TABLE_SUFFIXES):
        raise ConfigError(f"{subject(FILE_OPTION, path)} has an unknown type: use a .txt (one text per line), "
                          ".csv, .tsv, .jsonl or .parquet file")
    return check_file(path, FILE_OPTION, needs="it has no texts; write one text per line")


def texts_from_file(path: str, cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    """Texts (and second sentences, for a pair run) from a .txt file (one per line; blank lines are
    skipped) or a table file with the run's text column(s); rows with an empty text are left out."""
    from peft_tui.engine.data.files import read_lines, read_table, subject, text_values

    input_file(path)
    if Path(path).suffix.lower() in INPUT_SUFFIXES:
        return split_pairs(read_lines(path, FILE_OPTION), cfg)
    columns = [c for c in (cfg.data.text_col, cfg.data.text_pair_col) if c]
    df = read_table(path, FILE_OPTION, columns)
    shown = subject(FILE_OPTION, path)
    for c in columns:
        if c not in df.columns:
            have = ", ".join(safe_text(n, 40) for n in df.attrs.get("all_columns", list(df.columns))[:10])
            raise ConfigError(f"column {safe_text(c, 40)!r} (the run's text column) not found in {shown} "
                              f"(columns: {have}): add it or rename the column")
    rows = list(zip(*(text_values(df[c].tolist(), c, path)[0] for c in columns)))
    kept = [r for r in rows if all(v is not None for v in r)]
    if not kept:
        raise ConfigError(f"{shown} has no texts: its column {safe_text(columns[0], 40)!r} is empty")
    if len(kept) < len(rows):
        from peft_tui.console import warn

        warn(f"{len(rows) - len(kept)} row(s) of {shown} with an empty text left out")
    return [r[0] for r in kept], ([r[1] for r in kept] if len(columns) > 1 else None)


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
