"""What every command module shares: exit codes, the error decorator, opening the store, the JSON
shape of a run, and the data summary printed before training.

Exit codes: 0 success, 1 a run failed (or the machine failed it: a full disk, an I/O error), 2 bad usage or
input; the reason is one line on stderr, with no traceback and no control characters.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from peft_tui.config import RunConfig, store_path
from peft_tui.errors import ConfigError, disk_full_at
from peft_tui.safe import safe_text

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on stderr (values from users and files in it shown literally), then exit with `code`."""
    sys.stderr.write(f"error: {safe_text(message)}\n")
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Turn ConfigError (bad input) into one line on stderr and exit code 2; a full disk, another failed
    read or write of the machine (OSError) or a broken store database into one line and exit 1; Ctrl-C or
    SIGTERM into KeyboardInterrupt (so what a command writes is cleaned up) and exit 130 or 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import sqlite3

        from peft_tui.engine.launch.client import interrupts

        with interrupts() as stopped:
            try:
                return fn(*args, **kwargs)
            except ConfigError as e:
                fail(str(e), EXIT_FAILED if disk_full_at(e) is not None else EXIT_BAD_INPUT)
            except KeyboardInterrupt:
                signum = stopped.signum or signal.SIGINT
                sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
                raise typer.Exit(128 + signum) from None
            except OSError as e:
                fail(os_error_line(e), EXIT_FAILED)
            except sqlite3.Error as e:
                fail(f"the run store's database failed ({e}): run `peft-tui doctor`, or pass another --store",
                     EXIT_FAILED)

    return wrapper


def os_error_line(e: OSError) -> str:
    """An OSError the machine raised (not bad input) as one line: what failed, where, and what to do."""
    where = f" at {safe_text(e.filename, 160)}" if e.filename else ""
    if disk_full_at(e) is not None:
        return f"disk full{where}: free some space and try again"
    return f"{e.strerror or type(e).__name__}{where}: check the path and its permissions, then try again"


def open_store(path: str | None, writable: bool = False) -> Store:
    """The run store at --store (or $PEFT_TUI_STORE, or ./peft-runs); a path the system cannot use at all
    (too long, a file in the way, a loop of links) is bad input, one line. A store the user cannot write
    opens read-only; with `writable` (a command that will queue runs) that is one line at once, before
    any data is loaded or summarised."""
    from peft_tui.engine.store import Store

    root = store_path(path)
    try:
        st = Store(root)
    except OSError as e:
        raise ConfigError(f"store path {safe_text(repr(str(root)), 120)} cannot be used "
                          f"({e.strerror or type(e).__name__}): pass another folder with --store") from None
    if writable and st.readonly:
        raise ConfigError(f"store folder {safe_text(root, 160)} is not writable ({st.readonly_reason}): "
                          "pass another folder with --store")
    return st


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
        raise ConfigError(f"cannot write {safe_text(path, 160)} ({e.strerror or type(e).__name__}): pass another {option} path") from None


def exit_if_failed(rows: list[dict], quiet: bool) -> None:
    """Exit 1 when a run did not finish, saying why on stderr (unless `quiet`: JSON carries it)."""
    failed = [r for r in rows if r["status"] != "done"]
    if not quiet:
        for r in failed:
            typer.echo(safe_text(f"run {r['id']} ({r['name']}) {r['status']}: {r['error']}"), err=True)
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
