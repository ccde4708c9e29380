"""The `peft-tui` command. Heavy imports (torch, transformers, peft, textual) live inside command
bodies so `peft-tui --help` stays instant.

Exit codes: 0 success, 1 a run failed, 2 bad usage or input (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional

import typer

from peft_tui.config import ConfigError, DataConfig, RunConfig, store_path

app = typer.Typer(
    help="peft-tui: compare full fine-tuning, LoRA, adapters and more on a transformer classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich help formatting imports rich + markdown-it, ~0.4 s of a ~0.7 s --help here
    # (benchmarks/startup.py); command output still uses rich
    rich_markup_mode=None,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _die(message: str, code: int = EXIT_BAD_INPUT) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Turn ConfigError (bad input) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            _die(str(e))
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None

    return wrapper


# ---------------------------------------------------------------- shared options
MethodOpt = typer.Option("lora", "--method", "-m", help="method name (`peft-tui methods` lists them)")
ModelOpt = typer.Option("minilm", "--model", help="minilm (embedded), tiny (tests), a local folder, or a hub id")
DataOpt = typer.Option("synthetic", "--data", "-d", help="synthetic, or a .csv/.jsonl/.parquet file")
SetOpt = typer.Option(None, "--set", "-s", help="key=value for a run field, data.<field>, or a method parameter")
StoreOpt = typer.Option(None, "--store", help="run store folder (default ./peft-runs or $PEFT_TUI_STORE)")
JsonOpt = typer.Option(False, "--json", help="print one JSON document on stdout instead of tables")
TextColOpt = typer.Option("text", "--text-col", help="text column in the data file")
LabelColOpt = typer.Option("label", "--label-col", help="label column in the data file")
TextPairColOpt = typer.Option(None, "--text-pair-col", help="second-sentence column for sentence pairs (NLI, paraphrase)")
ValDataOpt = typer.Option(None, "--val-data", help="a separate validation file (else split from --data)")
EpochsOpt = typer.Option(None, "--epochs", help="epochs (default 3)")
LrOpt = typer.Option(None, "--lr", help="learning rate (default: the method's, see `peft-tui methods`)")
BatchOpt = typer.Option(None, "--batch-size", help="batch size (default 32)")
SeedOpt = typer.Option(None, "--seed", help="random seed (default 42)")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N")
PrecisionOpt = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16")
TrustOpt = typer.Option(False, "--trust-remote-code", help="allow a hub model's own Python code (off by default)")


def build_config(
    method: str,
    model: str,
    data: str,
    sets: list[str] | None,
    name: str | None = None,
    text_col: str = "text",
    label_col: str = "label",
    val_data: str | None = None,
    trust_remote_code: bool = False,
    text_pair_col: str | None = None,
    **run_fields: Any,
) -> RunConfig:
    cfg = RunConfig(
        method=method,
        model=model,
        data=DataConfig(source=data, text_col=text_col, label_col=label_col, val_source=val_data,
                        text_pair_col=text_pair_col),
        name=name,
        trust_remote_code=trust_remote_code,
        **{k: v for k, v in run_fields.items() if v is not None},
    )
    cfg = cfg.with_overrides(sets or [])
    from peft_tui.engine.trainer import preflight

    preflight(cfg)
    return cfg


def open_store(path: str | None):
    from peft_tui.engine.store import Store

    return Store(store_path(path))


# ---------------------------------------------------------------- commands
@app.command()
@handles_errors
def run(
    ctx: typer.Context,
    method: str = MethodOpt,
    model: str = ModelOpt,
    data: str = DataOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = typer.Option(None, "--name", help="run name (letters, digits, . _ -)"),
    epochs: Optional[int] = EpochsOpt,
    lr: Optional[float] = LrOpt,
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
    detach: bool = typer.Option(
        False, "--detach", help="train in a background process that outlives this shell (SSH logout); "
        "follow it with `peft-tui launch` or `peft-tui show ID`"),
    config_file: Optional[str] = typer.Option(
        None, "--config", help="start from a JSON or TOML config (e.g. `peft-tui show ID --json`); "
        "flags given on the command line and --set override it"),
) -> None:
    """Train one run and store it."""
    if config_file:
        cfg = _config_with_flags(ctx, config_file, sets)
    else:
        cfg = build_config(method, model, data, sets, name, text_col, label_col, val_data, trust_remote_code,
                           text_pair_col=text_pair_col, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                           device=device, precision=precision)
    if detach:
        _detach(open_store(store), cfg, as_json)
        return
    from peft_tui.commands_artifacts import print_data_summary

    print_data_summary(cfg, to_stderr=as_json)
    st = open_store(store)
    results = _execute_all(st, [cfg], show_progress=not as_json)
    run_id, result = results[0]
    row = st.get(run_id)
    if as_json:
        print(json.dumps(_run_json(st, row), indent=2, default=str))
    elif result:
        from peft_tui.console import print_comparison
        from peft_tui.report.table import rows_from_runs

        print_comparison(rows_from_runs([row]), title=f"run {run_id}")
        typer.echo(f"stored in {st.run_dir(run_id)}")
    if result is None:
        if not as_json:
            typer.echo(f"run {run_id} {row['status']}: {row['error']}", err=True)
        raise typer.Exit(EXIT_FAILED)


# command-line parameter -> (config section, field); only flags the user typed override a config file
_FLAG_FIELDS = {
    "method": ("run", "method"), "model": ("run", "model"), "name": ("run", "name"), "epochs": ("run", "epochs"),
    "lr": ("run", "lr"), "batch_size": ("run", "batch_size"), "seed": ("run", "seed"), "device": ("run", "device"),
    "precision": ("run", "precision"), "trust_remote_code": ("run", "trust_remote_code"),
    "data": ("data", "source"), "text_col": ("data", "text_col"), "label_col": ("data", "label_col"),
    "text_pair_col": ("data", "text_pair_col"), "val_data": ("data", "val_source"),
}


def _config_with_flags(ctx: typer.Context, config_file: str, sets: list[str] | None) -> RunConfig:
    import dataclasses

    from peft_tui.config import config_from_file
    from peft_tui.engine.trainer import preflight

    cfg = config_from_file(config_file)
    run_over, data_over = {}, {}
    for param, (section, field) in _FLAG_FIELDS.items():
        source = ctx.get_parameter_source(param)  # typer may vendor click: compare by name
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            (run_over if section == "run" else data_over)[field] = ctx.params[param]
    if "method" in run_over and run_over["method"] != cfg.method:
        run_over["params"] = {}  # another method's parameters do not carry over
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_over), **run_over)
    cfg = cfg.with_overrides(sets or [])
    preflight(cfg)
    return cfg


def _detach(st, cfg: RunConfig, as_json: bool) -> None:
    """Store the run as queued, then train it in a new session (immune to SIGHUP) logging to run.log."""
    import subprocess

    run_id = st.create_run(cfg)
    log = st.run_dir(run_id) / "run.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from peft_tui.cli import main; main()", "execute-stored", str(run_id),
             "--store", str(st.root)],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True, close_fds=True,
        )
    if as_json:
        print(json.dumps({"id": run_id, "status": "queued", "pid": proc.pid, "log": str(log)}))
    else:
        typer.echo(f"run {run_id} training in the background (pid {proc.pid}); log: {log}")
        typer.echo(f"follow it with `peft-tui launch --store {st.root}` or `peft-tui show {run_id}`")


@app.command("execute-stored", hidden=True)
@handles_errors
def execute_stored(run_id: int, store: Optional[str] = StoreOpt) -> None:
    """Train a run that is already in the store as queued (used by `run --detach`)."""
    from peft_tui.engine.trainer import execute

    st = open_store(store)
    row = st.get(run_id)
    if row["status"] != "queued":
        raise ConfigError(f"run {run_id} is {row['status']}, not queued: nothing to do")
    result = execute(st, run_id, RunConfig.from_dict(row["config"]), st)
    if result is None:
        raise typer.Exit(EXIT_FAILED)


def _execute_all(st, configs: list[RunConfig], show_progress: bool) -> list[tuple[int, dict | None]]:
    """Queue every config in the store, then run them one after another (a failure does not stop the rest)."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.events import fan_out
    from peft_tui.engine.trainer import execute

    ids = [st.create_run(c) for c in configs]
    out = []
    with ProgressSink(enabled=None if show_progress else False) as progress:
        for run_id, cfg in zip(ids, configs):
            out.append((run_id, execute(st, run_id, cfg, fan_out(st, progress))))
    return out


def _run_json(st, row: dict) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "method": row["method"],
        "status": row["status"],
        "error": row["error"],
        "folder": str(st.root / "runs" / row["folder"]) if row.get("folder") else None,
        "config": row["config"],
        "result": row["result"],
    }


@app.command()
@handles_errors
def compare(
    methods: str = typer.Option("full,lora,adapters", "--methods", help="comma-separated method names"),
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
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="add the TF-IDF + logistic regression row"),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="also write the table to this CSV file"),
    trust_remote_code: bool = TrustOpt,
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The same model and data through several methods, then one comparison table.

    The learning rate is each method's default (`peft-tui methods`); `--set lr=...` overrides all."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    configs = [
        build_config(m, model, data, _sets_for(m, sets), None, text_col, label_col, val_data, trust_remote_code,
                     text_pair_col=text_pair_col, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                     precision=precision)
        for m in names
    ]
    from peft_tui.commands_artifacts import print_data_summary

    print_data_summary(configs[0], to_stderr=as_json)
    st = open_store(store)
    results = _execute_all(st, configs, show_progress=not as_json)
    run_ids = [rid for rid, _ in results]
    if baseline:
        from peft_tui.engine.baseline import tfidf_baseline
        from peft_tui.engine.events import RunFinished

        base_cfg = RunConfig(method="tfidf", model="tfidf+logreg", data=configs[0].data, name="tfidf",
                             seed=configs[0].seed)
        rid = st.create_run(base_cfg, validate=False)
        res = tfidf_baseline(base_cfg.data, base_cfg.seed)
        res["run_id"] = rid
        st(RunFinished(rid, res))
        run_ids.append(rid)
    from peft_tui.report.table import rows_from_runs, to_csv

    rows_db = [st.get(r) for r in run_ids]
    rows = rows_from_runs(rows_db)
    if csv_path:
        with open(csv_path, "w", newline="") as fh:
            fh.write(to_csv(rows))
    if as_json:
        print(json.dumps({"runs": [_run_json(st, r) for r in rows_db], "table": rows}, indent=2, default=str))
    else:
        from peft_tui.console import print_comparison

        print_comparison(rows, title=f"{model} on {configs[0].data.source}")
        for r in rows_db:
            if r["status"] != "done":
                typer.echo(f"run {r['id']} ({r['method']}) {r['status']}: {r['error']}", err=True)
        if csv_path:
            typer.echo(f"table written to {csv_path}")
    if any(r["status"] != "done" for r in rows_db):
        raise typer.Exit(EXIT_FAILED)


def _sets_for(method: str, sets: list[str] | None) -> list[str]:
    """In a comparison, a method parameter given with --set applies only to methods that have it."""
    from peft_tui.engine.methods import get_method

    params = get_method(method).params
    run_keys = set(RunConfig.__dataclass_fields__) | {f"data.{k}" for k in DataConfig.__dataclass_fields__}
    run_keys |= set(DataConfig.__dataclass_fields__)
    out = []
    for pair in sets or []:
        key = pair.split("=", 1)[0].strip()
        if key in params or key in run_keys:
            out.append(pair)
        elif not any(key in get_method(m).params for m in _all_methods()):
            out.append(pair)  # unknown everywhere: let validation report it
    return out


def _all_methods() -> list[str]:
    from peft_tui.engine.methods import method_names

    return method_names()


@app.command("runs")
@handles_errors
def list_runs(
    status: Optional[str] = typer.Option(None, "--status", help="only runs with this status"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the runs in the store."""
    st = open_store(store)
    rows = st.list(status=status)
    if as_json:
        print(json.dumps([_run_json(st, r) for r in rows], indent=2, default=str))
        return
    from rich.table import Table

    from peft_tui.console import out

    table = Table(title=f"runs in {st.root}")
    for h in ("id", "name", "method", "model", "status", "acc %", "train %", "time s", "error"):
        table.add_column(h)
    for r in rows:
        res = r["result"] or {}
        table.add_row(
            str(r["id"]), r["name"], r["method"], r["model"], r["status"],
            f"{100 * res['accuracy']:.1f}" if "accuracy" in res else "-",
            f"{res['trainable_pct']:.2f}" if "trainable_pct" in res else "-",
            f"{res['train_time_s']:.1f}" if "train_time_s" in res else "-",
            (r["error"] or "")[:60],
        )
    out.print(table)


@app.command()
@handles_errors
def show(
    run_id: int = typer.Argument(..., help="run id (see `peft-tui runs`)"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Everything about one run: config, result, files and metric summary."""
    st = open_store(store)
    row = st.get(run_id)
    doc = _run_json(st, row)
    doc["metrics"] = {
        name: len(st.series(run_id, name)) for name in ("train_loss", "val_accuracy", "mem_used_mb")
    }
    folder = st.run_dir(run_id)
    doc["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    from rich.pretty import Pretty

    from peft_tui.console import out

    out.print(f"[bold]run {row['id']}[/] {row['name']}  method={row['method']}  status={row['status']}")
    if row["error"]:
        out.print(f"[red]error:[/] {row['error']}")
    out.print(f"folder: {folder}")
    out.print("files:", ", ".join(doc["files"]) or "-")
    out.print("config:", Pretty(row["config"]))
    if row["result"]:
        out.print("result:", Pretty({k: v for k, v in row["result"].items() if k != "versions"}))
    out.print("logged points:", doc["metrics"])


@app.command()
@handles_errors
def methods(as_json: bool = JsonOpt) -> None:
    """Each method with its parameters, defaults and default learning rate."""
    from peft_tui.engine.methods import REGISTRY

    docs = [
        {
            "name": m.name,
            "summary": m.summary,
            "default_lr": m.default_lr,
            "params": {p.name: {"type": p.type.__name__, "default": p.default, "help": p.help,
                                **({"choices": list(p.choices)} if p.choices else {})}
                       for p in m.params.values()},
        }
        for m in REGISTRY.values()
    ]
    if as_json:
        print(json.dumps(docs, indent=2))
        return
    from rich.table import Table

    from peft_tui.console import out

    table = Table(title="methods")
    table.add_column("method")
    table.add_column("default lr")
    table.add_column("parameters (default)")
    table.add_column("what it does")
    for d in docs:
        params = "\n".join(
            f"{k}={v['default']!r}" + (f" ({'|'.join(v['choices'])})" if "choices" in v else "")
            for k, v in d["params"].items()
        ) or "-"
        table.add_row(d["name"], f"{d['default_lr']:g}", params, d["summary"])
    out.print(table)


@app.command()
@handles_errors
def launch(
    model: str = ModelOpt,
    data: str = DataOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Open the dashboard: queue runs, watch them train, compare and export the results."""
    from peft_tui.ui.app import create_app

    create_app(model=model, data=data, store=store).run()


from peft_tui import commands_artifacts  # noqa: E402,F401  (data, predict, export, sweep, report)


from peft_tui import commands_reliability  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
