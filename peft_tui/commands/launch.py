"""`peft-tui launch`: the dashboard."""

from __future__ import annotations

from peft_tui.commands.common import handles_errors
from peft_tui.commands.options import DataOpt, ModelOpt, StoreOpt


@handles_errors
def launch(model: ModelOpt = "minilm", data: DataOpt = "synthetic", store: StoreOpt = None) -> None:
    """Open the dashboard: queue runs, watch them train, compare and export the results."""
    from peft_tui.ui.app import create_app

    create_app(model=model, data=data, store=store).run()
