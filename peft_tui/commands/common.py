"""What every command module shares: exit codes, the error decorator, opening the store, the JSON
shape of a run, and the data summary printed before training.

Exit codes: 0 success, 1 a run failed, 2 bad usage or input (one line on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click
import typer

from peft_tui.config import RunConfig, store_path
from peft_tui.errors import ConfigError, first_line
from peft_tui.safe import safe_lines, safe_text

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


_json_stdout: list[TextIO] = []  # where print_json writes while a --json command runs (see handles_errors)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def handles_errors(fn: Callable) -> Callable:
    """Every way a command can end badly becomes one line on stderr and an exit code, never a traceback:
    ConfigError (bad input) exits 2; an OSError says which path and exits 2 (1 for a full disk); Ctrl-C
    exits 130; anything else is one line and exit 1 (PEFT_TUI_DEBUG=1 shows the traceback).
    With --json, stdout carries only the JSON document: whatever else prints (a model's own code) goes
    to stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        if as_json:
            _json_stdout.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise  # an exit code chosen on purpose, or click's own usage error
        except ConfigError as e:
            fail(str(e))
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as e:
            if os.environ.get("PEFT_TUI_DEBUG"):
                raise
            where = f" ({safe_text(e.filename, 120)})" if e.filename else ""
            if e.errno in DISK_FULL:
                fail(f"the disk is full{where}: free some space and run it again", EXIT_FAILED)
            fail(f"{e.strerror or first_line(e)}{where}: check the path and its permissions")
        except Exception as e:
            if os.environ.get("PEFT_TUI_DEBUG"):
                raise
            fail(f"unexpected {first_line(e)} (rerun with PEFT_TUI_DEBUG=1 for the traceback, and report it)",
                 EXIT_FAILED)
        finally:
            if as_json:
                _json_stdout.pop()

    return wrapper


def open_store(path: str | None) -> Store:
    from peft_tui.engine.store import Store

    return Store(store_path(path))


def print_json(doc: Any) -> None:
    out = _json_stdout[-1] if _json_stdout else sys.stdout
    out.write(json.dumps(doc, indent=2, default=str) + "\n")
    out.flush()


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
        "estimate": row.get("estimate"),  # before the run (engine/estimate.py) ...
        "grade": row.get("grade"),  # ... and its error against what the run measured
    }


def write_output(path: str, text: str, option: str) -> None:
    """Write a file the user named with `option`; a path that cannot be written is bad input."""
    from pathlib import Path

    try:
        with open(Path(path).expanduser(), "w", newline="") as fh:
            fh.write(text)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}): pass another {option} path") from None


def check_output_path(path: str, option: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, or a file in a folder
    that does not exist or is not writable."""
    from pathlib import Path

    target = Path(path).expanduser()
    shown = safe_text(path, 120)
    if target.is_dir():
        raise ConfigError(f"{option} {shown} is a folder: pass a file path, e.g. {option} results.csv")
    parent = target.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {shown}: the folder {safe_text(parent, 120)} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{option} {shown}: the folder is not writable: pass another {option} path")


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

    typer.echo(safe_lines(format_summary(data_summary(cfg, data))), err=to_stderr)  # labels shown literally
