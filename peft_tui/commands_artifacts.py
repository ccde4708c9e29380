"""Commands on data and stored runs: `data`, `predict`, `export`, `sweep`, `report`.

Registered on the shared typer app (cli.py imports this module at its bottom). Heavy imports
(torch, transformers, peft, datasets, plotext) stay inside the command bodies.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from peft_tui.cli import (
    EXIT_FAILED,
    BatchOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    JsonOpt,
    LabelColOpt,
    ModelOpt,
    PrecisionOpt,
    SeedOpt,
    SetOpt,
    StoreOpt,
    TextColOpt,
    TextPairColOpt,
    TrustOpt,
    ValDataOpt,
    app,
    handles_errors,
    open_store,
)
from peft_tui.config import ConfigError, DataConfig, RunConfig




# ---------------------------------------------------------------- the data summary
def data_summary(cfg: RunConfig) -> dict:
    """The pre-training summary of a config's data, token counts from its model's tokenizer."""
    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits, summarize

    data = load_splits(cfg.data, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    return summarize(data, tokenizer, cfg.max_length)


def print_data_summary(cfg: RunConfig, to_stderr: bool = False) -> dict:
    """Print the summary before training (stderr when stdout carries JSON). Returns it."""
    from peft_tui.engine.data import format_summary

    doc = data_summary(cfg)
    typer.echo(format_summary(doc), err=to_stderr)
    return doc


@app.command("data")
@handles_errors
def data_cmd(
    data: str = DataOpt,
    model: str = ModelOpt,
    sets: Optional[list[str]] = SetOpt,
    text_col: str = TextColOpt,
    label_col: str = LabelColOpt,
    text_pair_col: Optional[str] = TextPairColOpt,
    val_data: Optional[str] = ValDataOpt,
    trust_remote_code: bool = TrustOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Summarise a dataset as a run would see it: rows per class, token lengths, truncation.

    Example: peft-tui data --data news.csv --set data.limit=2000 --set max_length=64"""
    from peft_tui.engine import models

    cfg = RunConfig(
        method="head", model=model, trust_remote_code=trust_remote_code,
        data=DataConfig(source=data, text_col=text_col, label_col=label_col, text_pair_col=text_pair_col,
                        val_source=val_data),
    ).with_overrides(sets or [])
    cfg.data.validate()
    models.check_model_name(cfg.model)
    doc = data_summary(cfg)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        from peft_tui.engine.data import format_summary

        typer.echo(format_summary(doc))


# ---------------------------------------------------------------- predict
PAIR_SEP = " ||| "


def _texts_from_file(path: str, cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    from pathlib import Path

    from peft_tui.engine.data import _read_table

    p = Path(path).expanduser()
    if p.suffix.lower() in (".txt", ""):
        if not p.exists():
            raise ConfigError(f"file {path!r} does not exist: pass a .txt (one text per line), .csv or .jsonl file")
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return _split_pairs(lines, cfg)
    df = _read_table(path, "input")
    col, pair_col = cfg.data.text_col, cfg.data.text_pair_col
    for c in filter(None, (col, pair_col)):
        if c not in df.columns:
            raise ConfigError(f"column {c!r} (the run's text column) not found in {path}: add it or rename the column")
    texts = [str(t) for t in df[col].tolist()]
    return texts, ([str(t) for t in df[pair_col].tolist()] if pair_col else None)


def _split_pairs(texts: list[str], cfg: RunConfig) -> tuple[list[str], list[str] | None]:
    if not cfg.data.text_pair_col:
        return texts, None
    bad = [t for t in texts if PAIR_SEP.strip() not in t]
    if bad:
        raise ConfigError(f"this run classifies sentence pairs: write each as 'first{PAIR_SEP}second' ({bad[0][:40]!r})")
    firsts, seconds = zip(*(t.split(PAIR_SEP.strip(), 1) for t in texts))
    return [a.strip() for a in firsts], [b.strip() for b in seconds]


@app.command()
@handles_errors
def predict(
    run_id: int = typer.Argument(..., help="a finished run (see `peft-tui runs`)"),
    texts: Optional[list[str]] = typer.Argument(None, help="texts to classify (pairs: 'first ||| second')"),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="a .txt (one per line), .csv or .jsonl file"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Label and class probabilities for texts, from a stored run's trained model.

    Example: peft-tui predict 3 "the battery is great" "the screen broke"   or   peft-tui predict 3 --file new.csv"""
    from peft_tui.engine.artifacts import load_run, predict as run_predict
    from peft_tui.engine.trainer import resolve_device

    if not texts and not file:
        raise ConfigError("nothing to classify: pass texts after the run id, or --file F")
    st = open_store(store)
    run = load_run(st, run_id, resolve_device(device))
    items, pairs = _split_pairs(list(texts or []), run.config)
    if file:
        more, more_pairs = _texts_from_file(file, run.config)
        items += more
        pairs = (pairs or []) + more_pairs if more_pairs is not None else pairs
    preds = run_predict(run, items, pairs)
    docs = [{"text": t, **({"pair": pairs[i]} if pairs else {}), "label": p.label, "probabilities": p.probabilities}
            for i, (t, p) in enumerate(zip(items, preds))]
    if as_json:
        print(json.dumps({"run": run_id, "labels": run.label_names, "predictions": docs}, indent=2))
        return
    from rich.table import Table

    from peft_tui.console import out

    table = Table(title=f"run {run_id} ({run.config.method}) predictions")
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    for name in run.label_names:
        table.add_column(f"p({name})", justify="right")
    for d in docs:
        text = d["text"] + (f" ||| {d['pair']}" if "pair" in d else "")
        table.add_row(text, d["label"], *(f"{d['probabilities'][n]:.3f}" for n in run.label_names))
    out.print(table)


# ---------------------------------------------------------------- export
@app.command()
@handles_errors
def export(
    run_id: int = typer.Argument(..., help="a finished run (see `peft-tui runs`)"),
    out_dir: str = typer.Option(..., "--out", "-o", help="a new (or empty) folder to write"),
    merge: bool = typer.Option(False, "--merge", help="merge LoRA / IA3 into the base weights: a plain transformers model"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write a run's model to a folder: merged (LoRA --merge), plain (full, head, bitfit), or its
    trained weights + README with loading instructions (adapters, prefix, prompt, unmerged LoRA).

    Example: peft-tui export 3 --out lora-merged --merge"""
    from peft_tui.engine.artifacts import export_run

    st = open_store(store)
    res = export_run(st, run_id, out_dir, merge)
    if as_json:
        print(json.dumps({"run": run_id, "kind": res.kind, "folder": str(res.folder), "message": res.message,
                          "files": res.files}, indent=2))
        return
    typer.echo(res.message)
    typer.echo(f"written to {res.folder}: {', '.join(res.files[:8])}{' ...' if len(res.files) > 8 else ''}")


# ---------------------------------------------------------------- sweep
@app.command()
@handles_errors
def sweep(
    method: str = typer.Option("lora", "--method", "-m", help="method name (`peft-tui methods` lists them)"),
    grid: list[str] = typer.Option(..., "--grid", "-g", help="key=v1,v2,... (repeatable: every combination runs)"),
    model: str = ModelOpt,
    data: str = DataOpt,
    sets: Optional[list[str]] = SetOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    precision: Optional[str] = PrecisionOpt,
    text_col: str = TextColOpt,
    label_col: str = LabelColOpt,
    text_pair_col: Optional[str] = TextPairColOpt,
    val_data: Optional[str] = ValDataOpt,
    trust_remote_code: bool = TrustOpt,
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every combination of a grid, run one after another, then a table and the Pareto front of
    accuracy against trainable parameters.

    Example: peft-tui sweep --method lora --grid r=1,2,4,8,16 --grid lr=1e-3,2e-3"""
    from peft_tui.cli import _execute_all, build_config
    from peft_tui.engine.sweep import grid_configs
    from peft_tui.report.pareto import pareto_front
    from peft_tui.report.table import rows_from_runs

    base = build_config(method, model, data, sets, None, text_col, label_col, val_data, trust_remote_code,
                        text_pair_col=text_pair_col, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                        precision=precision)
    configs = grid_configs(base, grid)
    print_data_summary(configs[0], to_stderr=as_json)
    typer.echo(f"sweep: {len(configs)} run(s): {', '.join(c.display_name for c in configs)}", err=as_json)
    st = open_store(store)
    results = _execute_all(st, configs, show_progress=not as_json)
    rows_db = [st.get(rid) for rid, _ in results]
    rows = rows_from_runs(rows_db)
    front = pareto_front(rows)
    if as_json:
        from peft_tui.cli import _run_json

        print(json.dumps({"runs": [_run_json(st, r) for r in rows_db], "table": rows,
                          "pareto_front": [r["id"] for r in front]}, indent=2, default=str))
    else:
        from peft_tui.console import print_comparison
        from peft_tui.report.charts import accuracy_vs_params

        print_comparison(rows, title=f"sweep of {method} on {configs[0].data.source}")
        chart = accuracy_vs_params(rows, title=f"{method} sweep: accuracy vs trainable parameters",
                                   color=sys.stdout.isatty())
        if chart:
            typer.echo(chart)
        if front:
            typer.echo("Pareto front: " + ", ".join(f"{r['name']} (run {r['id']}, {100 * r['accuracy']:.1f}%)"
                                                   for r in front))
        for r in rows_db:
            if r["status"] != "done":
                typer.echo(f"run {r['id']} ({r['name']}) {r['status']}: {r['error']}", err=True)
    if any(r["status"] != "done" for r in rows_db):
        raise typer.Exit(EXIT_FAILED)


# ---------------------------------------------------------------- report
@app.command()
@handles_errors
def report(
    out_path: Optional[str] = typer.Option(None, "--out", "-o", help="write the Markdown here (default: stdout)"),
    store: Optional[str] = StoreOpt,
) -> None:
    """A Markdown report of the store's finished runs: table, charts, Pareto front, recommendations.

    Example: peft-tui report --out report.md"""
    from peft_tui.report.markdown import build_report

    st = open_store(store)
    text = build_report(st.list(), source=str(st.root))
    if out_path:
        from pathlib import Path

        try:
            Path(out_path).expanduser().write_text(text)
        except OSError as e:
            raise ConfigError(f"cannot write {out_path} ({e.strerror}): pass another --out path") from None
        typer.echo(f"report written to {out_path}")
    else:
        typer.echo(text)
