"""Using what a run trained: `predict` (label new texts) and `export` (write the model to a folder)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json
from peft_tui.commands.options import JsonOpt, StoreOpt
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError

FinishedRunArg = Annotated[int, typer.Argument(help="a finished run (see `peft-tui runs`)")]
PAIR_SEP = "|||"  # a sentence pair on one line: "first ||| second"


@handles_errors
def predict(
    run_id: FinishedRunArg,
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="texts to classify (pairs: 'first ||| second')")] = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", "-f", help="a .txt (one per line), .csv or .jsonl file")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N")] = "cpu",
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
    st = open_store(store)
    run = load_run(st, run_id, resolve_device(device))
    items, pairs = split_pairs(list(texts or []), run.config)
    if file:
        more, more_pairs = texts_from_file(file, run.config)
        items += more
        pairs = (pairs or []) + more_pairs if more_pairs is not None else pairs
    preds = run_predict(run, items, pairs)
    docs = [{"text": t, **({"pair": pairs[i]} if pairs else {}), "label": p.label, "probabilities": p.probabilities}
            for i, (t, p) in enumerate(zip(items, preds))]
    if as_json:
        print_json({"run": run_id, "labels": run.label_names, "predictions": docs})
        return
    from rich.table import Table

    from peft_tui.console import literal, out

    table = Table(title=f"run {run_id} ({run.config.method}) predictions")
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
    res = export_run(st, run_id, out_dir, merge)
    if as_json:
        print_json({"run": run_id, "kind": res.kind, "folder": str(res.folder), "message": res.message,
                    "files": res.files})
        return
    typer.echo(res.message)
    typer.echo(f"written to {res.folder}: {', '.join(res.files[:8])}{' ...' if len(res.files) > 8 else ''}")


# ---------------------------------------------------------------- predict's inputs
def texts_from_file(path: str, cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    """Texts (and second sentences, for a pair run) from a .txt file (one per line) or a table file
    with the run's text column(s)."""
    from pathlib import Path

    from peft_tui.engine.data import read_table

    p = Path(path).expanduser()
    if p.suffix.lower() in (".txt", ""):
        if not p.exists():
            raise ConfigError(f"file {path!r} does not exist: pass a .txt (one text per line), .csv or .jsonl file")
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return split_pairs(lines, cfg)
    df = read_table(path, "input")
    col, pair_col = cfg.data.text_col, cfg.data.text_pair_col
    for c in filter(None, (col, pair_col)):
        if c not in df.columns:
            raise ConfigError(f"column {c!r} (the run's text column) not found in {path}: add it or rename the column")
    texts = [str(t) for t in df[col].tolist()]
    return texts, ([str(t) for t in df[pair_col].tolist()] if pair_col else None)


def split_pairs(texts: list[str], cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    """For a run on sentence pairs, 'first ||| second' -> (firsts, seconds); otherwise (texts, None)."""
    if not cfg.data.text_pair_col:
        return texts, None
    bad = [t for t in texts if PAIR_SEP not in t]
    if bad:
        raise ConfigError(f"this run classifies sentence pairs: write each as 'first {PAIR_SEP} second' ({bad[0][:40]!r})")
    firsts, seconds = zip(*(t.split(PAIR_SEP, 1) for t in texts))
    return [a.strip() for a in firsts], [b.strip() for b in seconds]
