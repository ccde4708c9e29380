"""Looking at what is stored and what can run: `runs`, `show`, `methods`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json, run_json
from peft_tui.commands.options import JsonOpt, StoreOpt
from peft_tui.errors import ConfigError, OneLineError, StoreError, first_line

# every status a run can have: queued, running and the store's FINAL ones (pruned: a tuning study stopped it)
STATUSES = ("queued", "running", "done", "failed", "diverged", "cancelled", "interrupted", "pruned")


@handles_errors
def list_runs(
    status: Annotated[Optional[str], typer.Option(
        "--status", help=f"only runs with this status: {', '.join(STATUSES)}")] = None,
    study: Annotated[Optional[str], typer.Option(
        "--study", help="only the runs (trials and final runs) of this tuning study")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the runs in the store (a tuning study's runs show it in the study column: NAME #trial, or NAME
    for its final runs)."""
    if status is not None and status not in STATUSES:
        from peft_tui.safe import safe_text

        raise ConfigError(f"unknown status {safe_text(status, 40)!r}: use one of {', '.join(STATUSES)}")
    st = open_store(store)
    rows = st.list(status=status)
    if study is not None:
        rows = [r for r in rows if r.get("study") == study]
    if as_json:
        print_json([run_json(st, r) for r in rows])
        return
    from rich.table import Table

    from peft_tui.console import literal, out

    def number(res: dict, key: str, fmt: str, scale: float = 1.0) -> str:
        value = res.get(key)
        return "-" if value is None else format(scale * value, fmt)

    table = Table(title=literal(f"runs in {st.root}"))
    studied = any(r.get("study") for r in rows)
    for h in ("id", "name", "method", "model", *(("study",) if studied else ()), "status", "acc %", "train %",
              "time s", "error"):
        table.add_column(h)
    for r in rows:
        res = r["result"] or {}
        tag = (r.get("study") or "-") + (f" #{r['trial']}" if r.get("trial") is not None else "")
        cells = (
            str(r["id"]), r["name"], r["method"], r["model"], *((tag,) if studied else ()), r["status"],
            number(res, "accuracy", ".1f", 100), number(res, "trainable_pct", ".2f"),
            number(res, "train_time_s", ".1f"), r["error"] or damaged_note(r),
        )
        table.add_row(*(literal(c, limit=60) for c in cells))
    out.print(table)


def damaged_note(row: dict) -> str:
    """What is wrong with a row the store could not fully read ("" for a sound row)."""
    return f"damaged: {row['damaged']}" if row.get("damaged") else ""


@handles_errors
def show(
    run_id: Annotated[int, typer.Argument(help="run id (see `peft-tui runs`)")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one run: config, result, files, metric summary, and its estimate before it ran
    against what it measured (peak memory, time, % error). What cannot be read (a damaged
    row, damaged metric pages, a folder gone) is listed under `problems`; the rest is still shown."""
    st = open_store(store)
    row = st.get(run_id)
    doc = run_json(st, row)
    problems = [f"the stored row: {row['damaged']}"] if row.get("damaged") else []
    try:
        doc["metrics"] = {
            name: len(st.series(run_id, name)) for name in ("train_loss", "val_accuracy", "mem_used_mb")
        }
    except StoreError as e:  # the store's one line: its metric pages cannot be read
        doc["metrics"] = None
        problems.append(f"its metrics: {e}")
    try:
        folder = st.run_dir(run_id)
        doc["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    except (OneLineError, OSError) as e:
        doc["files"] = None
        problems.append(f"its files: {first_line(e)}")
    doc["problems"] = problems
    if as_json:
        print_json(doc)
        return
    from peft_tui.console import literal, literal_lines, out

    out.print(literal(f"run {row['id']}", "bold"),
              literal(f"{row['name']}  method={row['method']}  status={row['status']}"))
    if row["error"]:
        out.print(literal("error:", "red"), literal(row["error"]))
    for problem in problems:
        out.print(literal("cannot read", "red"), literal(problem))
    out.print(literal(f"folder: {doc['folder'] or '-'}"))
    out.print(literal("files: " + (", ".join(doc["files"] or []) or "-")))
    out.print("config:", literal_lines(json.dumps(row["config"], indent=2, default=str)))
    if row["result"]:
        result = {k: v for k, v in row["result"].items() if k != "versions"}
        out.print("result:", literal_lines(json.dumps(result, indent=2, default=str)))
    if doc["metrics"] is not None:
        out.print("logged points:", literal(", ".join(f"{k} {v}" for k, v in doc["metrics"].items())))
    from peft_tui.console import print_estimate

    print_estimate(doc["estimate"], doc["grade"])


@handles_errors
def methods(as_json: JsonOpt = False) -> None:
    """Each method with its parameters, defaults and default learning rate, and the pooling and head start
    it trains with (--pooling, --head-init; the same for every method that has them)."""
    from peft_tui.config import HEAD_INITS, POOLINGS, RunConfig
    from peft_tui.engine.methods import REGISTRY
    from peft_tui.engine.methods.space import describe

    defaults = RunConfig()

    def head_start(m) -> str | None:  # the baseline has no head; `head` is itself the probe fit
        return None if m.is_baseline else "it is the probe" if m.run is not None else defaults.head_init

    docs = [
        {
            "name": m.name,
            "summary": m.summary,
            "default_lr": m.default_lr,
            "params": {p.name: {"type": p.type.__name__, "default": p.default, "help": p.help,
                                **({"choices": list(p.choices)} if p.choices else {})}
                       for p in m.params.values()},
            "pooling": None if m.is_baseline else defaults.pooling,
            "head_init": head_start(m),
            "space": {k: d.describe() for k, d in m.space.items()},  # what `peft-tui tune` searches
        }
        for m in REGISTRY.values()
    ]
    if as_json:
        print_json(docs)
        return
    from rich.table import Table

    from peft_tui.console import out

    table = Table(title="methods", caption=(
        f"pooling: {'|'.join(POOLINGS)} (--pooling; auto: the checkpoint's own). head start: {'|'.join(HEAD_INITS)} "
        "(--head-init; probe: the classifier is fitted as a linear probe before the first step, LP-FT; auto: probe "
        "for runs of up to 200 steps)"))
    table.add_column("method")
    table.add_column("default lr")
    table.add_column("parameters (default)")
    table.add_column("pooling")
    table.add_column("head start")
    table.add_column("tune searches")
    table.add_column("what it does")
    for d in docs:
        params = "\n".join(
            f"{k}={v['default']!r}" + (f" ({'|'.join(v['choices'])})" if "choices" in v else "")
            for k, v in d["params"].items()
        ) or "-"
        table.add_row(d["name"], f"{d['default_lr']:g}", params, d["pooling"] or "-", d["head_init"] or "-",
                      describe(REGISTRY[d["name"]].space).replace(", ", "\n"), d["summary"])
    out.print(table)
