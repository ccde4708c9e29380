"""What every command module shares: exit codes, the error decorator, opening the store, the JSON
shape of a run, and the data summary printed before training.

Exit codes: 0 success, 1 a run failed (or the machine failed it: a full disk, an I/O error), 2 bad usage or
input; the reason is one line on stderr, with no traceback and no control characters.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import typer
import typer.core

from peft_tui.config import RunConfig, store_path
from peft_tui.errors import ConfigError, OneLineError, disk_full_at, first_line
from peft_tui.safe import safe_lines, safe_text

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store

from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer's own copy of click (pyproject pins it)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on stderr (values from users and files in it shown literally), then exit with `code`."""
    sys.stderr.write(f"error: {safe_text(message)}\n")
    raise typer.Exit(code)


_json_stdout: list[TextIO] = []  # where print_json writes while a --json command runs (see handles_errors)


def debug_or_fail(e: Exception, line: str) -> NoReturn:
    """Exit 1 with `line`; with PEFT_TUI_DEBUG set, raise `e` instead (its traceback is wanted)."""
    if os.environ.get("PEFT_TUI_DEBUG"):
        raise e
    fail(line, EXIT_FAILED)


def handles_errors(fn: Callable) -> Callable:
    """Every way a command can end badly becomes one line on stderr and an exit code, never a traceback:
    ConfigError (bad input) exits 2 (1 when a full disk is behind it); a failed read or write of the
    machine (OSError) or a broken store database exits 1; Ctrl-C or SIGTERM becomes KeyboardInterrupt (so
    what a command writes is cleaned up) and exits 130 or 143; anything else is one line and exit 1
    (PEFT_TUI_DEBUG=1 shows the traceback). With --json, stdout carries only the JSON document: whatever
    else prints (a model's own code) goes to stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import sqlite3

        from peft_tui.engine.launch.client import interrupts

        as_json = bool(kwargs.get("as_json"))
        if as_json:
            _json_stdout.append(sys.stdout)
        with interrupts() as stopped:
            try:
                with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                    return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, ClickException):
                raise  # an exit code chosen on purpose, or click's own usage error
            except OneLineError as e:
                fail(str(e), EXIT_FAILED if disk_full_at(e) is not None else EXIT_BAD_INPUT)
            except KeyboardInterrupt:
                signum = stopped.signum or signal.SIGINT
                sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
                raise typer.Exit(128 + signum) from None
            except OSError as e:
                debug_or_fail(e, os_error_line(e))
            except sqlite3.Error as e:
                debug_or_fail(e, f"the run store's database failed ({safe_text(e, 160)}): run `peft-tui doctor`, "
                              "or pass another --store")
            except Exception as e:
                debug_or_fail(e, f"unexpected {first_line(e)} (rerun with PEFT_TUI_DEBUG=1 for the traceback, "
                              "and report it)")
            finally:
                if as_json:
                    _json_stdout.pop()


    return wrapper


def os_error_line(e: OSError) -> str:
    """An OSError the machine raised (not bad input) as one line: what failed, where, and what to do."""
    where = f" at {safe_text(e.filename, 160)}" if e.filename else ""
    if disk_full_at(e) is not None:
        return f"disk full{where}: free some space and try again"
    return f"{e.strerror or type(e).__name__}{where}: check the path and its permissions, then try again"


class OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option or command, a missing argument, a value of the wrong type) as one
    line on stderr and exit 2, like every other error, instead of click's usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:  # `peft-tui` alone: the help, as asked for
            e.show()
            sys.exit(e.exit_code)
        except ClickException as e:
            where = getattr(e, "ctx", None)
            hint = f" (see `{safe_text(where.command_path)} --help`)" if where else ""
            sys.stderr.write(f"error: {safe_text(e.format_message()).rstrip('.')}{hint}\n")
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.stderr.write("interrupted\n")
            sys.exit(130)  # 128 + SIGINT
        sys.exit(rv if isinstance(rv, int) else 0)


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


def json_stdout() -> TextIO:
    """Where a --json document goes: the real stdout, even while a command's prints go to stderr."""
    return _json_stdout[-1] if _json_stdout else sys.stdout


def print_json(doc: Any) -> None:
    out = json_stdout()
    out.write(json.dumps(doc, indent=2, default=str) + "\n")
    out.flush()


def run_json(st: Store, row: dict) -> dict:
    """A stored run as `--json` prints it (and `run --config` reads it back), with its grade computed here."""
    from peft_tui.engine.estimate import grade_run

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
        "grade": grade_run(row),  # ... and its error against what the run measured
    }


def write_output(path: str, text: str, option: str) -> None:
    """Write a file the user named with `option`; a path that cannot be written is bad input."""
    from pathlib import Path

    try:
        with open(Path(path).expanduser(), "w", newline="") as fh:
            fh.write(text)
    except OSError as e:
        raise ConfigError(f"cannot write {safe_text(path, 160)} ({e.strerror or type(e).__name__}): pass another {option} path") from None


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
            typer.echo(safe_text(f"run {r['id']} ({r['name']}) {r['status']}: {r['error']}"), err=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def data_summary(cfg: RunConfig, data: DataSplits, cache_dir: Path | None = None) -> dict:
    """The pre-training summary of loaded splits, token counts as the config's tokenizer makes them: read
    from the store's cache (`cache_dir`) when this data was counted before, else counted (the embedded
    tokenizer without importing torch: engine/estimate/lengths.py) and kept there."""
    from peft_tui.engine.data import summarize
    from peft_tui.engine.estimate.lengths import cached_lengths

    def count(texts: list[str], pairs: list[str] | None) -> list[int]:
        return cached_lengths(cache_dir, cfg.model, cfg.trust_remote_code, texts, pairs)

    return summarize(data, max_length=cfg.max_length, count=count)


def print_data_summary(cfg: RunConfig, data: DataSplits, to_stderr: bool = False,
                       cache_dir: Path | None = None) -> None:
    """The summary before training (on stderr when stdout carries JSON)."""
    from peft_tui.engine.data import format_summary

    typer.echo(safe_lines(format_summary(data_summary(cfg, data, cache_dir))), err=to_stderr)  # labels shown literally
