"""`peft-tui report`: the store's finished runs as one Markdown document."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, write_output
from peft_tui.commands.options import StoreOpt


@handles_errors
def report(
    out_path: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="write the Markdown here (default: stdout)")] = None,
    store: StoreOpt = None,
) -> None:
    """A Markdown report of the store's finished runs: table, charts, Pareto front, recommendations.

    Example: peft-tui report --out report.md"""
    from peft_tui.engine.estimate import grade_run
    from peft_tui.report.markdown import build_report
    from peft_tui.safe import safe_lines, safe_text

    st = open_store(store)
    # names and labels from runs, literally
    text = safe_lines(build_report(st.list(), source=str(st.root), grade=grade_run))
    if not out_path:
        typer.echo(text)
        return
    write_output(out_path, text, "--out")
    typer.echo(f"report written to {safe_text(out_path, 200)}")
