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
    from peft_tui.report.markdown import build_report

    st = open_store(store)
    text = build_report(st.list(), source=str(st.root))
    if not out_path:
        typer.echo(text)
        return
    write_output(out_path, text, "--out")
    typer.echo(f"report written to {out_path}")
