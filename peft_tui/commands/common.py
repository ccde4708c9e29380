"""What every command module shares: exit codes, the error decorator, opening the store, the JSON
shape of a run, and the data summary printed before training.

Exit codes: 0 success, 1 a run failed, 2 bad usage or input (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from peft_tui.config import RunConfig, store_path
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Turn ConfigError (bad input) into one line on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            fail(str(e))
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def open_store(path: str | None) -> Store:
    from peft_tui.engine.store import Store

    return Store(store_path(path))


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def run_json(st: Store, row: dict) -> dict:
    """A stored run as `--json` prints it (and `run --config` reads it back)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "method": row["method"],
        "status": row["status"],
        "error": row["error"],
        "folder": str(st.root / "runs" / row["folder"]) if row.get("folder") else None,
        "config": row["config"],
        "result": row["result"],
        "startup_s": row.get("startup_s"),  # the worker start-up this run paid (launch/worker.py)
    }


def write_output(path: str, text: str, option: str) -> None:
    """Write a file the user named with `option`; a path that cannot be written is bad input."""
    from pathlib import Path

    try:
        with open(Path(path).expanduser(), "w", newline="") as fh:
            fh.write(text)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}): pass another {option} path") from None


def exit_if_failed(rows: list[dict], quiet: bool) -> None:
    """Exit 1 when a run did not finish, saying why on stderr (unless `quiet`: JSON carries it)."""
    failed = [r for r in rows if r["status"] != "done"]
    if not quiet:
        for r in failed:
            typer.echo(f"run {r['id']} ({r['name']}) {r['status']}: {r['error']}", err=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def data_summary(cfg: RunConfig, data: DataSplits) -> dict:
    """The pre-training summary of loaded splits, token counts from the config's tokenizer."""
    from peft_tui.engine import models
    from peft_tui.engine.data import summarize

    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    return summarize(data, tokenizer, cfg.max_length)


def print_data_summary(cfg: RunConfig, data: DataSplits, to_stderr: bool = False) -> None:
    """The summary before training (on stderr when stdout carries JSON)."""
    from peft_tui.engine.data import format_summary

    typer.echo(format_summary(data_summary(cfg, data)), err=to_stderr)
